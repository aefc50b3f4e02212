"""Where the monitor's own time goes, per step, on any device (cProfile of symmon's frames).

For one structure size: the plain ``MetatomicCalculator`` step, then the monitor's
unmonitored step, monitored step (every step, 3 rotations) and purified monitored step,
each profiled over ``--steps`` calculations after a warm-up; prints ms per step and the
functions with the most own time and cumulative time (the GPU's time shows up at the
first host synchronisation, e.g. ``.cpu()``).

    python -m benchmarks.profile_monitor --device cuda --big --atoms 64
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
from .floor import PROPERTIES, random_readout

VARIANTS = {"unmonitored": {"every": 10 ** 9}, "monitored": {"every": 1},
            "purified": {"every": 1, "mode": "purified"}}


def timed_profile(calculate, atoms, steps, device, rng):
    profile = cProfile.Profile()
    C.sync(device)
    start = time.perf_counter()
    profile.enable()
    for _ in range(steps):
        atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)
        calculate(atoms, PROPERTIES, ["positions"])
    C.sync(device)
    profile.disable()
    return (time.perf_counter() - start) / steps * 1e3, profile


def report(profile, steps, top):
    for key in ("tottime", "cumulative"):
        stream = io.StringIO()
        stats = pstats.Stats(profile, stream=stream)
        stats.sort_stats(key).print_stats(top)
        print(f"--- by {key} (seconds over {steps} steps)")
        print("\n".join(line for line in stream.getvalue().splitlines()
                        if line.strip() and not line.startswith(("   Ordered", "         "))))


def main(argv=None):
    import numpy as np
    from metatomic_ase import MetatomicCalculator

    from symmon.frontends.calculator import SymmetryMonitor

    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--big", action="store_true")
    p.add_argument("--atoms", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--only", nargs="*", default=None)
    args = p.parse_args(argv)
    C.setup_torch(args.threads)
    warnings.filterwarnings("ignore")
    print(C.machine_info(args.device))
    model = C.timing_model(args.big)
    atoms, rng = C.cell_with(args.atoms), np.random.default_rng(0)

    def base():
        return MetatomicCalculator(model, non_conservative=True, neighbor_skin=0.0,
                                   device=args.device)

    with tempfile.TemporaryDirectory() as workdir:
        readout = random_readout(base(), workdir)
        calculators = {"plain": base()}
        for name, options in VARIANTS.items():
            if args.only and name not in args.only:
                continue
            extra = {"readout": readout} if options.get("mode") == "purified" else {}
            calculators[name] = SymmetryMonitor(
                base(), log=os.path.join(workdir, f"{name}.h5"), device=args.device,
                **options, **extra)
        for name, calculator in calculators.items():
            timed_profile(calculator.calculate, atoms, 3, args.device, rng)  # warm-up
            ms, profile = timed_profile(calculator.calculate, atoms, args.steps,
                                        args.device, rng)
            print(f"\n===== {name}: {ms:.2f} ms per step ({args.atoms} atoms)")
            if name != "plain":
                report(profile, args.steps, args.top)
        for calculator in calculators.values():
            if isinstance(calculator, SymmetryMonitor):
                calculator.close()


if __name__ == "__main__":
    main()
