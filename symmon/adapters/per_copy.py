"""One ``MetatomicCalculator`` call per copy: for models that request extra inputs.

A model may request inputs beyond positions and cell (total charge, spin
multiplicity, masses, velocities...). Only metatomic-ase knows how to read them from
an ``ase.Atoms``, so each transformed copy (velocities rotated with the positions,
:func:`~symmon.adapters.base.transformed_atoms`) goes through its own calculator
call: energy, per-atom energies, conservative forces and stress through the ASE
interface (stress is then ASE's symmetric Voigt stress), every other output through
``MetatomicCalculator.run_model``. Slower than the batched path, exact by
construction.
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch

from .ase import ASEOrbitModel
from .base import transformed_atoms
from .catalogue import ENERGY_OUTPUTS, OutputCatalogue
from .orbit_systems import output_values


class CalculatorLoop:
    """Evaluate an ``AtomisticModel`` copy by copy with ``MetatomicCalculator``."""

    def __init__(self, model, catalogue: OutputCatalogue, device):
        from metatomic_ase import MetatomicCalculator

        self.calculator = MetatomicCalculator(model, device=str(device), neighbor_skin=0.0,
                                              check_consistency=False)
        self.catalogue = catalogue
        self._energy_outputs = ASEOrbitModel(self.calculator)

    def evaluate(self, atoms, matrices, names: Sequence[str]) -> Dict[str, torch.Tensor]:
        energy_names = [name for name in names if name in ENERGY_OUTPUTS]
        direct = [name for name in names if name not in ENERGY_OUTPUTS]
        try:
            results = self._energy_outputs.evaluate(atoms, matrices, energy_names) \
                if energy_names else {}
            if direct:
                results.update(self._direct(atoms, matrices, direct))
        except ValueError as error:  # an extra input missing or out of the model's range
            inputs = sorted(self.calculator.model().requested_inputs(use_new_names=True))
            raise ValueError(f"{self.catalogue.model_label} failed on this structure's extra "
                             f"inputs {inputs} (read by metatomic-ase from atoms.info and "
                             f"atoms.arrays): {error}") from None
        return {name: results[name] for name in names}

    def _direct(self, atoms, matrices, names) -> Dict[str, torch.Tensor]:
        requests = self.catalogue.requests(names)
        values = {name: [] for name in names}
        for matrix in matrices:
            raw = self.calculator.run_model(transformed_atoms(atoms, matrix), requests)
            for name in names:
                block = raw[self.catalogue.key(name)].block()
                values[name].append(output_values(block, name, 1, len(atoms))[0]
                                    .detach().to("cpu", torch.float64))
        return {name: torch.stack(v) for name, v in values.items()}
