"""HDF5 log of per-step symmetry diagnostics, laid out after H5MD 1.1.

Layout (see ``docs/log-format.md`` for the full description)::

    /h5md                       version=[1, 1]; author/, creator/
    /particles/all/species      (N,) int atomic numbers
    /particles/all/position/    step (n,), time (n,) [ps], value (n, N, 3) [angstrom]
    /particles/all/box/         dimension=3, boundary=[periodic|none]*3
    /particles/all/box/edges/   step, time [ps], value (n, 3, 3) [angstrom], cell rows
    /observables/<name>/        step, time [ps], value (n, *shape) [unit attr]
    /parameters/symmon          schema_version, metadata_json, ...

Units: time in ps, lengths in angstrom; every observable carries its own
``unit`` attribute on its ``value`` dataset.

The writer uses HDF5 SWMR (single writer, multiple readers): all datasets are
created up front, values are buffered in memory and written + flushed every
``flush_every`` MD steps and on close.  A writer killed at any point leaves a
file whose flushed steps can be read with :class:`LogReader`.  Such a file
keeps HDF5's "open for writing" flag set, so plain ``h5py.File(path, "r")``
refuses it; :class:`LogReader` opens it in SWMR-read mode instead, and
:func:`recover_log` rewrites it into a clean file (needed before appending).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import h5py
import numpy as np

from symmon import __version__ as _SYMMON_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "LogFormatError",
    "ObservableSpec",
    "LogWriter",
    "LogReader",
    "Frames",
    "read_log",
    "recover_log",
]

#: Version of the symmon layout inside the H5MD file; bump on incompatible change.
SCHEMA_VERSION = 1
TIME_UNIT = "ps"
LENGTH_UNIT = "angstrom"

_UNWRITTEN_STEP = -1  # fill value of `step`: rows allocated but never written
_CHUNK_BYTES = 1 << 20  # target size of one value chunk
_MAX_CHUNK_ROWS = 256  # steps per chunk for small items
_PARAMS = "parameters/symmon"
_PARTICLES = "particles/all"
_UNCLEAN_HINT = "may use <h5clear"  # HDF5's message for a set consistency flag


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


class Frames(NamedTuple):
    """Trajectory frames: step (n,), time (n,) [ps], positions (n, N, 3) or None
    [angstrom], cell (n, 3, 3) [angstrom, rows are the cell vectors]."""

    step: np.ndarray
    time: np.ndarray
    positions: np.ndarray | None
    cell: np.ndarray


# --------------------------------------------------------------------- writer


class _ElementWriter:
    """Buffered appender of one H5MD time-dependent element (step/time/value)."""

    def __init__(self, group: h5py.Group):
        self.step, self.time, self.value = group["step"], group["time"], group["value"]
        self._buf: list[tuple[int, float, np.ndarray]] = []

    @staticmethod
    def create(parent: h5py.Group, name: str, shape: tuple, dtype, unit: str) -> h5py.Group:
        g = parent.create_group(name)
        row_bytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        rows = int(np.clip(_CHUNK_BYTES // row_bytes, 1, _MAX_CHUNK_ROWS))
        fill = np.nan if np.dtype(dtype).kind == "f" else 0
        g.create_dataset("step", (0,), maxshape=(None,), dtype="i8",
                         chunks=(_MAX_CHUNK_ROWS,), fillvalue=_UNWRITTEN_STEP)
        t = g.create_dataset("time", (0,), maxshape=(None,), dtype="f8",
                             chunks=(_MAX_CHUNK_ROWS,), fillvalue=np.nan)
        t.attrs["unit"] = TIME_UNIT
        v = g.create_dataset("value", (0, *shape), maxshape=(None, *shape), dtype=dtype,
                             chunks=(rows, *shape), fillvalue=fill)
        v.attrs["unit"] = unit
        return g

    def add(self, step: int, time: float, value: np.ndarray) -> None:
        self._buf.append((step, time, value))

    def trim(self) -> int:
        """Cut step/time/value to the trusted common length (after a crash)."""
        n = _trusted_count(self.step, self.time, self.value)
        for ds in (self.step, self.time, self.value):
            if ds.shape[0] != n:
                ds.resize(n, axis=0)
        return n

    def write(self) -> None:
        """Write the buffer: value first, then time, then step (step grows last)."""
        if not self._buf:
            return
        steps, times, values = zip(*self._buf)
        blocks = (np.stack(values), np.asarray(times, np.float64), np.asarray(steps, np.int64))
        for ds, block in zip((self.value, self.time, self.step), blocks):
            n = ds.shape[0]
            ds.resize(n + len(block), axis=0)
            ds[n:] = block
        self._buf.clear()


class LogWriter:
    """Append-only writer of a symmon log (HDF5, H5MD 1.1 layout, SWMR).

    Parameters
    ----------
    path: file to write.
    observables: ``{name: ObservableSpec}`` of everything :meth:`append` may log.
    species: atomic numbers, shape (N,).
    pbc: periodicity of the three cell directions.
    metadata: JSON-serialisable dict (model file/hash, grid, seed, units, ...).
    mode: ``"create"`` (refuse an existing file), ``"overwrite"`` (replace it)
        or ``"append"`` (continue a compatible log; ``metadata`` must be None
        or equal to the stored one).
    flush_every: flush to disk whenever this many new MD steps have been
        buffered (checked when a new step begins) and on :meth:`close`.
    write_positions: store positions in :meth:`append_frame` (the cell is always stored).
    author: H5MD author name (default: login name).

    All inputs are validated before anything is created or written; bad input
    raises ``ValueError`` (or an ``OSError`` subclass for bad paths).
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
    ):
        self.path = os.fspath(path)
        self.specs = _check_specs(observables)
        self.species = _check_species(species)
        self.pbc = _check_pbc(pbc)
        self.write_positions = bool(write_positions)
        if int(flush_every) < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.flush_every = int(flush_every)
        try:
            metadata_json = json.dumps(dict(metadata or {}), sort_keys=True)
        except TypeError as e:
            raise ValueError(f"metadata must be JSON-serialisable: {e}") from e
        check_log_path(self.path, mode)

        if mode == "append":
            self._file = self._open_append(metadata_json if metadata is not None else None)
        else:
            self._file = self._create(mode, metadata_json, author)
        self._file.swmr_mode = True
        part = self._file[_PARTICLES]
        self._elements = {n: _ElementWriter(self._file["observables"][n]) for n in self.specs}
        self._edges = _ElementWriter(part["box/edges"])
        self._position = _ElementWriter(part["position"]) if self.write_positions else None
        self._last_step: int | None = None
        self._pending_steps = 0

    # -- public API

    def append_frame(self, step: int, time: float, positions: np.ndarray | None,
                     cell: np.ndarray) -> None:
        """Log a frame: positions (N, 3) [angstrom] (ignored/None allowed if
        write_positions=False), cell (3, 3) rows or (3,) lengths [angstrom]."""
        step, time = _check_step_time(step, time)
        cell = np.asarray(cell, dtype=float)
        if cell.shape == (3,):
            cell = np.diag(cell)
        if cell.shape != (3, 3):
            raise ValueError(f"cell: expected shape (3, 3) or (3,), got {cell.shape}")
        if self._position is not None:
            positions = _check_value("positions", positions, (len(self.species), 3), np.float64)
        self._note_step(step)
        self._edges.add(step, time, cell)
        if self._position is not None:
            self._position.add(step, time, positions)

    def append(self, name: str, step: int, time: float, value) -> None:
        """Log one observable ``name`` at ``step`` (int >= 0), ``time`` [ps]."""
        self.append_many(step, time, {name: value})

    def append_many(self, step: int, time: float, values: Mapping[str, Any]) -> None:
        """Log several observables at one step; all are validated before any is stored."""
        step, time = _check_step_time(step, time)
        checked = {}
        for name, value in values.items():
            if name not in self.specs:
                raise ValueError(f"unknown observable {name!r}; declared: {sorted(self.specs)}")
            spec = self.specs[name]
            checked[name] = _check_value(name, value, spec.shape, spec.dtype)
        self._note_step(step)
        for name, value in checked.items():
            self._elements[name].add(step, time, value)

    def flush(self) -> None:
        """Write all buffered steps and flush the file (visible to readers, crash-safe)."""
        for el in self._all_elements():
            el.write()
        self._file.flush()
        self._pending_steps = 0

    def close(self) -> None:
        """Flush and close; safe to call twice."""
        if self._file.id.valid:
            try:
                self.flush()
            finally:
                self._file.close()

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals

    def _all_elements(self):
        yield from self._elements.values()
        yield self._edges
        if self._position is not None:
            yield self._position

    def _note_step(self, step: int) -> None:
        if step == self._last_step:
            return
        if self._pending_steps >= self.flush_every:
            self.flush()
        self._last_step = step
        self._pending_steps += 1

    def _create(self, mode: str, metadata_json: str, author: str | None) -> h5py.File:
        f = h5py.File(self.path, "w-" if mode == "create" else "w", libver="latest")
        try:
            self._build_layout(f, metadata_json, author)
        except BaseException:
            f.close()
            os.remove(self.path)
            raise
        return f

    def _build_layout(self, f: h5py.File, metadata_json: str, author: str | None) -> None:
        h5md = f.create_group("h5md")
        h5md.attrs["version"] = np.array([1, 1], dtype=np.int32)
        h5md.create_group("author").attrs["name"] = author or _login_name()
        creator = h5md.create_group("creator")
        creator.attrs["name"] = "symmon"
        creator.attrs["version"] = _SYMMON_VERSION

        part = f.create_group(_PARTICLES)
        part.create_dataset("species", data=self.species)
        box = part.create_group("box")
        box.attrs["dimension"] = np.int32(3)
        box.attrs["boundary"] = np.array(
            [b"periodic" if p else b"none" for p in self.pbc], dtype="S8")
        _ElementWriter.create(box, "edges", (3, 3), np.float64, LENGTH_UNIT)
        if self.write_positions:
            _ElementWriter.create(part, "position", (len(self.species), 3), np.float64, LENGTH_UNIT)

        obs = f.create_group("observables")
        for name, spec in self.specs.items():
            g = _ElementWriter.create(obs, name, spec.shape, spec.dtype, spec.unit)
            g.attrs["description"] = spec.description
            if spec.labels is not None:
                labels = spec.labels
                if labels.dtype.kind == "U":
                    labels = labels.astype(h5py.string_dtype())
                g.attrs["labels"] = labels

        params = f.create_group(_PARAMS)
        params.attrs["schema_version"] = np.int64(SCHEMA_VERSION)
        params.attrs["symmon_version"] = _SYMMON_VERSION
        params.attrs["metadata_json"] = metadata_json
        for key, val in json.loads(metadata_json).items():  # browsable copies of scalars
            if isinstance(val, (str, int, float, bool)) and key not in params.attrs:
                params.attrs[key] = val

    def _open_append(self, metadata_json: str | None) -> h5py.File:
        try:
            f = h5py.File(self.path, "r+", libver="latest")
        except OSError as e:
            if _UNCLEAN_HINT in str(e):
                raise LogFormatError(
                    f"{self.path}: log was not closed cleanly (writer killed, or still "
                    f"running). If no writer is running, call "
                    f"symmon.io.log.recover_log({self.path!r}) and append again."
                ) from e
            raise LogFormatError(f"{self.path}: cannot open as HDF5 for appending: {e}") from e
        try:
            info = _LogFile(f, self.path)
            problems = []
            if not np.array_equal(info.species, self.species):
                problems.append("species differ")
            if info.pbc != self.pbc:
                problems.append(f"pbc {info.pbc} != {self.pbc}")
            if info.has_positions != self.write_positions:
                problems.append(f"file has positions: {info.has_positions}, "
                                f"write_positions={self.write_positions}")
            problems += _spec_differences(info.specs, self.specs)
            if metadata_json is not None and json.loads(metadata_json) != info.metadata:
                problems.append("metadata differs from the stored metadata (pass metadata=None)")
            if problems:
                raise ValueError(
                    f"{self.path}: cannot append, incompatible log: " + "; ".join(problems))
            for g in _element_groups(f):
                _ElementWriter(g).trim()
        except BaseException:
            f.close()
            raise
        return f


