"""Orb v3: an orbit as K ORBCalculator calls (per copy) vs one batched forward (symmon).

A random-weight Orb v3 (the architecture of orb-v3-*-20-omat: 25 M parameters, radius
6 Å, 20 neighbours; ``torch.manual_seed(0)``, nothing downloaded), direct and
conservative, on a rattled Cu/Ni cell. For K transformed copies (default 7: a monitored
step's 3 Haar pairs and the unrotated copy; and 64) the two variants are timed
interleaved:

* per copy: ``ORBCalculator.calculate`` on each transformed copy (what the generic
  ASE loop, or a hand-written rotate-and-compare script, does);
* batched: ``OrbOrbitModel.evaluate`` (each copy's graph from Orb's featurizer, one
  ``batch_graphs`` + ``predict`` per chunk planned by adapters/memory.py).

Both return the same values (checked here to 1e-4 relative, float32). Prints the
median times and the ratio per-copy / batched.

    python -m benchmarks.orb_orbit                   # CPU, one thread (~2 min)
    python -m benchmarks.orb_orbit --device cuda     # a GPU
"""

from __future__ import annotations

import warnings

import numpy as np

from . import _common as C


def orb_calculator(kind: str, device: str, seed: int = 0):
    """ORBCalculator of a random-weight Orb v3 ``kind`` ("direct"/"conservative")."""
    import torch
    from orb_models.forcefield import pretrained
    from orb_models.forcefield.atomic_system import SystemConfig
    from orb_models.forcefield.calculator import ORBCalculator

    torch.manual_seed(seed)
    build = {"direct": pretrained.orb_v3_direct_architecture,
             "conservative": pretrained.orb_v3_conservative_architecture}[kind]
    model = build(device=device, system_config=SystemConfig(radius=6.0,
                                                            max_num_neighbors=20))
    return ORBCalculator(model.eval(), device=device)


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--atoms", type=int, nargs="+", default=[32, 108], choices=sorted(C.CELLS))
    p.add_argument("--copies", type=int, nargs="+", default=[7, 64])
    p.add_argument("--kinds", nargs="+", default=["direct", "conservative"])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    C.setup_torch(args.threads)
    warnings.filterwarnings("ignore")
    from scipy.spatial.transform import Rotation

    from symmon.adapters import orbit_model_for
    from symmon.adapters.base import transformed_atoms

    print(C.machine_info(args.device))
    rows = []
    for kind in args.kinds:
        calculator = orb_calculator(kind, args.device)
        orbit = orbit_model_for(calculator)
        names = ["energy", "forces" if kind == "conservative" else "non_conservative_forces"]
        result = "forces"
        for n_atoms in (args.atoms[:1] if args.quick else args.atoms):
            atoms = C.cell_with(n_atoms, seed=0)
            for k in (args.copies[:1] if args.quick else args.copies):
                matrices = Rotation.random(k, random_state=1).as_matrix()
                matrices[1::2] *= -1  # improper partners too
                copies = [transformed_atoms(atoms, m) for m in matrices]

                def per_copy():
                    out = []
                    for copy in copies:
                        calculator.calculate(copy, ["energy"])
                        out.append(np.array(calculator.results[result]))
                    return np.stack(out)

                def batched():
                    return orbit.evaluate(atoms, matrices, names)[names[1]].numpy()

                reference, got = per_copy(), batched()
                scale = np.abs(reference).max()
                assert np.abs(got - reference).max() <= 1e-4 * scale, "batched != per copy"
                times = C.interleaved({"per copy": per_copy, "batched": batched},
                                      1 if args.quick else args.repeats, args.device)
                a, b = C.median(times["per copy"]), C.median(times["batched"])
                rows.append([kind, n_atoms, k, 1000 * a, 1000 * b, a / b,
                             orbit.planner.last_chunk])
                print(f"{kind} {n_atoms} atoms K={k}: per copy {1000 * a:.0f} ms, batched "
                      f"{1000 * b:.0f} ms, ratio {a / b:.2f}", flush=True)
    print(f"\nOrb v3 (random weights, 25 M parameters), {args.device}, medians of "
          f"{args.repeats} interleaved repeats")
    print(C.table(["model", "atoms", "copies K", "per copy ms", "batched ms",
                   "per copy / batched", "last chunk"], rows))


if __name__ == "__main__":
    main()
