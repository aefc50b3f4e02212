"""The ranks of a ``torchrun`` launch: who does which item, sums over ranks, who writes.

The offline analyses (``symmon eval``, ``symmon checkpoints``, ``symmon layers``) run
unchanged as one process or under ``torchrun --nproc-per-node N`` (multi-node too)::

    with Ranks.from_environment(device) as ranks:
        parts = PartialResults(output, ranks, settings)
        for key in parts.mine(keys):          # unfinished items of this rank
            parts.add(key, evaluate(key))     # kept (fsync'ed) as each one finishes
        totals = ranks.sum(partial_sums)      # torch.distributed all-reduce
        if ranks.is_main: write(...)          # rank 0 writes the one output file

Each rank uses its own device (``cuda:LOCAL_RANK`` where GPUs exist) and the backend
follows it (NCCL on GPUs, gloo on CPUs). :class:`PartialResults` makes a run resumable:
every finished item is appended (and fsync'ed) to its rank's JSON-lines file beside the
output, so a killed run, restarted with any number of ranks, skips what was finished.
Floats go through JSON's shortest round-trip repr, so results are bit-identical to a
run that was never interrupted.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Any, Dict, Hashable, Iterable, List, Optional, Sequence

import numpy as np


class Ranks:
    """This process's place among the ranks (a single process is rank 0 of 1)."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0,
                 device: Optional[str] = None):
        self.rank, self.world_size, self.local_rank = int(rank), int(world_size), int(local_rank)
        self.device = device or _default_device(self.local_rank)
        self._group = None

    @classmethod
    def from_environment(cls, device: Optional[str] = None) -> "Ranks":
        """Ranks from torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (or one process)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        ranks = cls(int(os.environ.get("RANK", "0")), world_size,
                    int(os.environ.get("LOCAL_RANK", "0")), device)
        if world_size > 1:
            ranks._start()
        return ranks

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def share(self, items: Sequence) -> List:
        """This rank's items: every ``world_size``-th, starting at ``rank``."""
        return list(items)[self.rank::self.world_size]

    def sum(self, values) -> np.ndarray:
        """Element-wise sum of ``values`` over ranks (float64)."""
        array = np.asarray(values, dtype=np.float64)
        if not self.distributed:
            return array
        import torch
        import torch.distributed as dist

        tensor = torch.as_tensor(array, device=self._reduce_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu().numpy()

    def gather(self, value: Any) -> List[Any]:
        """Every rank's ``value`` (any picklable object), on every rank, in rank order."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        gathered: List[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self._group is not None:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._group = None

    def __enter__(self) -> "Ranks":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        import torch.distributed as dist

        backend = "nccl" if self.device.startswith("cuda") else "gloo"
        if backend == "nccl":
            import torch

            torch.cuda.set_device(self.device)
        dist.init_process_group(backend=backend)
        self._group = dist.group.WORLD

    def _reduce_device(self) -> str:
        return self.device if self.device.startswith("cuda") else "cpu"


def _default_device(local_rank: int) -> str:
    import torch

    return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"


class PartialResults:
    """Finished items of a run, kept beside ``output`` until the run is complete.

    One JSON line per item (``{"key": ..., "value": ...}``) in ``<output>.parts/`` —
    one file per rank, so ranks never write the same file. ``settings`` (any JSON) is
    stored once; a restart with other settings is refused rather than mixed.
    """

    def __init__(self, output: str, ranks: Ranks, settings: Any):
        self.folder = os.fspath(output) + ".parts"
        self.ranks = ranks
        self.settings = json.loads(json.dumps(settings, sort_keys=True))
        self._path = os.path.join(self.folder, f"rank-{ranks.rank:05d}-of-"
                                               f"{ranks.world_size:05d}.jsonl")
        self._check_settings()
        #: items finished by earlier attempts, read by every rank before any writes
        self.finished = self.done()
        ranks.barrier()

    def mine(self, keys: Sequence) -> List:
        """This rank's share of the ``keys`` not finished by an earlier attempt."""
        return self.ranks.share([key for key in keys if _key(key) not in self.finished])

    def done(self) -> Dict[Hashable, Any]:
        """Every finished item of every rank of every earlier attempt: key -> value."""
        finished: Dict[Hashable, Any] = {}
        for path in sorted(glob.glob(os.path.join(self.folder, "rank-*.jsonl"))):
            for line in _complete_lines(path):
                record = json.loads(line)
                finished[_key(record["key"])] = record["value"]
        return finished

    def add(self, key, value) -> None:
        """Record one finished item (flushed and fsync'ed before returning)."""
        line = json.dumps({"key": key, "value": _jsonable(value)}) + "\n"
        with open(self._path, "a") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def clear(self) -> None:
        """Remove the partial results (rank 0, once the output is written)."""
        self.ranks.barrier()
        if self.ranks.is_main:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _check_settings(self) -> None:
        path = os.path.join(self.folder, "settings.json")
        if self.ranks.is_main:
            os.makedirs(self.folder, exist_ok=True)
            if os.path.exists(path):
                with open(path) as handle:
                    stored = json.load(handle)
                if stored != self.settings:
                    raise ValueError(
                        f"{self.folder} holds partial results of a run with other settings "
                        f"({stored}); remove it or use another output")
            else:
                _write_atomically(path, json.dumps(self.settings, sort_keys=True))
        self.ranks.barrier()


def _complete_lines(path: str) -> Iterable[str]:
    """Lines of ``path`` that were written whole (a kill can cut the last one)."""
    with open(path) as handle:
        for line in handle:
            if line.endswith("\n"):
                yield line


def _key(key):
    return tuple(_key(k) for k in key) if isinstance(key, list) else key


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
