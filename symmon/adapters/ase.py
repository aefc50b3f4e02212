"""Adapter for any ASE calculator: one calculation per transformed copy."""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch

from .base import (OrbitModel, transformed_atoms, validate_atoms, validate_matrices,
                   voigt_to_matrix)

#: outputs offered when the calculator implements them (ASE's names are symmon's)
ASE_OUTPUTS = ("energy", "energies", "forces", "stress")


class ASEOrbitModel(OrbitModel):
    """Evaluate an ASE calculator on transformed copies (a Python loop over copies).

    ``energy``, ``forces``, ``stress`` and per-atom ``energies`` are offered when the
    calculator lists them in ``implemented_properties``.
    """

    def __init__(self, calculator):
        self.calculator = calculator
        self.path = f"one ASE calculation per copy ({type(calculator).__name__})"

    @property
    def available_outputs(self) -> Sequence[str]:
        implemented = set(getattr(self.calculator, "implemented_properties", ()))
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
                value = self.calculator.get_property(name, copy)
                if name == "stress":
                    value = voigt_to_matrix(np.asarray(value))
                results[name].append(np.array(value, dtype=np.float64))
        return {name: torch.from_numpy(np.stack(values)) for name, values in results.items()}
