"""A traceless stress that does not rotate is contamination (found by an independent check:
the whole tensor's targets (0,+1)+(2,+1) hid it)."""

import numpy as np
from ase.calculators.emt import EMT

from broken import LabFrameEMT
from structures import cu_ni
from symmon import SymmetryMonitor


def test_non_rotating_traceless_stress_is_contamination():
    atoms = cu_ni(nickel=(), seed=2)
    a = 0.01  # eV/Å^3: the stress gets a * e_z e_z^T in the lab frame
    monitor = SymmetryMonitor(LabFrameEMT(lab_force=(0.0, 0.0, 0.0), lab_stress=a),
                              every=1, full_every=1, l_max=2)
    atoms.calc = monitor
    atoms.get_forces()
    values = monitor.monitor.last_values
    reference = atoms.copy()
    reference.calc = EMT()
    s = reference.get_stress(voigt=False)
    # off-target: the traceless part of a e_z e_z^T, a^2 * 2/3; total: <|Q S Q^T + C|^2>
    expected = (2 * a * a / 3) / (np.sum(s * s) + a * a + 2 * a * np.trace(s) / 3)
    np.testing.assert_allclose(values["stress_contamination"], expected, rtol=1e-8)
    labels = [tuple(x) for x in monitor.monitor.observable_specs(atoms)[
        "stress_traceless_spectrum"].labels]
    traceless = dict(zip(labels, values["stress_traceless_spectrum"]))
    assert traceless[(0, 1)] > 0.5 and traceless[(2, 1)] < 0.5  # the lab part dominates


def test_equivariant_stress_is_clean():
    atoms = cu_ni(nickel=(), seed=2)
    monitor = SymmetryMonitor(EMT(), every=1, full_every=1, l_max=2)
    atoms.calc = monitor
    atoms.get_forces()
    assert abs(monitor.monitor.last_values["stress_contamination"]) < 1e-12
