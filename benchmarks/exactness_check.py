"""Does the quadrature's exactness check fire where it should? (issue 15)

    python -m benchmarks.exactness_check          # ~2-8 min on one CPU core

For the bundled tiny PET pair (trained with and without O(3) augmentation) and EMT, on
the first structure of ``symmon/data/tiny_structures.xyz``: ε of energy, forces and
stress at quadrature degree 8 and 16, the ``exact`` flag and the aliased power of the
degree-8 grid. The check should fire on the unaugmented PET (much power beyond l = 4)
and stay quiet on EMT and on the augmented PET.
"""

import time

import ase.io
from ase.calculators.emt import EMT

from symmon import equivariance_error, quadrature_grid
from symmon.adapters import ASEOrbitModel
from symmon.adapters.metatomic import MetatomicOrbitModel
from symmon.frontends.demo import bundled_model_path

KINDS = {"energy": "scalar", "forces": "vector_per_atom", "stress": "symmetric_tensor"}


def models():
    yield "EMT", ASEOrbitModel(EMT()), {"energy": "energy", "forces": "forces",
                                       "stress": "stress"}
    direct = {"energy": "energy", "forces": "non_conservative_forces",
              "stress": "non_conservative_stress"}
    for tag in ("aug", "noaug"):
        yield tag, MetatomicOrbitModel(bundled_model_path(f"tiny_pet_{tag}.pt")), direct


def main():
    atoms = ase.io.read(bundled_model_path("tiny_structures.xyz"), 0)
    print(f"{len(atoms)} atoms; columns: model degree quantity eps exact alias/eps^2")
    for name, model, outputs in models():
        for degree in (8, 16):
            grid, start = quadrature_grid(degree), time.perf_counter()
            values = model.evaluate(atoms, grid.matrices, list(outputs.values()))
            for quantity, output in outputs.items():
                error = equivariance_error(values[output], grid, KINDS[quantity])
                alias = error.alias_power / max(error.eps_sq, 1e-300)
                print(f"{name:6s} {degree:3d} {quantity:7s} {error.eps:11.4e} "
                      f"{str(error.exact):5s} {alias:9.2e}")
            print(f"       ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
