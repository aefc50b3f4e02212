"""TorchSim models and batches for the tests (seconds to build, nothing downloaded).

* :func:`lennard_jones`: TorchSim's own ``LennardJonesModel`` (argon-like parameters).
  TorchSim 0.3.0 applies periodic image shifts with the cell transposed
  (``torch_sim.transforms.get_pair_displacements`` computes ``cell @ shift`` from the
  row-vector cell its models pass): exact for symmetric cell matrices only, so on a
  rotated periodic cell its energy changes (a real symmetry bug, graded problem). For
  molecules no shift is applied: exact.
* :func:`fixed_shifts`: the one-line fix (``shift @ cell``) as a context manager: the
  same model is then exactly O(3)-equivariant on periodic cells too.
* :func:`tiny_pet`: TorchSim's metatomic wrapper around symmon's bundled untrained PET
  (Ni/Cu; float64 or float32): an unconstrained model, far from equivariant.
"""

from __future__ import annotations

import contextlib
import functools
import os

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "symmon", "data")


def lennard_jones(dtype=torch.float64, stress=True, cutoff=6.0):
    from torch_sim.models.lennard_jones import LennardJonesModel

    return LennardJonesModel(sigma=3.405, epsilon=0.0104, cutoff=cutoff, dtype=dtype,
                             compute_stress=stress)


@contextlib.contextmanager
def fixed_shifts():
    """TorchSim's pair displacements with periodic shifts ``shift @ cell`` (rows)."""
    from torch_sim import transforms

    original = transforms.get_pair_displacements

    def fixed(*, positions, cell, pbc, pairs=None, shifts=None):
        if pairs is not None and shifts is not None and pbc:
            i, j = pairs
            dr = positions[j] - positions[i] + shifts.to(cell.dtype) @ cell
            return dr, torch.norm(dr, dim=-1)
        return original(positions=positions, cell=cell, pbc=pbc, pairs=pairs, shifts=shifts)

    transforms.get_pair_displacements = fixed
    try:
        yield
    finally:
        transforms.get_pair_displacements = original


@functools.lru_cache(maxsize=4)
def tiny_pet(dtype=torch.float64, stress=True):
    """(cached: loading and the first TorchScript calls take seconds)"""
    from torch_sim.models.metatomic import MetatomicModel

    name = "tiny_pet.pt" if dtype == torch.float64 else "tiny_pet_f32.pt"
    return MetatomicModel(os.path.join(DATA, name), device="cpu", compute_stress=stress)


def rare_gas_crystals():
    """Four periodic cells of different sizes and species (sheared, rattled)."""
    cells = [bulk("Ar", "fcc", a=5.26, cubic=True),
             bulk("Ar", "fcc", a=5.26) * (2, 1, 1),
             bulk("Kr", "fcc", a=5.7, cubic=True) * (1, 1, 2),
             bulk("Ne", "fcc", a=4.4, cubic=True)]
    cells[3][0].symbol = "Ar"
    return [_rattled(atoms, i) for i, atoms in enumerate(cells)]


def rare_gas_clusters():
    """Four molecules (no cell) of different sizes and species."""
    rng = np.random.default_rng(7)
    clusters = []
    for symbols in (["Ar"] * 3, ["Kr"] * 5, ["Ar", "Kr"] * 3, ["Ne"] * 4):
        positions = _spread(rng, len(symbols), 3.8)
        clusters.append(Atoms(symbols, positions=positions, pbc=False))
    return clusters


def nickel_copper_crystals():
    """Four Ni/Cu cells (the tiny PET's species), sizes and compositions differ."""
    cells = [bulk("Cu", "fcc", a=3.6, cubic=True),
             bulk("Ni", "fcc", a=3.52) * (2, 1, 1),
             bulk("Cu", "fcc", a=3.6) * (2, 2, 1),
             bulk("Ni", "fcc", a=3.55, cubic=True) * (1, 1, 2)]
    cells[2][1].symbol = "Ni"
    cells[3][0].symbol = "Cu"
    return [_rattled(atoms, i) for i, atoms in enumerate(cells)]


def _rattled(atoms, seed):
    atoms = atoms.copy()
    rng = np.random.default_rng(seed)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.03 * rng.normal(size=(3, 3))),
                   scale_atoms=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


def _spread(rng, n, distance):
    """``n`` points at least ``0.9 distance`` apart, compact (a cluster)."""
    points = [np.zeros(3)]
    while len(points) < n:
        candidate = points[rng.integers(len(points))] + distance * _unit(rng)
        if min(np.linalg.norm(candidate - p) for p in points) > 0.9 * distance:
            points.append(candidate)
    return np.array(points)


def _unit(rng):
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def anisotropic_lennard_jones(strain=(1.0, 1.04, 0.97)):
    """An unconstrained TorchSim model with moderate values: the Lennard-Jones model of
    the structure stretched by a fixed diagonal ``D`` (``E(x) = E_LJ(x D)``, forces
    ``F_LJ D``, stress ``D S_LJ D``: symmetric, like ASE's), not O(3)-equivariant.
    Use it inside :func:`fixed_shifts` (else TorchSim's shift bug dominates)."""
    import torch_sim as ts
    from torch_sim.models.interface import ModelInterface

    class Anisotropic(ModelInterface):
        def __init__(self):
            super().__init__()
            self.inner = lennard_jones()
            self._device, self._dtype = self.inner.device, self.inner.dtype
            self._compute_forces, self._compute_stress = True, True
            self.d = torch.diag(torch.tensor(strain, dtype=torch.float64))

        def forward(self, state, **kwargs):
            stretched = ts.SimState(positions=state.positions @ self.d,
                                    masses=state.masses, cell=self.d.T @ state.cell,
                                    pbc=state.pbc, atomic_numbers=state.atomic_numbers,
                                    system_idx=state.system_idx)
            out = self.inner(stretched)
            return {"energy": out["energy"], "forces": out["forces"] @ self.d,
                    "stress": self.d @ out["stress"] @ self.d}

    return Anisotropic()


def field_on_krypton(strength=0.2):
    """Lennard-Jones plus a uniform field on krypton atoms only (``E += -g u . x_i``
    for each Kr, molecules): exactly symmetric for systems without Kr, not for the others
    -- a batch with systems of every grade."""
    from torch_sim.models.interface import ModelInterface

    class KryptonField(ModelInterface):
        def __init__(self):
            super().__init__()
            self.inner = lennard_jones(stress=False)
            self._device, self._dtype = self.inner.device, self.inner.dtype
            self._compute_forces, self._compute_stress = True, False
            self.field = strength * torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64)

        def forward(self, state, **kwargs):
            out = self.inner(state)
            krypton = (state.atomic_numbers == 36).to(torch.float64)[:, None]
            work = (krypton * state.positions @ self.field)
            energy = out["energy"] - torch.zeros_like(out["energy"]).index_add(
                0, state.system_idx, work)
            return {"energy": energy, "forces": out["forces"] + krypton * self.field}

    return KryptonField()