def recover_log(path: str | os.PathLike) -> None:
    """Rewrite a log left by a killed writer into a clean, appendable file.

    Copies everything readable (in SWMR-read mode), trims every element to its
    trusted length and atomically replaces ``path``.  Only call this when no
    writer is running on ``path``: HDF5 cannot tell a live writer from a dead one.
    """
    path = os.fspath(path)
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.recover")
    with _open_for_reading(path) as src:
        _LogFile(src, path)  # refuse non-symmon files
        try:
            with h5py.File(tmp, "w", libver="latest") as dst:
                for key, val in src.attrs.items():
                    dst.attrs[key] = val
                for name in src:
                    src.copy(src[name], dst, name=name)
                for g in _element_groups(dst):
                    _ElementWriter(g).trim()
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
    os.replace(tmp, path)


# --------------------------------------------------------------------- reader


class _LogFile:
    """One opened shard: validated header and its element groups."""

    def __init__(self, f: h5py.File, path: str):
        self.file, self.path = f, path
        if "h5md" not in f or _PARAMS not in f or "schema_version" not in f[_PARAMS].attrs:
            raise LogFormatError(f"{path}: HDF5 file is not a symmon log (no h5md / {_PARAMS})")
        params = f[_PARAMS].attrs
        self.schema_version = int(params["schema_version"])
        if self.schema_version > SCHEMA_VERSION:
            raise LogFormatError(
                f"{path}: log schema_version {self.schema_version} is newer than this "
                f"symmon supports ({SCHEMA_VERSION}); upgrade symmon")
        try:
            self.metadata = json.loads(params["metadata_json"])
            part = f[_PARTICLES]
            self.species = part["species"][()]
            self.pbc = tuple(_decode(b) == "periodic" for b in part["box"].attrs["boundary"])
            self.has_positions = "position" in part
            self.edges = part["box/edges"]
            self.position = part["position"] if self.has_positions else None
            self.observables = dict(f["observables"].items())
            self.specs = {n: _spec_from_group(g) for n, g in self.observables.items()}
        except (KeyError, ValueError) as e:
            raise LogFormatError(f"{path}: malformed symmon log: {e}") from e


