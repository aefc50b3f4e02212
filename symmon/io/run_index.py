"""A batched run's directory: one symmon log per system and ``index.json`` naming them.

``symmon.frontends.torchsim.TorchSimMonitor(model, log="run")`` writes::

    run/index.json          what the run holds (below), rewritten whole at every change
    run/system-0000.h5      system 0's log: an ordinary symmon log (docs/log-format.md)
    run/system-0001.h5      ...

``index.json`` (``"format": "symmon-run"``, ``"version": 1``) lists every system that
entered the batch, in order of entry: ``id`` (the number in its file name), ``file``
(relative to the directory), ``formula``, ``n_atoms``, ``pbc``, ``first_step`` and
``last_step`` (the run's batch steps at which it entered and was last evaluated),
``left`` (true once it has left the batch: a converged relaxation, a finished bin).
A system that was never monitored has no file yet (its entry says so: ``"logged":
false``). The index is written atomically (:func:`symmon.io.files.write_atomically`): a
killed run leaves the last complete index, and every listed log is valid up to its
last flush (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

from .files import write_atomically

INDEX = "index.json"
FORMAT = "symmon-run"
VERSION = 1


def system_file(system_id: int) -> str:
    return f"system-{system_id:04d}.h5"


def is_run_directory(path) -> bool:
    """Whether ``path`` is a batched run's directory (it holds ``index.json``)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, INDEX))


def write_index(directory, systems: List[Dict], metadata: Optional[Dict] = None) -> None:
    """Write ``directory/index.json`` whole (``systems``: the entries above)."""
    document = {"format": FORMAT, "version": VERSION, "metadata": dict(metadata or {}),
                "systems": systems}
    write_atomically(os.path.join(directory, INDEX),
                     json.dumps(document, indent=1, default=str))


def read_index(directory) -> Dict:
    """The index of a run directory: ``{"metadata": ..., "systems": [...]}``, each
    system with ``path`` (absolute; ``None`` when it has no log file)."""
    path = os.path.join(directory, INDEX)
    try:
        with open(path) as handle:
            document = json.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"{directory!r} is no batched run's directory: it has no "
                                f"{INDEX}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path!r} is not valid JSON ({error})") from None
    if document.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a symmon run index (format "
                         f"{document.get('format')!r}, expected {FORMAT!r})")
    for system in document["systems"]:
        file = os.path.join(directory, system["file"])
        system["path"] = file if os.path.isfile(file) else None
    return document
