"""The adapter interface: evaluate a model on O(3)-transformed copies of one structure.

An adapter takes an ``ase.Atoms``, a stack of group elements ``Q`` ``(K, 3, 3)`` and
output names, and returns each output evaluated on the copies ``x Q^T`` (cell
``C Q^T``) *in the transformed frame*, as float64 torch tensors with a leading axis
``K``. The orbit engine (:mod:`symmon.metrics`) brings them back and measures them.

Output names and units (ASE's, eV and Å):

=========================== ============ ================== =====================
name                        shape        kind               unit
=========================== ============ ================== =====================
``energy``                  ``()``       scalar             eV
``energies`` (per atom)     ``(N,)``     scalar             eV
``forces`` (conservative)   ``(N, 3)``   vector             eV/Å
``stress`` (conservative)   ``(3, 3)``   symmetric_tensor   eV/Å^3
``non_conservative_forces`` ``(N, 3)``   vector             eV/Å
``non_conservative_stress`` ``(3, 3)``   symmetric_tensor   eV/Å^3
anything else (features)    ``(N, d)``   feature            model's
=========================== ============ ================== =====================
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Dict, Iterable, Sequence

import numpy as np
import torch

OUTPUT_KINDS = {
    "non_conservative_force": "vector",
    "energy": "scalar",
    "energies": "scalar",
    "forces": "vector",
    "stress": "symmetric_tensor",
    "non_conservative_forces": "vector",
    "non_conservative_stress": "symmetric_tensor",
}

OUTPUT_UNITS = {
    "non_conservative_force": "eV/angstrom",
    "energy": "eV", "energies": "eV", "forces": "eV/angstrom", "stress": "eV/angstrom^3",
    "non_conservative_forces": "eV/angstrom", "non_conservative_stress": "eV/angstrom^3",
}

STRESS_OUTPUTS = ("stress", "non_conservative_stress")


def output_kind(name: str) -> str:
    """Transformation law of an output name (``"feature"`` for unknown ones)."""
    return OUTPUT_KINDS.get(name, "feature")


def output_unit(name: str) -> str:
    return OUTPUT_UNITS.get(name, "1")


def validate_atoms(atoms, outputs: Iterable[str] = ()) -> None:
    """Refuse structures no model can be evaluated on, with a message naming the problem."""
    if len(atoms) == 0:
        raise ValueError("the structure is empty (0 atoms)")
    positions = atoms.get_positions()
    if not np.all(np.isfinite(positions)):
        bad = np.where(~np.isfinite(positions).all(axis=1))[0]
        raise ValueError(f"positions of atoms {bad[:10].tolist()} are NaN or infinite")
    if not np.all(np.isfinite(atoms.cell.array)):
        raise ValueError("the cell contains NaN or infinite entries")
    stress = [name for name in outputs if name in STRESS_OUTPUTS]
    if stress and not (all(atoms.pbc) and abs(atoms.cell.volume) > 1e-12):
        raise ValueError(
            f"{stress[0]!r} was requested for a structure that is not periodic in all "
            f"three directions (pbc={atoms.pbc.tolist()}): stress needs a 3D cell"
        )


def validate_matrices(matrices) -> np.ndarray:
    matrices = np.asarray(matrices, dtype=np.float64)
    if matrices.ndim != 3 or matrices.shape[1:] != (3, 3) or len(matrices) == 0:
        raise ValueError(f"group elements must have shape (K, 3, 3), got {matrices.shape}")
    if not np.allclose(matrices @ matrices.transpose(0, 2, 1), np.eye(3), atol=1e-8):
        raise ValueError("group elements must be orthogonal matrices")
    return matrices


def voigt_to_matrix(stress: np.ndarray) -> np.ndarray:
    """3x3 stress from ASE's Voigt order ``xx yy zz yz xz xy`` (3x3 passes through)."""
    stress = np.asarray(stress, dtype=np.float64)
    if stress.shape == (3, 3):
        return stress
    xx, yy, zz, yz, xz, xy = stress
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def transformed_atoms(atoms, matrix: np.ndarray):
    """A copy of ``atoms`` with positions ``x Q^T`` and cell ``C Q^T``."""
    copy = atoms.copy()
    copy.calc = None
    copy.set_cell(atoms.cell.array @ matrix.T, scale_atoms=False)
    copy.set_positions(atoms.get_positions() @ matrix.T)
    return copy


class OrbitModel(ABC):
    """Evaluate one model on many O(3)-transformed copies of a structure."""

    @property
    @abstractmethod
    def available_outputs(self) -> Sequence[str]:
        """Output names this adapter can return for this model."""

    @abstractmethod
    def evaluate(self, atoms, matrices, outputs: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Outputs on the copies ``x Q_k^T``, float64 tensors ``(K, ...)``."""

    def check_outputs(self, outputs: Sequence[str]) -> None:
        unknown = [name for name in outputs if name not in self.available_outputs]
        if unknown:
            raise ValueError(
                f"{type(self).__name__} cannot compute {unknown}; this model provides "
                f"{sorted(self.available_outputs)}"
            )
