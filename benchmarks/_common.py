"""Shared helpers of the symmon benchmarks: arguments, machine info, structures, timing.

Every benchmark measures the variants it compares *interleaved* in one run (round
robin, one repeat of each variant after the other) and reports medians and ratios of
medians, so that a noisy, shared machine slows every variant alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="smoke test: fewer sizes/repeats")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: see docs/performance.md)")
    return p


def setup_torch(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(threads)))


def machine_info(device: str = "cpu") -> str:
    import torch

    lines = [f"python {platform.python_version()}, torch {torch.__version__}, "
             f"threads {torch.get_num_threads()} (interop {torch.get_num_interop_threads()}),"
             f" os.cpu_count {os.cpu_count()}"]
    try:
        import metatomic.torch as mta
        import metatomic_ase

        lines.append(f"metatomic-torch {mta.__version__}, metatomic-ase "
                     f"{getattr(metatomic_ase, '__version__', '?')}")
    except Exception:  # pragma: no cover
        pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    lines.append(f"cpu: {cpu}")
    try:
        lines.append(f"load average: {' '.join(open('/proc/loadavg').read().split()[:3])}")
    except OSError:
        pass
    if device == "cuda":
        lines.append(f"device: {torch.cuda.get_device_name()} "
                     f"(CUDA {torch.version.cuda})")
    else:
        lines.append("device: cpu")
    return "\n".join(lines)


def cu_ni_cell(repeats, seed: int = 0, ni_fraction: float = 0.3, rattle: float = 0.03,
               a: float = 3.58):
    """Rattled fcc Cu/Ni cell: ``repeats`` of the 4-atom cubic cell (30 % Ni)."""
    import ase.build

    if isinstance(repeats, int):
        repeats = (repeats, repeats, repeats)
    atoms = ase.build.bulk("Cu", "fcc", a=a, cubic=True).repeat(tuple(repeats))
    rng = np.random.default_rng(seed)
    n_ni = int(round(ni_fraction * len(atoms)))
    atoms.numbers[rng.choice(len(atoms), size=n_ni, replace=False)] = 28
    atoms.rattle(rattle, seed=seed)
    return atoms


#: number of atoms -> repeats of the cubic fcc cell
CELLS = {32: (2, 2, 2), 64: (2, 2, 4), 108: (3, 3, 3), 256: (4, 4, 4), 500: (5, 5, 5)}


def cell_with(n_atoms: int, seed: int = 0):
    return cu_ni_cell(CELLS[n_atoms], seed=seed)


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def interleaved(variants: Dict[str, Callable[[], object]], repeats: int,
                device: str = "cpu", warmup: int = 1) -> Dict[str, List[float]]:
    """Wall times of each variant, measured round robin ``repeats`` times."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
            sync(device)
    times: Dict[str, List[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> str:
    """min-max of the repeats, to show the noise."""
    return f"{min(values):.3g}-{max(values):.3g}"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (as kept in benchmarks/results/)."""
    def fmt(x):
        if isinstance(x, float):
            if x != x:
                return "nan"
            if x == 0:
                return "0"
            if abs(x) >= 1000 or abs(x) < 1e-3:
                return f"{x:.3e}"
            return f"{x:.3g}"
        return str(x)

    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h))
              for i, h in enumerate(header)]
    out = ["| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join(out)


def model_path(name: str = "tiny_pet.pt") -> str:
    from symmon.frontends.demo import bundled_model_path

    return bundled_model_path(name)


def timing_model(big: bool) -> str:
    """The model the timing benchmarks use: the PET-MAD-sized random-weight PET
    (``--big``, built once by make_big_pet) or the bundled tiny PET in float32."""
    if big:
        from .make_big_pet import ensure_big_pet

        return ensure_big_pet()
    return model_path("tiny_pet_f32.pt")
