"""MD throughput: unmonitored MetatomicCalculator vs SymmetryMonitor settings.

Langevin MD (2 fs, 600 K) of Cu/Ni cells; every variant has its own copy of the cell,
calculator and integrator, and the variants run interleaved in blocks of ``--block``
steps (one block each, round robin, ``--rounds`` times) after a short warm-up. A block
is a multiple of ``every`` and ``full_every``, so each one contains the same share of
monitored and full-orbit steps; ms/step is the median over the rounds of block time /
block steps -- but for the overhead budget (``every="auto"``, whose monitored steps are
not aligned with the blocks) the mean over all rounds, compared with the unmonitored
mean, and the mean stride of the monitored steps. Monitored variants write their HDF5 log to a temporary directory.

    python -m benchmarks.md_overhead [--quick]                      # tiny PET, CPU
    python -m benchmarks.md_overhead --big --device cuda            # PET-MAD-sized, GPU
    python -m benchmarks.md_overhead --big --quick                  # CPU smoke test
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings

import numpy as np

from . import _common as C

#: name -> SymmetryMonitor options (None: plain calculator)
VARIANTS = {
    "unmonitored": None,
    "default (auto, 5 %)": {},
    "every 10, 3 rot": {"every": 10},
    "every 1, 2 rot": {"every": 1, "random_rotations": 2},
    "every 1, 4 rot": {"every": 1, "random_rotations": 4},
    "every 25": {"every": 25},
    "every 10, full_every 50": {"every": 10, "full_every": 50},
}
QUICK_VARIANTS = ("unmonitored", "default (auto, 5 %)", "every 10, 3 rot", "every 25")
#: variants run on the larger cells by default (all of them with --all)
LARGE_VARIANTS = ("unmonitored", "default (auto, 5 %)", "every 10, 3 rot", "every 25",
                  "every 10, full_every 50")


class Run:
    """One variant: its atoms, calculator and Langevin integrator."""

    def __init__(self, name, options, model, atoms, device, workdir, chunk):
        from ase import units
        from ase.md.langevin import Langevin
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
        from metatomic_ase import MetatomicCalculator

        from symmon import SymmetryMonitor

        self.name = name
        self.atoms = atoms.copy()
        base = MetatomicCalculator(model, non_conservative=True, neighbor_skin=0.0,
                                   device=device)
        self.monitor = None
        if options is None:
            self.atoms.calc = base
        else:
            self.log = log = os.path.join(workdir, f"{abs(hash(name))}_{len(atoms)}.h5")
            self.monitor = SymmetryMonitor(base, log=log, log_mode="overwrite",
                                           device=device, chunk_size=chunk, **options)
            self.atoms.calc = self.monitor
        MaxwellBoltzmannDistribution(self.atoms, temperature_K=600,
                                     rng=np.random.default_rng(0))
        self.dynamics = Langevin(self.atoms, 2 * units.fs, temperature_K=600, friction=0.02,
                                 rng=np.random.default_rng(0))
        if self.monitor is not None:
            self.monitor.attach(self.dynamics)

    def run(self, steps):
        self.dynamics.run(steps)

    def close(self):
        if self.monitor is not None:
            self.monitor.close()


def measure(model, n_atoms, names, device, block, rounds, warmup, chunk):
    runs = []
    with tempfile.TemporaryDirectory() as workdir:
        atoms = C.cell_with(n_atoms)
        runs = [Run(name, VARIANTS[name], model, atoms, device, workdir, chunk)
                for name in names]
        for run in runs:
            run.run(warmup)  # TorchScript warm-up; step 0 (a full step) happens here
        times = {run.name: [] for run in runs}
        for _ in range(rounds):
            for run in runs:
                C.sync(device)
                start = time.perf_counter()
                run.run(block)
                C.sync(device)
                times[run.name].append((time.perf_counter() - start) / block)
        for run in runs:
            run.close()
        strides = {run.name: mean_stride(run.log) for run in runs if run.monitor is not None}
    return times, strides


def mean_stride(log) -> float:
    """Mean steps between monitored steps of a log (after its first)."""
    from symmon.io.log import read_log

    with read_log(log) as reader:
        strides = reader.observable("monitor_stride")[2]
    return float(np.mean(strides[1:])) if len(strides) > 1 else float("nan")


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--big", action="store_true", help="PET-MAD-sized random-weight PET")
    p.add_argument("--sizes", type=int, nargs="*", default=None)
    p.add_argument("--block", type=int, default=None, help="steps per block (multiple of 50)")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--variants", nargs="*", default=None, help="subset of variant names")
    p.add_argument("--all", action="store_true",
                   help="every variant and 3 rounds on every size (default: a subset and 2 "
                        "rounds above 32 atoms, to stay under ~3 min)")
    args = p.parse_args(argv)
    C.setup_torch(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    print(C.machine_info(args.device))

    if args.big:
        from .make_big_pet import ensure_big_pet

        model = ensure_big_pet()
        sizes = args.sizes or ([64] if args.quick else [64, 256, 500])
        target = 1.25
    else:
        model = C.model_path("tiny_pet_f32.pt")
        sizes = args.sizes or ([32] if args.quick else [32, 108])
        target = 2.0
    all_names = args.variants or (list(QUICK_VARIANTS) if args.quick else list(VARIANTS))
    block = args.block or (10 if args.quick else 50)
    rounds = args.rounds or (1 if args.quick else 3)
    warmup = 2
    print(f"model {model}; blocks of {block} steps x {rounds} rounds (interleaved), "
          f"warm-up {warmup} steps; chunk {args.chunk}\n")

    rows = []
    for n_atoms in sizes:
        names = list(all_names)
        size_rounds = rounds
        if n_atoms > min(sizes) and not (args.all or args.variants or args.quick or args.big):
            names = [n for n in all_names if n in LARGE_VARIANTS]
            size_rounds = args.rounds or 2
        times, strides = measure(model, n_atoms, names, args.device, block, size_rounds,
                                 warmup, args.chunk)
        for name in names:
            statistic = np.mean if VARIANTS[name] == {} else C.median
            t = float(statistic(times[name]))
            ratio = t / float(statistic(times["unmonitored"]))
            rows.append([n_atoms, name, 1000 * t, 1 / t, ratio, strides.get(name, "-"),
                         "-" if name == "unmonitored" else
                         ("yes" if ratio <= target else "no")])
    print(C.table(["atoms", "variant", "ms/step", "steps/s", "x unmonitored",
                   "mean stride", f"<= {target}x"], rows))


if __name__ == "__main__":
    main()
