"""The per-step numbers a person reads, from a symmon log, in per-atom-normalised units.

For each monitored quantity ``q`` the log stores ε and its orbit RMS. A person reads
them normalised so that a number means the same at any system size:

* energy: ε per atom, eV/atom (``energy_eps / N``);
* forces: the RMS over atoms of each atom's ε, eV/Å
  (``sqrt(mean_i eps_i^2)``; a log whose ``forces_eps`` is the sum over atoms,
  ``sqrt(sum_i eps_i^2)``, is converted: from ``forces_eps_per_atom`` where logged,
  else ``forces_eps / sqrt(N)``);
* stress: ε in eV/Å³ (an intensive quantity already).

The orbit RMS (logged as ``<q>_rms``; in older logs ``eps / relative``) is normalised
the same way; the relative ε is :func:`symmon.monitoring.thresholds.relative_eps` of
the two (the one function the monitor, the verdict, the tables, the histogram and the
export use) and the share of the quantity :func:`~symmon.monitoring.thresholds.dominant_share`.

:func:`read_run` reads everything the report shows once into a :class:`RunSeries`
(bounded reads of the large per-atom and spectrum arrays); the summary and the figures
work on it, never on the reader. :func:`worst_step_rows` and :func:`worst_atoms_of` are
the one ranking of steps and atoms (``symmon report`` and ``symmon export``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from ...core.irreps import Irrep
from ...io.log import LogFormatError, LogReader
from ...core.quantities import QUANTITY, QUANTITY_NAMES
from ...monitoring.thresholds import dominant_share, relative_eps

QUANTITIES = QUANTITY_NAMES
SAMPLE_BUDGET = 2_000_000    # values per read of per-atom / spectrum arrays
MAX_SPECTRUM_ROWS = 1500     # full-orbit rows of a spectrum kept for the heatmap
ERROR_SUFFIXES = ("_error", "_model_error")  # optional logged reference model errors


@dataclass(frozen=True)
class QuantitySeries:
    """Per-step ε of one quantity in per-atom-normalised units (NaN where unknown):
    ``relative`` = :func:`~symmon.monitoring.thresholds.relative_eps` and ``share`` =
    :func:`~symmon.monitoring.thresholds.dominant_share` of ``eps`` and ``rms``."""

    quantity: str
    step: np.ndarray
    time: np.ndarray
    eps: np.ndarray
    eps_err: np.ndarray
    rms: np.ndarray
    relative: np.ndarray
    share: np.ndarray
    full: np.ndarray   # bool: exact full-orbit step
    unit: str


@dataclass(frozen=True)
class Spectrum:
    """Character spectra c̃(l,σ) of one quantity on (a strided sample of) its full-orbit
    steps, with the power beyond l_max, and the irreps an equivariant output occupies."""

    quantity: str
    step: np.ndarray
    time: np.ndarray
    irreps: list
    values: np.ndarray     # (rows, irreps)
    residual: np.ndarray   # (rows,)
    targets: list


@dataclass(frozen=True)
class LoggedError:
    """A per-step reference model error logged beside ε (same per-atom units)."""

    quantity: str
    observable: str
    unit: str
    error: np.ndarray
    eps: np.ndarray        # ε at the same steps


@dataclass
class RunSeries:
    """Everything per-step the report shows of one run (read once by :func:`read_run`)."""

    paths: list
    n_atoms: int
    symbols: list
    pbc: tuple
    metadata: Mapping
    quantities: dict                   # q -> QuantitySeries
    overrides: dict
    per_atom: tuple | None = None      # (steps, (rows, N) forces ε of each atom) sample
    spectra: dict = field(default_factory=dict)    # q -> Spectrum
    logged_errors: dict = field(default_factory=dict)  # q -> LoggedError
    scalars: dict = field(default_factory=dict)    # name -> (step, value) (e.g. violation)

    def scalar(self, name: str, step: np.ndarray) -> np.ndarray:
        """Logged scalar ``name`` at ``step`` (NaN where not logged)."""
        if name not in self.scalars:
            return np.full(len(step), np.nan)
        return lookup(step, *self.scalars[name])


def read(reader: LogReader, name: str, stride: int | None = None, start=None, stop=None):
    """``(step, time, value)`` of ``name`` with float values (empty if absent)."""
    if name not in reader.observable_names:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    step, time, value = reader.observable(name, start=start, stop=stop, stride=stride)
    return step, time, value.astype(np.float64, copy=False)


def rank_order(eps) -> np.ndarray:
    """Indices of ``eps`` from largest to smallest (NaN last, ties in log order)."""
    return np.argsort(-np.nan_to_num(np.asarray(eps, float), nan=-np.inf), kind="stable")


def rms_over_atoms(eps_per_atom) -> np.ndarray:
    """``sqrt(mean_i eps_i^2)`` over the last axis, atoms with NaN ε left out."""
    eps_per_atom = np.asarray(eps_per_atom, dtype=np.float64)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: NaN
        return np.sqrt(np.nanmean(eps_per_atom * eps_per_atom, axis=-1))


def lookup(step_ref, steps, values) -> np.ndarray:
    """Values at ``step_ref`` (first row with that step; NaN where missing)."""
    step_ref = np.asarray(step_ref)
    if len(steps) == len(step_ref) and np.array_equal(steps, step_ref):
        return np.asarray(values, dtype=float)
    if len(steps) == 0:
        return np.full(len(step_ref), np.nan)
    order = np.argsort(steps, kind="stable")
    steps, values = np.asarray(steps)[order], np.asarray(values)[order]
    idx = np.clip(np.searchsorted(steps, step_ref), 0, len(steps) - 1)
    return np.where(steps[idx] == step_ref, values[idx], np.nan)


def sample_stride(count: int, row_size: int, budget: int | None = None) -> int:
    """Stride that keeps a strided read of ``count`` rows within ``budget`` values
    (default :data:`SAMPLE_BUDGET`)."""
    return max(1, math.ceil(count * max(1, row_size) / (budget or SAMPLE_BUDGET)))


def monitored_quantities(reader: LogReader) -> list[str]:
    """Outputs with ε in the log; LogFormatError when the log holds none."""
    names = set(reader.observable_names)
    quantities = [q for q in QUANTITIES if f"{q}_rel_eps" in names and f"{q}_eps" in names]
    if not quantities:
        raise LogFormatError(
            f"{', '.join(reader.paths)}: symmon log without monitor diagnostics (no "
            f"<quantity>_eps / _rel_eps observables; found {sorted(names)})")
    return quantities


def forces_eps_is_total(reader: LogReader) -> bool:
    """True when the log's ``forces_eps`` is summed over atoms (its semantics version,
    :mod:`symmon.io.semantics`)."""
    return reader.semantics.forces_eps_summed


def log_thresholds(metadata: Mapping) -> dict:
    """The relative limits the monitor was given (a log's metadata ``thresholds``)."""
    given = metadata.get("thresholds")
    if not isinstance(given, Mapping):
        return {}
    return {q: float(v) for q, v in given.items()
            if q in QUANTITIES and isinstance(v, (int, float))}


def quantity_series(reader: LogReader, q: str,
                    overrides: Mapping[str, float] | None = None) -> QuantitySeries:
    """ε, its standard error, orbit RMS, relative ε and share of ``q`` at every
    monitored step (``overrides``: the relative limits that set the floor,
    :func:`~symmon.monitoring.thresholds.floor`; default: the log's own)."""
    if overrides is None:
        overrides = log_thresholds(reader.metadata)
    step, time, eps = read(reader, f"{q}_eps")
    err = lookup(step, *read(reader, f"{q}_eps_err")[::2])
    n_atoms = len(reader.species)
    scale = 1.0
    if q == "energy" or (q == "forces" and forces_eps_is_total(reader)):
        scale = QUANTITY[q].per_atom_factor(n_atoms)
    normalised = eps * scale
    if q == "forces" and scale != 1.0 and "forces_eps_per_atom" in reader.observable_names:
        normalised = lookup(step, *per_atom_rms(reader)[::2])
    if f"{q}_rms" in reader.observable_names:     # logged, normalised as the ε
        rms = lookup(step, *read(reader, f"{q}_rms")[::2])
    else:                                          # older logs: relative = eps / rms
        logged_relative = lookup(step, *read(reader, f"{q}_rel_eps")[::2])
        with np.errstate(all="ignore"):
            rms = np.where(logged_relative > 0, eps * scale / logged_relative, np.nan)
    full = lookup(step, *read(reader, "full_orbit")[::2]) == 1
    return QuantitySeries(q, step, time, normalised, err * scale, rms,
                          np.asarray(relative_eps(q, normalised, rms, overrides), float),
                          np.asarray(dominant_share(q, normalised, rms), float), full,
                          QUANTITY[q].eps_unit)


def per_atom_rms(reader: LogReader) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(step, time [ps], sqrt(mean_i eps_i^2) [eV/Å])`` of every row of
    ``forces_eps_per_atom`` (:func:`rms_over_atoms`), read in chunks of
    :data:`SAMPLE_BUDGET` values."""
    name = "forces_eps_per_atom"
    count = reader.count(name) if name in reader.observable_names else 0
    rows = max(1, SAMPLE_BUDGET // max(1, len(reader.species)))
    blocks = [read(reader, name, start=start, stop=start + rows)
              for start in range(0, count, rows)]
    if not blocks:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    return tuple(np.concatenate(parts) for parts in
                 zip(*((step, time, rms_over_atoms(block)) for step, time, block in blocks)))


def per_atom_row(reader: LogReader, step: int):
    """``(time [ps], ε of each atom (N,) [eV/Å])`` of the first row of
    ``forces_eps_per_atom`` at ``step`` (one row read); None where not logged."""
    name = "forces_eps_per_atom"
    if name not in reader.observable_names:
        return None
    rows = np.flatnonzero(reader.steps(name) == step)
    if not rows.size:
        return None
    _, time, values = read(reader, name, start=int(rows[0]), stop=int(rows[0]) + 1)
    return float(time[0]), values[0]


def per_atom_sample(reader: LogReader, budget: int | None = None):
    """Evenly strided sample ``(steps, (n_rows, N) values)`` of forces_eps_per_atom,
    at most ``budget`` (default :data:`SAMPLE_BUDGET`) values; None if not logged."""
    name = "forces_eps_per_atom"
    if name not in reader.observable_names or reader.count(name) == 0:
        return None
    stride = sample_stride(reader.count(name), len(reader.species), budget)
    return read(reader, name, stride=stride)[::2]


def target_irreps(q: str) -> list[Irrep]:
    """Irreps an exactly equivariant output ``q`` occupies."""
    from ...core.representations import get_representation

    return list(get_representation(QUANTITY[q].kind).targets)


def spectrum_of(reader: LogReader, q: str, name: str | None = None,
                targets=None) -> Spectrum | None:
    """The full-orbit rows of spectrum ``name`` (default ``<q>_spectrum``), strided to
    at most :data:`MAX_SPECTRUM_ROWS` rows and :data:`SAMPLE_BUDGET` values."""
    name = name or f"{q}_spectrum"
    n = reader.count(name) if name in reader.observable_names else 0
    if n == 0:
        return None
    irreps = [Irrep(int(l), int(s)) for l, s in reader.labels(name)]
    stride = max(sample_stride(n, len(irreps)), math.ceil(n / MAX_SPECTRUM_ROWS))
    step, time, values = read(reader, name, stride=stride)
    keep = np.isfinite(values).any(axis=1)      # rows of non-full steps may be NaN
    step, time, values = step[keep], time[keep], values[keep]
    residual = lookup(step, *read(reader, f"{q}_residual")[::2])
    return Spectrum(q, step, time, irreps, values, residual,
                    list(target_irreps(q) if targets is None else targets))


def logged_error(reader: LogReader, s: QuantitySeries) -> LoggedError | None:
    """The per-step model error of ``s.quantity`` logged beside ε (optional)."""
    for suffix in ERROR_SUFFIXES:
        name = f"{s.quantity}{suffix}"
        if name in reader.observable_names and reader.spec(name).shape == ():
            step, _, err = read(reader, name)
            return LoggedError(s.quantity, name, reader.unit(name), err,
                               lookup(step, s.step, s.eps))
    return None


#: logged per-step scalars the report reads besides ε (and ``<q>_level``,
#: ``<q>_contamination`` of each quantity)
SCALARS = ("violation", "level", "eps_of_returned", "net_force_per_atom", "net_torque",
           "n_elements", "calibration_rotations")


def read_run(reader: LogReader, overrides: Mapping[str, float] | None = None) -> RunSeries:
    """Every per-step number the report shows, read once (bounded reads)."""
    overrides = {**log_thresholds(reader.metadata), **(overrides or {})}
    quantities = {q: quantity_series(reader, q, overrides)
                  for q in monitored_quantities(reader)}
    spectra = {q: spectrum_of(reader, q) for q in quantities}
    if "stress" in quantities and "stress_traceless_spectrum" in reader.observable_names:
        spectra["stress_traceless"] = spectrum_of(reader, "stress",
                                                  "stress_traceless_spectrum", [Irrep(2, 1)])
    errors = {q: logged_error(reader, s) for q, s in quantities.items()}
    names = [*SCALARS, *(f"{q}_{what}" for q in quantities
                         for what in ("level", "contamination"))]
    scalars = {name: tuple(read(reader, name)[::2]) for name in names
               if name in reader.observable_names}
    return RunSeries(list(reader.paths), len(reader.species), symbols(reader.species),
                     tuple(bool(p) for p in reader.pbc), dict(reader.metadata), quantities,
                     overrides, per_atom_sample(reader),
                     {q: s for q, s in spectra.items() if s is not None},
                     {q: e for q, e in errors.items() if e is not None}, scalars)


def worst_step_rows(eps, n: int | None = None) -> np.ndarray:
    """Rows of the ``n`` (None: all) steps of largest per-step ``eps``, worst first (NaN
    last, ties in log order): the one ranking of steps (report and export)."""
    return rank_order(eps)[:n]


def worst_atoms_of(eps_of_atoms, n: int | None = None) -> np.ndarray:
    """Indices of the ``n`` atoms of largest forces ε in one step's ``(N,)`` per-atom
    ε, worst first: the one ranking of atoms (report and export)."""
    return rank_order(eps_of_atoms)[:n]


def symbols(species) -> list[str]:
    """Chemical symbols of atomic numbers (``Z<n>`` for unknown numbers)."""
    from ase.data import chemical_symbols

    return [chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z{z}"
            for z in np.asarray(species).tolist()]
