"""The orbit engine: O(3) group elements, quadratures, Wigner-D, representations, ε,
character spectra, the closed-form purification fit and the one table of outputs.

It imports nothing of ASE, i-PI, HDF5 or matplotlib. Names are imported on first use,
so ``symmon.core.outputs`` (numpy only) costs no torch import.
"""

from .lazy import lazy_getattr

_PUBLIC = {
    **{name: "symmon.core.grids" for name in (
        "O3Grid", "make_grid", "positive_lebedev_order", "quadrature_grid", "random_grid",
        "randomized_quadrature_grid")},
    **{name: "symmon.core.irreps" for name in ("Irrep", "irrep_labels", "irreps_up_to")},
    **{name: "symmon.core.representations" for name in (
        "REPRESENTATIONS", "Representation", "get_representation")},
}

__all__ = sorted(_PUBLIC)
__getattr__ = lazy_getattr("symmon.core", _PUBLIC, globals())
