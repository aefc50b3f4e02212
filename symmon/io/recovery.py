"""Turn a log left by a killed writer into a clean file that every HDF5 tool opens."""

from __future__ import annotations

import errno
import os

import h5py

from .h5md import (ATTRIBUTE_RECORD, FILE_OPTIONS, FRAME_COLUMN, MAX_CHUNK_ROWS, PARAMS,
                   LogFormatError, build_layout, decode, detach, os_reason, reading,
                   row_datasets, trusted_rows, write_attribute_record)
from .header import LogHeader, open_for_reading
from .lock import PathLock, temp_path
from .reader import v1_trusted_count, read

_COPY_ROWS = 16 * MAX_CHUNK_ROWS  # rows copied per read/write
#: disk space reserved for the copy before HDF5 writes it: the log's size times this,
#: plus RESERVE_BYTES (the copy holds at most the log's rows).  A full disk is then one
#: clean error before the copy starts: HDF5 retries failed writes whenever an object is
#: released, and can crash the interpreter doing so
RESERVE_FACTOR = 1.1
RESERVE_BYTES = 1 << 20


def recover_log(path: str | os.PathLike) -> int:
    """Rewrite ``path`` keeping exactly its trusted rows; returns how many frames remain.

    Refused (:class:`symmon.io.lock.LogLockedError`) while a writer holds the
    log.  The new file is built beside ``path`` and renamed over it, so a kill
    during recovery leaves the original.  Schema-2 logs are rebuilt with the
    current layout; schema-1 logs are copied with each element trimmed.
    """
    path = os.fspath(path)
    with PathLock(path, action="recover") as lock:
        lock.remove_stale_temps()
        tmp = temp_path(path, "recover")
        try:
            with open_for_reading(path) as src:
                header = LogHeader(src, path)
                copy = _rebuild_v2 if header.schema_version >= 2 else _copy_v1
                kept = _write_copy(path, tmp, lambda dst: copy(src, header, dst))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return kept


def _write_copy(path: str, tmp: str, copy) -> int:
    """``copy(new file at tmp)``; a failed write (full disk) is one sentence, and the
    half-written file is detached, never closed (HDF5 can crash closing it)."""
    try:
        dst = h5py.File(tmp, "w", **FILE_OPTIONS)
    except OSError as error:
        raise OSError(f"cannot recover {path!r}: cannot create {tmp!r} beside it "
                      f"({os_reason(error)}); the log is unchanged") from None
    try:
        _reserve(tmp, int(os.path.getsize(path) * RESERVE_FACTOR) + RESERVE_BYTES)
    except OSError as error:
        detach(dst)
        raise OSError(f"cannot recover {path!r}: no room for its copy beside it "
                      f"({error.strerror or error}); the log is unchanged (free space and "
                      "call recover_log again)") from None
    try:
        kept = copy(dst)
        dst.close()
    except LogFormatError:
        detach(dst)
        raise
    except (OSError, RuntimeError) as error:
        detach(dst)
        raise OSError(f"cannot recover {path!r}: writing its copy failed "
                      f"({os_reason(error)}); the log is unchanged (free space and call "
                      "recover_log again)") from None
    return kept


def _reserve(path: str, size: int) -> None:
    """Allocate ``size`` bytes of ``path`` on disk (where the file system can)."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as error:
        if error.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return  # no reservation on this file system: the copy's writes are checked
        raise
    finally:
        os.close(fd)


def _rebuild_v2(src: h5py.File, header: LogHeader, dst: h5py.File) -> int:
    columns = sorted(header.columns, key=header.columns.get)
    specs = {c: header.specs[c] for c in columns if c != FRAME_COLUMN}
    with reading(header.path, "the header attributes"):
        params = src[PARAMS].attrs
        metadata_json, author = decode(params["metadata_json"]), \
            decode(src["h5md/author"].attrs["name"])
        semantics, runs = params.get("semantics_version"), \
            params.get("appended_runs_json", "[]")
        checked = ATTRIBUTE_RECORD in src
    build_layout(dst, specs, header.species, header.pbc, metadata_json, header.has_positions,
                 author, semantics=None if semantics is None else int(semantics))
    dst[PARAMS].attrs["appended_runs_json"] = runs
    if checked:
        write_attribute_record(dst)
    else:  # attributes never checked stay marked unchecked
        del dst[ATTRIBUTE_RECORD]
    n = trusted_rows(src)
    with reading(header.path, "the list of its row datasets"):
        datasets = row_datasets(src)
    for ds in datasets:
        out = dst[ds.name]
        out.resize(n, axis=0)
        for lo in range(0, n, _COPY_ROWS):
            hi = min(n, lo + _COPY_ROWS)
            out[lo:hi] = read(ds, slice(lo, hi))
    return n


def _copy_v1(src: h5py.File, header: LogHeader, dst: h5py.File) -> int:
    for key, val in src.attrs.items():
        dst.attrs[key] = val
    for name in src:
        src.copy(src[name], dst, name=name)
    frames = [g for g in (header.edges, header.position) if g is not None]
    counts = {}
    for g in (*frames, *header.groups.values()):
        g = dst[g.name]
        counts[g.name] = n = v1_trusted_count(g["step"], g["time"], g["value"])
        for ds in (g["step"], g["time"], g["value"]):
            if ds.shape[0] != n:
                ds.resize(n, axis=0)
    return min(counts[g.name] for g in frames)
