"""Shared fixtures and the ``slow`` marker.

``slow`` marks tests of real components (trained or random-weight models, subprocesses,
several ranks) that take more than a few seconds; CI runs every test, marked or not
(``python -m pytest -q``); ``-m "not slow"`` is the quick loop while editing.
"""

import pytest
from ase.build import molecule as ase_molecule

from structures import cu_ni


@pytest.fixture
def cu_ni_cell():
    """A fresh 8-atom Cu/Ni cell (2 Ni), periodic: energy, forces and stress."""
    return cu_ni()


@pytest.fixture
def water():
    """A fresh non-periodic water molecule: energy and forces, no stress."""
    atoms = ase_molecule("H2O")
    atoms.rattle(0.01, seed=0)
    return atoms
