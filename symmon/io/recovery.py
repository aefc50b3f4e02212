"""Turn a log left by a killed writer into a clean file that every HDF5 tool opens."""

from __future__ import annotations

import os

import h5py

from .h5md import FILE_OPTIONS, FRAME_COLUMN, MAX_CHUNK_ROWS, PARAMS, build_layout, decode, row_datasets, \
    trusted_rows
from .header import LogHeader, open_for_reading
from .lock import PathLock, temp_path
from .reader import v1_trusted_count, read

_COPY_ROWS = 16 * MAX_CHUNK_ROWS  # rows copied per read/write


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
                with h5py.File(tmp, "w", **FILE_OPTIONS) as dst:
                    kept = copy(src, header, dst)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        os.replace(tmp, path)
    return kept


def _rebuild_v2(src: h5py.File, header: LogHeader, dst: h5py.File) -> int:
    columns = sorted(header.columns, key=header.columns.get)
    specs = {c: header.specs[c] for c in columns if c != FRAME_COLUMN}
    build_layout(dst, specs, header.species, header.pbc, decode(src[PARAMS].attrs["metadata_json"]),
                 header.has_positions, decode(src["h5md/author"].attrs["name"]))
    dst[PARAMS].attrs["appended_runs_json"] = src[PARAMS].attrs.get("appended_runs_json", "[]")
    n = trusted_rows(src)
    for ds in row_datasets(src):
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
