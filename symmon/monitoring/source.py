"""What the monitor evaluates: the base calculator's predictions and its orbit adapter.

The base is any ASE calculator. Its orbit (the transformed copies) goes through

* the batched metatomic adapter when the base is a ``MetatomicCalculator``, or wraps one
  (an attribute holding a ``MetatomicCalculator``) *and* returns that inner calculator's
  predictions unchanged -- checked on the first structure, so a wrapper that adds terms
  (dispersion, a reference energy) is never silently replaced by its inner model;
* otherwise the generic per-copy loop (``ASEOrbitModel``), which is exact for any
  calculator. Which path, and why, is in :attr:`ModelSource.path`; a wrapper whose
  inner model cannot be used is reported once with a warning.

Monitored quantities follow the base: ``energy`` always, ``forces`` and ``stress`` when
the base implements them, stress only for 3D-periodic cells.
"""

from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..adapters.ase import ASEOrbitModel
from ..adapters.metatomic import MetatomicOrbitModel
from ..core.outputs import DIRECT_OUTPUTS, voigt_to_matrix

#: ASE properties a monitor returns when its base implements them
ASE_PROPERTIES = ("energy", "free_energy", "forces", "stress")


def _metatomic_calculator_class():
    try:
        from metatomic_ase import MetatomicCalculator
    except ImportError:  # pragma: no cover - metatomic-ase is a dependency
        return ()
    return MetatomicCalculator


def find_metatomic(base) -> Tuple[Optional[object], str]:
    """The ``MetatomicCalculator`` behind ``base`` (itself or an attribute), and how found."""
    cls = _metatomic_calculator_class()
    if isinstance(base, cls):
        return base, "the base is a MetatomicCalculator"
    for name, value in getattr(base, "__dict__", {}).items():
        if isinstance(value, cls):
            return value, f"{type(base).__name__}.{name} is a MetatomicCalculator"
    return None, (f"{type(base).__name__} holds no MetatomicCalculator: one ASE calculation "
                  "per transformed copy")


def ase_predictions(calculator, atoms, names: Sequence[str]) -> Dict[str, np.ndarray]:
    """``names`` from an ASE calculator, float64 (stress as 3x3)."""
    if hasattr(calculator, "get_properties"):  # one state check, one calculation
        raw = calculator.get_properties(list(names), atoms)
    else:
        raw = {name: calculator.get_property(name, atoms) for name in names}
    values = {name: np.array(raw[name], dtype=np.float64) for name in names}
    if "stress" in values:
        values["stress"] = voigt_to_matrix(values["stress"])
    return values


def _same_predictions(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> bool:
    return all(np.allclose(a[name], b[name], rtol=1e-6, atol=1e-8) for name in a)


class ModelSource:
    """The base calculator, the adapter that evaluates its orbit, and what it returns.

    :param base: an ASE calculator (``get_property``/``get_properties``)
    :param device: torch device of a metatomic model
    :param chunk_size: transformed copies per batched forward call (metatomic models)
    """

    def __init__(self, base, *, device: Optional[str] = None,
                 chunk_size: Optional[int] = None):
        if not hasattr(base, "get_property"):
            raise TypeError(f"base must be an ASE calculator or a model path, got "
                            f"{type(base).__name__}")
        self.base = base
        implemented = set(getattr(base, "implemented_properties", ASE_PROPERTIES))
        self.implemented = [p for p in ASE_PROPERTIES if p in implemented]
        if "energy" not in self.implemented:
            raise ValueError(f"{type(base).__name__} does not implement 'energy' "
                             f"(implemented_properties: {sorted(implemented)}): symmon "
                             "monitors energies, forces and stress")
        self._device, self._chunk_size = device, chunk_size
        self.inner, reason = find_metatomic(base)
        self._inner_checked = self.inner is None or self.inner is base
        self.nc_forces = self.nc_stress = False
        if self.inner is None:
            self.orbit_model, self.path = ASEOrbitModel(base), f"per-copy ASE loop ({reason})"
        else:
            self._use_batched(reason)

    def _use_batched(self, reason: str) -> None:
        non_conservative = self.inner.parameters.get("non_conservative", False)
        self.nc_forces = non_conservative in (True, "forces")
        self.nc_stress = non_conservative in (True, "stress")
        self.orbit_model = MetatomicOrbitModel(self.inner, device=self._device,
                                               chunk_size=self._chunk_size)
        self.path = f"batched metatomic model ({reason})"

    def _fall_back(self, why: str) -> None:
        message = (f"{type(self.base).__name__} wraps a MetatomicCalculator but {why}: "
                   "its orbit is evaluated with one ASE calculation per copy (slower, exact)")
        warnings.warn(message, UserWarning, stacklevel=4)
        self.inner, self.nc_forces, self.nc_stress = None, False, False
        self.orbit_model, self.path = ASEOrbitModel(self.base), f"per-copy ASE loop ({why})"

    # -- what is monitored -------------------------------------------------------------
    def quantities(self, atoms) -> Tuple[str, ...]:
        """Monitored quantities for this structure (stress only for 3D-periodic cells)."""
        periodic = bool(all(atoms.pbc))
        return tuple(q for q in ("energy", "forces", "stress") if q in self.implemented
                     and (q != "stress" or periodic))

    def not_monitored(self, atoms) -> List[str]:
        """What a user could expect here but the base does not provide."""
        missing = [q for q in ("forces",) if q not in self.implemented]
        if all(atoms.pbc) and "stress" not in self.implemented:
            missing.append("stress")
        return missing

    def orbit_names(self, quantities: Sequence[str]) -> Dict[str, str]:
        """The adapter's output name of each quantity (direct outputs where returned)."""
        direct = {"forces": self.nc_forces, "stress": self.nc_stress}
        return {q: DIRECT_OUTPUTS[q] if direct.get(q) else q for q in quantities}

    # -- evaluation --------------------------------------------------------------------
    def predictions(self, atoms, quantities: Sequence[str]) -> Dict[str, np.ndarray]:
        """The base calculator's own predictions, float64 (stress as 3x3), untouched."""
        values = ase_predictions(self.base, atoms, quantities)
        if not self._inner_checked:
            self._check_inner(atoms, values)
        return values

    def _check_inner(self, atoms, values) -> None:
        """A wrapper's batched path is used only if it returns its inner model's values."""
        self._inner_checked = True
        if not _same_predictions(values, ase_predictions(self.inner, atoms.copy(), list(values))):
            self._fall_back("its predictions differ from the inner model's")

    def orbit(self, atoms, matrices, quantities: Sequence[str],
              features: Sequence[str] = ()) -> Dict[str, torch.Tensor]:
        """Quantities (and feature outputs) on the copies ``x Q^T``, as the base returns
        them: direct forces have their mean removed, as ``MetatomicCalculator`` does."""
        names = self.orbit_names(quantities)
        raw = self.orbit_model.evaluate(atoms, matrices, list(names.values()) + list(features))
        values = {q: raw[names[q]] for q in quantities}
        values.update({name: raw[name] for name in features})
        if self.nc_forces and "forces" in values:
            values["forces"] = values["forces"] - values["forces"].mean(dim=1, keepdim=True)
        return values
