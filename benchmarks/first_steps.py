"""A new user's first run: the cost of the monitor with all defaults over a short MD.

A random-weight Orb v3 direct model (``orb_v3_direct_architecture`` with the
``orb-v3-direct-20-omat`` system config, no weights loaded: nothing is downloaded)
through its own ASE calculator, Langevin MD (1 fs, 300 K) of a Cu/Ni cell for
``--steps`` steps, run side by side (interleaved, ``--rounds`` times):

* plain: the ORBCalculator alone;
* default: ``SymmetryMonitor(ORBCalculator, log=...)`` with every option at its
  default (``every="auto"``, 5 % overhead), construction and log close included.

Each round builds its calculator, integrator and cell afresh, and times the whole run
(first step included). Prints the median wall times, their ratio (the acceptance of
issue 28: <= 1.3x over a 30-step run), and what the monitor did: monitored and
calibration steps, evaluations of the model.

    python -m benchmarks.first_steps                  # ~3 min on one CPU thread
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings

import numpy as np

from . import _common as C


def orb_calculator(device: str = "cpu", seed: int = 0):
    """An ORBCalculator of a random-weight Orb v3 direct model (the architecture of
    orb-v3-direct-20-omat, 25 M parameters; weights from ``torch.manual_seed(seed)``)."""
    import torch
    from orb_models.forcefield.atomic_system import SystemConfig
    from orb_models.forcefield.calculator import ORBCalculator
    from orb_models.forcefield.pretrained import orb_v3_direct_architecture

    torch.manual_seed(seed)
    model = orb_v3_direct_architecture(
        device=device, system_config=SystemConfig(radius=6.0, max_num_neighbors=20))
    model.eval()
    return ORBCalculator(model, device=device)


def run(atoms, calculator, steps: int, monitored: bool, workdir: str, tag: str):
    """Wall time of one MD run of ``steps`` steps (and the monitor, if any)."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from symmon import SymmetryMonitor

    atoms = atoms.copy()
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    start = time.perf_counter()
    monitor = None
    if monitored:
        log = os.path.join(workdir, f"{tag}.h5")
        monitor = SymmetryMonitor(calculator, log=log)
        atoms.calc = monitor
    else:
        atoms.calc = calculator
    dynamics = Langevin(atoms, 1 * units.fs, temperature_K=300, friction=0.02,
                        rng=np.random.default_rng(0))
    if monitor is not None:
        monitor.attach(dynamics)
    dynamics.run(steps)
    if monitor is not None:
        monitor.close()
    seconds = time.perf_counter() - start
    return seconds, (None if monitor is None else monitor.monitor)


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--atoms", type=int, default=32, choices=sorted(C.CELLS))
    args = p.parse_args(argv)
    C.setup_torch(args.threads)
    warnings.filterwarnings("ignore")
    print(C.machine_info(args.device))
    atoms = C.cell_with(args.atoms, seed=0)
    times = {"plain": [], "default": []}
    details = []
    with tempfile.TemporaryDirectory() as workdir:
        run(atoms, orb_calculator(args.device), 2, False, workdir, "warm")  # imports
        for round_ in range(args.rounds):
            for name in times:
                seconds, monitor = run(atoms, orb_calculator(args.device), args.steps,
                                       name == "default", workdir, f"r{round_}")
                times[name].append(seconds)
                if monitor is not None:
                    details.append(_what_it_did(monitor, os.path.join(workdir,
                                                                     f"r{round_}.h5")))
            print(f"round {round_ + 1}: plain {times['plain'][-1]:.1f} s, default "
                  f"{times['default'][-1]:.1f} s ({details[-1]})", flush=True)
    plain, default = C.median(times["plain"]), C.median(times["default"])
    print(f"\nOrb v3 direct (random weights), {args.atoms} atoms, {args.steps} MD steps, "
          f"{args.rounds} rounds, {args.device}")
    print(C.table(["variant", "median s", "range s", "per step ms", "ratio"], [
        ["plain ORBCalculator", plain, C.spread(times["plain"]),
         1000 * plain / args.steps, 1.0],
        ["SymmetryMonitor, defaults", default, C.spread(times["default"]),
         1000 * default / args.steps, default / plain]]))


def _what_it_did(monitor, log) -> str:
    from symmon.io.reader import read_log

    with read_log(log) as reader:
        steps, _, rotations = reader.observable("calibration_rotations")
        elements = reader.observable("n_elements")[2]
    return (f"monitored steps {steps.tolist()}, calibration steps "
            f"{steps[rotations > 0].tolist()}, {int(elements.sum())} orbit copies, "
            f"warm-up {monitor.warm_up_s:.2f} s, first step {monitor.first_step_s:.2f} s")


if __name__ == "__main__":
    main()
