"""The one writer of a symmon log (HDF5 SWMR, H5MD 1.1 layout of :mod:`symmon.io.h5md`).

Lifecycle and what survives (see docs/reliability.md):

* creation is atomic: the layout is built in a temporary file beside the
  target, SWMR mode is started, then the file is renamed into place; a kill at
  any moment leaves no file (or the old one, for ``overwrite``) or a valid empty log;
* one writer per path: an advisory lock (:mod:`symmon.io.lock`) is held from
  construction to close; a second writer is refused at construction, in any mode;
* each logged step is one row of every element; rows are buffered and written
  every ``flush_every`` steps in two phases: all values, ``present`` and
  ``time`` are written and flushed, then ``step`` (the commit record) is
  written and flushed.  A row is trusted only once its step is on disk;
* a write error (ENOSPC, EFBIG, EIO) stops the writer: the file is detached
  without touching it again (its descriptor is pointed at /dev/null before
  HDF5 closes it; closing a file after a failed write crashes HDF5 at exit),
  and :class:`LogWriteError` says how many steps are safe.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import sys
import weakref
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from . import signals
from .h5md import (
    ATTRIBUTE_RECORD, EDGES, FILE_OPTIONS, FRAME_COLUMN, PARAMS, POSITION, PRESENT,
    LogFormatError, ObservableSpec, build_layout, fill_value, first_line, present_columns,
    detach as _detach, os_reason as _reason, trusted_rows, truncate_rows, value_path,
    write_attribute_record)
from .header import UNCLEAN_HINT, LogHeader
from .mismatch import RUN_IDENTITY, listed, metadata_differences, spec_differences
from .lock import PathLock, temp_path
from .validate import (
    as_log_path, check_log_path, check_pbc, check_species, check_specs, check_step_time, check_value,
    exists_message)

#: metadata keys that must agree for ``mode="append"`` (when metadata is given)
APPEND_CHECKED_METADATA = RUN_IDENTITY


class LogWriteError(OSError):
    """Writing the log failed; the message says how many steps are safe on disk."""


class _Row:
    """One logged step: its values by series name (frames under FRAME_COLUMN)."""

    __slots__ = ("caller_step", "step", "time", "values")

    def __init__(self, caller_step: int, step: int, time: float):
        self.caller_step, self.step, self.time = caller_step, step, time
        self.values: dict[str, Any] = {}


class LogWriter:
    """Append-only writer of a symmon log.

    Parameters
    ----------
    path: file to write.
    observables: ``{name: ObservableSpec}`` of everything :meth:`append` may log.
        ``forces`` of shape (N, 3) is stored as H5MD particle data
        (``particles/all/force``), every other observable in ``observables/``.
    species: atomic numbers, shape (N,).
    pbc: periodicity of the three cell directions.
    metadata: JSON-serialisable dict (model file/hash, grid, seed, units, ...).
    mode: ``"create"`` (refuse an existing file), ``"overwrite"`` (replace it)
        or ``"append"`` (continue a compatible log: same species, pbc and
        observables, and, when ``metadata`` is given, the same
        ``model_sha256`` and ``seed``; step numbers continue after the last stored step).
    flush_every: write to disk whenever this many new steps are buffered
        (checked when a new step begins), and on :meth:`flush` / :meth:`close`.
    write_positions: store positions in :meth:`append_frame` (the cell is always stored).
    author: H5MD author name (default: login name).
    handle_signals: close the log (no buffered step lost) on SIGTERM, SIGHUP
        and SIGINT, then let the signal act as before (:mod:`symmon.io.signals`).

    All inputs are validated before anything is created or written; bad input
    raises ``ValueError`` (or an ``OSError`` subclass for bad or locked paths).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        observables: Mapping[str, ObservableSpec],
        species: Sequence[int] | np.ndarray,
        pbc: Sequence[bool] = (True, True, True),
        metadata: Mapping[str, Any] | None = None,
        *,
        mode: str = "create",
        flush_every: int = 10,
        write_positions: bool = True,
        author: str | None = None,
        handle_signals: bool = False,
    ):
        self.path = as_log_path(path)
        self.specs = check_specs(observables)
        self.species = check_species(species)
        self.pbc = check_pbc(pbc)
        self.write_positions = bool(write_positions)
        if int(flush_every) < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.flush_every = int(flush_every)
        try:
            metadata_json = json.dumps(dict(metadata or {}), sort_keys=True)
        except TypeError as e:
            raise ValueError(f"metadata must be JSON-serialisable: {e}") from e
        check_log_path(self.path, mode)

        self.busy = False  # inside flush (signals wait)
        self._rows: list[_Row] = []
        self._row: _Row | None = None
        self._broken: LogWriteError | None = None
        self._closed_by: str | None = None
        self._continue_after: tuple[int, float, float] | None = None  # append: last step, time, dt
        self._offsets: tuple[int, float] | None = None
        self.rows_on_disk, self.last_step_on_disk = 0, None
        self._lock = PathLock(self.path).acquire()
        try:
            self._lock.remove_stale_temps()
            if mode == "append":
                self._file = self._open_append(json.loads(metadata_json) if metadata else None)
            else:
                self._file = self._create(mode, metadata_json, author or _login_name())
            self._bind_datasets()
            found = os.fstat(self._file.id.get_vfd_handle())
            self._identity = (found.st_dev, found.st_ino)
        except BaseException:
            self._lock.release()
            raise
        self._closed = False
        if handle_signals:
            signals.register(self)
        atexit.register(_close_at_exit, weakref.ref(self))

    # -- public API

    def append_frame(self, step: int, time: float, positions: np.ndarray | None,
                     cell: np.ndarray) -> None:
        """Log a frame: positions (N, 3) [angstrom] (ignored/None allowed if
        write_positions=False), cell (3, 3) rows or (3,) lengths [angstrom]."""
        step, time = check_step_time(step, time)
        cell = np.asarray(cell, dtype=float)
        if cell.shape == (3,):
            cell = np.diag(cell)
        if cell.shape != (3, 3):
            raise ValueError(f"cell: expected shape (3, 3) or (3,), got {cell.shape}")
        if self.write_positions:
            positions = check_value("positions", positions, (len(self.species), 3), np.float64)
        self._check_usable()
        self._row_for(step, time, [FRAME_COLUMN]).values[FRAME_COLUMN] = (cell, positions)

    def append(self, name: str, step: int, time: float, value) -> None:
        """Log one observable ``name`` at ``step`` (int >= 0), ``time`` [ps]."""
        self.append_many(step, time, {name: value})

    def append_many(self, step: int, time: float, values: Mapping[str, Any]) -> None:
        """Log several observables at one step; all are validated before any is stored."""
        step, time = check_step_time(step, time)
        checked = {}
        for name, value in values.items():
            if name not in self.specs:
                raise ValueError(f"unknown observable {name!r}; declared: {sorted(self.specs)}")
            spec = self.specs[name]
            checked[name] = check_value(name, value, spec.shape, spec.dtype)
        self._check_usable()
        self._row_for(step, time, list(checked)).values.update(checked)

    def flush(self) -> None:
        """Write all buffered steps and flush the file (visible to readers, crash-safe).
        A log whose file (or directory) was deleted or replaced since it was opened stops
        the writer with one sentence (:class:`LogWriteError`): its steps are gone."""
        self._check_usable()
        self._close_row()
        if not self._rows:
            return
        self._check_still_there()
        self.busy = True
        try:
            self._write_rows(self._rows)
            self._rows.clear()
        except Exception as e:  # h5py raises OSError or RuntimeError for I/O errors
            self._fail(e)
        finally:
            self.busy = False
            signals.deliver_held()

    def close(self) -> None:
        """Flush and close; safe to call twice, also after a write error."""
        if self._closed:
            return
        try:
            if self._broken is None:
                self.flush()
                try:
                    self._file.close()
                except Exception as e:
                    self._fail(e)
        finally:
            self._release()

    def close_for_signal(self, signal_name: str) -> None:
        """Close because of ``signal_name`` (called by :mod:`symmon.io.signals`)."""
        try:
            self.close()
        except Exception as e:  # the signal goes on to end the process: report, not raise
            print(f"symmon: {e}", file=sys.stderr)
        self._closed_by = signal_name

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- rows

    def _row_for(self, step: int, time: float, names: list[str]) -> _Row:
        row = self._row
        if row is None or row.caller_step != step or any(n in row.values for n in names):
            self._close_row()
            if len(self._rows) >= self.flush_every:
                self.flush()
            self._row = self._new_row(step, time)
        return self._row

    def _new_row(self, step: int, time: float) -> _Row:
        if self._offsets is None:
            self._offsets = _continuation(self._continue_after, step, time)
        step_offset, time_offset = self._offsets
        return _Row(step, step + step_offset, time + time_offset)

    def _close_row(self) -> None:
        if self._row is not None:
            self._rows.append(self._row)
            self._row = None

    def _write_rows(self, rows: list[_Row]) -> None:
        """Phase 1: values, present, time (then flush); phase 2: step (then flush)."""
        n, k = self.rows_on_disk, len(rows)
        for name, ds in self._values.items():
            _extend(ds, n, _block(rows, name, ds))
        frames = [r.values.get(FRAME_COLUMN) for r in rows]
        _extend(self._edges, n, np.stack([np.full((3, 3), np.nan) if f is None else f[0]
                                          for f in frames]))
        if self._position is not None:
            nan = np.full((len(self.species), 3), np.nan)
            _extend(self._position, n, np.stack([nan if f is None else f[1] for f in frames]))
        present = np.array([[c in r.values for c in self._columns] for r in rows], np.uint8)
        _extend(self._present, n, present)
        _extend(self._time, n, np.array([r.time for r in rows], np.float64))
        self._file.flush()
        _extend(self._step, n, np.array([r.step for r in rows], np.int64))
        self._file.flush()
        self.rows_on_disk, self.last_step_on_disk = n + k, rows[-1].step

    # -- files

    def _create(self, mode: str, metadata_json: str, author: str) -> h5py.File:
        """Build the layout in a temp file, start SWMR, then rename it into place."""
        tmp = temp_path(self.path, "creating")
        f = None
        try:
            f = h5py.File(tmp, "w", **FILE_OPTIONS)
            build_layout(f, self.specs, self.species, self.pbc, metadata_json,
                         self.write_positions, author)
            f.flush()
            f.swmr_mode = True
            _publish(tmp, self.path, replace=mode == "overwrite")
            return f
        except BaseException as e:
            if f is not None:
                _detach(f)
            if os.path.exists(tmp):
                os.remove(tmp)
            if isinstance(e, (RuntimeError, OSError)) and not isinstance(e, FileExistsError):
                raise OSError(f"cannot create log {self.path!r}: {_reason(e)}") from e
            raise

    def _open_append(self, metadata: dict | None) -> h5py.File:
        """Check the stored log read-only (a refused append leaves every byte as it
        was), then open it for writing, cut it to its trusted rows and start SWMR."""
        with self._open_existing("r") as f:
            header = LogHeader(f, self.path)
            problems = self._append_problems(header, metadata)
            if problems:
                raise ValueError(
                    f"{self.path}: cannot append, the log holds another run ({listed(problems)})"
                    "; log this run to a new path, or pass log_mode='overwrite' to replace "
                    "the log")
        f = self._open_existing("r+")
        try:
            n = trusted_rows(f)
            truncate_rows(f, n)
            if n:
                step, time = f[EDGES]["step"], f[EDGES]["time"]
                dt = (time[n - 1] - time[0]) / (step[n - 1] - step[0]) if n > 1 and \
                    step[n - 1] > step[0] else 0.0
                self._continue_after = (int(step[n - 1]), float(time[n - 1]), float(dt))
                self.last_step_on_disk = int(step[n - 1])
            self.rows_on_disk = n
            runs = header.appended_runs + [{"first_row": n, "metadata": metadata}]
            f[PARAMS].attrs["appended_runs_json"] = json.dumps(runs, sort_keys=True)
            if ATTRIBUTE_RECORD in f:  # (an older log without one stays without)
                write_attribute_record(f)
            f.flush()
            f.swmr_mode = True
        except BaseException:
            f.close()
            raise
        return f

    def _open_existing(self, mode: str) -> h5py.File:
        try:
            return h5py.File(self.path, mode, libver="latest")
        except OSError as e:
            if UNCLEAN_HINT in str(e):
                raise LogFormatError(
                    f"{self.path}: log was not closed cleanly (its writer was killed). Call "
                    f"symmon.io.log.recover_log({self.path!r}) and append again.") from e
            raise LogFormatError(f"{self.path}: cannot open as HDF5 for appending: "
                                 f"{first_line(e)}") from e

    def _append_problems(self, header: LogHeader, metadata: dict | None) -> list[str]:
        if header.schema_version != 2:
            return [f"it has schema version {header.schema_version}; only schema-2 logs can "
                    f"be continued (start a new log)"]
        problems = []
        if not header.semantics.current:
            problems.append(f"its numbers mean something else ({header.semantics.describe()})")
        if not np.array_equal(header.species, self.species):
            problems.append("species differ")
        if header.pbc != self.pbc:
            problems.append(f"pbc {header.pbc} vs {self.pbc}")
        if header.has_positions != self.write_positions:
            problems.append(f"positions stored {header.has_positions} vs "
                            f"{self.write_positions}")
        if metadata is not None:
            problems += [f"metadata {p}" for p in metadata_differences(
                header.metadata, metadata, APPEND_CHECKED_METADATA)]
        return problems + spec_differences(header.specs, self.specs)

    def _bind_datasets(self) -> None:
        f = self._file
        self._step, self._time = f[EDGES]["step"], f[EDGES]["time"]
        self._edges = f[EDGES]["value"]
        self._position = f[POSITION]["value"] if self.write_positions else None
        self._present = f[PRESENT]
        self._columns = present_columns(self.specs)
        self._values = {n: f[value_path(n, s, len(self.species))] for n, s in self.specs.items()}

    # -- faults

    def _fail(self, error: Exception) -> None:
        safe = "no step is on disk (the log is valid and empty)" if not self.rows_on_disk else \
            f"its first {self.rows_on_disk} steps (up to step {self.last_step_on_disk}) are " \
            f"safe on disk and readable"
        self._broken = LogWriteError(
            f"{self.path}: writing the log failed ({_reason(error)}); {safe}, later steps are "
            f"not logged. Free space, then recover_log({self.path!r}) and continue with "
            f"mode='append'.")
        self._broken.errno = getattr(error, "errno", None) or errno.EIO
        self._rows.clear()
        self._row = None
        _detach(self._file)
        self._release()
        raise self._broken from error

    def _check_still_there(self) -> None:
        """Stop (one sentence) when ``path`` no longer names the file being written."""
        try:
            found = os.stat(self.path)
            why = None if (found.st_dev, found.st_ino) == self._identity else \
                "the file at its path was replaced by another"
        except OSError:
            parent = os.path.dirname(os.path.abspath(self.path))
            why = f"its directory {parent!r} was deleted" if not os.path.isdir(parent) \
                else "the file was deleted"
        if why is None:
            return
        lost = f"the {self.rows_on_disk} steps written so far went with it and " \
            if self.rows_on_disk else ""
        self._broken = LogWriteError(
            f"{self.path}: the log is gone while the run was writing it ({why}); "
            f"{lost}no further step is logged. Log to a directory that stays for the "
            "whole run, and start again.")
        self._broken.errno = errno.ENOENT
        self._rows.clear()
        self._row = None
        _detach(self._file)
        self._release()
        raise self._broken

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise self._broken
        if self._closed:
            by = f" by {self._closed_by}" if self._closed_by else ""
            raise ValueError(f"{self.path}: the log was closed{by}; nothing more can be logged")

    def _release(self) -> None:
        self._closed = True
        signals.unregister(self)
        self._lock.release()


