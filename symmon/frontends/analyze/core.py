"""Character spectra of a model's internal features, summarised over structures.

For every hooked module (see :mod:`symmon.adapters.metatrain`) and every
structure, the module's output on the orbit of a quadrature grid, ``(K, n_samples,
d)``, goes through :func:`symmon.core.metrics.character_spectrum` with one spectrum per
sample (atom, edge or structure; the power is summed over the ``d`` channels).
The columns of every summary are the irreps ``(l, sigma)`` with ``l <= l_max``
followed by ``residual`` (the fraction of the power beyond ``l_max``), so that
every row sums to one:

* ``aggregate``: power-weighted, ``sum_samples c(l, sigma) / sum_samples <|f|^2>``
  over every sample of every structure (samples with more power count more);
* ``mean``: mean over samples of the per-sample normalised spectra (every token
  counts the same), with ``std`` and the quartiles ``q25``, ``median``, ``q75``;
* ``per_structure``: the aggregate of each structure, ``(n_structures, n_columns)``.

Samples whose total power is zero (e.g. a feature that vanishes) are left out of
``mean``/quartiles and counted in ``n_zero``.

The model outputs get their equivariance error (paper Eq. 1-2) per structure and,
when the structures carry labels, the RMSE of the prediction in the input frame
and of the orbit-averaged (symmetrised) prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ...adapters.labels import label_quantity, read_labels
from ...core.metrics import character_spectrum, equivariance_error, orbit_average
from ...core.outputs import output
from ...core.grids import O3Grid, quadrature_grid
from ...core.irreps import irreps_up_to

__all__ = ["ModuleSpectrum", "OutputMetrics", "LayerAnalysis", "analyze_model",
           "column_labels", "read_labels"]

def column_labels(l_max: int) -> List[str]:
    """``["(0,+1)", "(0,-1)", ..., "residual"]``."""
    return [str(ir) for ir in irreps_up_to(int(l_max))] + ["residual"]


@dataclass
class ModuleSpectrum:
    """Summary of one module's character spectra (columns: irreps then residual)."""

    name: str
    sample_kind: str
    dim: int
    n_samples: int
    n_zero: int
    aggregate: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    q25: np.ndarray
    median: np.ndarray
    q75: np.ndarray
    per_structure: np.ndarray
    total_power: float

    def as_dict(self, labels: Sequence[str]) -> dict:
        return {"sample_kind": self.sample_kind, "dim": self.dim,
                "n_samples": self.n_samples,
                "aggregate": dict(zip(labels, map(float, self.aggregate))),
                "mean": dict(zip(labels, map(float, self.mean)))}


@dataclass
class OutputMetrics:
    """Equivariance error and accuracy of one model output over the structures."""

    name: str
    kind: str
    eps: np.ndarray            # per structure
    relative: np.ndarray       # per structure
    rms: np.ndarray            # per structure
    rmse: float = math.nan     # lab-frame prediction vs labels (all components)
    rmse_symmetrized: float = math.nan  # orbit-averaged prediction vs labels
    n_labelled: int = 0

    @property
    def eps_rms(self) -> float:
        """Root mean square of the per-structure ``eps``."""
        return float(np.sqrt(np.mean(self.eps ** 2))) if len(self.eps) else math.nan

    @property
    def relative_mean(self) -> float:
        return float(np.mean(self.relative)) if len(self.relative) else math.nan


@dataclass
class LayerAnalysis:
    """Everything measured on one model: module spectra and output metrics."""

    l_max: int
    grid: O3Grid
    modules: Dict[str, ModuleSpectrum] = field(default_factory=dict)
    outputs: Dict[str, OutputMetrics] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def labels(self) -> List[str]:
        return column_labels(self.l_max)


# --------------------------------------------------------------------------------------
# analysis
# --------------------------------------------------------------------------------------
class _Accumulator:
    def __init__(self, name, kind, dim):
        self.name, self.kind, self.dim = name, kind, dim
        self.per_sample: List[np.ndarray] = []
        self.per_structure: List[np.ndarray] = []
        self.power = None
        self.total = 0.0

    def add(self, spectrum):
        power = spectrum.power.reshape(spectrum.power.shape[0], -1)  # (n_irreps, s)
        total = spectrum.total.reshape(-1)
        residual = total - power.sum(axis=0)
        columns = np.concatenate([power, residual[None]], axis=0)  # (n_cols, s)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.per_sample.append((columns / total).T)
        summed = columns.sum(axis=1)
        self.power = summed if self.power is None else self.power + summed
        self.total += float(total.sum())
        self.per_structure.append(summed / total.sum() if total.sum() > 0 else
                                  np.full_like(summed, np.nan))

    def summary(self) -> ModuleSpectrum:
        samples = np.concatenate(self.per_sample, axis=0)
        finite = np.isfinite(samples).all(axis=1)
        good = samples[finite]
        n_cols = samples.shape[1]
        if len(good):
            mean, std = good.mean(axis=0), good.std(axis=0)
            q25, median, q75 = np.percentile(good, [25, 50, 75], axis=0)
        else:
            mean = std = q25 = median = q75 = np.full(n_cols, np.nan)
        aggregate = self.power / self.total if self.total > 0 else np.full(n_cols, np.nan)
        return ModuleSpectrum(
            name=self.name, sample_kind=self.kind, dim=self.dim, n_samples=len(samples),
            n_zero=int((~finite).sum()), aggregate=aggregate, mean=mean, std=std, q25=q25,
            median=median, q75=q75, per_structure=np.stack(self.per_structure),
            total_power=self.total)


