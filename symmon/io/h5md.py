"""The symmon log's layout inside an HDF5 file (H5MD 1.1), schema version 2.

One step axis: every logged step is one row of every time-dependent element.
The canonical ``step`` and ``time`` datasets live in ``particles/all/box/edges``;
every other element holds hard links to them (H5MD allows shared step/time)::

    /h5md                         version=[1, 1]; author/, creator/
    /particles/all/species        (N,) atomic numbers
    /particles/all/box            dimension=3, boundary=[periodic|none]*3
    /particles/all/box/edges/     step (n,), time (n,) [ps], value (n, 3, 3) [angstrom]
    /particles/all/position/      step, time (links), value (n, N, 3) [angstrom]
    /particles/all/force/         step, time (links), value (n, N, 3): the observable "forces"
    /observables/<name>/          step, time (links), value (n, *shape) [unit attr]
    /parameters/symmon            schema_version=2, metadata_json, appended_runs_json
    /parameters/symmon/present    (n, K) uint8: column k = 1 where series k was given

A value not given at a step holds its fill value (NaN for floats, 0 for ints)
and ``present`` is 0 there.  Every dataset is chunked, unlimited along the
step axis and Fletcher-32 checksummed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Mapping

import h5py
import numpy as np

from symmon import __version__ as SYMMON_VERSION

#: Version of the symmon layout inside the H5MD file; bump on incompatible change.
SCHEMA_VERSION = 2
#: Version of what the logged numbers mean (attribute ``semantics_version``); bump when a
#: logged name changes meaning, and map the older meaning in :mod:`symmon.io.semantics`
SEMANTICS_VERSION = 2
TIME_UNIT = "ps"
LENGTH_UNIT = "angstrom"
UNWRITTEN_STEP = -1  # fill value of `step`: rows allocated but never written
MAX_CHUNK_ROWS = 256  # steps per chunk for small items
#: file space is allocated in pages (HDF5 "paged aggregation"): an object smaller than a page
#: never straddles two, so rewriting a chunk is one page write, which a kill cannot tear
PAGE_BYTES = 4096
FILE_OPTIONS = {"libver": "latest", "fs_strategy": "page", "fs_page_size": PAGE_BYTES}
#: largest chunk: one page, less the Fletcher-32 checksum.  A row larger than that gets a
#: chunk of its own, so a chunk holding committed rows is never rewritten torn
CHUNK_BYTES = PAGE_BYTES - 4
PARAMS = "parameters/symmon"
PARTICLES = "particles/all"
EDGES = f"{PARTICLES}/box/edges"
POSITION = f"{PARTICLES}/position"
PRESENT = f"{PARAMS}/present"
#: the column of ``present`` for frames (positions + cell); no observable can be named so
FRAME_COLUMN = PARTICLES
#: observables stored as H5MD particle elements when their shape is (N, 3)
PARTICLE_ELEMENTS = {"forces": "force", "velocities": "velocity"}
#: attribute holding the unit of particle forces/velocities: MDAnalysis's H5MDReader refuses
#: to open a file whose particle ``unit`` it does not know, and it knows no eV-based unit
PARTICLE_UNIT_ATTR = "symmon_unit"
#: datasets are created with these options (crash and corruption detection)
DATASET_OPTIONS = {"fletcher32": True}
#: SHA-256 (first 16 hex digits) of every attribute of the file, as a JSON object
#: ``{"<object path>@<attribute>": digest}`` in a Fletcher-32 checksummed dataset: HDF5
#: checksums dataset chunks but not attributes (metadata, units, names, labels)
ATTRIBUTE_RECORD = f"{PARAMS}/attribute_sha256"


class LogFormatError(ValueError):
    """The file is not a (readable) symmon log, or logs do not fit together."""


#: what h5py raises on a damaged file (unreadable chunk, object header, link, heap)
HDF5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, UnicodeDecodeError, TypeError)


def first_line(error: BaseException) -> str:
    """HDF5's own words for ``error``, on one line (its error stack dropped)."""
    text = str(error).strip().strip("\"'")
    found = text.splitlines()[0] if text else type(error).__name__
    return found[:200]


def damaged(path: str, what: str, error: BaseException) -> LogFormatError:
    """The one sentence for a part of a log that HDF5 cannot read."""
    return LogFormatError(
        f"{path}: {what} cannot be read, the file is damaged ({first_line(error)}); "
        "restore the log from a copy or re-run")


def detach(f: h5py.File) -> None:
    """Close ``f`` without writing to it again: HDF5's last writes go to /dev/null.
    (Closing a file after a failed write, or leaving it to HDF5's exit-time
    close, can crash the interpreter.)"""
    try:
        fd = f.id.get_vfd_handle()
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, fd)
        os.close(null)
    except Exception:
        pass
    try:
        f.close()
    except Exception:
        pass


