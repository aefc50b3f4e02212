"""HDF5 layout of ``symmon layers`` / ``symmon checkpoints`` results (plain h5py).

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

from typing import Dict

import h5py
import numpy as np

from .core import LayerAnalysis

__all__ = ["write_analysis", "read_analysis", "group_name"]

_STR = h5py.string_dtype()


def group_name(name: str) -> str:
    return name.replace("/", "|")


def write_analysis(group: h5py.Group, analysis: LayerAnalysis) -> None:
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
