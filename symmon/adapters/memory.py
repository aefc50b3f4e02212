"""How many rotated copies go into one forward call: chosen from the memory they take.

One :class:`ChunkPlanner` per adapter plans every orbit call of that adapter (monitored,
calibration and full-orbit steps, averaging, ``symmon eval``, purification, layer
analysis: all of them evaluate through the adapter), and :meth:`ChunkPlanner.run`
drives the chunks:

* **copies per forward** (``chunk``): an explicit ``chunk_size`` is the largest chunk.
  Otherwise, on a CUDA device, ``chunk = floor(SAFETY * available / per_copy)`` with
  ``available`` the device's free memory plus what PyTorch's caching allocator holds
  unused (``torch.cuda.mem_get_info``, ``memory_reserved - memory_allocated``) and
  ``per_copy`` the memory one copy of this structure takes: measured as
  ``(max_memory_allocated - memory_allocated before) / k`` on the first call at a
  structure size (starting with a one-copy probe; this resets the device's
  peak-memory statistics on those calls) or, where the family states
  ``memory_scales_with`` (atoms or neighbour pairs), scaled linearly in that size from
  the largest per-unit cost measured so far. On the CPU, where allocations are not counted, at most
  :data:`CPU_ATOMS_PER_FORWARD` atoms per forward (and at most :data:`CPU_MAX_CHUNK`
  copies): the CPU's throughput does not grow with larger batches, its memory does.
  The copies are split into equal chunks (8 copies with room for 5: 4 + 4).
* **out of memory** (``torch.OutOfMemoryError``, the CUDA and CPU allocators'
  ``RuntimeError`` "out of memory" / "can't allocate memory", Python's
  ``MemoryError``): what the chunk allocated is released (``torch.cuda.empty_cache``),
  the chunk is halved and retried, and the size that failed is remembered; one copy is
  tried twice (a fragmented cache fails where an emptied one does not); when one
  copy does not fit, :class:`OrbitOutOfMemory` says so in one sentence (the monitor then
  logs the step as not monitored; its returned prediction is the plain call's).
* **memory left behind**: after a call whose chunks grew the caching allocator's
  reservation by more than :data:`RELEASE_FRACTION` of the device, the unused cache is
  returned (``torch.cuda.empty_cache``), so that the orbit's large blocks do not stay
  reserved next to the user's own calls.
"""

from __future__ import annotations

import gc
import math
from typing import Callable, Dict, List, Optional, TypeVar

import torch

#: fraction of the available device memory one chunk may take (the rest: the caching
#: allocator's rounding, fragmentation and what a model allocates outside the measured
#: peak, e.g. cuBLAS workspaces)
SAFETY = 0.8
#: most copies in one forward call on a GPU
GPU_MAX_CHUNK = 256
#: on the CPU: most atoms (copies x atoms) and most copies in one forward call
CPU_ATOMS_PER_FORWARD = 8192
CPU_MAX_CHUNK = 32
#: return the unused cache when an orbit call grew the reservation by more than this
#: fraction of the device's memory
RELEASE_FRACTION = 0.125

T = TypeVar("T")


class OrbitOutOfMemory(MemoryError):
    """One copy of the structure does not fit in the device's free memory."""


def check_chunk_size(chunk_size) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")


def is_out_of_memory(error: BaseException) -> bool:
    """An allocation failure of torch or Python (CUDA or CPU), not any other error."""
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    if isinstance(error, RuntimeError):  # TorchScript re-raises allocator errors as these
        text = str(error)
        return ("CUDA out of memory" in text or "CUBLAS_STATUS_ALLOC_FAILED" in text
                or "can't allocate memory" in text)
    return False