def os_reason(error: Exception) -> str:
    """The operating system's words for an HDF5 I/O error, else the first line."""
    found = re.search(r"error message = '([^']*)'", str(error))
    return found.group(1) if found else (str(error).splitlines() or [type(error).__name__])[0]


@contextmanager
def reading(path: str, what: str):
    """Turn any HDF5 failure inside the block into :func:`damaged` (a LogFormatError
    raised inside passes unchanged)."""
    try:
        yield
    except LogFormatError:
        raise
    except HDF5_ERRORS as error:
        raise damaged(path, what, error) from error


@dataclass(frozen=True)
class ObservableSpec:
    """Declaration of one logged observable.

    shape: shape of the value at one step (``()`` for a scalar).
    unit: physical unit of the value, e.g. ``"eV"``, ``"eV/angstrom"``, ``"1"``.
    description: free text.
    dtype: storage dtype (real numeric: float64 default, float32, int, bool).
    labels: optional array describing the last axis, e.g. irreps as an int
        array ``(n_irreps, 2)`` of ``(l, sigma)``; ``len(labels) == shape[-1]``.
    """

    shape: tuple[int, ...] = ()
    unit: str = "1"
    description: str = ""
    dtype: Any = "float64"
    labels: np.ndarray | None = field(default=None, compare=False)

    def __post_init__(self):
        shape = (self.shape,) if np.ndim(self.shape) == 0 else tuple(self.shape)
        shape = tuple(int(s) for s in shape)
        if any(s < 1 for s in shape):
            raise ValueError(f"ObservableSpec shape entries must be >= 1, got {self.shape}")
        dtype = np.dtype(self.dtype)
        if dtype.kind not in "biuf":
            raise ValueError(f"ObservableSpec dtype must be real numeric, got {dtype}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", dtype)
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.dtype.kind not in "biufU":
                raise ValueError(f"labels must be numeric or str, got dtype {labels.dtype}")
            if not shape or len(labels) != shape[-1]:
                raise ValueError(
                    f"labels must have one entry per element of the last axis: "
                    f"shape {shape}, got {len(labels)} labels"
                )
            object.__setattr__(self, "labels", labels)

    def same_layout(self, other: ObservableSpec) -> bool:
        """True if values of ``other`` can be appended to a log declared with self."""
        return (
            self.shape == other.shape
            and self.dtype == other.dtype
            and self.unit == other.unit
            and _labels_equal(self.labels, other.labels)
        )


def value_path(name: str, spec: ObservableSpec, n_atoms: int) -> str:
    """Where the values of observable ``name`` live: a particle element for the
    model's per-atom vectors (``forces`` -> ``particles/all/force``), else observables/."""
    if name in PARTICLE_ELEMENTS and spec.shape == (n_atoms, 3) and spec.dtype.kind == "f":
        return f"{PARTICLES}/{PARTICLE_ELEMENTS[name]}/value"
    return f"observables/{name}/value"


def fill_value(dtype) -> Any:
    """What a value not given at a step reads as."""
    return np.nan if np.dtype(dtype).kind == "f" else 0


def present_columns(specs: Mapping[str, ObservableSpec]) -> list[str]:
    return [FRAME_COLUMN, *specs]


