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
from dataclasses import dataclass

import numpy as np

from ...io.log import LogFormatError, LogReader
from ...monitoring.thresholds import FLOORS, UNITS

QUANTITIES = ("energy", "forces", "stress")
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
    """``(step, time, value)`` of ``name`` with float values (empty if absent)."""
    if name not in reader.observable_names:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    step, time, value = reader.observable(name, start=start, stop=stop, stride=stride)
    return step, time, value.astype(np.float64, copy=False)


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
    ``q`` at every monitored step (the floor of the thresholds table)."""
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
        normalised = lookup(step, *per_atom_rms(reader))
    if f"{q}_rms" in reader.observable_names:     # logged, normalised as the ε
        rms = lookup(step, *read(reader, f"{q}_rms")[::2])
    else:                                          # older logs: relative = eps / rms
        with np.errstate(all="ignore"):
            rms = np.where(logged_relative > 0, eps * scale / logged_relative, np.nan)
    relative = normalised / np.fmax(rms, FLOORS[q])
    return QuantitySeries(q, step, time, normalised, err * scale, rms, relative, UNITS[q])


def per_atom_rms(reader: LogReader) -> tuple[np.ndarray, np.ndarray]:
    """``(step, sqrt(mean_i eps_i^2))`` from ``forces_eps_per_atom``, read in chunks."""
    name = "forces_eps_per_atom"
    count = reader.count(name)
    rows = max(1, SAMPLE_BUDGET // max(1, len(reader.species)))
    steps, values = [], []
    for start in range(0, count, rows):
        step, _, block = read(reader, name, start=start, stop=start + rows)
        steps.append(step)
        with np.errstate(all="ignore"):
            values.append(np.sqrt(np.nanmean(block * block, axis=1)))
    if not steps:
        return np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(steps), np.concatenate(values)


def per_atom_sample(reader: LogReader, budget: int | None = None):
    """Evenly strided sample ``(steps, (n_rows, N) values)`` of forces_eps_per_atom,
    at most ``budget`` (default :data:`SAMPLE_BUDGET`) values; None if not logged."""
    name = "forces_eps_per_atom"
    if name not in reader.observable_names or reader.count(name) == 0:
        return None
    stride = sample_stride(reader.count(name), len(reader.species), budget)
    step, _, values = read(reader, name, stride=stride)
    return step, values


def symbols(species) -> list[str]:
    """Chemical symbols of atomic numbers (``Z<n>`` for unknown numbers)."""
    from ase.data import chemical_symbols

    return [chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z{z}"
            for z in np.asarray(species).tolist()]
