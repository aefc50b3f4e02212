"""Adapter for any ASE calculator: one calculation per transformed copy.

The registry's fallback (:func:`~symmon.adapters.registry.orbit_model_for`): exact for
any calculator, as slow as K calculations.
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch

from .base import (OrbitModel, transformed_atoms, validate_atoms, validate_matrices,
                   voigt_to_matrix)

#: outputs offered when the calculator implements them (ASE's names are symmon's)
ASE_OUTPUTS = ("energy", "energies", "forces", "stress")


def ase_results(calculator, atoms, names: Sequence[str]) -> Dict[str, object]:
    """``names`` as an ASE calculator returns them (one calculation)."""
    if hasattr(calculator, "get_properties"):  # one state check, one calculation
        return calculator.get_properties(list(names), atoms)
    return {name: calculator.get_property(name, atoms) for name in names}


def ase_predictions(calculator, atoms, names: Sequence[str]) -> Dict[str, np.ndarray]:
    """``names`` from an ASE calculator, float64 (stress as 3x3)."""
    raw = ase_results(calculator, atoms, names)
    values = {name: np.array(raw[name], dtype=np.float64) for name in names}
    if "stress" in values:
        values["stress"] = voigt_to_matrix(values["stress"])
    return values


class ASEOrbitModel(OrbitModel):
    """Evaluate an ASE calculator on transformed copies (a Python loop over copies).

    ``energy``, ``forces``, ``stress`` and per-atom ``energies`` are offered when the
    calculator lists them in ``implemented_properties``. Its calculator is not one
    whose call a batched copy could replace (:attr:`calculator` is ``None``):
    :attr:`ase_calculator` is the calculator it calls.
    """

    def __init__(self, calculator):
        self.ase_calculator = calculator
        self.path = f"one ASE calculation per copy ({type(calculator).__name__})"

    @property
    def available_outputs(self) -> Sequence[str]:
        implemented = set(getattr(self.ase_calculator, "implemented_properties", ()))
        return tuple(name for name in ASE_OUTPUTS if name in implemented)

    def evaluate(self, atoms, matrices, outputs: Sequence[str], *,
                 checked: bool = False) -> Dict[str, torch.Tensor]:
        self.check_outputs(outputs)
        validate_atoms(atoms, outputs, overlaps=not checked, cell=not checked)
        matrices = validate_matrices(matrices)
        results = {name: [] for name in outputs}
        for matrix in matrices:
            copy = transformed_atoms(atoms, matrix)
            for name in outputs:
                value = self.ase_calculator.get_property(name, copy)
                if name == "stress":
                    value = voigt_to_matrix(np.asarray(value))
                results[name].append(np.array(value, dtype=np.float64))
        return {name: torch.from_numpy(np.stack(values)) for name, values in results.items()}
