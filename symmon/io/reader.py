"""Reading symmon logs (schema 1 and 2), one file or the merged shards of one run.

Only trusted rows are read.  Schema 2: rows ``< trusted_rows(f)`` (present in
every dataset, step committed), and of those, for a series, the rows whose
``present`` column is 1.  Schema 1 (one step axis per element): the common
length of the element's step/time/value minus trailing never-written steps.
A checksum mismatch (Fletcher-32) or read error is a :class:`LogFormatError`.
"""

from __future__ import annotations

import os
import warnings
from typing import Iterable, NamedTuple

import h5py
import numpy as np

from .h5md import FRAME_COLUMN, HDF5_ERRORS, MAX_CHUNK_ROWS, PRESENT, UNWRITTEN_STEP, \
    LogFormatError, ObservableSpec, damaged, reading, row_datasets, trusted_rows
from .header import LogHeader, open_for_reading
from .mismatch import ShardMismatch, shard_differences
from .semantics import LogSemantics


class LogNote(UserWarning):
    """Something a reader of the log should know that does not stop it (an older log
    whose attributes are not checksummed)."""


class Frames(NamedTuple):
    """Trajectory frames: step (n,), time (n,) [ps], positions (n, N, 3) or None
    [angstrom], cell (n, 3, 3) [angstrom, rows are the cell vectors]."""

    step: np.ndarray
    time: np.ndarray
    positions: np.ndarray | None
    cell: np.ndarray


class _Series(NamedTuple):
    """The trusted rows of one series in one shard."""

    steps: np.ndarray     # (n,) step numbers
    rows: np.ndarray      # (n,) row indices into `time` and each of `values`
    time: h5py.Dataset
    values: tuple         # value datasets (frames: cell, then positions)


