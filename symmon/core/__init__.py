"""The orbit engine: O(3) group elements, quadratures, Wigner-D, representations, ε,
character spectra, the closed-form purification fit and the one table of outputs.

It imports nothing of ASE, i-PI, HDF5 or matplotlib. Names are imported on first use,
so ``symmon.core.outputs`` (numpy only) costs no torch import.
"""

_PUBLIC = {
    **{name: "symmon.core.grids" for name in (
        "O3Grid", "make_grid", "positive_lebedev_order", "quadrature_grid", "random_grid",
        "randomized_quadrature_grid")},
    **{name: "symmon.core.irreps" for name in ("Irrep", "irrep_labels", "irreps_up_to")},
    **{name: "symmon.core.representations" for name in (
        "REPRESENTATIONS", "Representation", "get_representation")},
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'symmon.core' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