def _feature_bytes(orbit_model, atoms, modules) -> Dict[str, int]:
    """Bytes per copy (float64) of every hooked feature, from a one-copy capture."""
    capture = orbit_model.capture(atoms, np.eye(3)[None], modules, outputs=[])
    return {name: int(value[0].numel()) * 8 for name, value in capture.features.items()}


def _module_groups(orbit_model, atoms, modules, n_copies, max_bytes) -> List[List[str]]:
    if max_bytes is None:
        return [list(modules)]
    sizes = _feature_bytes(orbit_model, atoms, modules)
    groups, current, used = [], [], 0
    for name in modules:
        size = sum(v for k, v in sizes.items()
                   if k == name or k.startswith(name + ":") or k.startswith(name + "[")
                   ) * n_copies
        if current and used + size > max_bytes:
            groups.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    if current:
        groups.append(current)
    return groups


def analyze_model(orbit_model, structures: Sequence, *, modules: Optional[Sequence[str]] = None,
                  l_max: int = 4, degree: Optional[int] = None,
                  label_keys: Optional[Dict[str, Optional[str]]] = None,
                  max_memory_gb: Optional[float] = 2.0,
                  progress: Optional[Callable[[int], None]] = None) -> LayerAnalysis:
    """Character spectra of hooked modules and output metrics over ``structures``.

    :param orbit_model: a :class:`~symmon.adapters.metatrain.MetatrainOrbitModel`
    :param structures: ``ase.Atoms`` objects
    :param modules: module names / fnmatch patterns (default: the model's default set)
    :param l_max: largest ``l`` resolved; the power beyond it is the ``residual``
    :param degree: quadrature degree (default and minimum ``2 * l_max``)
    :param label_keys: ``{"energy": KEY, "forces": KEY, "stress": KEY}`` (ASE keys)
    :param max_memory_gb: memory for the captured features of one structure; modules
        are split into groups (one orbit evaluation each) to stay below it
    :param progress: called with 1 after each structure
    """
    degree = 2 * int(l_max) if degree is None else int(degree)
    if degree < 2 * int(l_max):
        raise ValueError(f"the quadrature degree ({degree}) must be at least 2*l_max "
                         f"({2 * int(l_max)})")
    if len(structures) == 0:
        raise ValueError("no structures to analyse")
    grid = quadrature_grid(degree)
    names = orbit_model.resolve_modules(modules)
    # the identity is appended as a last copy: the lab-frame prediction for the RMSE
    matrices = np.concatenate([grid.matrices, np.eye(3)[None]])
    n_grid = len(grid)
    max_bytes = None if max_memory_gb is None else float(max_memory_gb) * 2 ** 30
    accumulators: Dict[str, _Accumulator] = {}
    order: List[str] = []
    per_output: Dict[str, dict] = {}
    label_keys = label_keys or {}

    for atoms in structures:
        groups = _module_groups(orbit_model, atoms, names, len(matrices), max_bytes)
        for index, group in enumerate(groups):
            capture = orbit_model.capture(atoms, matrices, group,
                                          outputs=None if index == 0 else [])
            for name, values in capture.features.items():
                spectrum = character_spectrum(values[:n_grid], grid, l_max, sample_dims=1)
                if name not in accumulators:
                    accumulators[name] = _Accumulator(name, capture.sample_kind[name],
                                                      int(values.shape[-1]))
                    order.append(name)
                accumulators[name].add(spectrum)
                del spectrum
            if index == 0:
                labels = read_labels(atoms, label_keys)
                for name, values in capture.outputs.items():
                    row = output(name)
                    kind = row.kind if row is not None else orbit_model.output_kind(name)
                    _add_output_metrics(per_output, name, kind, values, grid, n_grid,
                                        labels)
            del capture
        if progress is not None:
            progress(1)

    analysis = LayerAnalysis(l_max=int(l_max), grid=grid)
    for name in order:
        analysis.modules[name] = accumulators[name].summary()
    for name, data in per_output.items():
        squared = data["squared"]
        squared_sym = data["squared_sym"]
        analysis.outputs[name] = OutputMetrics(
            name=name, kind=data["kind"], eps=np.array(data["eps"]),
            relative=np.array(data["relative"]), rms=np.array(data["rms"]),
            rmse=float(np.sqrt(np.mean(np.concatenate(squared)))) if squared else math.nan,
            rmse_symmetrized=float(np.sqrt(np.mean(np.concatenate(squared_sym))))
            if squared_sym else math.nan, n_labelled=len(squared))
    analysis.info = {"n_structures": len(structures), "grid_degree": degree,
                     "n_grid": n_grid, "modules": names}
    return analysis


def _add_output_metrics(per_output, name, kind, values, grid, n_grid, labels):
    if kind is None:
        return
    orbit = values[:n_grid]
    error = equivariance_error(orbit, grid, kind)
    data = per_output.setdefault(name, {"eps": [], "relative": [], "rms": [], "squared": [],
                                        "squared_sym": [], "kind": kind})
    data["eps"].append(error.eps)
    data["relative"].append(error.relative)
    data["rms"].append(error.rms)
    label = labels.get(label_quantity(name))
    if label is not None:
        lab_frame = values[n_grid].cpu().numpy()
        symmetrized = orbit_average(orbit, grid, kind).cpu().numpy()
        label = np.asarray(label, dtype=np.float64).reshape(lab_frame.shape)
        data["squared"].append(((lab_frame - label) ** 2).reshape(-1))
        data["squared_sym"].append(((symmetrized - label) ** 2).reshape(-1))


def torch_device(device: Optional[str]) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
