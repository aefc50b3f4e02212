"""The ranks of a ``torchrun`` launch: who does which item, sums over ranks, who writes.

The offline analyses (``symmon eval``, ``symmon checkpoints``, ``symmon layers``) run
unchanged as one process or under ``torchrun --nproc-per-node N`` (multi-node too)::

    with Ranks.from_environment(device) as ranks:
        parts = PartialResults(output, ranks, settings)
        for key in parts.mine(keys):          # unfinished items of this rank
            parts.add(key, evaluate(key))     # kept (fsync'ed) as each one finishes
        ranks.barrier()
        if ranks.is_main:                     # rank 0 combines, in key order, and
            write(combine(parts.load(k) for k in parts.keys()))   # writes the output
        parts.clear()

:func:`evaluate_items` is the loop and the gather of that pattern (``symmon eval`` and
``symmon purify`` use it). Each rank uses its own device (``cuda:LOCAL_RANK`` where GPUs exist) and the backend
follows it (NCCL on GPUs, gloo on CPUs). :class:`PartialResults` makes a run resumable:
every finished item is written whole (fsync, rename) beside the output, so a killed
run, restarted with any number of ranks, skips what was finished. Rank 0 combines the
items in key order, so the output is bit-identical to a one-process run that was never
interrupted, whatever the number of ranks.
"""

from __future__ import annotations

import glob
import json
import os
import pickle
import shutil
from typing import Any, Callable, Dict, Hashable, Iterable, List, Optional, Sequence

import numpy as np

from ..io.files import write_atomically


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


def rank_device(device: Optional[str]) -> Optional[str]:
    """``cuda`` under torchrun means each rank's own GPU (``cuda:LOCAL_RANK``)."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def _default_device(local_rank: int) -> str:
    import torch

    return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"


class PartialResults:
    """Finished items of a run, kept beside ``output`` until the run is complete.

    One file per item (``<output>.parts/item-<key>.pkl``, written to a temporary name
    and renamed, so a kill leaves whole items only), readable by every rank: the folder
    must be on a filesystem all ranks see (any cluster's shared filesystem; one node's
    disk for one node). Keys are ints or tuples of ints. ``settings`` (any JSON) are
    stored once; a restart with other settings is refused rather than mixed. Values are
    pickled, so arrays come back bit-identical.
    """

    def __init__(self, output: str, ranks: Ranks, settings: Any):
        self.folder = os.fspath(output) + ".parts"
        self.ranks = ranks
        self.settings = json.loads(json.dumps(settings, sort_keys=True))
        self._check_settings()
        #: keys finished by earlier attempts, read by every rank before any writes
        self.finished = set(self.keys())
        ranks.barrier()

    def mine(self, keys: Sequence) -> List:
        """This rank's share of the ``keys`` not finished by an earlier attempt."""
        return self.ranks.share([key for key in keys if _key(key) not in self.finished])

    def keys(self) -> List[Hashable]:
        """Keys of every finished item (of every rank and attempt), sorted."""
        names = glob.glob(os.path.join(self.folder, "item-*.pkl"))
        return sorted(_parse_key(os.path.basename(name)[5:-4]) for name in names)

    def add(self, key, value) -> None:
        """Record one finished item (fsync'ed and renamed into place before returning)."""
        path = os.path.join(self.folder, f"item-{_key_text(key)}.pkl")
        write_atomically(path, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))

    def load(self, key) -> Any:
        with open(os.path.join(self.folder, f"item-{_key_text(key)}.pkl"), "rb") as handle:
            return pickle.load(handle)

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
                write_atomically(path, json.dumps(self.settings, sort_keys=True).encode())
        self.ranks.barrier()


def evaluate_items(keys: Iterable, evaluate: Callable[[Any], Any],
                   parts: Optional[PartialResults] = None, *, progress: bool = True,
                   desc: Optional[str] = None, unit: str = "structure") -> Optional[Dict]:
    """``{key: evaluate(key)}`` over ``keys`` (given in increasing order), with a progress bar.

    Without ``parts`` (one process) every key is evaluated and kept in memory. With
    ``parts`` (a :class:`PartialResults`) this rank evaluates its share of the keys not
    finished by an earlier attempt and keeps each value in ``parts`` as it finishes;
    after a barrier rank 0 gets the values of every rank and attempt, in key order, and
    the other ranks get ``None``. The bar is shown on rank 0 only.
    """
    from tqdm.auto import tqdm

    keys = list(keys)
    main = parts is None or parts.ranks.is_main
    values = {}
    for key in tqdm(keys if parts is None else parts.mine(keys), desc=desc, unit=unit,
                    disable=not (progress and main)):
        value = evaluate(key)
        if parts is None:
            values[key] = value
        else:
            parts.add(key, value)
    if parts is None:
        return values
    parts.ranks.barrier()
    return {key: parts.load(key) for key in parts.keys()} if main else None


def _key(key):
    return tuple(int(k) for k in key) if isinstance(key, (list, tuple)) else int(key)


def _key_text(key) -> str:
    key = _key(key)
    return "_".join(map(str, key)) if isinstance(key, tuple) else str(key)


def _parse_key(text: str):
    parts = [int(part) for part in text.split("_")]
    return tuple(parts) if len(parts) > 1 else parts[0]
