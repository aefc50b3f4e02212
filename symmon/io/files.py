"""Small file helpers shared by front-ends (no math here)."""

from __future__ import annotations

import hashlib
import os
from typing import Optional


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
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