def _continuation(last: tuple[int, float, float] | None, step: int, time: float):
    """(step offset, time offset [ps]) that make an appended run follow the stored one."""
    if last is None:
        return 0, 0.0
    last_step, last_time, dt = last
    step_offset = last_step + 1 - step if step <= last_step else 0
    time_offset = last_time + dt * (step + step_offset - last_step) - time \
        if time <= last_time else 0.0
    return step_offset, time_offset


def _block(rows: list[_Row], name: str, ds: h5py.Dataset) -> np.ndarray:
    block = np.full((len(rows), *ds.shape[1:]), fill_value(ds.dtype), dtype=ds.dtype)
    for i, row in enumerate(rows):
        if name in row.values:
            block[i] = row.values[name]
    return block


def _extend(ds: h5py.Dataset, n: int, block: np.ndarray) -> None:
    """Rows ``n, n + 1, ...`` of ``ds`` := ``block`` (grown first), through h5py's
    low-level API: one extent change and one hyperslab write, without the high-level
    selection machinery (~3x faster per dataset; a flush writes ~70 datasets)."""
    block = np.ascontiguousarray(block, dtype=ds.dtype)
    ds.id.set_extent((n + len(block),) + block.shape[1:])
    if not len(block):
        return
    file_space = ds.id.get_space()
    file_space.select_hyperslab((n,) + (0,) * (block.ndim - 1), block.shape)
    ds.id.write(h5py.h5s.create_simple(block.shape), file_space, block)


def _publish(tmp: str, path: str, replace: bool) -> None:
    """Put the finished file ``tmp`` at ``path`` in one step (no half-made file visible)."""
    if replace:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if path exists: create never replaces
    except FileExistsError:
        raise FileExistsError(exists_message(path)) from None
    except OSError:  # no hard links on this file system
        if os.path.exists(path):
            raise FileExistsError(exists_message(path)) from None
        os.rename(tmp, path)
        return
    os.remove(tmp)


def _close_at_exit(reference) -> None:
    writer = reference()
    if writer is not None:
        try:
            writer.close()
        except Exception as e:  # said once, in one sentence, instead of a traceback at exit
            print(f"symmon: {e}", file=sys.stderr)


def _login_name() -> str:
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"
