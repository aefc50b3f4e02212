"""``symmon export``: the structures of the worst monitored steps, with per-atom ε.

Steps are ranked by ε in the units ``symmon report`` prints (the same number at any
size, :func:`~.report.series.worst_step_rows`): forces by the RMS over atoms::

    ε_F = sqrt( (1/N) Σ_i ε_i² )      [eV/Å],   ε_i = forces_eps_per_atom[i]

computed here from the logged per-atom ε, so logs where ``forces_eps`` is the sum over
atoms (schema 1) and logs where it is the RMS rank alike; energy by ε per atom
[eV/atom], stress by ε [eV/Å³]. The relative ε in ``info`` is
:func:`symmon.monitoring.thresholds.relative_eps`, the report's.

Two outputs: an extended XYZ file (``ase.io.read`` reads it; any structure viewer shows
it) with per-atom arrays ``symmon_forces_eps`` [eV/Å] (and ``symmon_forces_off_target``
[eV/Å] where the log has ``forces_off_target``), the model's energy/forces/stress as
results, and the step's numbers in ``info``; or a chemiscope dataset (``.json`` /
``.json.gz``) of the same frames with per-atom ε as an atom property and the per-step
numbers as structure properties.  Logs are read only through
:func:`symmon.io.log.read_log`.  See docs/export.md.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..core.outputs import matrix_to_voigt, pretty_unit
from ..io.log import LogFormatError, LogReader, read_log
from ..io.run_index import is_run_directory
from ..io.structures import write_chemiscope, write_extxyz
from ..core.quantities import QUANTITY
from ..monitoring.schema import NAMES
from ..monitoring.thresholds import relative_eps
from .report.series import (log_thresholds, lookup, per_atom_row, per_atom_rms,
                            rms_over_atoms, symbols, worst_atoms_of, worst_step_rows)
from .report.series import read as read_series

EPS_PER_ATOM = "forces_eps_per_atom"
#: logged per-atom observable -> extxyz array / chemiscope atom property
PER_ATOM_ARRAYS = {EPS_PER_ATOM: "symmon_forces_eps",
                   "forces_off_target": "symmon_forces_off_target"}
QUANTITIES = ("forces", "energy", "stress")
#: logged scalars not copied to info: the model energy goes to the results, and
#: forces ε is recomputed here (its meaning changed between log versions)
_NOT_INFO = {"energy", "forces_eps", "forces_eps_total"}
#: the info key of each quantity's ranked ε
RANKED_BY = {"forces": "forces_eps_rms", "energy": "energy_eps_per_atom",
             "stress": "stress_eps"}
FORMATS = ("extxyz", "chemiscope")
DEFAULT_WORST = 10
_CHUNK_ROWS = 256  # rows read from the log at a time
Key = Tuple[int, int]  # (step, occurrence of that step): shards may repeat a step


class WorstStep(NamedTuple):
    """One monitored step ranked by ``quantity``'s ε (``eps`` in ``unit``)."""

    rank: int
    step: int
    time_ps: float
    quantity: str
    eps: float
    unit: str


class WorstAtom(NamedTuple):
    """One atom of ``step`` ranked by its forces ε [eV/Å]."""

    rank: int
    step: int
    time_ps: float
    index: int
    symbol: str
    eps_eV_per_A: float


# ----------------------------------------------------------------- ranking


def _check_logged(reader: LogReader, name: str, quantity: str) -> None:
    """A clear error when ``name`` is absent or has no rows."""
    if name not in reader.observable_names:
        raise ValueError(f"{_names(reader)} has no {quantity} ε ({name!r}); logged: "
                         f"{', '.join(reader.observable_names)}")
    if reader.count(name) == 0:
        raise ValueError(f"{_names(reader)} has no monitored steps; run longer than the "
                         "monitor's `every` steps, or check that the run was monitored")


def step_eps(reader: LogReader, quantity: str = "forces"):
    """``(steps (n,), times (n,) [ps], ε (n,), unit)`` of ``quantity`` at each monitored
    step, per atom as the report prints it: forces the RMS over atoms of the per-atom ε
    (read in chunks, :func:`~.report.series.per_atom_rms`), energy ε / N [eV/atom]."""
    if quantity not in QUANTITIES:
        raise ValueError(f"unknown quantity {quantity!r}; choose one of {', '.join(QUANTITIES)}")
    name = EPS_PER_ATOM if quantity == "forces" else f"{quantity}_eps"
    _check_logged(reader, name, quantity)
    if quantity == "forces":
        steps, times, values = per_atom_rms(reader)
    else:
        steps, times, values = read_series(reader, name)
        values = values * QUANTITY[quantity].per_atom_factor(len(reader.species))
    return steps, times, values, QUANTITY[quantity].eps_unit


