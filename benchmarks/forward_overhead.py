"""Cost of going through ``AtomisticModel.forward`` instead of its inner module.

symmon's batched path calls the public wrapper (names translated, units converted:
it can never diverge from what the model returns to an engine). The wrapper copies
every System for a unit conversion that is the identity for Å models; this measures
that cost on the bundled tiny PET: the same orbit (quadrature degree 4, 140 copies,
chunks of 32 on CPU / 256 on GPU), once through the wrapper and once through
``model.module`` directly (which only works for models whose inner names are the
requested ones), best of ``--repeat`` runs.

    python -m benchmarks.forward_overhead [--device cuda] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    from ase.build import bulk

    from symmon import quadrature_grid
    from symmon.adapters.batched import atomistic_model_runner
    from symmon.adapters.metatomic import MetatomicOrbitModel

    orbit = MetatomicOrbitModel("symmon/data/tiny_pet.pt", device=args.device)
    module = orbit.model.module

    def inner(systems, requests):
        return module(systems=systems, outputs=requests, selected_atoms=None)

    runners = {"AtomisticModel.forward": atomistic_model_runner(orbit.model),
               "model.module": inner}
    grid = quadrature_grid(4)
    print(f"device {orbit.device}, {len(grid)} copies, chunk {orbit.chunk_size}")
    for n in (1, 2, 3):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (n, n, 2)
        types = orbit.atomic_types
        atoms.numbers[:] = [types[i % len(types)] for i in range(len(atoms))]
        atoms.rattle(0.05, seed=1)
        for outputs in (["energy", "non_conservative_forces", "non_conservative_stress"],
                        ["energy", "forces", "stress"]):
            times, values = {}, {}
            for _ in range(args.repeat):
                for label, run in runners.items():
                    orbit.evaluator.run = run
                    if orbit.device.type == "cuda":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    values[label] = orbit.evaluate(atoms, grid.matrices, outputs)
                    if orbit.device.type == "cuda":
                        torch.cuda.synchronize()
                    times.setdefault(label, []).append(time.perf_counter() - start)
            a, b = values.values()
            diff = max(float((a[k] - b[k]).abs().max()) for k in a)
            best = {label: min(t) for label, t in times.items()}
            wrapper, direct = best["AtomisticModel.forward"], best["model.module"]
            print(f"{len(atoms):3d} atoms  {outputs[1]:24s} forward {wrapper * 1e3:8.1f} ms"
                  f"  module {direct * 1e3:8.1f} ms  overhead {100 * (wrapper / direct - 1):+5.1f}%"
                  f"  max |diff| {diff:.1e}")


if __name__ == "__main__":
    main()
