"""Structures shared by the tests (fixtures of the same cells in conftest.py)."""

from ase.build import bulk


def cu_ni(repeat=(2, 1, 1), nickel=(1, 4), rattle=0.05, seed=1):
    """A rattled fcc Cu cell (a = 3.6 Å, cubic, ``repeat``) with Ni at ``nickel``."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(repeat)
    atoms.numbers[list(nickel)] = 28
    atoms.rattle(rattle, seed=seed)
    return atoms
