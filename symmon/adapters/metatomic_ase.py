"""A metatomic ``.pt`` file as an ASE calculator (``metatomic_ase.MetatomicCalculator``)."""

from __future__ import annotations

from typing import Optional

from ..core.outputs import spellings
from .model_file import loading_model_file


def metatomic_calculator(path, *, device: Optional[str] = None, non_conservative=False):
    """``MetatomicCalculator`` for a ``.pt`` file, with exact neighbour lists (no skin).

    ``non_conservative=True`` on a model with direct forces but no direct stress head
    means direct forces only (``"forces"``), as it does for a molecule. The file is
    loaded once: the calculator gets the loaded model, and its ``parameters["model"]``
    names the file as if it had loaded it itself (``todict``, the log's model hash)."""
    from metatomic.torch import load_atomistic_model
    from metatomic_ase import MetatomicCalculator

    with loading_model_file(path) as checked:
        model = load_atomistic_model(checked)
        if non_conservative is True and not has_direct_stress(model):
            non_conservative = "forces"
        calculator = MetatomicCalculator(model, device=device,
                                         non_conservative=non_conservative, neighbor_skin=0.0)
    calculator.parameters["model"] = checked
    return calculator


def has_direct_stress(model) -> bool:
    """Whether the loaded ``AtomisticModel`` declares a direct (non-conservative) stress."""
    declared = model.capabilities().outputs.keys()
    return any(name in declared for name in spellings("non_conservative_stress"))
