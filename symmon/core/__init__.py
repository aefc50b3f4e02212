"""O(3) group elements, quadratures and irrep labels (no ASE, no I/O)."""

from .grids import (O3Grid, make_grid, positive_lebedev_order, quadrature_grid,
                    random_grid, randomized_quadrature_grid)
from .irreps import Irrep, irrep_labels, irreps_up_to
from .representations import REPRESENTATIONS, Representation, get_representation

__all__ = [
    "O3Grid", "make_grid", "positive_lebedev_order", "quadrature_grid", "random_grid",
    "randomized_quadrature_grid", "Irrep", "irrep_labels", "irreps_up_to",
    "REPRESENTATIONS", "Representation", "get_representation",
]
