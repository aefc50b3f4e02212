"""HDF5 layout of ``symmon layers`` / ``symmon checkpoints`` results (plain h5py).

The analysis itself is computed by :mod:`symmon.frontends.analyze.core`; this module
only writes and reads it (any object with its attributes, see :func:`write_analysis`).

One analysis (one model, one set of weights) is stored in a group ``G``::

    G.attrs: l_max, grid_degree, n_grid, n_structures, columns (irreps..., "residual"),
             module_order (names in forward order), output_order
    G/modules/<name>/          one group per hooked module (name as given, e.g.
                               "backend.gnn_layers.0:edge"; '/' replaced by '|')
        attrs: name, sample_kind (atom|edge|structure|token), dim, n_samples,
               n_zero, total_power
        aggregate (n_cols,)    power-weighted normalised spectrum (sums to 1)
        mean, std, q25, median, q75 (n_cols,)   over per-sample normalised spectra
        per_structure (n_structures, n_cols)
    G/outputs/<name>/          energy, non_conservative_forces, non_conservative_stress
        attrs: kind, eps_rms, relative_mean, rmse, rmse_symmetrized, n_labelled
        eps, relative, rms (n_structures,)

``layers.h5`` is such a group at the root (plus ``model``, ``structures``,
``epoch``, ``weights`` attributes). ``training.h5`` has the settings as root
attributes and one group per checkpoint, ``/checkpoints/epoch_<EEEEEE>``, with
attributes ``epoch``, ``path``, ``complete`` (set last: a group without it was
interrupted and is redone on the next run).
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Tuple

import h5py
import numpy as np

__all__ = ["write_analysis", "read_analysis", "group_name", "write_layers_file",
           "prepare_training_file", "complete_epochs", "write_epoch", "read_epochs",
           "read_layers_file"]

_STR = h5py.string_dtype()


def group_name(name: str) -> str:
    return name.replace("/", "|")


def write_analysis(group: h5py.Group, analysis) -> None:
    """Write ``analysis`` (a :class:`~symmon.frontends.analyze.core.LayerAnalysis`:
    ``l_max``, ``grid``, ``info``, ``labels``, ``modules``, ``outputs``) into ``group``."""
    group.attrs["l_max"] = analysis.l_max
    group.attrs["grid_degree"] = int(analysis.grid.degree)
    group.attrs["n_grid"] = len(analysis.grid)
    group.attrs["n_structures"] = int(analysis.info.get("n_structures", 0))
    group.attrs["columns"] = np.array(analysis.labels, dtype=_STR)
    group.attrs["module_order"] = np.array(list(analysis.modules), dtype=_STR)
    group.attrs["output_order"] = np.array(list(analysis.outputs), dtype=_STR)
    modules = group.require_group("modules")
    for name, spectrum in analysis.modules.items():
        sub = modules.create_group(group_name(name))
        sub.attrs.update(name=name, sample_kind=spectrum.sample_kind, dim=spectrum.dim,
                         n_samples=spectrum.n_samples, n_zero=spectrum.n_zero,
                         total_power=spectrum.total_power)
        for key in ("aggregate", "mean", "std", "q25", "median", "q75", "per_structure"):
            sub.create_dataset(key, data=np.asarray(getattr(spectrum, key), dtype=np.float64))
    outputs = group.require_group("outputs")
    for name, metrics in analysis.outputs.items():
        sub = outputs.create_group(group_name(name))
        sub.attrs.update(kind=metrics.kind, eps_rms=metrics.eps_rms,
                         relative_mean=metrics.relative_mean, rmse=metrics.rmse,
                         rmse_symmetrized=metrics.rmse_symmetrized,
                         n_labelled=metrics.n_labelled)
        for key in ("eps", "relative", "rms"):
            sub.create_dataset(key, data=np.asarray(getattr(metrics, key), dtype=np.float64))


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def _read_entries(group: h5py.Group, section: str, order: str) -> Dict:
    """``{name: {dataset: array, attribute: value}}`` of ``group/section`` in ``order``."""
    entries = {}
    for name in group.attrs[order]:
        name = _text(name)
        sub = group[section][group_name(name)]
        entry = {k: sub[k][()] for k in sub}
        entry.update({k: (_text(v) if isinstance(v, (bytes, str)) else v)
                      for k, v in sub.attrs.items()})
        entries[name] = entry
    return entries


def read_analysis(group: h5py.Group) -> Dict:
    """``{"columns": [...], "modules": {name: {...arrays, attrs}}, "outputs": {...}}``."""
    return {"columns": [_text(c) for c in group.attrs["columns"]],
            "l_max": int(group.attrs["l_max"]),
            "modules": _read_entries(group, "modules", "module_order"),
            "outputs": _read_entries(group, "outputs", "output_order")}


# ------------------------------------------------------------------ the two files
def write_layers_file(output: str, analysis, **attributes) -> None:
    """``layers.h5``: the analysis at the root with ``attributes``, written to a
    temporary file first (a killed run leaves no half-written file)."""
    tmp = output + ".tmp"
    with h5py.File(tmp, "w") as f:
        f.attrs.update(kind="symmon-layers", **attributes)
        write_analysis(f, analysis)
    os.replace(tmp, output)


def prepare_training_file(output: str, settings: str) -> None:
    """Create ``training.h5`` (or check its ``settings`` and remove the groups of
    interrupted epochs, which are redone)."""
    with h5py.File(output, "a") as f:
        if "settings" in f.attrs and f.attrs["settings"] != settings:
            raise ValueError(f"{output!r} was written with other settings "
                             f"({f.attrs['settings']}); use another -o or --overwrite")
        f.attrs.update(kind="symmon-checkpoints", settings=settings)
        root = f.require_group("checkpoints")
        for name in list(root):
            if not root[name].attrs.get("complete", False):
                del root[name]  # interrupted: redo


def write_epoch(output: str, epoch: int, analysis, **attributes) -> None:
    """One checkpoint's group, marked ``complete`` last."""
    with h5py.File(output, "a") as f:
        group = f["checkpoints"].create_group(f"epoch_{epoch:06d}")
        group.attrs.update(epoch=epoch, **attributes)
        write_analysis(group, analysis)
        group.attrs["complete"] = True


def complete_epochs(output: str) -> set:
    """Epochs whose group was completed."""
    with h5py.File(output, "r") as f:
        return {int(g.attrs["epoch"]) for g in f["checkpoints"].values()
                if g.attrs.get("complete", False)}


def read_epochs(output: str) -> List[Tuple[int, Dict]]:
    """``(epoch, read_analysis(group))`` of every complete epoch, in epoch order."""
    with h5py.File(output, "r") as f:
        groups = sorted((int(g.attrs["epoch"]), g) for g in f["checkpoints"].values()
                        if g.attrs.get("complete", False))
        return [(epoch, read_analysis(group)) for epoch, group in groups]


def read_layers_file(output: str) -> Dict:
    """The analysis of a ``layers.h5`` file (:func:`read_analysis`)."""
    with h5py.File(output, "r") as f:
        return read_analysis(f)
