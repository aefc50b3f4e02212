"""A toy distributed job for tests/test_ranks.py: sums of squares of items, resumable.

usage: python -m torch.distributed.run --nproc-per-node N _ranks_child.py OUT [KILL_AFTER]
Rank 0 writes OUT (JSON: per-item values and the reduced total). With KILL_AFTER, rank 1
kills itself (SIGKILL) after finishing that many items.
"""

import json
import os
import signal
import sys

import numpy as np

from symmon.frontends.ranks import PartialResults, Ranks

output = sys.argv[1]
kill_after = int(sys.argv[2]) if len(sys.argv) > 2 else None
items = list(range(11))
with Ranks.from_environment("cpu") as ranks:
    parts = PartialResults(output, ranks, {"items": len(items)})
    mine = parts.mine(items)
    for count, item in enumerate(mine, 1):
        value = np.sin(np.arange(4) * (item + 1)).tolist()
        parts.add(item, value)
        if kill_after is not None and ranks.rank == 1 and count == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    ranks.barrier()
    results = {key: parts.load(key) for key in parts.keys()}
    total = ranks.sum(np.sum([results[i] for i in ranks.share(items)], axis=0))
    if ranks.is_main:
        with open(output, "w") as handle:
            json.dump({"values": {str(k): v for k, v in sorted(results.items())},
                       "total": total.tolist(), "world_size": ranks.world_size,
                       "new": len(items) - len(parts.finished)}, handle)
    parts.clear()
