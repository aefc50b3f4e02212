"""MACE (``mace-torch``): an exactly equivariant family, the control symmon must grade ok.

A ``MACECalculator`` or a MACE model (``torch.nn.Module`` of ``mace.modules``, or a
``torch.save``'d one: ``*.model`` files) is evaluated with one ``MACECalculator`` call
per copy (:class:`~symmon.adapters.ase.ASEOrbitModel`): exact by construction, and the
point of this family is the verdict, not the speed. What the family adds to the ASE
loop is the model's dtype: ε of an equivariant model sits at the floating-point floor
of *that* dtype (float32 MACE models are graded against the float32 floor).

e3nn 0.4.4 (MACE's dependency) reads its constants with ``torch.load`` at import, which
torch >= 2.6 refuses by default (the file holds a ``slice``); :func:`import_mace`
allows exactly that global while importing.
"""

from __future__ import annotations

from typing import Optional

import torch

from .ase import ASEOrbitModel
from .registry import Family, module_of, register, require

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def import_mace():
    """``mace`` (and e3nn) imported, or one sentence naming ``pip install``."""
    with torch.serialization.safe_globals([slice]):
        require("e3nn.o3", "mace", "a MACE model")
        return require("mace.calculators", "mace", "a MACE model")


def mace_calculator(model, *, device: Optional[str] = None, non_conservative=False):
    """``MACECalculator`` of a MACE model, in the model's own dtype."""
    import_mace()
    from mace.calculators import MACECalculator

    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    return MACECalculator(models=model, device=device or "cpu", default_dtype=dtype)


class MaceOrbitModel(ASEOrbitModel):
    """A ``MACECalculator`` on transformed copies: one call per copy."""

    family = "mace"

    def __init__(self, calculator):
        super().__init__(calculator)
        self.dtype = _DTYPES.get(getattr(calculator, "default_dtype", "float64"),
                                 torch.float64)
        self.device = torch.device(str(getattr(calculator, "device", "cpu")))


def _recognises(obj) -> bool:
    if module_of(obj) != "mace":
        return False
    if type(obj).__name__ == "MACECalculator":
        return True
    return isinstance(obj, torch.nn.Module) and hasattr(obj, "r_max") \
        and hasattr(obj, "atomic_numbers")


def _build(model, *, device=None, **_):
    if not hasattr(model, "get_property"):
        model = mace_calculator(model, device=device)
    return MaceOrbitModel(model)


register(Family("mace", _recognises, _build, calculator=mace_calculator, extra="mace",
                library="mace"))
