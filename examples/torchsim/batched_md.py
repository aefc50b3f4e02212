"""Batched Langevin MD of many small Cu/Ni cells in TorchSim, under symmon's monitor.

The model is symmon's bundled tiny PET (``symmon/data/tiny_pet.pt``, no download)
through TorchSim's own metatomic wrapper; ``TorchSimMonitor`` wraps it and is handed
to ``ts.integrate`` in its place. Afterwards: one verdict per system and the run's
summary (``symmon report run``), and the worst systems' structures (``symmon export``).

    python batched_md.py [--systems 24] [--steps 100] [--device cpu|cuda]
"""

import argparse
import os
import shutil

import numpy as np
import torch
import torch_sim as ts
from ase.build import bulk
from torch_sim.models.metatomic import MetatomicModel

from symmon import TorchSimMonitor
from symmon.frontends.export import run_export
from symmon.frontends.report import run_report

MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "symmon",
                     "data", "tiny_pet.pt")


def cells(n: int, seed: int = 0):
    """``n`` rattled fcc Cu/Ni cells of 4, 8 or 16 atoms, random compositions."""
    rng = np.random.default_rng(seed)
    structures = []
    for i in range(n):
        repeat = [(1, 1, 1), (2, 1, 1), (2, 2, 1)][i % 3]
        atoms = bulk("Cu", "fcc", a=3.58, cubic=True).repeat(repeat)
        atoms.numbers[rng.random(len(atoms)) < rng.uniform(0.1, 0.6)] = 28
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
        structures.append(atoms)
    return structures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", type=int, default=24)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--log", default="run")
    args = parser.parse_args()

    model = MetatomicModel(MODEL, device=args.device, compute_stress=False)
    shutil.rmtree(args.log, ignore_errors=True)
    # every=5: a short demo run; the default every="auto" keeps the overhead at ~5 %
    monitored = TorchSimMonitor(model, log=args.log, every=5)
    final = ts.integrate(cells(args.systems), monitored, integrator=ts.nvt_langevin,
                         n_steps=args.steps, temperature=600.0, timestep=0.002)
    monitored.close()
    print(f"{final.n_systems} systems, {args.steps} steps; {monitored.n_violations} "
          "system-steps graded problem")

    run_report(args.log)                                    # run/report.html
    run_report(args.log, fmt="text")                        # the same, on the terminal
    run_export(args.log, "worst.xyz", worst=5)              # the 5 worst systems


if __name__ == "__main__":
    main()
