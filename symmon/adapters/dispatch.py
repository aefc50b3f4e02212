"""Which adapter evaluates a given model: batched for metatomic models, else the ASE loop.

A calculator that *holds* a ``MetatomicCalculator`` in one of its attributes and
returns its results (as upet's ``UPETCalculator`` does in ``.calculator``) is
evaluated batched through that inner model; on the first call the wrapper's energy
is compared with the inner model's, so a wrapper that adds something (a dispersion
correction, a mixing) is refused with one sentence instead of being monitored wrong.
A ``SymmetrizedCalculator`` (rotational averaging) is never looked through: its
results are not its inner model's.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

from .ase import ASEOrbitModel
from .base import OrbitModel
from .metatomic import MetatomicOrbitModel, load_metatomic_model, metatomic_calculator_class
from .metatrain import MetatrainOrbitModel


def held_metatomic_calculator(calculator) -> Optional[Tuple[str, object]]:
    """``(attribute, MetatomicCalculator)`` held directly by ``calculator``, if any."""
    metatomic_calculator = metatomic_calculator_class()
    if not metatomic_calculator or isinstance(calculator, metatomic_calculator):
        return None
    try:
        from metatomic_ase import SymmetrizedCalculator
    except ImportError:  # pragma: no cover
        SymmetrizedCalculator = ()
    if isinstance(calculator, SymmetrizedCalculator):
        return None
    for attribute, value in getattr(calculator, "__dict__", {}).items():
        if isinstance(value, metatomic_calculator):
            return attribute, value
    return None


def make_orbit_model(model, **kwargs) -> OrbitModel:
    """The best adapter for ``model`` (its ``path`` attribute says which and why).

    ``.ckpt`` paths give a :class:`MetatrainOrbitModel`; ``.pt`` paths,
    ``AtomisticModel`` and ``MetatomicCalculator`` (held by a wrapper or not) a
    :class:`MetatomicOrbitModel`; any other ASE calculator an :class:`ASEOrbitModel`.
    """
    if isinstance(model, OrbitModel):
        return model
    if isinstance(model, (str, os.PathLike)):  # loaded once, by the adapter
        if os.fspath(model).endswith(".ckpt"):
            return MetatrainOrbitModel(model, **kwargs)
        return MetatomicOrbitModel(model, **kwargs)
    try:
        load_metatomic_model(model)
    except TypeError:
        pass
    else:
        return MetatomicOrbitModel(model, **kwargs)
    held = held_metatomic_calculator(model)
    if held is not None:
        attribute, inner = held
        return MetatomicOrbitModel(inner, wrapper=(model, attribute), **kwargs)
    if hasattr(model, "get_property"):
        return ASEOrbitModel(model)
    raise TypeError(f"cannot evaluate {type(model).__name__}: pass an ASE calculator, a "
                    "metatomic model (.pt path or AtomisticModel) or a MetatomicCalculator")
