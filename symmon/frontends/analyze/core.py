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
from ...core.accuracy import label_error
from ...core.metrics import character_spectrum, equivariance_error
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

    def add(self, columns: np.ndarray, total: np.ndarray):
        """One structure's ``(n_cols, samples)`` powers and ``(samples,)`` totals."""
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


def spectrum_columns(spectrum):
    """``(n_cols, samples)`` power per irrep then residual, and ``(samples,)`` totals."""
    power = spectrum.power.reshape(spectrum.power.shape[0], -1)  # (n_irreps, s)
    total = spectrum.total.reshape(-1)
    residual = spectrum.residual.reshape(-1)
    return np.concatenate([power, residual[None]], axis=0), total


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

    :param orbit_model: an adapter with layer hooks (``has_layer_hooks``: a metatrain checkpoint)
    :param structures: ``ase.Atoms`` objects
    :param modules: module names / fnmatch patterns (default: the model's default set)
    :param l_max: largest ``l`` resolved; the power beyond it is the ``residual``
    :param degree: quadrature degree (default and minimum ``2 * l_max``)
    :param label_keys: ``{"energy": KEY, "forces": KEY, "stress": KEY}`` (ASE keys)
    :param max_memory_gb: memory for the captured features of one structure; modules
        are split into groups (one orbit evaluation each) to stay below it
    :param progress: called with 1 after each structure
    """
    if len(structures) == 0:
        raise ValueError("no structures to analyse")
    grid = analysis_grid(l_max, degree)
    names = orbit_model.resolve_modules(modules)
    records = []
    for atoms in structures:
        records.append(analyze_structure(orbit_model, atoms, names, grid, l_max, label_keys,
                                         max_memory_gb))
        if progress is not None:
            progress(1)
    return combine(records, l_max, grid)


def analysis_grid(l_max: int, degree: Optional[int]) -> O3Grid:
    """The quadrature of an analysis (default and minimum degree ``2 * l_max``)."""
    degree = 2 * int(l_max) if degree is None else int(degree)
    if degree < 2 * int(l_max):
        raise ValueError(f"the quadrature degree ({degree}) must be at least 2*l_max "
                         f"({2 * int(l_max)})")
    return quadrature_grid(degree)


def analyze_structure(orbit_model, atoms, names: Sequence[str], grid: O3Grid, l_max: int,
                      label_keys: Optional[Dict[str, Optional[str]]] = None,
                      max_memory_gb: Optional[float] = 2.0) -> Dict:
    """What one structure adds to an analysis: per module ``(sample_kind, dim, columns,
    totals)`` and per output its ε, RMS and squared errors (see :func:`combine`)."""
    # the identity is appended as a last copy: the lab-frame prediction for the RMSE
    matrices = np.concatenate([grid.matrices, np.eye(3)[None]])
    n_grid = len(grid)
    max_bytes = None if max_memory_gb is None else float(max_memory_gb) * 2 ** 30
    record: Dict[str, object] = {"modules": {}, "outputs": {}, "names": list(names)}
    groups = _module_groups(orbit_model, atoms, names, len(matrices), max_bytes)
    for index, group in enumerate(groups):
        capture = orbit_model.capture(atoms, matrices, group,
                                      outputs=None if index == 0 else [])
        for name, values in capture.features.items():
            spectrum = character_spectrum(values[:n_grid], grid, l_max, sample_dims=1)
            record["modules"][name] = (capture.sample_kind[name], int(values.shape[-1]),
                                       *spectrum_columns(spectrum))
            del spectrum
        if index == 0:
            labels = read_labels(atoms, label_keys or {})
            for name, values in capture.outputs.items():
                row = output(name)
                kind = row.kind if row is not None else orbit_model.output_kind(name)
                if kind is not None:
                    record["outputs"][name] = _output_metrics(kind, values, grid, n_grid,
                                                              labels.get(label_quantity(name)))
        del capture
    return record


def combine(records: Sequence[Dict], l_max: int, grid: O3Grid) -> LayerAnalysis:
    """The analysis of structures from their :func:`analyze_structure` records, in order
    (the same numbers whether the records came from one process or many ranks)."""
    accumulators: Dict[str, _Accumulator] = {}
    per_output: Dict[str, dict] = {}
    for record in records:
        for name, (sample_kind, dim, columns, total) in record["modules"].items():
            if name not in accumulators:
                accumulators[name] = _Accumulator(name, sample_kind, dim)
            accumulators[name].add(columns, total)
        for name, metrics in record["outputs"].items():
            data = per_output.setdefault(name, {"eps": [], "relative": [], "rms": [],
                                                "squared": [], "squared_sym": [],
                                                "kind": metrics["kind"]})
            for key in ("eps", "relative", "rms", "squared", "squared_sym"):
                if metrics.get(key) is not None:
                    data[key].append(metrics[key])
    analysis = LayerAnalysis(l_max=int(l_max), grid=grid)
    for name, accumulator in accumulators.items():
        analysis.modules[name] = accumulator.summary()
    for name, data in per_output.items():
        squared, squared_sym = data["squared"], data["squared_sym"]
        analysis.outputs[name] = OutputMetrics(
            name=name, kind=data["kind"], eps=np.array(data["eps"]),
            relative=np.array(data["relative"]), rms=np.array(data["rms"]),
            rmse=float(np.sqrt(np.mean(np.concatenate(squared)))) if squared else math.nan,
            rmse_symmetrized=float(np.sqrt(np.mean(np.concatenate(squared_sym))))
            if squared_sym else math.nan, n_labelled=len(squared))
    analysis.info = {"n_structures": len(records), "grid_degree": int(grid.degree),
                     "n_grid": len(grid), "modules": records[0]["names"] if records else []}
    return analysis


def _output_metrics(kind, values, grid, n_grid, label) -> Dict:
    """ε, relative ε and RMS of one output on one structure; squared errors of the
    lab-frame and of the orbit-averaged prediction when ``label`` is given."""
    orbit = values[:n_grid]
    error = equivariance_error(orbit, grid, kind)
    metrics = {"kind": kind, "eps": error.eps, "relative": error.relative, "rms": error.rms}
    if label is not None:
        deviation = label_error(values[n_grid], error.mean, label)
        metrics["squared"] = deviation.squared.reshape(-1)
        metrics["squared_sym"] = deviation.squared_averaged.reshape(-1)
    return metrics


def torch_device(device: Optional[str]) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