def worst_steps(reader: LogReader, n: Optional[int] = DEFAULT_WORST,
                quantity: str = "forces") -> List[WorstStep]:
    """The ``n`` (None: all) monitored steps with the largest ε of ``quantity``."""
    steps, times, eps, unit = step_eps(reader, quantity)
    order = worst_step_rows(eps, n)
    return [WorstStep(rank + 1, int(steps[i]), float(times[i]), quantity, float(eps[i]), unit)
            for rank, i in enumerate(order)]


def worst_atoms(reader: LogReader, n: int = 5, step: Optional[int] = None) -> List[WorstAtom]:
    """The ``n`` atoms with the largest forces ε at ``step`` (default: the step of
    largest forces ε, RMS over atoms); a step logged twice gives its first occurrence."""
    if step is None:
        step = worst_steps(reader, 1)[0].step
    else:
        _check_logged(reader, EPS_PER_ATOM, "forces")
    row = per_atom_row(reader, step)
    if row is None:
        raise ValueError(_unknown_steps_message(reader, [step], reader.steps(EPS_PER_ATOM)))
    time, eps = row
    names = symbols(reader.species)
    return [WorstAtom(rank + 1, int(step), time, int(i), names[i], float(eps[i]))
            for rank, i in enumerate(worst_atoms_of(eps, n))]


# ----------------------------------------------------------------- selection


def _keys(steps: np.ndarray) -> List[Key]:
    seen: Counter = Counter()
    keys = []
    for step in steps.tolist():
        keys.append((step, seen[step]))
        seen[step] += 1
    return keys


def select_steps(reader: LogReader, *, worst: Optional[int] = None,
                 steps: Optional[Sequence[int]] = None, all_steps: bool = False,
                 quantity: str = "forces") -> Tuple[List[Key], Dict[Key, int]]:
    """Keys of the exported rows, in the order written, and each one's rank by
    ``quantity``'s ε: worst first (``worst``), as listed (``steps``; every logged
    occurrence of each), or in step order (``all_steps``)."""
    if sum((worst is not None, steps is not None, bool(all_steps))) > 1:
        raise ValueError("choose one of --worst, --steps and --all")
    logged, _, eps, _ = step_eps(reader, quantity)
    keys = _keys(logged)
    order = worst_step_rows(eps)
    rank = {keys[i]: r + 1 for r, i in enumerate(order)}
    if all_steps:
        return keys, rank
    if steps is not None:
        missing = sorted(set(steps) - set(logged.tolist()))
        if missing:
            raise ValueError(_unknown_steps_message(reader, missing, logged))
        return [k for s in steps for k in keys if k[0] == s], rank
    if worst is not None and worst < 1:
        raise ValueError(f"--worst must be at least 1, got {worst}")
    return [keys[i] for i in order[:worst or DEFAULT_WORST]], rank


def _unknown_steps_message(reader: LogReader, missing, logged: np.ndarray) -> str:
    shown = ", ".join(str(s) for s in np.unique(logged)[:12])
    more = ", ..." if len(np.unique(logged)) > 12 else ""
    return (f"step {', '.join(str(s) for s in missing)} is not a monitored step of "
            f"{_names(reader)}; monitored steps: {shown}{more} ({len(logged)} in all)")


# ----------------------------------------------------------------- frames


def _rows_of(steps: np.ndarray, wanted: set) -> Dict[Key, int]:
    """Row of each key ``(step, occurrence)`` of ``wanted`` in the step-sorted
    ``steps`` (keys not logged there are left out)."""
    found = {}
    for key in wanted:
        first, end = np.searchsorted(steps, key[0], "left"), np.searchsorted(steps, key[0], "right")
        if first + key[1] < end:
            found[key] = int(first + key[1])
    return found


