"""Validation of what a log writer is given: one clear ``ValueError``/``OSError`` sentence each."""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from .h5md import ObservableSpec
from .lock import PathLock


def check_specs(observables: Mapping[str, ObservableSpec]) -> dict[str, ObservableSpec]:
    specs = dict(observables)
    for name, spec in specs.items():
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ValueError(f"invalid observable name {name!r} (non-empty, no '/')")
        if not isinstance(spec, ObservableSpec):
            raise ValueError(
                f"observable {name!r}: expected an ObservableSpec, got {type(spec).__name__}")
    return specs


def check_species(species) -> np.ndarray:
    arr = np.asarray(species)
    if arr.ndim != 1 or arr.size == 0 or arr.dtype.kind not in "iu" or np.any(arr < 0):
        raise ValueError(f"species must be a non-empty 1-D array of atomic numbers, got {arr!r}")
    return arr.astype(np.int64)


def check_pbc(pbc) -> tuple[bool, bool, bool]:
    arr = np.asarray(pbc)
    if arr.shape == ():
        arr = np.repeat(arr, 3)
    if arr.shape != (3,) or arr.dtype.kind not in "bi":
        raise ValueError(f"pbc must be 3 booleans, got {pbc!r}")
    return tuple(bool(x) for x in arr)


def as_log_path(path) -> str:
    """``path`` as a string, refused in one sentence when it is no file path."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"log must be a file path (a str or os.PathLike), got "
                         f"{type(path).__name__} {path!r}; e.g. log='run.h5'")
    path = os.fspath(path)
    if not path.strip():
        raise ValueError("log is an empty path; give a file name, e.g. log='run.h5'")
    return path


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
        raise FileExistsError(exists_message(path))
    if mode == "append" and not exists:
        raise FileNotFoundError(f"cannot append: log file {path!r} does not exist")
    target = path if mode == "append" else parent
    if not os.access(target, os.W_OK):
        raise PermissionError(f"cannot write log {path!r}: {target!r} is not writable")
    PathLock(path).probe()


def check_step_time(step, time) -> tuple[int, float]:
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    real = (int, float, np.integer, np.floating)
    if isinstance(time, (bool, np.bool_)) or not isinstance(time, real):
        raise ValueError(f"time must be a real number in ps, got {time!r}")
    return int(step), float(time)


def check_value(name: str, value, shape: tuple, dtype) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"observable {name!r}: value must be real numeric, got dtype {arr.dtype}")
    if arr.shape != tuple(shape):
        raise ValueError(f"observable {name!r}: expected shape {tuple(shape)}, got {arr.shape}")
    if not np.can_cast(arr.dtype, dtype, casting="same_kind"):
        raise ValueError(
            f"observable {name!r}: cannot store dtype {arr.dtype} as {np.dtype(dtype)}")
    return arr.astype(dtype, copy=True)


def exists_message(path: str) -> str:
    """The one sentence for a log that already exists, naming the fix in each front-end."""
    return (f"log file {path!r} already exists; continue it with log_mode='append' "
            "(SymmetryMonitor) or replace it with log_mode='overwrite' (symmon ipi: "
            "--overwrite)")