class _ElementReader:
    """Trusted-length, cached view of one time-dependent element."""

    def __init__(self, group: h5py.Group, cap: int | None = None):
        self.step, self.time, self.value = group["step"], group["time"], group["value"]
        self.cap = cap
        self._steps = None

    def count(self) -> int:
        n = _trusted_count(self.step, self.time, self.value)
        return n if self.cap is None else min(n, self.cap)

    def steps(self) -> np.ndarray:
        if self._steps is None:
            self._steps = self.step[: self.count()]
        return self._steps


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
        self._shards: list[_LogFile] = []
        try:
            for p in self.paths:
                f = _open_for_reading(p)
                try:
                    self._shards.append(_LogFile(f, p))
                except BaseException:
                    f.close()
                    raise
            self._check_shards_agree()
        except BaseException:
            self.close()
            raise
        first = self._shards[0]
        self.metadata: dict = first.metadata
        self.schema_version: int = first.schema_version
        self.species: np.ndarray = first.species
        self.pbc: tuple[bool, bool, bool] = first.pbc
        self._specs = first.specs
        self.observable_names: list[str] = sorted(first.specs)

    def observable(self, name: str, start: int | None = None, stop: int | None = None,
                   stride: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(step (n,), time (n,) [ps], value (n, *shape) [unit(name)])`` of the
        rows ``[start:stop:stride]`` of the step-sorted series."""
        spec = self._spec(name)
        elements = [_ElementReader(s.observables[name]) for s in self._shards]
        step, time, plan = _select(elements, slice(start, stop, stride))
        value = _gather([e.value for e in elements], plan, len(step), spec.shape, spec.dtype)
        return step, time, value

    def frames(self, start: int | None = None, stop: int | None = None,
               stride: int | None = None) -> Frames:
        """Frames ``[start:stop:stride]`` (step-sorted); positions None if not stored."""
        edges, positions = [], []
        for s in self._shards:
            e = _ElementReader(s.edges)
            if s.has_positions:
                p = _ElementReader(s.position)
                e.cap = p.cap = min(e.count(), p.count())
                positions.append(p)
            edges.append(e)
        step, time, plan = _select(edges, slice(start, stop, stride))
        cell = _gather([e.value for e in edges], plan, len(step), (3, 3), np.float64)
        pos = None
        if positions:
            pos = _gather([p.value for p in positions], plan, len(step),
                          (len(self.species), 3), np.float64)
        return Frames(step, time, pos, cell)

    def count(self, name: str) -> int:
        """Number of logged rows of observable ``name`` (all shards)."""
        self._spec(name)
        return sum(_ElementReader(s.observables[name]).count() for s in self._shards)

    def unit(self, name: str) -> str:
        return self._spec(name).unit

    def description(self, name: str) -> str:
        return self._spec(name).description

    def labels(self, name: str) -> np.ndarray | None:
        return self._spec(name).labels

    def spec(self, name: str) -> ObservableSpec:
        return self._spec(name)

    def refresh(self) -> None:
        """Pick up steps flushed by a live writer since opening (SWMR files)."""
        for s in self._shards:
            if s.file.swmr_mode:
                for g in _element_groups(s.file):
                    for ds in (g["step"], g["time"], g["value"]):
                        ds.refresh()

    def close(self) -> None:
        for s in self._shards:
            s.file.close()

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spec(self, name: str) -> ObservableSpec:
        if name not in self._specs:
            raise KeyError(f"no observable {name!r} in log; available: {sorted(self._specs)}")
        return self._specs[name]

    def _check_shards_agree(self) -> None:
        first = self._shards[0]
        for s in self._shards[1:]:
            problems = _spec_differences(first.specs, s.specs)
            if s.schema_version != first.schema_version:
                problems.append(f"schema_version {s.schema_version} != {first.schema_version}")
            if not np.array_equal(s.species, first.species):
                problems.append("species differ")
            if s.pbc != first.pbc or s.has_positions != first.has_positions:
                problems.append("pbc / stored positions differ")
            if problems:
                raise LogFormatError(
                    f"shard {s.path} does not match {first.path}: " + "; ".join(problems))


def read_log(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> LogReader:
    """Open one log or several shards of one run; see :class:`LogReader`."""
    return LogReader(paths)


# --------------------------------------------------------------------- helpers


def _trusted_count(step: h5py.Dataset, time: h5py.Dataset, value: h5py.Dataset) -> int:
    """Rows fully written: common length, minus trailing never-written steps."""
    n = min(step.shape[0], time.shape[0], value.shape[0])
    while n > 0:
        lo = max(0, n - _MAX_CHUNK_ROWS)
        written = np.flatnonzero(step[lo:n] != _UNWRITTEN_STEP)
        if written.size:
            return lo + int(written[-1]) + 1
        n = lo
    return 0


def _select(elements: list[_ElementReader], sl: slice):
    """Merge the elements' steps (stable sort), apply ``sl``; returns step,
    time and a per-shard plan ``[(rows in output, rows in shard)]``."""
    steps = [e.steps() for e in elements]
    all_steps = np.concatenate(steps)
    owner = np.repeat(np.arange(len(steps)), [len(s) for s in steps])
    local = np.concatenate([np.arange(len(s)) for s in steps])
    rows = np.argsort(all_steps, kind="stable")[sl]
    plan = []
    for k in range(len(elements)):
        out = np.flatnonzero(owner[rows] == k)
        plan.append((out, local[rows[out]]))
    time = _gather([e.time for e in elements], plan, len(rows), (), np.float64)
    return all_steps[rows], time, plan


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
        return ds[int(idx[0]): int(idx[-1]) + 1: step]
    lo, hi = int(idx.min()), int(idx.max())
    return ds[lo: hi + 1][idx - lo]


def _open_for_reading(path: str) -> h5py.File:
    """Open read-only.  A file still open by a writer (live or killed) has its
    consistency flag set, which plain opening refuses: open it in SWMR-read
    mode instead.  Plain opening first keeps HDF5's truncation check, which
    SWMR-read mode skips."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"log file not found: {path}")
    if not h5py.is_hdf5(path):
        raise LogFormatError(f"{path}: not an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        if _UNCLEAN_HINT not in str(e):
            raise LogFormatError(f"{path}: cannot open HDF5 file: {e}") from e
    try:
        return h5py.File(path, "r", libver="latest", swmr=True)
    except OSError as e:
        raise LogFormatError(f"{path}: cannot open HDF5 file in SWMR mode: {e}") from e


def _element_groups(f: h5py.File) -> list[h5py.Group]:
    part = f[_PARTICLES]
    groups = [part["box/edges"], *f["observables"].values()]
    if "position" in part:
        groups.append(part["position"])
    return groups


def _spec_from_group(g: h5py.Group) -> ObservableSpec:
    value = g["value"]
    labels = g.attrs.get("labels")
    if labels is not None and labels.dtype.kind in "OS":
        labels = np.array([_decode(x) for x in labels])
    return ObservableSpec(shape=value.shape[1:], unit=_decode(value.attrs["unit"]),
                          description=_decode(g.attrs.get("description", "")),
                          dtype=value.dtype, labels=labels)


def _spec_differences(a: Mapping[str, ObservableSpec],
                      b: Mapping[str, ObservableSpec]) -> list[str]:
    problems = []
    if set(a) != set(b):
        problems.append(f"observables {sorted(a)} != {sorted(b)}")
    for name in sorted(set(a) & set(b)):
        if not a[name].same_layout(b[name]):
            sa, sb = ((s.shape, str(s.dtype), s.unit) for s in (a[name], b[name]))
            problems.append(
                f"observable {name!r}: (shape, dtype, unit) {sa} != {sb} or labels differ")
    return problems


def _labels_equal(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(np.all(a == b))


def _check_specs(observables: Mapping[str, ObservableSpec]) -> dict[str, ObservableSpec]:
    specs = dict(observables)
    for name, spec in specs.items():
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ValueError(f"invalid observable name {name!r} (non-empty, no '/')")
        if not isinstance(spec, ObservableSpec):
            raise ValueError(
                f"observable {name!r}: expected an ObservableSpec, got {type(spec).__name__}")
    return specs


def _check_species(species) -> np.ndarray:
    arr = np.asarray(species)
    if arr.ndim != 1 or arr.size == 0 or arr.dtype.kind not in "iu" or np.any(arr < 0):
        raise ValueError(f"species must be a non-empty 1-D array of atomic numbers, got {arr!r}")
    return arr.astype(np.int64)


def _check_pbc(pbc) -> tuple[bool, bool, bool]:
    arr = np.asarray(pbc)
    if arr.shape == ():
        arr = np.repeat(arr, 3)
    if arr.shape != (3,) or arr.dtype.kind not in "bi":
        raise ValueError(f"pbc must be 3 booleans, got {pbc!r}")
    return tuple(bool(x) for x in arr)


def check_log_path(path: str, mode: str) -> None:
    """Raise a clear error now if a log cannot be written at ``path`` in ``mode``."""
    if mode not in ("create", "append", "overwrite"):
        raise ValueError(f"mode must be 'create', 'append' or 'overwrite', got {mode!r}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"cannot write log {path!r}: directory {parent!r} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write log {path!r}: it is a directory")
    exists = os.path.exists(path)
    if mode == "create" and exists:
        raise FileExistsError(f"log file {path!r} already exists; use mode='append' to "
                              f"continue it or mode='overwrite' to replace it")
    if mode == "append" and not exists:
        raise FileNotFoundError(f"cannot append: log file {path!r} does not exist")
    target = path if mode == "append" else parent
    if not os.access(target, os.W_OK):
        raise PermissionError(f"cannot write log {path!r}: {target!r} is not writable")


def _check_step_time(step, time) -> tuple[int, float]:
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    real = (int, float, np.integer, np.floating)
    if isinstance(time, (bool, np.bool_)) or not isinstance(time, real):
        raise ValueError(f"time must be a real number in ps, got {time!r}")
    return int(step), float(time)


def _check_value(name: str, value, shape: tuple, dtype) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"observable {name!r}: value must be real numeric, got dtype {arr.dtype}")
    if arr.shape != tuple(shape):
        raise ValueError(f"observable {name!r}: expected shape {tuple(shape)}, got {arr.shape}")
    if not np.can_cast(arr.dtype, dtype, casting="same_kind"):
        raise ValueError(
            f"observable {name!r}: cannot store dtype {arr.dtype} as {np.dtype(dtype)}")
    return arr.astype(dtype, copy=True)


def _decode(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _login_name() -> str:
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"