def _collect(read, steps: np.ndarray, wanted: set) -> Dict[Key, tuple]:
    """Rows of a step-sorted series (its ``steps``) whose key is in ``wanted``;
    ``read(start, stop)`` returns a tuple of arrays, steps first.  Only the chunks of
    :data:`_CHUNK_ROWS` rows holding a wanted row are read (bounded memory)."""
    rows = _rows_of(steps, wanted)
    by_chunk: Dict[int, List[Tuple[Key, int]]] = {}
    for key, row in rows.items():
        by_chunk.setdefault(row // _CHUNK_ROWS, []).append((key, row))
    found: Dict[Key, tuple] = {}
    for chunk, members in sorted(by_chunk.items()):
        block = read(chunk * _CHUNK_ROWS, (chunk + 1) * _CHUNK_ROWS)
        for key, row in members:
            i = row - chunk * _CHUNK_ROWS
            found[key] = tuple(None if part is None else part[i] for part in block)
    return found


def _observable_values(reader: LogReader, wanted: set) -> Dict[str, Dict[Key, object]]:
    """name -> {key: value} for the per-atom arrays, the model's outputs and every
    scalar observable (sparse ones only where logged)."""
    names = [n for n in reader.observable_names
             if n in PER_ATOM_ARRAYS or n in QUANTITIES or reader.spec(n).shape == ()]
    values = {}
    for name in names:
        rows = _collect(lambda a, b, name=name: reader.observable(name, a, b),
                        reader.steps(name), wanted)
        values[name] = {key: row[2] for key, row in rows.items()}
    return values


def exported_frames(reader: LogReader, keys: Sequence[Key],
                    rank: Optional[Dict[Key, int]] = None, quantity: str = "forces"):
    """ASE ``Atoms`` of the rows ``keys``: positions and cell from the log, per-atom
    arrays (:data:`PER_ATOM_ARRAYS`), the model's energy/forces/stress as results and
    the step's numbers in ``info`` (``symmon_<observable>``, units in ``*_unit``)."""
    frames = _collect(lambda a, b: reader.frames(a, b), reader.frame_steps(), set(keys))
    if frames and next(iter(frames.values()))[2] is None:
        raise ValueError(f"{_names(reader)} stores no positions (written with "
                         "write_positions=False); there are no structures to export")
    lost = [k[0] for k in keys if k not in frames]
    if lost:
        raise LogFormatError(f"{_names(reader)}: no frame (positions, cell) logged at "
                             f"step {', '.join(map(str, lost[:5]))}; the log is incomplete")
    values = _observable_values(reader, set(keys))
    values.update(_relative_values(reader, set(keys)))
    return [_atoms(reader, frames[k], {n: v[k] for n, v in values.items() if k in v},
                   None if rank is None else rank[k], quantity) for k in keys]


def _relative_values(reader: LogReader, wanted: set) -> Dict[str, Dict[Key, float]]:
    """``<q>_rel_eps`` of the rows ``wanted`` from the one function
    (:func:`~symmon.monitoring.thresholds.relative_eps`, the log's own thresholds), where
    the log holds the orbit RMS ``<q>_rms``."""
    out = {}
    n_atoms, overrides = len(reader.species), log_thresholds(reader.metadata)
    for q in QUANTITIES:
        name = NAMES[q].eps if NAMES[q].eps in reader.observable_names \
            else f"{q}_eps"
        if any(n not in reader.observable_names for n in (name, NAMES[q].rms, NAMES[q].rel_eps)):
            continue
        step, _, eps = read_series(reader, name)
        if name == f"{q}_eps" and q == "energy":
            eps = eps * QUANTITY[q].per_atom_factor(n_atoms)
        rms = lookup(step, *read_series(reader, NAMES[q].rms)[::2])
        relative = relative_eps(q, eps, rms, overrides)
        out[NAMES[q].rel_eps] = {key: np.float64(relative[i]) for i, key in enumerate(_keys(step))
                               if key in wanted}
    return out


def _atoms(reader: LogReader, frame, values: Dict[str, object], rank, quantity):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    step, time, positions, cell = frame
    atoms = Atoms(numbers=reader.species, positions=positions, cell=cell, pbc=reader.pbc)
    for name, array in PER_ATOM_ARRAYS.items():
        if name in values:
            atoms.new_array(array, np.asarray(values[name], dtype=np.float64))
    atoms.info.update(_step_info(reader, int(step), float(time), values))
    if rank is not None:
        atoms.info["symmon_rank"] = int(rank)
        atoms.info["symmon_ranked_by"] = RANKED_BY[quantity]
    results = {name: values[name] for name in QUANTITIES if name in values}
    if "stress" in results:
        results["stress"] = matrix_to_voigt(results["stress"])  # ASE: symmetric, Voigt
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def _step_info(reader: LogReader, step: int, time: float, values) -> Dict[str, object]:
    info: Dict[str, object] = {"symmon_step": step, "symmon_time_ps": time}
    if EPS_PER_ATOM in values:
        eps = np.asarray(values[EPS_PER_ATOM], dtype=np.float64)
        unit = reader.unit(EPS_PER_ATOM)
        info.update(symmon_forces_eps_rms=float(rms_over_atoms(eps)),
                    symmon_forces_eps_rms_unit=unit,
                    symmon_forces_eps_total=float(np.sqrt(np.sum(eps ** 2))),
                    symmon_forces_eps_total_unit=unit)
    if "energy_eps" in values and "energy_eps_per_atom" not in values:  # older logs
        values = dict(values, energy_eps_per_atom=np.float64(
            values["energy_eps"] * QUANTITY["energy"].per_atom_factor(len(reader.species))))
        info["symmon_energy_eps_per_atom_unit"] = QUANTITY["energy"].eps_unit
    for name, value in values.items():
        if name == "energy_eps_per_atom" and "energy_eps_per_atom" not in \
                reader.observable_names:
            info["symmon_energy_eps_per_atom"] = float(value)
            continue
        if name in _NOT_INFO or reader.spec(name).shape != ():
            continue
        info[f"symmon_{name}"] = value.item()
        if reader.unit(name) != "1":
            info[f"symmon_{name}_unit"] = reader.unit(name)
    return info


# ----------------------------------------------------------------- command


def add_export_arguments(parser) -> None:
    parser.add_argument("logs", nargs="+", help="log file(s); several shards are merged; or "
                        "a batched run's directory (TorchSimMonitor): its worst systems")
    parser.add_argument("-o", "--output", required=True,
                        help="output: .extxyz/.xyz (structures) or .json/.json.gz (chemiscope)")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="default: chemiscope for .json/.json.gz, extxyz otherwise")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--worst", type=int, default=None, metavar="N",
                       help=f"the N steps of largest ε, worst first (extxyz default: "
                       f"{DEFAULT_WORST})")
    which.add_argument("--steps", type=_step_list, default=None, metavar="S1,S2,...",
                       help="these steps, in this order")
    which.add_argument("--all", action="store_true", dest="all_steps",
                       help="every monitored step, in step order (chemiscope default)")
    parser.add_argument("--quantity", choices=QUANTITIES, default="forces",
                        help="rank steps by this quantity's ε (forces: RMS over atoms)")


