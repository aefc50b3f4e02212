"""Model adapters: evaluate a model on the O(3) orbit of a structure.

See :mod:`symmon.adapters.dispatch` for which adapter a model gets. Metatomic and
metatrain adapters also give the model's last-layer-feature output of a target
under either spelling (``orbit_model.feature_output("non_conservative_forces")``).
"""

from .ase import ASEOrbitModel
from .base import OrbitModel, output_kind, validate_atoms
from .dispatch import held_metatomic_calculator, make_orbit_model
from .metatomic import MetatomicOrbitModel, load_metatomic_model
from .metatrain import MetatrainOrbitModel


def feature_output(orbit_model, target: str) -> str:
    """The model's actual last-layer-feature output name of ``target`` (e.g.
    ``mtt::aux::non_conservative_forces_last_layer_features`` for a model trained
    with the plural): a ``ValueError`` naming the model when it has none."""
    if not hasattr(orbit_model, "feature_output"):
        raise ValueError(f"{type(orbit_model).__name__} exposes no last-layer features; "
                         "purification needs a metatomic model exported by metatrain")
    return orbit_model.feature_output(target)


__all__ = ["ASEOrbitModel", "MetatomicOrbitModel", "MetatrainOrbitModel", "OrbitModel",
           "feature_output", "held_metatomic_calculator", "load_metatomic_model",
           "make_orbit_model", "output_kind", "validate_atoms"]