class _Shard:
    """One opened log file and the trusted rows of its series (cached until refresh)."""

    def __init__(self, header: LogHeader):
        self.header, self.path = header, header.path
        self._table: tuple[np.ndarray, np.ndarray] | None = None
        self._all_rows: np.ndarray | None = None

    def series(self, name: str) -> _Series:
        with reading(self.path, f"observable {name!r}"):
            return self._series(name)

    def _series(self, name: str) -> _Series:
        h = self.header
        if h.schema_version >= 2:
            steps, rows = self._v2_rows(name)
            return _Series(steps, rows, h.edges["time"], (h.groups[name]["value"],))
        g = h.groups[name]
        n = v1_trusted_count(g["step"], g["time"], g["value"])
        return _Series(read(g["step"], slice(0, n)), np.arange(n), g["time"], (g["value"],))

    def frames(self) -> _Series:
        with reading(self.path, "the frames (cell, positions)"):
            return self._frames()

    def _frames(self) -> _Series:
        h = self.header
        values = (h.edges["value"],) + ((h.position["value"],) if h.has_positions else ())
        if h.schema_version >= 2:
            steps, rows = self._v2_rows(FRAME_COLUMN)
            return _Series(steps, rows, h.edges["time"], values)
        elements = [h.edges] + ([h.position] if h.has_positions else [])
        n = min(v1_trusted_count(g["step"], g["time"], g["value"]) for g in elements)
        return _Series(read(h.edges["step"], slice(0, n)), np.arange(n), h.edges["time"], values)

    def refresh(self) -> bool:
        """Re-read the datasets' extents (SWMR); True when any of them grew."""
        with reading(self.path, "the extents of its datasets"):
            return self._refresh()

    def _refresh(self) -> bool:
        # (a dataset handle kept open across a refresh would keep stale chunks: none is kept)
        if not self.header.file.swmr_mode:
            return False
        datasets = row_datasets(self.header.file)
        before = [ds.shape for ds in datasets]
        for ds in datasets:
            ds.refresh()
        grew = [ds.shape for ds in datasets] != before
        if self._table is not None:  # a dataset opened after a flush shows its new extent
            grew = grew or trusted_rows(self.header.file) != len(self._table[0])  # already
        if grew:
            self._table = None
        return grew

    def _v2_rows(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Steps and rows of series ``name``; a series in every row shares the table's
        arrays (no copy per series: 10^6 steps x 70 series)."""
        steps, present = self._v2_table()
        column = present[:, self.header.columns[name]]
        if column.all():
            if self._all_rows is None or len(self._all_rows) != len(steps):
                self._all_rows = np.arange(len(steps))
                self._all_rows.setflags(write=False)
            return steps, self._all_rows
        rows = np.flatnonzero(column)
        return steps[rows], rows

    def _v2_table(self) -> tuple[np.ndarray, np.ndarray]:
        if self._table is None:
            n = trusted_rows(self.header.file)
            self._table = (read(self.header.edges["step"], slice(0, n)),
                           read(self.header.file[PRESENT], slice(0, n)))
            self._table[0].setflags(write=False)
        return self._table


class LogReader:
    """Read one symmon log or merge several shards of the same run.

    Shards must share schema version, species, pbc and observable declarations;
    metadata is taken from the first.  Rows are merged and stably sorted by
    step.  Values are read lazily (only the selected rows are sliced from disk;
    step arrays are read whole).  Files still being written (or left by a
    killed writer) are opened in SWMR-read mode; call :meth:`refresh` to see
    steps flushed after opening.
    """

    def __init__(self, paths: str | os.PathLike | Iterable[str | os.PathLike]):
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [os.fspath(p) for p in paths]
        if not self.paths:
            raise ValueError("LogReader needs at least one path")
        self._shards: list[_Shard] = []
        try:
            for p in self.paths:
                f = open_for_reading(p)
                try:
                    self._shards.append(_Shard(LogHeader(f, p)))
                except BaseException:
                    f.close()
                    raise
            self._check_shards_agree()
        except BaseException:
            self.close()
            raise
        first = self._shards[0].header
        self.metadata: dict = first.metadata
        self.schema_version: int = first.schema_version
        self.species: np.ndarray = first.species
        self.pbc: tuple[bool, bool, bool] = first.pbc
        self._specs = first.specs
        self.observable_names: list[str] = sorted(first.specs)
        #: what its numbers mean (:mod:`symmon.io.semantics`; older logs mapped there)
        self.semantics: LogSemantics = first.semantics
        #: notes on the logs (older logs without attribute checksums), also warned as
        #: :class:`LogNote`
        self.notes: list[str] = [n for s in self._shards for n in s.header.notes]
        for note in self.notes:
            warnings.warn(note, LogNote, stacklevel=2)
        self._plans: dict[str, _Merged] = {}   # name -> merged step plan (until growth)
        self._memo: dict = {}

    def observable(self, name: str, start: int | None = None, stop: int | None = None,
                   stride: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(step (n,), time (n,) [ps], value (n, *shape) [unit(name)])`` of the
        rows ``[start:stop:stride]`` of the step-sorted series."""
        spec = self._spec(name)
        merged = self._merged(name, lambda s: s.series(name))
        step, time, plan = merged.select(slice(start, stop, stride))
        value = _gather([s.values[0] for s in merged.series], plan, len(step), spec.shape,
                        spec.dtype)
        return step, time, value

    def frames(self, start: int | None = None, stop: int | None = None,
               stride: int | None = None) -> Frames:
        """Frames ``[start:stop:stride]`` (step-sorted); positions None if not stored."""
        merged = self._merged(FRAME_COLUMN, _Shard.frames)
        step, time, plan = merged.select(slice(start, stop, stride))
        series = merged.series
        cell = _gather([s.values[0] for s in series], plan, len(step), (3, 3), np.float64)
        pos = None
        if self._shards[0].header.has_positions:
            pos = _gather([s.values[1] for s in series], plan, len(step),
                          (len(self.species), 3), np.float64)
        return Frames(step, time, pos, cell)

    def steps(self, name: str) -> np.ndarray:
        """Step numbers of every row of ``name`` (step-sorted, read-only; no values read)."""
        self._spec(name)
        return self._merged(name, lambda s: s.series(name)).steps

    def frame_steps(self) -> np.ndarray:
        """Step numbers of every frame (step-sorted, read-only)."""
        return self._merged(FRAME_COLUMN, _Shard.frames).steps

    def count(self, name: str) -> int:
        """Number of logged rows of observable ``name`` (all shards)."""
        return len(self.steps(name))

    def memo(self, key, compute):
        """``compute()``, kept with this reader until :meth:`refresh` finds new rows:
        derived arrays (e.g. a report's series) computed once per reader and state of
        the file.  Callers must not modify what it returns."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def unit(self, name: str) -> str:
        return self._spec(name).unit

    def description(self, name: str) -> str:
        return self._spec(name).description

    def labels(self, name: str) -> np.ndarray | None:
        return self._spec(name).labels

    def spec(self, name: str) -> ObservableSpec:
        return self._spec(name)

    def refresh(self) -> None:
        """Pick up steps flushed by a live writer since opening (SWMR files); the
        merged step plans and :meth:`memo` values are dropped when any shard grew."""
        grew = False
        for s in self._shards:
            grew |= s.refresh()
        if grew:
            self._plans.clear()
            self._memo.clear()

    def close(self) -> None:
        for s in self._shards:
            s.header.file.close()

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _merged(self, key: str, series_of) -> _Merged:
        """The step-sorted merge of ``series_of(shard)`` over the shards, built once."""
        if key not in self._plans:
            self._plans[key] = _Merged([series_of(s) for s in self._shards])
        return self._plans[key]

    def _spec(self, name: str) -> ObservableSpec:
        if name not in self._specs:
            raise KeyError(f"no observable {name!r} in log; available: {sorted(self._specs)}")
        return self._specs[name]

    def _check_shards_agree(self) -> None:
        first = self._shards[0].header
        for s in (shard.header for shard in self._shards[1:]):
            why = shard_differences(first, s)
            if why:
                raise ShardMismatch([first.path, s.path], why)


def read_log(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> LogReader:
    """Open one log or several shards of one run; see :class:`LogReader`."""
    return LogReader(paths)


def read(ds: h5py.Dataset, selection) -> np.ndarray:
    """``ds[selection]``; a checksum mismatch or read error becomes a LogFormatError."""
    try:
        return ds[selection]
    except HDF5_ERRORS as e:
        try:
            path, name = ds.file.filename, ds.name
        except HDF5_ERRORS:
            path, name = "log", "a dataset"
        raise damaged(path, f"{name} (corrupted: checksum mismatch or I/O error)", e) from e


def v1_trusted_count(step: h5py.Dataset, time: h5py.Dataset, value: h5py.Dataset) -> int:
    """Schema 1: rows fully written: common length, minus trailing never-written steps."""
    n = min(step.shape[0], time.shape[0], value.shape[0])
    while n > 0:
        lo = max(0, n - MAX_CHUNK_ROWS)
        written = np.flatnonzero(read(step, slice(lo, n)) != UNWRITTEN_STEP)
        if written.size:
            return lo + int(written[-1]) + 1
        n = lo
    return 0


class _Merged:
    """The shards' rows of one series merged by step (stable sort): for each merged
    row its step, its shard and its row in that shard's datasets."""

    def __init__(self, series: list[_Series]):
        self.series = series
        if len(series) == 1 and np.all(np.diff(series[0].steps) >= 0):  # one sorted shard
            self.steps, self.local, self.owner = series[0].steps, series[0].rows, None
        else:
            steps = np.concatenate([s.steps for s in series])
            order = np.argsort(steps, kind="stable")
            self.steps = steps[order]
            self.owner = np.repeat(np.arange(len(series)), [len(s.steps) for s in series])[order]
            self.local = np.concatenate([s.rows for s in series])[order]
        for array in (self.steps, self.owner, self.local):
            if array is not None:
                array.setflags(write=False)

    def select(self, sl: slice):
        """Step, time and a per-shard plan ``[(rows in output, rows in the shard's
        datasets)]`` of the merged rows ``sl``."""
        local = self.local[sl]
        if self.owner is None:
            plan = [(np.arange(len(local)), local)]
        else:
            plan = [(out, local[out]) for out in
                    (np.flatnonzero(self.owner[sl] == k) for k in range(len(self.series)))]
        time = _gather([s.time for s in self.series], plan, len(local), (), np.float64)
        return self.steps[sl].copy(), time, plan


def _gather(datasets: list[h5py.Dataset], plan, n: int, shape: tuple, dtype) -> np.ndarray:
    out = np.empty((n, *shape), dtype=dtype)
    for ds, (out_rows, idx) in zip(datasets, plan):
        if len(idx):
            out[out_rows] = _read_rows(ds, idx)
    return out


def _read_rows(ds: h5py.Dataset, idx: np.ndarray) -> np.ndarray:
    """ds[idx] with a single hyperslab read (strided slice when idx is regular)."""
    d = np.diff(idx)
    if len(idx) == 1 or (d[0] > 0 and np.all(d == d[0])):
        step = int(d[0]) if len(idx) > 1 else 1
        return read(ds, slice(int(idx[0]), int(idx[-1]) + 1, step))
    lo, hi = int(idx.min()), int(idx.max())
    return read(ds, slice(lo, hi + 1))[idx - lo]
