"""Profile of a monitored MD step (cProfile), torch threads 1 vs N, TorchScript warm-up.

0. the wrapper's own cost on *unmonitored* steps: MD (velocity Verlet) through the bare
   ``MetatomicCalculator`` and through ``SymmetryMonitor(every=10**9, log=..., attached)``,
   32 and 108 atoms; each run times its base calculator's ``calculate`` inline, so
   ``(run time - base time) / steps`` is the integrator + wrapper cost per step, robust
   to a loaded machine; the wrapper's cost is the difference between the two runs,
   reported as a fraction of the median base calculation; plus the cProfile of the
   unmonitored step's symmon/ASE/h5py frames;
1. cProfile of ``--steps`` Langevin steps of a 32-atom Cu/Ni cell under the default
   SymmetryMonitor (every 1, 4 random rotations, log written), grouped into the parts
   that matter (cumulative seconds per step of selected functions) + the raw top list;
2. the plain and the monitored step with ``torch.set_num_threads(1)`` and ``(N)``
   (N = os.cpu_count()), switched back and forth in the same process, interleaved;
3. TorchScript warm-up: the first calls of a fresh plain calculator.

    python -m benchmarks.profile_step [--quick] [--steps 40] [--only-unmonitored]
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import tempfile
import time
import warnings

from . import _common as C

#: label -> (file suffix, function name) whose cumulative time is reported
PARTS = [
    ("monitored step total (SymmetryMonitor.calculate)", "symmon/frontends/calculator.py", "calculate"),
    ("  monitor (Monitor.calculate)", "symmon/monitoring/monitor.py", "calculate"),
    ("  base calculator (MetatomicCalculator.calculate)", "metatomic_ase/_calculator.py",
     "calculate"),
    ("  random grid (symmon random_grid)", "symmon/core/grids.py", "random_grid"),
    ("  orbit: MetatomicOrbitModel.evaluate", "symmon/adapters/metatomic.py", "evaluate"),
    ("    System + neighbour list (system)", "symmon/adapters/orbit_systems.py", "system"),
    ("    copies (copies)", "symmon/adapters/orbit_systems.py", "copies"),
    ("      O3Transformations.__init__ (Wigner cache)",
     "metatomic/torch/o3/_transformations.py", "__init__"),
    ("      transform_systems", "metatomic/torch/o3/_transformations.py",
     "transform_systems"),
    ("    model forward (AtomisticModel.forward)", "symmon/adapters/batched.py", "run"),
    ("      AtomisticModel unit conversion (_convert_systems_units)",
     "metatomic/torch/model.py", "_convert_systems_units"),
    ("    unpack outputs (unpack)", "symmon/adapters/batched.py", "unpack"),
    ("  metrics (diagnose)", "symmon/monitoring/diagnose.py", "diagnose"),
    ("  verdict (Policy.judge)", "symmon/monitoring/policy.py", "judge"),
    ("  log (Recorder.write, incl. flushes)", "symmon/monitoring/recorder.py", "write"),
    ("  ASE check_state (dynamics observer + calculator)", "ase/calculators/calculator.py",
     "check_state"),
]


def make_run(name, options, atoms, workdir):
    from .md_overhead import Run

    return Run(name, options, C.model_path("tiny_pet_f32.pt"), atoms, "cpu", workdir, 64)


class TimedBase:
    """Accumulates the wall time of a calculator's ``calculate`` calls."""

    def __init__(self, calculator):
        self.calculator, self.times = calculator, []
        inner = calculator.calculate

        def timed(*args, **kwargs):
            start = time.perf_counter()
            inner(*args, **kwargs)
            self.times.append(time.perf_counter() - start)

        calculator.calculate = timed


def unmonitored_run(atoms, monitored, workdir):
    from ase import units
    from ase.md.verlet import VelocityVerlet
    from metatomic_ase import MetatomicCalculator

    from symmon import SymmetryMonitor

    base = MetatomicCalculator(C.model_path("tiny_pet_f32.pt"), non_conservative=True,
                               neighbor_skin=0.0)
    timed, atoms = TimedBase(base), atoms.copy()
    monitor = None
    if monitored:
        monitor = SymmetryMonitor(base, every=10 ** 9, log=f"{workdir}/unmonitored.h5",
                                  log_mode="overwrite")
    atoms.calc = monitor or base
    dynamics = VelocityVerlet(atoms, 1 * units.fs)
    if monitor is not None:
        monitor.attach(dynamics)
    return dynamics, timed, monitor