def _step_list(text: str) -> List[int]:
    import argparse

    try:
        steps = [int(word) for word in text.split(",") if word.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--steps takes comma-separated step numbers, e.g. 10,20,30; got {text!r}")
    if not steps:
        raise argparse.ArgumentTypeError("--steps needs at least one step number")
    return steps


def export_command(args) -> int:
    """``symmon export``."""
    return run_export(args.logs, args.output, fmt=args.format, worst=args.worst,
                      steps=args.steps, all_steps=args.all_steps, quantity=args.quantity)


def run_export(paths, output: str, *, fmt: Optional[str] = None, worst: Optional[int] = None,
               steps: Optional[Sequence[int]] = None, all_steps: bool = False,
               quantity: str = "forces") -> int:
    """Write the selected monitored steps of log(s) ``paths`` to ``output``; print one
    line saying what was written; return 0.  Bad input raises ``ValueError`` or
    ``FileNotFoundError`` (exit code 2 from the CLI)."""
    output = os.fspath(output)
    fmt = fmt or ("chemiscope" if output.endswith((".json", ".json.gz")) else "extxyz")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "chemiscope" and worst is None and steps is None:
        all_steps = True
    paths = [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if len(paths) == 1 and is_run_directory(paths[0]):  # a batched run (TorchSimMonitor)
        if steps is not None or all_steps:
            raise ValueError(f"{paths[0]} is a batched run's directory: export its worst "
                             "systems with --worst N, or one system's steps from its log "
                             "(symmon export DIR/system-XXXX.h5 --steps ...)")
        from .export_systems import run_export_systems

        return run_export_systems(paths[0], output, fmt=fmt, worst=worst, quantity=quantity)
    with _open(paths) as reader:
        try:
            keys, rank = select_steps(reader, worst=worst, steps=steps, all_steps=all_steps,
                                      quantity=quantity)
            frames = exported_frames(reader, keys, rank, quantity)
        except (OSError, KeyError) as error:  # h5py on a damaged file
            raise LogFormatError(f"{_names(reader)}: damaged or incomplete symmon log: "
                                 f"{error}") from error
    if fmt == "chemiscope":
        write_chemiscope(output, frames, os.path.basename(paths[0]))
    else:
        write_extxyz(output, frames)
    print(_summary(output, fmt, frames, quantity, ranked=steps is None and not all_steps))
    return 0


def _open(paths: List[str]) -> LogReader:
    try:
        return read_log(paths)
    except OSError as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise LogFormatError(f"{', '.join(paths)}: cannot read log: {error}") from error


def _summary(output: str, fmt: str, frames, quantity: str, ranked: bool) -> str:
    arrays = sorted({name for a in frames for name in a.arrays if name.startswith("symmon_")})
    key = f"symmon_{RANKED_BY[quantity]}"
    eps = [a.info[key] for a in frames if key in a.info]
    unit = pretty_unit(frames[0].info.get(f"{key}_unit", ""))
    worst = f"; largest {quantity} ε {max(eps):.3g} {unit} at step " \
        f"{frames[int(np.nanargmax(eps))].info['symmon_step']}" if eps and not \
        np.all(np.isnan(eps)) else ""
    what = f"{len(frames)} {'worst ' if ranked else ''}monitored step" \
        f"{'s' if len(frames) != 1 else ''}"
    return (f"symmon export: wrote {what} ({fmt}, per-atom {', '.join(arrays) or 'none'})"
            f"{worst} to {output}")


def _names(reader: LogReader) -> str:
    return ", ".join(reader.paths)
