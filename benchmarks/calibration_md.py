"""Coverage of the monitor's calibrated intervals along MD of a real model (issue 15).

For each bundled tiny PET (trained with and without O(3) augmentation): a Langevin
trajectory at 600 K of a 32-atom Cu/Ni cell, one frame every ``--stride`` steps. On
each frame:

* the truth: ε of energy, forces and stress on a degree-``--degree`` quadrature (its
  ``exact`` flag is printed; a frame whose check fails is counted separately);
* ``--orbits`` independent random orbits of P = 2, 3, 5, 10 pairs, each with its
  intervals (a) calibrated by the pooled law of the last 4 calibration frames' references
  (32-pair random orbits, taken on the first frame and every ``--calibrate-every``
  frames, as the monitor does) and (b) data-only (Student-t on log ε²).

Prints the percentage of orbits whose 68 % / 95 % interval contains the truth.

    python -m benchmarks.calibration_md --device cuda          # ~3 min on an H200
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from . import _common as C

KINDS = {"energy": "scalar", "forces": "vector_per_atom", "stress": "symmetric_tensor"}
OUTPUTS = {"energy": "energy", "forces": "non_conservative_forces",
           "stress": "non_conservative_stress"}
ROTATIONS = (2, 3, 5, 10)


def trajectory(path, device, frames, stride, seed=0):
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from metatomic_ase import MetatomicCalculator

    atoms = C.cell_with(32, seed=seed)
    atoms.calc = MetatomicCalculator(path, non_conservative=True, device=device)
    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(seed))
    dynamics = Langevin(atoms, 2 * units.fs, temperature_K=600, friction=0.02,
                        rng=np.random.default_rng(seed))
    for _ in range(frames):
        dynamics.run(stride)
        yield atoms.copy()


def frame_orbits(model, atoms, n_orbits, seed):
    """Values on one random grid holding every P's orbits, cut per P: {P: (plus, minus)}."""
    from symmon import back_transform, random_grid

    total = n_orbits * sum(ROTATIONS)
    grid = random_grid(total, seed=seed)
    values = model.evaluate(atoms, grid.matrices, list(OUTPUTS.values()))
    cut = {}
    for quantity, output in OUTPUTS.items():
        back = back_transform(values[output], grid, KINDS[quantity])
        plus, minus, start = back[:total], back[total:], 0
        for p in ROTATIONS:
            shape = (n_orbits, p) + back.shape[1:]
            cut[quantity, p] = (plus[start:start + n_orbits * p].reshape(shape),
                                minus[start:start + n_orbits * p].reshape(shape))
            start += n_orbits * p
    return cut


def main(argv=None):
    from symmon import equivariance_error, quadrature_grid, random_grid
    from symmon.adapters.metatomic import MetatomicOrbitModel
    from symmon.core.calibration import POOL, pooled
    from symmon.core.intervals import batched_pair_estimate
    from symmon.frontends.demo import bundled_model_path

    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--stride", type=int, default=5)
    p.add_argument("--orbits", type=int, default=25)
    p.add_argument("--degree", type=int, default=16)
    p.add_argument("--calibrate-every", type=int, default=10)
    args = p.parse_args(argv)
    C.setup_torch(args.threads)
    warnings.filterwarnings("ignore")
    print(C.machine_info(args.device))
    truth_grid = quadrature_grid(args.degree)
    for tag in ("aug", "noaug"):
        path = bundled_model_path(f"tiny_pet_{tag}.pt")
        model = MetatomicOrbitModel(path, device=args.device)
        hits = {}  # (quantity, P, method) -> [n, hits68, hits95]
        history, references, inexact, start = [], {}, 0, time.perf_counter()
        for frame, atoms in enumerate(trajectory(path, args.device, args.frames, args.stride)):
            truth_values = model.evaluate(atoms, truth_grid.matrices, list(OUTPUTS.values()))
            truth = {q: equivariance_error(truth_values[o], truth_grid, KINDS[q])
                     for q, o in OUTPUTS.items()}
            inexact += sum(not t.exact for t in truth.values())
            if frame % args.calibrate_every == 0:
                grid = random_grid(32, seed=1000 + frame)
                values = model.evaluate(atoms, grid.matrices, list(OUTPUTS.values()))
                history = (history + [{q: equivariance_error(values[o], grid, KINDS[q],
                                                             calibrate=True).calibration
                                       for q, o in OUTPUTS.items()}])[-POOL:]
                references = {q: pooled(*(h[q] for h in history)) for q in OUTPUTS}
            for (quantity, n_pairs), (plus, minus) in frame_orbits(
                    model, atoms, args.orbits, seed=frame).items():
                estimate = batched_pair_estimate(plus, minus)
                eps_sq = truth[quantity].eps_sq
                for method in ("calibrated", "data only"):
                    row = hits.setdefault((quantity, n_pairs, method), [0, 0, 0])
                    row[0] += len(estimate.eps_sq)
                    for i, level in enumerate((0.68, 0.95)):
                        low, high = (references[quantity].interval(estimate.eps_sq, n_pairs,
                                                                   level)
                                     if method == "calibrated" else
                                     estimate.eps_sq_interval(level))
                        row[1 + i] += int(np.sum((low <= eps_sq) & (eps_sq <= high)))
        print(f"\ntiny_pet_{tag}: {args.frames} frames, {args.orbits} orbits per P per frame, "
              f"truth at degree {args.degree} ({inexact} flagged inexact), "
              f"{time.perf_counter() - start:.0f} s")
        print("| quantity | method | " + " | ".join(f"P = {n}" for n in ROTATIONS) + " |")
        print("|---|---|" + "---|" * len(ROTATIONS))
        for quantity in OUTPUTS:
            for method in ("calibrated", "data only"):
                cells = []
                for n_pairs in ROTATIONS:
                    n, h68, h95 = hits[quantity, n_pairs, method]
                    cells.append(f"{100 * h68 / n:.0f} / {100 * h95 / n:.0f}")
                print(f"| {quantity} | {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
