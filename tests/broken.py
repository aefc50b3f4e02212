"""A deliberately symmetry-broken ASE calculator: EMT plus lab-frame terms."""

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT


class LabFrameEMT(Calculator):
    """EMT with lab-frame terms.

    the energy stays EMT's (so energy is invariant), forces get ``+lab_force`` on every
    atom (not a gradient: a non-conservative lab-frame bias) and the stress gets
    ``lab_stress * e_z e_z^T``.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, lab_force=(0.0, 0.0, 0.05), lab_stress=0.002):
        super().__init__()
        self.emt = EMT()
        self.lab_force = np.asarray(lab_force, dtype=float)
        self.lab_stress = float(lab_stress)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        copy = self.atoms.copy()
        copy.calc = self.emt
        self.results = {
            "energy": copy.get_potential_energy(),
            "free_energy": copy.get_potential_energy(),
            "forces": copy.get_forces() + self.lab_force,
        }
        if all(copy.pbc):
            stress = copy.get_stress(voigt=True).copy()
            stress[2] += self.lab_stress
            self.results["stress"] = stress
