"""Make ``log_v1.h5``: a tiny schema-version-1 symmon log (the v1 reader's fixture).

It was made by running this script at commit 63fa950 (the last commit whose
``symmon.io.log.LogWriter`` wrote schema version 1)::

    git worktree add /tmp/v1 63fa950 && PYTHONPATH=/tmp/v1 python tests/data/make_log_v1.py

The content is ``tests/_log_writer_child.data(step)`` for steps 0..11, spectrum
every 5th step, metadata ``{"seed": 7}`` (what tests/test_log.py expects).
"""

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import _log_writer_child as child  # noqa: E402
from symmon.io.log import SCHEMA_VERSION, LogWriter  # noqa: E402

assert SCHEMA_VERSION == 1, "run this script with the v1 writer (commit 63fa950)"
path = HERE / "log_v1.h5"
with LogWriter(path, child.specs(), child.SPECIES, metadata={"seed": 7}, mode="overwrite",
               flush_every=5, author="symmon-tests") as log:
    for step in range(12):
        child.write_step(log, step)
print(path, path.stat().st_size, "bytes")