def _reason(error: BaseException) -> str:
    """The allocator's own sentence ("CUDA out of memory. Tried to allocate 8.01 GiB"),
    not TorchScript's wrapping of it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        lowered = line.lower()
        if "out of memory" in lowered or "allocate" in lowered:
            line = line.split(". GPU")[0].rstrip(".")
            return line.split(": ", 1)[1] if line.startswith(("RuntimeError: ",
                                                               "OutOfMemoryError: ")) else line
    return lines[0] if lines else type(error).__name__


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.3g} GiB"


class ChunkPlanner:
    """Copies per forward call for one adapter, from the memory a copy takes.

    :param device: the model's torch device
    :param chunk_size: explicit copies per call (the largest chunk); ``None``: planned
    :param memory_scales_with: where a model family states it, what one copy's memory
        is proportional to, as the adapter counts it: ``"atoms"`` or ``"pairs"``
        (neighbour pairs; the adapter passes that ``size`` to :meth:`run`): a new size
        is then planned from the measured ones, scaled. ``None`` (default): the first
        call at a new size starts with a one-copy probe.
    """

    def __init__(self, device, chunk_size: Optional[int] = None,
                 memory_scales_with: Optional[str] = None):
        if chunk_size is not None:
            check_chunk_size(chunk_size)
        self.device = torch.device(device)
        self.chunk_size = chunk_size
        self.memory_scales_with = memory_scales_with
        self.cuda = self.device.type == "cuda" and torch.cuda.is_available()
        #: size -> bytes one copy took (the largest measured at that size)
        self.per_copy: Dict[int, float] = {}
        #: size -> largest chunk known to fit (after an out-of-memory at twice that)
        self.fits: Dict[int, int] = {}
        #: the chunk of the last forward call, the largest so far, and how many
        #: out-of-memory retries so far
        self.last_chunk: Optional[int] = None
        self.largest = 0
        self.retries = 0

    # -- planning ------------------------------------------------------------------
    def available(self) -> float:
        """Bytes a chunk may use now: the device's free memory and the caching
        allocator's unused reservation (CUDA only)."""
        free, _ = torch.cuda.mem_get_info(self.device)
        unused = torch.cuda.memory_reserved(self.device) - \
            torch.cuda.memory_allocated(self.device)
        return float(free + max(unused, 0))

    def estimate(self, size: int) -> Optional[float]:
        """Bytes of one copy at ``size``: measured there, else (where the family states
        ``memory_scales_with``) scaled linearly from the largest per-unit cost measured;
        ``None`` when unknown."""
        if size in self.per_copy:
            return self.per_copy[size]
        if not self.per_copy or self.memory_scales_with is None:
            return None
        return max(b / max(s, 1) for s, b in self.per_copy.items()) * max(size, 1)

    def largest_chunk(self, n_atoms: int, size: Optional[int] = None) -> int:
        """Most copies one forward call may hold for a structure of ``n_atoms`` whose
        copy's memory scales with ``size`` (default ``n_atoms``)."""
        size = n_atoms if size is None else size
        if self.chunk_size is not None:
            limit = self.chunk_size
        elif self.cuda:
            per_copy = self.estimate(size)
            limit = 1 if per_copy is None else \
                max(1, min(GPU_MAX_CHUNK, int(SAFETY * self.available() / max(per_copy, 1.0))))
        else:
            limit = max(1, min(CPU_MAX_CHUNK, CPU_ATOMS_PER_FORWARD // max(n_atoms, 1)))
        return min(limit, self.fits.get(size, limit))

    def plan(self, n_copies: int, n_atoms: int, size: Optional[int] = None) -> int:
        """Copies of the next forward call, ``n_copies`` still to evaluate: an explicit
        ``chunk_size``, else equal chunks of at most :meth:`largest_chunk`."""
        limit = self.largest_chunk(n_atoms, size)
        if self.chunk_size is not None:
            return min(limit, n_copies)
        return math.ceil(n_copies / math.ceil(n_copies / limit))

    # -- running -------------------------------------------------------------------
    def run(self, n_copies: int, n_atoms: int, forward: Callable[[int, int], T], *,
            size: Optional[int] = None, what: Optional[str] = None) -> List[T]:
        """``[forward(start, stop), ...]`` over chunks covering ``range(n_copies)``,
        halving the chunk on out-of-memory; :class:`OrbitOutOfMemory` when one copy
        does not fit (``what`` names it in the sentence; ``size``: :meth:`largest_chunk`)."""
        size = n_atoms if size is None else size
        what = what or f"one copy of this structure ({n_atoms} atoms)"
        results: List[T] = []
        reserved = torch.cuda.memory_reserved(self.device) if self.cuda else 0
        start, failed_at_one = 0, False
        while start < n_copies:
            k = self.plan(n_copies - start, n_atoms, size)
            self.last_chunk, self.largest = k, max(self.largest, k)
            failed = None
            try:
                results.append(self._measured(forward, start, start + k, size))
            except Exception as error:  # noqa: BLE001 - only allocation failures handled
                if not is_out_of_memory(error):
                    raise
                failed = _reason(error)
            if failed is None:
                start += k
                continue
            self.release()  # the chunk's tensors went with the exception's frames
            self.retries += 1
            if k == 1:  # once more with the cache released (a fragmented cache fails too)
                if failed_at_one:
                    raise OrbitOutOfMemory(self._does_not_fit(what, failed)) from None
                failed_at_one = True
            self.fits[size] = (k + 1) // 2
        if self.cuda and torch.cuda.memory_reserved(self.device) - reserved > \
                RELEASE_FRACTION * torch.cuda.get_device_properties(self.device).total_memory:
            torch.cuda.empty_cache()
        return results

    def _measured(self, forward, start, stop, size):
        """``forward(start, stop)``; on a CUDA device and a size not yet measured, the
        peak memory per copy it took."""
        if not self.cuda or size in self.per_copy:
            return forward(start, stop)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        result = forward(start, stop)
        peak = torch.cuda.max_memory_allocated(self.device)
        self.per_copy[size] = max(self.per_copy.get(size, 0.0),
                                  (peak - before) / (stop - start))
        return result

    def release(self) -> None:
        """Free what a failed chunk left: unreachable tensors, then the CUDA cache."""
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def _does_not_fit(self, what: str, error: str) -> str:
        where = str(self.device)
        if self.cuda:
            where += f", {_gib(self.available())} free"
        return (f"{what} does not fit in memory ({where}: {error}); free memory or use "
                "a device with more")
