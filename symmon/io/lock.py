"""One writer per log path: an advisory lock (``fcntl.flock``) on a lock file beside the log.

The lock file ``<dir>/.<name>.lock`` is held exclusively for the writer's whole
life; the kernel releases it when the process ends in any way (SIGKILL
included), so a stale lock file never blocks anyone.  The holder's pid is
written into it for the error message of the refused second writer.
"""

from __future__ import annotations

import fcntl
import glob
import os


class LogLockedError(OSError):
    """Another writer (this process or another) holds the log's lock."""


def lock_path(path: str) -> str:
    head, name = os.path.split(os.path.abspath(path))
    return os.path.join(head, f".{name}.lock")


def temp_path(path: str, purpose: str) -> str:
    """A file beside ``path`` that only the lock holder creates (``purpose``: creating/recover)."""
    head, name = os.path.split(os.path.abspath(path))
    return os.path.join(head, f".{name}.{os.getpid()}.{purpose}")


class PathLock:
    """Exclusive advisory lock of a log path; ``acquire`` refuses (never waits)."""

    def __init__(self, path: str, action: str = "write"):
        self.path, self.action = path, action
        self.file = lock_path(path)
        self._fd: int | None = None

    def acquire(self) -> PathLock:
        while True:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                raise LogLockedError(
                    f"cannot {self.action} log {self.path!r}: it is being written by "
                    f"process {holder} (lock file {self.file!r}); wait until that run ends, "
                    f"or log to another path") from None
            if _same_file(fd, self.file):
                break
            os.close(fd)  # the holder removed the file between our open and lock: retry
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def remove_stale_temps(self) -> None:
        """Delete temp files of earlier lock holders of this path (killed mid-way)."""
        head, name = os.path.split(os.path.abspath(self.path))
        for purpose in ("creating", "recover"):
            for stale in glob.glob(os.path.join(glob.escape(head), f".{glob.escape(name)}.*.{purpose}")):
                try:
                    os.remove(stale)
                except OSError:
                    pass

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.remove(self.file)  # unlink first, then unlock: see the retry in acquire
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def probe(self) -> None:
        """Raise :class:`LogLockedError` now if another writer holds the lock."""
        self.acquire()
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> PathLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode().strip() or "unknown"
    except (OSError, UnicodeDecodeError):
        return "unknown"