def unmonitored_overhead(n_atoms, rounds, block, workdir):
    """Per-step cost outside the base calculation, bare vs monitored, interleaved."""
    atoms = C.cell_with(n_atoms)
    runs = {kind: unmonitored_run(atoms, kind == "monitored", workdir)
            for kind in ("bare", "monitored")}
    outside = {kind: [] for kind in runs}
    for round_ in range(rounds + 1):
        for kind, (dynamics, timed, _) in runs.items():
            timed.times.clear()
            start = time.perf_counter()
            dynamics.run(block)
            total = time.perf_counter() - start
            if round_ > 0:  # the first round warms up
                outside[kind].append((total - sum(timed.times)) / len(timed.times))
    base_ms = 1000 * C.median(runs["bare"][1].times)
    bare, monitored = (1000 * C.median(outside[k]) for k in ("bare", "monitored"))
    profiler = cProfile.Profile()
    profiler.enable()
    runs["monitored"][0].run(block)
    profiler.disable()
    runs["monitored"][2].close()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text).sort_stats("cumulative")
    stats.print_stats(r"symmon|h5py|ase/calculators|ase/md", 25)
    return [n_atoms, base_ms, bare, monitored, monitored - bare,
            100 * (monitored - bare) / base_ms], text.getvalue()


def profile(run, steps):
    profiler = cProfile.Profile()
    profiler.enable()
    start = time.perf_counter()
    run.run(steps)
    wall = time.perf_counter() - start
    profiler.disable()
    stats = pstats.Stats(profiler)
    rows = []
    for label, suffix, function in PARTS:
        cumulative = 0.0
        calls = 0
        for (filename, _, fname), (cc, nc, tt, ct, _) in stats.stats.items():
            if fname == function and filename.endswith(suffix):
                cumulative += ct
                calls += nc
        rows.append([label, calls, 1000 * cumulative / steps])
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
    return wall, rows, text.getvalue()


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--only-unmonitored", action="store_true",
                   help="only section 0 (the wrapper's cost on unmonitored steps)")
    args = p.parse_args(argv)
    C.setup_torch(args.threads)
    warnings.filterwarnings("ignore")
    import torch

    print(C.machine_info("cpu"))
    steps = args.steps or (10 if args.quick else 40)
    with tempfile.TemporaryDirectory() as workdir:
        rows, profiles = [], []
        for n_atoms in ([32] if args.quick else [32, 108]):
            row, text = unmonitored_overhead(n_atoms, 3 if args.quick else 10, 20, workdir)
            rows.append(row)
            profiles.append(text)
        print("\n## Unmonitored step: the wrapper's own cost (velocity Verlet, log written, "
              "attached; medians over interleaved rounds)\n")
        print(C.table(["atoms", "base calculate ms", "outside base, bare ms",
                       "outside base, monitored ms", "wrapper ms", "wrapper % of base"],
                      rows))
        print("\ncProfile of the unmonitored monitored steps (symmon, ASE, h5py frames):\n")
        print("\n".join(line[:150] for line in profiles[0].splitlines() if line.strip()))
    if args.only_unmonitored:
        return
    with tempfile.TemporaryDirectory() as workdir:
        atoms = C.cell_with(32)

        # 3. warm-up of a fresh calculator (first calls)
        from metatomic_ase import MetatomicCalculator

        calc = MetatomicCalculator(C.model_path("tiny_pet_f32.pt"), non_conservative=True,
                                   neighbor_skin=0.0)
        fresh = atoms.copy()
        warm = []
        for _ in range(5):
            fresh.positions[0, 0] += 1e-4
            start = time.perf_counter()
            calc.calculate(fresh, ["energy", "forces"], ["positions"])
            warm.append(1000 * (time.perf_counter() - start))

        # 1. cProfile
        run = make_run("default", {}, atoms, workdir)
        run.run(3)
        wall, rows, raw = profile(run, steps)
        run.close()
        print(f"\n## cProfile of {steps} monitored MD steps (32 atoms, default monitor, "
              f"{torch.get_num_threads()} thread(s)): {1000 * wall / steps:.1f} ms/step "
              "under the profiler\n")
        print(C.table(["part", "calls", "ms / step (cumulative)"], rows))
        print("\nraw top 15 by own time:\n")
        print("\n".join(line[:160] for line in raw.splitlines()[:40] if line.strip()))

        # 2. threads
        n = os.cpu_count() or 1
        plain = make_run("unmonitored", None, atoms, workdir)
        monitored = make_run("default", {}, atoms, workdir)
        block = 5  # 2 threads can be ~50x slower on a loaded machine

        def with_threads(threads, target):
            def go():
                torch.set_num_threads(threads)
                target.run(block)
            return go

        variants = {("unmonitored", 1): with_threads(1, plain),
                    ("unmonitored", n): with_threads(n, plain),
                    ("monitored", 1): with_threads(1, monitored),
                    ("monitored", n): with_threads(n, monitored)}
        times = C.interleaved(variants, 1 if args.quick else 2, "cpu")
        monitored.close()
        torch.set_num_threads(args.threads)
        rows = [[kind, threads, 1000 * C.median(t) / block,
                 C.median(t) / C.median(times[(kind, 1)])]
                for (kind, threads), t in times.items()]
        print(f"\n## torch threads (32 atoms, blocks of {block} steps, interleaved)\n")
        print(C.table(["step", "threads", "ms/step", "x 1 thread"], rows))

    print("\n## TorchScript warm-up: first 5 calls of a fresh MetatomicCalculator (ms)\n")
    print(" ".join(f"{t:.0f}" for t in warm))


if __name__ == "__main__":
    main()