def build_layout(f: h5py.File, specs: Mapping[str, ObservableSpec], species: np.ndarray,
                 pbc, metadata_json: str, write_positions: bool, author: str,
                 semantics: int | None = SEMANTICS_VERSION) -> None:
    """Create every group and (empty) dataset of a schema-2 log in ``f``, then the
    checksummed record of its attributes (``semantics``: the semantics version written,
    ``None`` for none: a recovered log that had none)."""
    h5md = f.create_group("h5md")
    h5md.attrs["version"] = np.array([1, 1], dtype=np.int32)
    h5md.create_group("author").attrs["name"] = author
    creator = h5md.create_group("creator")
    creator.attrs["name"] = "symmon"
    creator.attrs["version"] = SYMMON_VERSION

    part = f.create_group(PARTICLES)
    part.create_dataset("species", data=species, **DATASET_OPTIONS)
    box = part.create_group("box")
    box.attrs["dimension"] = np.int32(3)
    box.attrs["boundary"] = np.array([b"periodic" if p else b"none" for p in pbc], dtype="S8")
    edges = box.create_group("edges")
    _series(edges, "step", (), np.int64, None, fillvalue=UNWRITTEN_STEP)
    _series(edges, "time", (), np.float64, TIME_UNIT)
    _series(edges, "value", (3, 3), np.float64, LENGTH_UNIT)
    step, time = edges["step"], edges["time"]
    if write_positions:
        _element(f, POSITION, step, time, (len(species), 3), np.float64, LENGTH_UNIT)
    f.create_group("observables")
    for name, spec in specs.items():
        path = value_path(name, spec, len(species)).rsplit("/", 1)[0]
        unit_attr = PARTICLE_UNIT_ATTR if path.startswith(PARTICLES) else "unit"
        g = _element(f, path, step, time, spec.shape, spec.dtype, spec.unit, unit_attr)
        g.attrs["description"] = spec.description
        if spec.labels is not None:
            labels = spec.labels
            g.attrs["labels"] = labels.astype(h5py.string_dtype()) if labels.dtype.kind == "U" \
                else labels

    params = f.create_group(PARAMS)
    params.attrs["schema_version"] = np.int64(SCHEMA_VERSION)
    if semantics is not None:
        params.attrs["semantics_version"] = np.int64(semantics)
    params.attrs["symmon_version"] = SYMMON_VERSION
    params.attrs["metadata_json"] = metadata_json
    params.attrs["appended_runs_json"] = "[]"
    for key, val in json.loads(metadata_json).items():  # browsable copies of scalars
        if isinstance(val, (str, int, float, bool)) and key not in params.attrs:
            params.attrs[key] = val
    columns = present_columns(specs)
    present = _series(params, "present", (len(columns),), np.uint8, None)
    present.attrs["columns"] = np.array(columns, dtype=h5py.string_dtype())
    write_attribute_record(f)


def _element(f: h5py.File, path: str, step, time, shape, dtype, unit,
             unit_attr: str = "unit") -> h5py.Group:
    g = f.create_group(path)
    g["step"], g["time"] = step, time  # hard links: one step axis for the whole file
    _series(g, "value", shape, dtype, unit, unit_attr=unit_attr)
    return g


