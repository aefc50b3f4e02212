"""symmon: watch how well unconstrained ML interatomic potentials respect O(3) symmetry.

The array engine (no ASE, no I/O):

>>> import symmon
>>> grid = symmon.quadrature_grid(8)                       # exact O(3) quadrature
>>> result = symmon.orbit_metrics(fn, points, "vector_per_point", l_max=4, grid=grid)
>>> result.error.eps, result.spectrum.normalized
"""

__version__ = "0.1.0"

from .core.metrics import (CharacterSpectrum, EquivarianceError, OrbitMetrics, back_transform,
                      character_spectrum, equivariance_error, orbit_average, orbit_metrics,
                      transform_points)
from .core import (Irrep, O3Grid, irreps_up_to, make_grid, quadrature_grid, random_grid,
                 randomized_quadrature_grid)

__all__ = [
    "CharacterSpectrum", "EquivarianceError", "OrbitMetrics", "back_transform",
    "character_spectrum", "equivariance_error", "orbit_average", "orbit_metrics",
    "transform_points", "Irrep", "O3Grid", "irreps_up_to", "make_grid", "quadrature_grid",
    "random_grid", "randomized_quadrature_grid",
]


def __getattr__(name):  # front-ends are imported lazily: the engine needs no ASE
    if name == "SymmetryMonitor":
        from .frontends.calculator import SymmetryMonitor

        return SymmetryMonitor
    raise AttributeError(f"module 'symmon' has no attribute {name!r}")
