"""The per-step numbers a person reads, from a symmon log, in per-atom-normalised units.

For each monitored quantity ``q`` the log stores ε and the relative ε (ε / orbit RMS).
A person reads them normalised so that a number means the same at any system size:

* energy: ε per atom, eV/atom (``energy_eps / N``);
* forces: the RMS over atoms of each atom's ε, eV/Å
  (``sqrt(mean_i eps_i^2)``; a log whose ``forces_eps`` is the sum over atoms,
  ``sqrt(sum_i eps_i^2)``, is converted: from ``forces_eps_per_atom`` where logged,
  else ``forces_eps / sqrt(N)``);
* stress: ε in eV/Å³ (an intensive quantity already).

The orbit RMS (logged as ``<q>_rms``; in older logs ``eps / relative``) is normalised
the same way, and the relative ε is ``eps / max(rms, floor)`` with the floor of
:data:`symmon.monitoring.thresholds.FLOORS`, as graded.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from ...io.log import LogFormatError, LogReader
from ...core.quantities import QUANTITY, QUANTITY_NAMES
from ...monitoring.thresholds import FLOORS

QUANTITIES = QUANTITY_NAMES
SAMPLE_BUDGET = 2_000_000    # values per read of per-atom / spectrum arrays


@dataclass(frozen=True)
class QuantitySeries:
    """Per-step ε of one quantity in per-atom-normalised units (NaN where unknown)."""

    quantity: str
    step: np.ndarray
    time: np.ndarray
    eps: np.ndarray
    eps_err: np.ndarray
    rms: np.ndarray
    relative: np.ndarray
    unit: str


def read(reader: LogReader, name: str, stride: int | None = None, start=None, stop=None):
    """``(step, time, value)`` of ``name`` with float values (empty if absent).  A whole
    series is read once per reader (:meth:`LogReader.memo`; read-only arrays)."""
    if name not in reader.observable_names:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    if start is None and stop is None and stride is None:
        return reader.memo(("read", name), lambda: _frozen(_read_float(reader, name)))
    return _read_float(reader, name, stride, start, stop)


def _read_float(reader: LogReader, name: str, stride=None, start=None, stop=None):
    step, time, value = reader.observable(name, start=start, stop=stop, stride=stride)
    return step, time, value.astype(np.float64, copy=False)


def _frozen(arrays):
    """``arrays`` made read-only (values shared through :meth:`LogReader.memo`)."""
    for array in arrays:
        if isinstance(array, np.ndarray):
            array.setflags(write=False)
    return arrays


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
    """True when the log's ``forces_eps`` is summed over atoms (logs before the
    per-atom RMS became ``forces_eps``; those logs have no ``forces_eps_total``)."""
    if "forces_eps_total" in reader.observable_names:
        return False
    text = reader.description("forces_eps").lower()
    return not any(word in text for word in ("per atom", "per-atom", "over atoms"))


def quantity_series(reader: LogReader, q: str) -> QuantitySeries:
    """ε, its standard error, orbit RMS and relative ε ``eps / max(rms, floor)`` of
    ``q`` at every monitored step (the floor of the thresholds table); computed once
    per reader (:meth:`LogReader.memo`)."""
    return reader.memo(("quantity_series", q), lambda: _quantity_series(reader, q))


def _quantity_series(reader: LogReader, q: str) -> QuantitySeries:
    step, time, eps = read(reader, f"{q}_eps")
    err = lookup(step, *read(reader, f"{q}_eps_err")[::2])
    logged_relative = lookup(step, *read(reader, f"{q}_rel_eps")[::2])
    n_atoms = len(reader.species)
    scale = 1.0
    if q == "energy":
        scale = 1.0 / n_atoms
    elif q == "forces" and forces_eps_is_total(reader):
        scale = 1.0 / math.sqrt(n_atoms)
    normalised = eps * scale
    if q == "forces" and scale != 1.0 and "forces_eps_per_atom" in reader.observable_names:
        normalised = lookup(step, *per_atom_rms(reader)[::2])
    if f"{q}_rms" in reader.observable_names:     # logged, normalised as the ε
        rms = lookup(step, *read(reader, f"{q}_rms")[::2])
    else:                                          # older logs: relative = eps / rms
        with np.errstate(all="ignore"):
            rms = np.where(logged_relative > 0, eps * scale / logged_relative, np.nan)
    relative = normalised / np.fmax(rms, FLOORS[q])
    return QuantitySeries(q, step, time, normalised, err * scale, rms, relative, QUANTITY[q].eps_unit)


def per_atom_rms(reader: LogReader) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(step, time [ps], sqrt(mean_i eps_i^2) [eV/Å])`` of every row of
    ``forces_eps_per_atom`` (:func:`rms_over_atoms`), read in chunks of
    :data:`SAMPLE_BUDGET` values, once per reader."""
    return reader.memo("per_atom_rms", lambda: _frozen(_per_atom_rms(reader)))


def _per_atom_rms(reader: LogReader):
    name = "forces_eps_per_atom"
    count = reader.count(name)
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
    return reader.memo(("per_atom_sample", stride),
                       lambda: _frozen(read(reader, name, stride=stride)[::2]))


def symbols(species) -> list[str]:
    """Chemical symbols of atomic numbers (``Z<n>`` for unknown numbers)."""
    from ase.data import chemical_symbols

    return [chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z{z}"
            for z in np.asarray(species).tolist()]
