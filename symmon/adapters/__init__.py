"""Model adapters: evaluate a model on the O(3) orbit of a structure."""

import os

from .ase import ASEOrbitModel
from .base import OrbitModel, output_kind, validate_atoms
from .metatomic import MetatomicOrbitModel, load_metatomic_model
from .metatrain import MetatrainOrbitModel


def make_orbit_model(model, **kwargs) -> OrbitModel:
    """The best adapter for ``model``: batched for metatomic models, else the ASE loop."""
    if isinstance(model, OrbitModel):
        return model
    if isinstance(model, (str, os.PathLike)) and os.fspath(model).endswith(".ckpt"):
        return MetatrainOrbitModel(model, **kwargs)
    try:
        metatomic_model = load_metatomic_model(model)
    except TypeError:
        metatomic_model = None
    if metatomic_model is not None:
        return MetatomicOrbitModel(metatomic_model, **kwargs)
    if hasattr(model, "get_property"):
        return ASEOrbitModel(model)
    raise TypeError(f"cannot evaluate {type(model).__name__}: pass an ASE calculator, a "
                    "metatomic model (.pt path or AtomisticModel) or a MetatomicCalculator")


__all__ = ["ASEOrbitModel", "MetatomicOrbitModel", "MetatrainOrbitModel", "OrbitModel",
           "load_metatomic_model", "make_orbit_model", "output_kind",
           "validate_atoms"]
