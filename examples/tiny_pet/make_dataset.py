"""Generate a small, seeded Cu/Ni dataset labelled with ASE's EMT calculator.

Structures:
  * bulk fcc 2x2x2 conventional cells (32 atoms), random Cu/Ni mixture,
    lattice constant from Vegard's law, random strain (+-3 %) and rattle;
  * (111) and (100) slabs (16-24 atoms) with ~7 A vacuum along z; pbc is
    True in all directions so that the (EMT) stress is well defined.

Labels are stored under non-reserved keys (ASE would otherwise move
``energy``/``forces``/``stress`` into a SinglePointCalculator):
  * ``info["emt_energy"]``  total energy, eV
  * ``arrays["emt_forces"]`` forces, eV/A (N x 3)
  * ``info["emt_stress"]``  3x3 stress, eV/A^3, ASE sign convention
    (= 1/V dE/d(strain)); this is also what metatrain expects both for the
    ``stress`` gradient of ``energy`` and for ``non_conservative_stress``.

Usage: python make_dataset.py [outdir]   (default: ./data)
"""

import os
import sys

import numpy as np
from ase.build import bulk, fcc100, fcc111
from ase.calculators.emt import EMT
import ase.io

SEED = 20240611
N_BULK = 340
N_SLAB = 80
A_CU, A_NI = 3.61, 3.52


def random_strain(rng, atoms, amplitude=0.03):
    eps = rng.uniform(-amplitude, amplitude, size=(3, 3))
    eps = 0.5 * (eps + eps.T)
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + eps), scale_atoms=True)


def make_bulk(rng):
    x_ni = rng.uniform(0.0, 1.0)
    a = (1 - x_ni) * A_CU + x_ni * A_NI
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((2, 2, 2))
    symbols = np.where(rng.uniform(size=len(atoms)) < x_ni, "Ni", "Cu")
    atoms.set_chemical_symbols(list(symbols))
    random_strain(rng, atoms)
    atoms.rattle(stdev=rng.uniform(0.05, 0.10), seed=int(rng.integers(1 << 31)))
    atoms.info["kind"] = "bulk"
    return atoms


def make_slab(rng):
    x_ni = rng.uniform(0.0, 1.0)
    a = (1 - x_ni) * A_CU + x_ni * A_NI
    if rng.uniform() < 0.5:
        atoms = fcc111("Cu", size=(2, 2, 4), a=a, vacuum=3.5, periodic=True)
        kind = "slab111"
    else:
        atoms = fcc100("Cu", size=(2, 2, 4), a=a, vacuum=3.5, periodic=True)
        kind = "slab100"
    symbols = np.where(rng.uniform(size=len(atoms)) < x_ni, "Ni", "Cu")
    atoms.set_chemical_symbols(list(symbols))
    atoms.pbc = True
    atoms.rattle(stdev=rng.uniform(0.05, 0.10), seed=int(rng.integers(1 << 31)))
    atoms.info.pop("adsorbate_info", None)
    atoms.info["kind"] = kind
    return atoms


def label(atoms):
    atoms.calc = EMT()
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    stress = atoms.get_stress(voigt=False)
    atoms.calc = None
    atoms.info["emt_energy"] = float(energy)
    atoms.arrays["emt_forces"] = np.array(forces)
    atoms.info["emt_stress"] = np.array(stress)
    return atoms


def main(outdir="data"):
    rng = np.random.default_rng(SEED)
    frames = [label(make_bulk(rng)) for _ in range(N_BULK)]
    frames += [label(make_slab(rng)) for _ in range(N_SLAB)]
    order = rng.permutation(len(frames))
    frames = [frames[i] for i in order]
    n = len(frames)
    n_val = n_test = n // 10
    splits = {
        "test": frames[:n_test],
        "val": frames[n_test : n_test + n_val],
        "train": frames[n_test + n_val :],
    }
    os.makedirs(outdir, exist_ok=True)
    for name, fr in splits.items():
        path = os.path.join(outdir, f"{name}.xyz")
        ase.io.write(path, fr, format="extxyz")
        print(f"wrote {len(fr):4d} structures to {path}")


if __name__ == "__main__":
    main(*sys.argv[1:])
