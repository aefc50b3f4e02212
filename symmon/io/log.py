"""The symmon log: an HDF5 file in H5MD 1.1 layout, written with SWMR (one import point).

* :mod:`symmon.io.h5md`: layout, schema version, :class:`ObservableSpec`;
* :mod:`symmon.io.writer`: :class:`LogWriter` (atomic creation, one writer,
  two-phase flushes, write errors, signals);
* :mod:`symmon.io.reader`: :class:`LogReader` / :func:`read_log` (schema 1 and 2, shards);
* :mod:`symmon.io.recovery`: :func:`recover_log`;
* :mod:`symmon.io.lock`, :mod:`symmon.io.signals`: the writer's lock and signal handling.

``docs/log-format.md`` describes the file, ``docs/reliability.md`` what survives which fault.
"""

from .h5md import SCHEMA_VERSION, LENGTH_UNIT, TIME_UNIT, LogFormatError, ObservableSpec
from .lock import LogLockedError
from .reader import Frames, LogReader, read_log
from .recovery import recover_log
from .validate import as_log_path, check_log_path
from .writer import LogWriteError, LogWriter

__all__ = [
    "SCHEMA_VERSION",
    "LENGTH_UNIT",
    "TIME_UNIT",
    "LogFormatError",
    "LogLockedError",
    "LogWriteError",
    "ObservableSpec",
    "LogWriter",
    "LogReader",
    "Frames",
    "read_log",
    "recover_log",
    "check_log_path",
    "as_log_path",
]
