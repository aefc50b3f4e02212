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

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import h5py
import numpy as np

from symmon import __version__ as SYMMON_VERSION

#: Version of the symmon layout inside the H5MD file; bump on incompatible change.
SCHEMA_VERSION = 2
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


class LogFormatError(ValueError):
    """The file is not a (readable) symmon log, or logs do not fit together."""


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
                 pbc, metadata_json: str, write_positions: bool, author: str) -> None:
    """Create every group and (empty) dataset of a schema-2 log in ``f``."""
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
    params.attrs["symmon_version"] = SYMMON_VERSION
    params.attrs["metadata_json"] = metadata_json
    params.attrs["appended_runs_json"] = "[]"
    for key, val in json.loads(metadata_json).items():  # browsable copies of scalars
        if isinstance(val, (str, int, float, bool)) and key not in params.attrs:
            params.attrs[key] = val
    columns = present_columns(specs)
    present = _series(params, "present", (len(columns),), np.uint8, None)
    present.attrs["columns"] = np.array(columns, dtype=h5py.string_dtype())


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
    (the last dataset written by each flush) holds a real step number."""
    n = min(ds.shape[0] for ds in row_datasets(f))
    step = f[EDGES]["step"]
    while n > 0:  # scan back from the end, one chunk at a time
        lo = max(0, n - MAX_CHUNK_ROWS)
        unwritten = np.flatnonzero(step[lo:n] == UNWRITTEN_STEP)
        if not unwritten.size:
            return n
        n = lo + int(unwritten[0])
    return 0


def truncate_rows(f: h5py.File, n: int) -> None:
    """Cut every row dataset to ``n`` rows."""
    for ds in row_datasets(f):
        if ds.shape[0] != n:
            ds.resize(n, axis=0)
