"""Step records and the log they go to (created at the first record, closed once).

A :class:`StepRecord` is everything one step produced; :class:`Recorder` writes it to
the HDF5 log through :class:`symmon.io.log.LogWriter`'s public API: on every monitored
step the frame (positions, cell, the base model's energy, forces and stress), the
zero-cost signals and the diagnostics, so that every row H5MD readers iterate is whole;
with ``trajectory=True`` also every unmonitored step (frame and signals; diagnostics
NaN there), at the cost of I/O on every step. The writer flushes and closes the log on SIGTERM,
SIGHUP and SIGINT; in append mode it refuses a log of another model, seed or settings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import numpy as np

from ..io.log import LogWriter, as_log_path, check_log_path
from .schema import EVERY_STEP, check_declared

#: records of any kind after which the log is flushed whatever the schedule
FLUSH_STEPS = 1000
#: ... and seconds after which a record is flushed whatever the counts (sparse monitored
#: steps: at most this long of a run is lost to a SIGKILL)
FLUSH_SECONDS = 10.0


@dataclass
class StepRecord:
    """One step: its number, time, structure, and the values to log."""

    step: int
    time_ps: float
    positions: np.ndarray
    cell: np.ndarray
    monitored: bool
    values: Dict[str, object] = field(default_factory=dict)
    at_driver: bool = False  # made at the attached driver's positions


class Recorder:
    """Writes step records to ``path`` (``None``: keeps nothing); the log is created at
    the first :meth:`write`, from the ``specs`` and ``metadata`` callables it is given.

    The log is flushed after every ``flush_every`` monitored records, after
    :data:`FLUSH_STEPS` records of any kind, and at the first record written
    :data:`FLUSH_SECONDS` after the last flush: a flush writes every observable's
    buffers, the largest host cost of a log if done often. A killed run (SIGKILL)
    loses at most the unflushed records: ``flush_every`` monitored steps or ~10 s.

    Every value's name must be a row of :data:`.schema.OBSERVABLES` or one of
    ``extra_names`` (a front-end's or an adapter's own observables; those in
    ``every_step`` are written with every record, as :data:`.schema.EVERY_STEP` are): an
    undeclared one is refused
    (:class:`.schema.UndeclaredObservable`), log or not, instead of being left out."""

    def __init__(self, path, mode: str, flush_every: int, trajectory: bool = False,
                 extra_names=(), every_step=()):
        self.path = None if path is None else as_log_path(path)
        self.trajectory = bool(trajectory)
        self.mode, self.flush_every = mode, int(flush_every)
        self.extra_names = frozenset(extra_names)
        #: observables written with every record, monitored or not (with EVERY_STEP)
        self.every_step = EVERY_STEP | frozenset(every_step)
        if self.path is not None:
            check_log_path(self.path, mode)  # refuse bad paths before any step runs
        self._writer: Optional[LogWriter] = None
        self._declared = set()  # names already checked (the same every step)
        self._unflushed_monitored = 0
        self._flushed_at = time.monotonic()

    def write(self, record: StepRecord, atoms, specs: Callable[[], dict],
              metadata: Callable[[], dict]) -> None:
        if not self._declared.issuperset(record.values):
            check_declared(record.values, self.extra_names)
            self._declared.update(record.values)
        if self.path is None or not (record.monitored or self.trajectory):
            return
        if self._writer is None:
            self._writer = LogWriter(
                self.path, specs(), species=atoms.numbers,
                pbc=tuple(bool(p) for p in atoms.pbc),
                metadata=metadata(), mode=self.mode,
                flush_every=max(self.flush_every, FLUSH_STEPS), handle_signals=True)
        else:
            self._check_same_system(atoms, len(record.positions))
        self._writer.append_frame(record.step, record.time_ps, record.positions, record.cell)
        logged = {k: v for k, v in record.values.items() if k in self._writer.specs
                  and (record.monitored or k in self.every_step)}
        self._writer.append_many(record.step, record.time_ps, logged)
        self._unflushed_monitored += int(record.monitored)
        # (FLUSH_STEPS records of any kind: the writer's own flush_every)
        if (self._unflushed_monitored >= self.flush_every
                or time.monotonic() - self._flushed_at >= FLUSH_SECONDS):
            self.flush()

    def _check_same_system(self, atoms, n_positions: int) -> None:
        """A log holds one system: refuse a step whose atoms differ from the log's."""
        species = self._writer.species
        if n_positions == len(atoms) == len(species) and np.array_equal(atoms.numbers,
                                                                         species):
            return
        from ase.formula import Formula

        def formula(numbers):
            from ase.data import chemical_symbols
            return Formula.from_list([chemical_symbols[z] for z in numbers]).format("hill") \
                if len(numbers) else "none"
        raise ValueError(
            f"the system changed since the log {self.path} was created: it holds "
            f"{len(species)} atoms ({formula(species)}), this step has {n_positions}"
            + (f" ({formula(atoms.numbers)})" if len(atoms) == n_positions else "")
            + "; a log holds one system: monitor the new one with a new SymmetryMonitor "
            "and another log path")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()
        self._unflushed_monitored = 0
        self._flushed_at = time.monotonic()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
