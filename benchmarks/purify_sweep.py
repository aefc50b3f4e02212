"""Host cost per structure of ``symmon purify``'s sweep: rho^-1 built once vs per structure.

    python -m benchmarks.purify_sweep [--n 20] [--degree 6] [--structures S.xyz]

Evaluates the bundled tiny PET (outputs and last-layer features on the orbit) once per
structure and target, then times the accumulation of each structure's normal
equations (:meth:`symmon.core.purification.NormalEquations.add`) interleaved in two
variants: ``rho^-1 per structure`` (the cache emptied before each structure, as every
structure's fresh accumulator did before) and ``rho^-1 once`` (built once per
(grid, kind)). Both must give the same sums (max difference printed), and the pickled
size of one structure's equations (what a torchrun rank keeps per structure) is shown.
"""

from __future__ import annotations

import os
import pickle
import time

import numpy as np

from . import _common

DATA = os.path.join(os.path.dirname(_common.HERE), "symmon", "data")


def _structures(path, n):
    import ase.io

    base = ase.io.read(path, ":")
    rng = np.random.default_rng(0)
    out = []
    while len(out) < n:  # the bundled set, then rattled copies of it
        atoms = base[len(out) % len(base)].copy()
        atoms.positions += rng.normal(scale=0.02 * (len(out) // len(base)),
                                      size=atoms.positions.shape)
        out.append(atoms)
    return out


def _orbits(orbit_model, structures, grid, target):
    from symmon.adapters import feature_output
    from symmon.core.outputs import without_net_force

    feature, orbits, start = feature_output(orbit_model, target), [], time.perf_counter()
    for atoms in structures:
        out = orbit_model.evaluate(atoms, grid.matrices, [target, feature])
        values, features = out[target].numpy(), out[feature].numpy()
        if target == "non_conservative_forces":
            values, features = without_net_force(values), without_net_force(features)
        orbits.append((values, features))
    return orbits, (time.perf_counter() - start) / len(structures)


def _sweep(orbits, grid, target, rebuild):
    from symmon.core import purification
    from symmon.core.outputs import output

    row, sweeps = output(target), []
    for values, features in orbits:
        if rebuild:
            purification._INVERSE_REPRESENTATIONS.clear()
        equations = purification.NormalEquations(row.kind, row.per_atom, features.shape[-1],
                                                 row.kind == "scalar")
        equations.add(grid, values, features)
        sweeps.append(equations)
    return sweeps


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--degree", type=int, default=6)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--structures", default=os.path.join(DATA, "tiny_structures.xyz"))
    p.add_argument("--targets", nargs="+",
                   default=["non_conservative_forces", "non_conservative_stress"])
    args = p.parse_args()
    _common.setup_torch(args.threads)
    from symmon.adapters import MetatomicOrbitModel
    from symmon.core.grids import quadrature_grid

    grid = quadrature_grid(args.degree)
    model = MetatomicOrbitModel(os.path.join(DATA, "tiny_pet.pt"), device=args.device)
    structures = _structures(args.structures, args.n)
    print(_common.machine_info(args.device))
    print(f"{args.n} structures, degree {args.degree} ({len(grid)} O(3) elements)")
    rows = []
    for target in args.targets:
        orbits, model_s = _orbits(model, structures, grid, target)
        times = _common.interleaved(
            {"per structure": lambda: _sweep(orbits, grid, target, True),
             "once": lambda: _sweep(orbits, grid, target, False)}, args.repeats)
        rebuilt, once = _sweep(orbits, grid, target, True), _sweep(orbits, grid, target, False)
        diff = max(float(np.max(np.abs(getattr(a, name) - getattr(b, name))))
                   for a, b in zip(rebuilt, once) for name in a._SUMS)
        per = {name: _common.median(t) / args.n * 1e3 for name, t in times.items()}
        rows.append([target, model_s * 1e3, per["per structure"], per["once"],
                     per["per structure"] - per["once"], len(pickle.dumps(once[0])) / 1e3,
                     diff])
    print(_common.table(["target", "model ms/structure", "add ms (rho^-1 per structure)",
                         "add ms (rho^-1 once)", "saved ms/structure",
                         "pickled kB/structure", "max |difference|"], rows))


if __name__ == "__main__":
    main()
