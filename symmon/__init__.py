"""symmon: watch how well unconstrained ML interatomic potentials respect O(3) symmetry."""

__version__ = "0.1.0"
