"""``symmon demo``: a short Langevin MD of a Cu/Ni cell with the bundled tiny PET, monitored."""

from __future__ import annotations

import os
from importlib import resources

import numpy as np

#: bundled models (see examples/tiny_pet/): float32 as trained, and a float64 export
BUNDLED_MODELS = ("tiny_pet_f32.pt", "tiny_pet.pt")


def bundled_model_path(name: str = None) -> str:
    """Path of a model shipped in ``symmon/data`` (the float32 tiny PET by default)."""
    names = (name,) if name else BUNDLED_MODELS
    for candidate in names:
        path = resources.files("symmon") / "data" / candidate
        if path.is_file():
            return str(path)
    raise FileNotFoundError(f"bundled model {names[0]!r} is missing from symmon/data; "
                            "regenerate it with examples/tiny_pet/train.py")


def demo_structure(seed: int = 0):
    """A 32-atom Cu/Ni fcc cell (30 % Ni), slightly rattled."""
    import ase.build

    atoms = ase.build.bulk("Cu", "fcc", a=3.58, cubic=True).repeat((2, 2, 2))
    rng = np.random.default_rng(seed)
    atoms.numbers[rng.choice(len(atoms), size=10, replace=False)] = 28
    atoms.rattle(0.03, seed=seed)
    return atoms


def run_demo(log: str = "demo.h5", steps: int = 200, overwrite: bool = False,
             report: str = "demo.html", seed: int = 0, full_every: int = 50) -> str:
    """Run the monitored MD, print a summary, write ``log`` (and ``report``).
    An existing ``log`` is refused at once (before torch loads) unless ``overwrite``."""
    for name, value, least in (("steps", steps, 1), ("full_every", full_every, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r} "
                             f"(symmon demo --{name.replace('_', '-')} N)")
    if not overwrite and os.path.exists(log):
        raise FileExistsError(f"{log} exists (an earlier symmon demo): run "
                              f"'symmon demo --overwrite' to replace it, or give another "
                              f"file with 'symmon demo --log other.h5'")
    import torch
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from tqdm.auto import tqdm

    from .calculator import SymmetryMonitor, metatomic_calculator

    if "OMP_NUM_THREADS" not in os.environ:
        # small models on a shared CPU: one thread avoids oversubscription, which was
        # measured to make steps 20-80x slower (docs/performance.md)
        torch.set_num_threads(1)
    model = bundled_model_path()
    atoms = demo_structure(seed)
    base = metatomic_calculator(model, non_conservative=True)
    monitor = SymmetryMonitor(base, log=log, log_mode="overwrite" if overwrite else "create",
                              every=1, random_rotations=4, full_every=full_every, l_max=4,
                              seed=seed, metadata={"demo": True})
    atoms.calc = monitor
    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(seed))
    dynamics = Langevin(atoms, 2 * units.fs, temperature_K=600, friction=0.02,
                        fixcm=False, rng=np.random.default_rng(seed))
    monitor.attach(dynamics)
    with tqdm(total=steps, desc="symmon demo (MD steps)", unit="step") as bar:
        dynamics.attach(lambda: bar.update(1) if dynamics.nsteps > 0 else None, interval=1)
        dynamics.run(steps)
    monitor.close()

    from .report import run_report

    run_report([log], output=None, fmt="text")
    if report:
        run_report([log], output=report, fmt="html")
        print(f"report written to {report}")
    print(f"log written to {log}")
    return log


def _at_least(least: int):
    """argparse type: an integer >= ``least``."""
    import argparse

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < least:
            raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {text!r}")
        return value
    return integer


def add_demo_arguments(parser) -> None:
    parser.add_argument("--log", default="demo.h5", help="HDF5 log to write (default demo.h5)")
    parser.add_argument("--steps", type=_at_least(1), default=200, metavar="N",
                        help="MD steps (default 200)")
    parser.add_argument("--full-every", type=_at_least(0), default=50, metavar="N",
                        help="exact quadrature + spectra every n steps (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing log")
    parser.add_argument("--report", default="demo.html",
                        help="HTML report to write ('' to skip; default demo.html)")


def demo_command(args) -> int:
    """``symmon demo``."""
    run_demo(log=args.log, steps=args.steps, overwrite=args.overwrite, report=args.report,
             seed=args.seed, full_every=args.full_every)
    return 0
