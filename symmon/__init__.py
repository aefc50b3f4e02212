"""symmon: watch how well unconstrained ML interatomic potentials respect O(3) symmetry.

The array engine (no ASE, no I/O):

>>> import symmon
>>> grid = symmon.quadrature_grid(8)                       # exact O(3) quadrature
>>> result = symmon.orbit_metrics(fn, points, "vector_per_point", l_max=4, grid=grid)
>>> result.error.eps, result.spectrum.normalized

Names are imported on first use, so ``import symmon`` (and ``symmon report --help``)
costs no torch import.
"""

__version__ = "0.1.0"

#: public name -> module that defines it
from .core.lazy import lazy_getattr

_PUBLIC = {
    **{name: "symmon.core.metrics" for name in (
        "CharacterSpectrum", "EquivarianceError", "OrbitMetrics", "back_transform",
        "character_spectrum", "equivariance_error", "orbit_average", "orbit_metrics",
        "transform_points")},
    **{name: "symmon.core.grids" for name in (
        "O3Grid", "make_grid", "quadrature_grid", "random_grid", "randomized_quadrature_grid")},
    "Irrep": "symmon.core.irreps", "irreps_up_to": "symmon.core.irreps",
    "SymmetryMonitor": "symmon.frontends.calculator",
    "TorchSimMonitor": "symmon.frontends.torchsim",
}

__all__ = sorted(_PUBLIC)
__getattr__ = lazy_getattr("symmon", _PUBLIC, globals())


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
