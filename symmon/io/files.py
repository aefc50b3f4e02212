"""Small file helpers shared by front-ends (no math here)."""

from __future__ import annotations

import hashlib
import math
import os
from typing import Mapping, Optional

import numpy as np


def file_sha256(path) -> Optional[str]:
    """SHA-256 of a file's bytes, or ``None`` when ``path`` is not an existing file."""
    if path is None or not os.path.isfile(path):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomically(path, data) -> None:
    """Write ``data`` (str or bytes) to ``path`` whole or not at all: a temporary file
    beside it, fsync'ed, then renamed over it (removed if anything fails)."""
    def write(tmp):
        with open(tmp, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())

    write_through(path, write)


def write_through(path, write) -> None:
    """``write(temporary path)`` then rename onto ``path``: no half-written file (the
    temporary file is removed if anything fails); one sentence for a missing directory
    or a directory given as the file."""
    directory, base = os.path.split(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path!r}: directory {directory!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"cannot write {path!r}: it is a directory; give a file name")
    partial = os.path.join(directory, f".{os.getpid()}.partial.{base}")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def jsonable(x):
    """Plain Python types for JSON; NaN/inf become None."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    return x
