"""Does the verdict separate a good model from a broken one? The bundled tiny PET pair.

``symmon/data/tiny_pet_aug.pt`` and ``tiny_pet_noaug.pt`` were trained on the same data
with the same seed, with and without O(3) augmentation
(``examples/tiny_pet/train_pair.py``). Each runs a Langevin MD of the demo cell at
``--temperature`` K under the monitor (every step, a full orbit every ``--full-every``
steps), and ``symmon report`` grades the log; the table gives each model's level and
headline. ``tests/test_report.py`` runs the same 40 steps without full orbits.

    python -m benchmarks.verdict_pair --steps 40
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings

import numpy as np


def run_pair(steps: int, full_every: int, temperature: float, directory: str) -> dict:
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from symmon import SymmetryMonitor
    from symmon.frontends.calculator import metatomic_calculator
    from symmon.frontends.demo import bundled_model_path, demo_structure
    from symmon.frontends.report import summarize

    verdicts = {}
    for name in ("aug", "noaug"):
        path = os.path.join(os.path.dirname(bundled_model_path()), f"tiny_pet_{name}.pt")
        log = os.path.join(directory, f"{name}.h5")
        atoms = demo_structure()
        monitor = SymmetryMonitor(metatomic_calculator(path, non_conservative=True), log=log,
                                  log_mode="overwrite", every=1, full_every=full_every)
        atoms.calc = monitor
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature,
                                     rng=np.random.default_rng(0))
        dynamics = Langevin(atoms, 2 * units.fs, temperature_K=temperature, friction=0.02,
                            rng=np.random.default_rng(1))
        monitor.attach(dynamics)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dynamics.run(steps)
        monitor.close()
        verdicts[name] = summarize(log).to_json()["verdict"]
    return verdicts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--full-every", type=int, default=20)
    p.add_argument("--temperature", type=float, default=600.0)
    p.add_argument("--dir", default=None, help="keep the logs here (default: a temp dir)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        directory = args.dir or scratch
        os.makedirs(directory, exist_ok=True)
        verdicts = run_pair(args.steps, args.full_every, args.temperature, directory)
    for name, verdict in verdicts.items():
        print(f"{name:6s} {verdict['level']:8s} {verdict['headline']}")


if __name__ == "__main__":
    main()
