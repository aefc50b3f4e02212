"""``symmon export RUN_DIR``: the worst systems of a batched run (``TorchSimMonitor``).

Each system's log is ranked as ``symmon export`` ranks one log's steps
(:func:`~.export.worst_steps`: ε of ``--quantity`` per atom, forces the RMS over atoms);
a system's number is its worst monitored step's. The ``--worst N`` systems (default 10)
are written worst first, one frame each -- that worst step's structure, exactly as
``symmon export system-XXXX.h5 --worst 1`` writes it -- with ``symmon_system_id``,
``symmon_system_rank`` and ``symmon_system_formula`` added to its ``info``
(extended XYZ or a chemiscope dataset, as for one log).
"""

from __future__ import annotations

import os
from typing import Optional

from ..io.log import read_log
from ..io.run_index import read_index
from .export import DEFAULT_WORST, FORMATS, exported_frames, worst_steps


def worst_systems(directory, n: Optional[int] = DEFAULT_WORST, quantity: str = "forces"):
    """``[(eps, unit, system entry, worst step)]`` of the ``n`` worst systems (None:
    all), worst first; systems without a log or without monitored steps are left out."""
    ranked = []
    for entry in read_index(directory)["systems"]:
        if entry["path"] is None:
            continue
        with read_log(entry["path"]) as reader:
            try:
                worst = worst_steps(reader, 1, quantity)
            except ValueError:  # no monitored step (or no such quantity) in this log
                continue
        if worst:
            ranked.append((worst[0].eps, worst[0].unit, entry, worst[0].step))
    ranked.sort(key=lambda row: -row[0] if row[0] == row[0] else float("inf"))
    return ranked if n is None else ranked[:n]


def run_export_systems(directory, output: str, *, fmt: Optional[str] = None,
                       worst: Optional[int] = None, quantity: str = "forces") -> int:
    """Write the worst systems' worst steps to ``output``; print one line; return 0."""
    from ..io.structures import write_chemiscope, write_extxyz

    output = os.fspath(output)
    fmt = fmt or ("chemiscope" if output.endswith((".json", ".json.gz")) else "extxyz")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if worst is not None and worst < 1:
        raise ValueError(f"--worst must be at least 1, got {worst}")
    ranked = worst_systems(directory, worst or DEFAULT_WORST, quantity)
    if not ranked:
        raise ValueError(f"{os.fspath(directory)}: no system has a monitored step of "
                         f"{quantity}; nothing to export")
    frames = []
    for rank, (eps, unit, entry, step) in enumerate(ranked, start=1):
        with read_log(entry["path"]) as reader:  # one file: the step's first occurrence
            atoms = exported_frames(reader, [(step, 0)], {(step, 0): 1}, quantity)[0]
        atoms.info.update(symmon_system_id=entry["id"], symmon_system_rank=rank,
                          symmon_system_formula=entry["formula"])
        frames.append(atoms)
    if fmt == "chemiscope":
        write_chemiscope(output, frames, os.path.basename(os.path.normpath(directory)))
    else:
        write_extxyz(output, frames)
    eps, unit, entry, step = ranked[0]
    print(f"symmon export: wrote the {len(frames)} worst system(s) by {quantity} ε ({fmt}) "
          f"to {output}; worst: system {entry['id']} ({entry['formula']}), {eps:.3g} "
          f"{unit.replace('angstrom', 'Å')} at step {step}")
    return 0
