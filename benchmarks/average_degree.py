"""How many O(3) elements ``mode="average"`` needs: the average at degree d vs a reference.

A degree-d quadrature averages a rank-r output exactly when the orbit ``g -> f(g x)``
has no components beyond ``l = d - r`` (:mod:`symmon.monitoring.schedule`); a real model's
orbit is not band-limited, so the rest aliases. This measures, for the bundled tiny
PET on a rattled Cu/Ni cell, the distance between the average on the degree-d grid and
on a reference grid of much higher degree, per atom (energy eV/atom, forces RMS over
atoms eV/Å, stress eV/Å³), next to the size of the correction itself,
``|<y> - f(x)|``, and to ε (the random-frame noise scale).

    python -m benchmarks.average_degree [--quick] [--f64] [--conservative]
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from . import _common as C


def per_atom_size(quantity: str, delta: np.ndarray, n_atoms: int) -> float:
    """|delta| in the per-atom normalisation of the monitor's ε."""
    if quantity == "energy":
        return float(abs(delta)) / n_atoms
    if quantity == "forces":
        return float(np.sqrt((delta ** 2).sum() / n_atoms))
    return float(np.sqrt((delta ** 2).sum()))


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--atoms", type=int, default=32)
    p.add_argument("--reference", type=int, default=11, help="reference degree")
    p.add_argument("--f64", action="store_true", help="float64 tiny PET")
    p.add_argument("--conservative", action="store_true",
                   help="gradient forces/stress (default: direct heads)")
    args = p.parse_args(argv)
    C.setup_torch(args.threads)
    warnings.filterwarnings("ignore")
    from metatomic_ase import MetatomicCalculator

    from symmon.core.grids import quadrature_grid
    from symmon.core.metrics import equivariance_error, orbit_average
    from symmon.core.quantities import QUANTITY
    from symmon.monitoring.schedule import output_rank
    from symmon.monitoring.source import ModelSource

    print(C.machine_info(args.device))
    model = C.model_path("tiny_pet.pt" if args.f64 else "tiny_pet_f32.pt")
    base = MetatomicCalculator(model, non_conservative=not args.conservative,
                               neighbor_skin=0.0, device=args.device)
    source = ModelSource(base, device=args.device, chunk_size=32)
    atoms = C.cell_with(args.atoms)
    quantities = source.quantities(atoms)
    degrees = [1, 2, 3, 4] if args.quick else [1, 2, 3, 4, 5, 6, 7, 8]
    reference_grid = quadrature_grid(args.reference)
    start = time.perf_counter()
    reference = source.orbit(atoms, reference_grid.matrices, quantities)
    unrotated = source.orbit(atoms, np.eye(3)[None], quantities)
    print(f"{model}, {len(atoms)} atoms, reference degree {args.reference} "
          f"({len(reference_grid)} elements, {time.perf_counter() - start:.0f} s)\n")
    reference_average = {q: orbit_average(reference[q], reference_grid, QUANTITY[q].kind)
                         .numpy() for q in quantities}
    scales = {}
    for quantity in quantities:
        kind = QUANTITY[quantity].kind
        correction = per_atom_size(quantity, reference_average[quantity]
                                   - unrotated[quantity][0].numpy(), len(atoms))
        eps = equivariance_error(reference[quantity], reference_grid, kind).eps
        scales[quantity] = correction, eps * QUANTITY[quantity].per_atom_factor(len(atoms))
    rows = []
    for degree in degrees:
        grid = quadrature_grid(degree)
        values = source.orbit(atoms, grid.matrices, quantities)
        for quantity in quantities:
            average = orbit_average(values[quantity], grid, QUANTITY[quantity].kind).numpy()
            error = per_atom_size(quantity, average - reference_average[quantity], len(atoms))
            correction, eps = scales[quantity]
            exact_to = degree - output_rank(quantity)
            rows.append([quantity, output_rank(quantity), degree, len(grid),
                         exact_to if exact_to >= 0 else "-", error, error / correction,
                         correction, eps])
    rows.sort(key=lambda row: (quantities.index(row[0]), row[2]))
    print(C.table(["quantity", "rank r", "degree d", "elements", "exact for l <=",
                   "|avg_d - avg_ref| per atom", "/ |avg_ref - f(x)|",
                   "|avg_ref - f(x)| per atom", "eps per atom"], rows))


if __name__ == "__main__":
    main()