def _series(parent: h5py.Group, name: str, shape: tuple, dtype, unit: str | None,
            fillvalue=None, unit_attr: str = "unit") -> h5py.Dataset:
    """An empty, unlimited, chunked, checksummed dataset of rows of ``shape``."""
    row_bytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
    rows = int(np.clip(CHUNK_BYTES // row_bytes, 1, MAX_CHUNK_ROWS))
    ds = parent.create_dataset(
        name, (0, *shape), maxshape=(None, *shape), dtype=dtype, chunks=(rows, *shape),
        fillvalue=fill_value(dtype) if fillvalue is None else fillvalue, **DATASET_OPTIONS)
    if unit is not None:
        ds.attrs[unit_attr] = unit
    return ds


def _labels_equal(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(np.all(a == b))


def decode(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def row_datasets(f: h5py.File) -> list[h5py.Dataset]:
    """Every dataset with one row per logged step (schema 2), each once."""
    seen, out = set(), []
    def visit(_name, obj):
        if isinstance(obj, h5py.Dataset) and obj.maxshape and obj.maxshape[0] is None \
                and obj.id not in seen:
            seen.add(obj.id)
            out.append(obj)
    f.visititems(visit)
    return out


def trusted_rows(f: h5py.File) -> int:
    """Rows written completely (schema 2): present in every dataset, and ``step``
    (the last dataset written by each flush) holds a real step number.  A damaged
    file is a :class:`LogFormatError` naming what cannot be read."""
    with reading(f.filename, "the list of its row datasets"):
        n = min(ds.shape[0] for ds in row_datasets(f))
    with reading(f.filename, f"the step dataset /{EDGES}/step"):
        step = f[EDGES]["step"]
    while n > 0:  # scan back from the end, one chunk at a time
        lo = max(0, n - MAX_CHUNK_ROWS)
        with reading(f.filename, f"rows {lo}-{n - 1} of the step dataset /{EDGES}/step"):
            chunk = step[lo:n]
        unwritten = np.flatnonzero(chunk == UNWRITTEN_STEP)
        if not unwritten.size:
            return n
        n = lo + int(unwritten[0])
    return 0


def truncate_rows(f: h5py.File, n: int) -> None:
    """Cut every row dataset to ``n`` rows."""
    for ds in row_datasets(f):
        if ds.shape[0] != n:
            ds.resize(n, axis=0)


# ---------------------------------------------------------------- attribute checksums


def element_groups(f: h5py.File, schema_version: int) -> dict[str, h5py.Group]:
    """``{observable name: H5MD element group}`` (schema 2: particle elements too)."""
    groups = {}
    with reading(f.filename, "object /observables"):
        names = list(f["observables"])
    for name in names:
        with reading(f.filename, f"object /observables/{name}"):
            groups[name] = f["observables"][name]
    if schema_version >= 2:
        for name, element in PARTICLE_ELEMENTS.items():
            with reading(f.filename, f"object /{PARTICLES}/{element}"):
                if element in f[PARTICLES]:
                    groups[name] = f[PARTICLES][element]
    return groups


def trusted_attributes(f: h5py.File, groups: Mapping[str, h5py.Group]) -> dict[str, Any]:
    """Every attribute symmon's reader uses, ``{"<object path>@<name>": value}``: the
    parameters (schema and semantics versions, metadata, appended runs), periodicity,
    the names of the series (``present`` columns) and each observable's unit,
    description and labels.  (Others, e.g. the browsable copies of scalar metadata and
    the H5MD author, are not read by symmon.)"""
    found: dict[str, Any] = {}

    def take(obj, where, *names):
        attrs = obj.attrs
        for name in names:
            if name not in attrs:  # (a missing recorded one is named by the check)
                continue
            try:
                found[f"{where}@{name}"] = attrs[name]
            except HDF5_ERRORS as error:  # a flipped byte can make it undecodable
                found[f"{where}@{name}"] = _Unreadable(first_line(error))

    take(f[PARAMS], f"/{PARAMS}", "schema_version", "semantics_version", "metadata_json",
         "appended_runs_json")
    take(f[PARTICLES]["box"], f"/{PARTICLES}/box", "boundary")
    if PRESENT in f:
        take(f[PRESENT], f"/{PRESENT}", "columns")
    for name in sorted(groups):
        g = groups[name]
        where = g.name
        take(g, where, "description", "labels")
        with reading(f.filename, f"object {where}/value"):
            value = g["value"]
        take(value, f"{where}/value", "unit", PARTICLE_UNIT_ATTR)
    return found


class _Unreadable(str):
    """An attribute value HDF5 could not decode (in place of the value)."""


def write_attribute_record(f: h5py.File) -> None:
    """(Re)write :data:`ATTRIBUTE_RECORD` from the trusted attributes in ``f`` now."""
    schema = int(f[PARAMS].attrs["schema_version"])
    digests = {k: _digest(v) for k, v in
               trusted_attributes(f, element_groups(f, schema)).items()}
    data = np.frombuffer(json.dumps(digests, sort_keys=True).encode(), np.uint8)
    if ATTRIBUTE_RECORD in f:
        del f[ATTRIBUTE_RECORD]
    f.create_dataset(ATTRIBUTE_RECORD, data=data, chunks=(len(data),), **DATASET_OPTIONS)


def check_attribute_record(f: h5py.File, path: str, attributes: Mapping[str, Any]) -> bool:
    """Compare ``attributes`` (:func:`trusted_attributes`) with :data:`ATTRIBUTE_RECORD`;
    False when the log has no record (written before symmon checksummed attributes), a
    :class:`LogFormatError` naming the first damaged attribute when one differs."""
    with reading(path, f"the attribute checksums /{ATTRIBUTE_RECORD}"):
        if ATTRIBUTE_RECORD not in f:
            return False
        stored = json.loads(f[ATTRIBUTE_RECORD][()].tobytes().decode())
    for key in sorted(set(stored) | set(attributes)):
        value = attributes.get(key)
        if key in stored and key in attributes and not isinstance(value, _Unreadable) \
                and stored[key] == _digest(value):
            continue
        where, _, name = key.partition("@")
        state = "missing" if key not in attributes else "not in the record" \
            if key not in stored else f"unreadable: {value}" \
            if isinstance(value, _Unreadable) else "changed"
        raise LogFormatError(
            f"{path}: attribute {name!r} of {where} is damaged ({state}; it does not "
            f"match its checksum in /{ATTRIBUTE_RECORD}), so its "
            f"{_ATTRIBUTE_ROLES.get(name, 'value')} cannot be trusted; restore the log "
            "from a copy or re-run")
    return True


#: what an attribute holds, for the refusal of a damaged one
_ATTRIBUTE_ROLES = {"metadata_json": "metadata (model, settings, thresholds, model errors)",
                    "unit": "unit", PARTICLE_UNIT_ATTR: "unit", "columns": "series names",
                    "description": "description", "labels": "labels",
                    "appended_runs_json": "list of appended runs",
                    "schema_version": "schema version",
                    "semantics_version": "semantics version", "boundary": "periodicity"}


def _digest(value) -> str:
    text = json.dumps(_canonical(value), sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _canonical(value):
    """A JSON-able form of an attribute value that keeps every bit that matters."""
    if isinstance(value, np.ndarray):
        return [str(value.dtype), list(value.shape), [_canonical(v) for v in value.reshape(-1)]]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value.hex()
    if isinstance(value, bytes):
        return value.hex()
    return value
