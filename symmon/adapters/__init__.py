"""Model adapters: evaluate a model on the O(3) orbit of a structure.

:func:`orbit_model_for` (:mod:`symmon.adapters.registry`) picks the adapter of what the
user passed; each model family is one module here that registers itself. Adapters
with last-layer features give the model's feature output of a target under either
spelling (``orbit_model.feature_output("non_conservative_forces")``).
"""

from .ase import ASEOrbitModel
from .base import OrbitModel, output_kind, validate_atoms
from .metatomic import MetatomicOrbitModel, load_metatomic_model
from .metatrain import MetatrainOrbitModel
from .registry import calculator_for, orbit_model_for


def feature_output(orbit_model, target: str) -> str:
    """The model's actual last-layer-feature output name of ``target`` (e.g.
    ``mtt::aux::non_conservative_forces_last_layer_features`` for a model trained
    with the plural): a ``ValueError`` naming the model when it has none."""
    if not getattr(orbit_model, "has_features", False):
        raise ValueError(f"{type(orbit_model).__name__} exposes no last-layer features; "
                         "purification needs a metatomic model exported by metatrain")
    return orbit_model.feature_output(target)


__all__ = ["ASEOrbitModel", "MetatomicOrbitModel", "MetatrainOrbitModel", "OrbitModel",
           "calculator_for", "feature_output", "load_metatomic_model", "orbit_model_for",
           "output_kind", "validate_atoms"]
