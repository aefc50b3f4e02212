"""What the monitor evaluates: the base calculator's predictions and its orbit adapter.

The base is any ASE calculator; its orbit (the transformed copies) goes through the
adapter the registry gives it (:func:`~symmon.adapters.registry.orbit_model_for`: a
family's batched adapter, a wrapper looked through, or one ASE calculation per copy).
This module knows no family: it reads the adapter's facts (:class:`~symmon.adapters.
base.OrbitModel`): which calculator's predictions the orbit reproduces, which quantities
that calculator returns from direct heads, whether it removes their net force, its
dtype, its warm-up structure. Which path, and why, is in :attr:`ModelSource.path`.

Monitored quantities follow the base: ``energy`` always, ``forces`` and ``stress`` when
the base implements them, stress only for 3D-periodic cells.

The returned predictions are always the base calculator's own, untouched: the very
values of its ``results`` (dtype and shape included, :attr:`BaseValues.results`), from
its own call on every step -- a batched forward computes the unrotated copy with other
float rounding (1e-7 relative in float32), and an MD fed those values drifts from an
unmonitored one. On the batched path the unrotated structure also rides in the orbit's
forward call (identity prepended to the elements) where it is needed: on the first
monitored step, to check that the batched path reproduces the base (a fast path never
diverges: a base whose predictions differ -- other output variants, a term a subclass
adds, ... -- is named once with a warning, its ε being that of the model inside), and
for direct forces, whose raw net force (before the mean the calculator removes) is a
free signal.
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from ase.calculators.calculator import all_changes

from ..adapters.ase import ase_predictions, ase_results  # noqa: F401 (re-exported)
from ..adapters.memory import OrbitOutOfMemory, is_out_of_memory
from ..adapters.registry import orbit_model_for
from ..core.outputs import voigt_to_matrix, without_net_force
from ..core.quantities import QUANTITY, QUANTITY_NAMES

#: ASE properties a monitor returns when its base implements them
ASE_PROPERTIES = ("energy", "free_energy", "forces", "stress")
#: the unrotated structure, as a stack of one group element
IDENTITY = np.eye(3)[None]
_PERIODIC = np.ones(3, dtype=bool).tobytes()
#: largest max|folded - base| / max(max|base|, tiny) accepted, per model dtype
WARM_UP_CALLS = 3  # the profiling executor optimises after its first calls
FOLD_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


def relative_difference(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> float:
    """Largest ``max|a - b| / max|b|`` over the quantities of ``b`` (floor 1e-12)."""
    return max(float(np.max(np.abs(a[q] - b[q]))) / max(float(np.max(np.abs(b[q]))), 1e-12)
               for q in b)


@dataclass
class BaseValues:
    """The base model on the structure as given: ``predictions`` as the base calculator
    returns them (float64, stress 3x3), ``raw_forces``, its forces before any mean
    removal (``None`` where unknown: direct forces of a plain base call), and
    ``results``, the base calculator's own values of the ASE properties (``energy``,
    ``forces``, ``stress`` in Voigt order, ``free_energy`` where it has one), untouched:
    what a front-end returns (``None`` where the values did not come from its call)."""

    predictions: Dict[str, np.ndarray]
    raw_forces: Optional[np.ndarray]
    results: Optional[Dict[str, object]] = None
    #: the adapter's free signals of this call (a conservative Orb's rotational
    #: gradient), logged with the step
    signals: Dict[str, float] = field(default_factory=dict)


class ModelSource:
    """The base calculator, the adapter that evaluates its orbit, and what it returns.

    :param base: an ASE calculator (``get_property``/``get_properties``)
    :param device: torch device of the model (families that run on torch)
    :param chunk_size: transformed copies per batched forward call
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
        self.orbit_model = orbit_model_for(base, device=device, chunk_size=chunk_size)
        self._fold, self._fold_checked = True, False

    # -- the adapter's facts -----------------------------------------------------------
    @property
    def path(self) -> str:
        """How the orbit is evaluated, and why (the adapter's own words)."""
        return self.orbit_model.path

    @property
    def inner(self):
        """The calculator whose predictions the orbit reproduces (the base, or one a
        wrapper holds and returns), ``None`` where the orbit is per-copy ASE calls."""
        return self.orbit_model.calculator

    @property
    def nc_forces(self) -> bool:
        return "forces" in self.orbit_model.direct

    @property
    def nc_stress(self) -> bool:
        return "stress" in self.orbit_model.direct

    # -- what is monitored -------------------------------------------------------------
    def quantities(self, atoms) -> Tuple[str, ...]:
        """Monitored quantities for this structure (stress only for 3D-periodic cells)."""
        periodic = atoms.pbc.tobytes() == _PERIODIC  # no NumPy reduction per step
        return self._quantities[periodic]

    @functools.cached_property
    def _quantities(self) -> Dict[bool, Tuple[str, ...]]:
        return {periodic: tuple(q for q in QUANTITY_NAMES
                                if q in self.implemented and (q != "stress" or periodic))
                for periodic in (False, True)}

    def not_monitored(self, atoms) -> List[str]:
        """What a user could expect here but the base does not provide."""
        missing = [q for q in ("forces",) if q not in self.implemented]
        if all(atoms.pbc) and "stress" not in self.implemented:
            missing.append("stress")
        return missing

    def orbit_names(self, quantities: Sequence[str]) -> Dict[str, str]:
        """The adapter's output name of each quantity (direct outputs where returned)."""
        direct = {"forces": self.nc_forces, "stress": self.nc_stress}
        return {q: QUANTITY[q].direct_output if direct.get(q) else q for q in quantities}

    def keep_on_device(self, features: Sequence[str]) -> None:
        """Feature outputs the batched path returns on the model's device (the purified
        readout is applied there; elsewhere every value is on the CPU)."""
        if hasattr(self.orbit_model, "device_outputs"):
            self.orbit_model.device_outputs = tuple(features)

    # -- evaluation --------------------------------------------------------------------
    @property
    def folds(self) -> bool:
        """True when the unrotated structure rides in the orbit's batched forward call."""
        return self._fold and self.orbit_model.batched and self.inner is not None

    def predictions(self, atoms, quantities: Sequence[str]) -> Dict[str, np.ndarray]:
        """The base calculator's own predictions, float64 (stress as 3x3)."""
        return self._own_call(atoms, quantities)[0]

    def _own_call(self, atoms, quantities: Sequence[str]):
        """The base calculator's own call: (float64 predictions, stress as 3x3; its
        ``results`` of the ASE properties, untouched)."""
        names = list(quantities)
        if self.inner is self.base and hasattr(self.base, "calculate"):
            # one calculation, no cache checks (the caller has one)
            self.base.calculate(atoms, names, all_changes)
            raw = self.base.results
        else:
            raw = ase_results(self.base, atoms, names)
        results = {name: raw[name] for name in names}
        if "free_energy" in raw:
            results["free_energy"] = raw["free_energy"]
        values = {name: voigt_to_matrix(np.asarray(raw[name], dtype=np.float64))
                  if name == "stress" else np.array(raw[name], dtype=np.float64)
                  for name in names}
        return values, results

    def evaluate(self, atoms, quantities: Sequence[str], frames: Mapping[str, np.ndarray],
                 *, base: bool = True, features: Sequence[str] = ()
                 ) -> Tuple[Optional[BaseValues], Dict[str, Dict[str, torch.Tensor]]]:
        """The base predictions (``base=True``) and the values on each stack of elements
        in ``frames`` (name -> ``(K, 3, 3)``), from one batched call where the base is a
        metatomic model: the unrotated structure is then the stack ``"identity"``."""
        self.orbit_model.prepare(atoms)
        if not frames and not features:
            return (self.plain(atoms, quantities) if base else None), {}
        # the unrotated copy in the batch: the first check, and raw direct forces
        fold = base and self.folds and (not self._fold_checked or (
            self.nc_forces and "forces" in quantities))
        if (fold or not frames) and "identity" not in frames:
            frames = {"identity": IDENTITY, **frames}
        raw = self._raw_orbit(atoms, np.concatenate(list(frames.values())), quantities,
                              features)
        values, start = {}, 0
        for name, matrices in frames.items():
            values[name] = {q: v[start:start + len(matrices)] for q, v in raw.items()}
            start += len(matrices)
        raw_forces = (values["identity"]["forces"][0].numpy() if "identity" in values
                      and "forces" in quantities else None)
        self._remove_mean(values)
        if not base:
            return None, values
        plain = self.plain(atoms, quantities)
        if fold and not self._fold_checked:
            self._check_fold(values["identity"], plain, quantities)
        if raw_forces is not None and plain.raw_forces is None:
            plain.raw_forces = raw_forces
        return plain, values

    def plain(self, atoms, quantities) -> BaseValues:
        """The base calculator's own call (no orbit)."""
        predictions, results = self._own_call(atoms, quantities)
        conservative = "forces" in predictions and not self.nc_forces
        signals = self.orbit_model.free_values(getattr(self.base, "results", {}), len(atoms)) \
            if self.orbit_model.free_signals else {}
        return BaseValues(predictions, predictions["forces"] if conservative else None,
                          results, signals)

    def free_specs(self) -> Dict[str, Tuple[str, str]]:
        """The adapter's free signals: name -> ``(unit, description)``."""
        return dict(self.orbit_model.free_signals)

    def _check_fold(self, identity, plain: BaseValues, quantities) -> None:
        """On the first monitored step: the batched unrotated copy against the base's own
        call (a fast path never diverges); a difference is named once."""
        self._fold_checked = True
        folded = self.base_predictions(identity, quantities)
        difference = relative_difference(folded, plain.predictions)
        if difference > FOLD_TOLERANCE.get(getattr(self.orbit_model, "dtype", None), 1e-10):
            self._fold = False
            warnings.warn(f"the batched model's unrotated copy differs from "
                          f"{type(self.base).__name__}'s predictions (relative "
                          f"{difference:.2g}): the base's own predictions are returned, "
                          "and eps is that of the model it holds", UserWarning, stacklevel=6)

    def base_predictions(self, identity: Dict[str, torch.Tensor],
                         quantities: Sequence[str]) -> Dict[str, np.ndarray]:
        """The unrotated copy's values as the base calculator returns them (ASE's Voigt
        stress is symmetric: the 3x3 is symmetrised)."""
        values = {q: identity[q][0].numpy() for q in quantities}
        if "stress" in values:
            values["stress"] = (values["stress"] + values["stress"].T) / 2
        return values

    @property
    def model_dtype(self):
        """The dtype the model computes in (float64 for ASE calculators): sets the noise
        floor of ε."""
        return getattr(self.orbit_model, "dtype", torch.float64)

    def orbit(self, atoms, matrices, quantities: Sequence[str],
              features: Sequence[str] = ()) -> Dict[str, torch.Tensor]:
        """Quantities (and feature outputs) on the copies ``x Q^T``, as the base returns
        them: direct forces have their mean removed, as ``MetatomicCalculator`` does."""
        values = {"orbit": self._raw_orbit(atoms, matrices, quantities, features)}
        self._remove_mean(values)
        return values["orbit"]

    def _raw_orbit(self, atoms, matrices, quantities, features) -> Dict[str, torch.Tensor]:
        """:class:`OrbitOutOfMemory` (one sentence) where the orbit does not fit in memory,
        whatever the adapter (the batched ones halve their chunks first)."""
        names = self.orbit_names(quantities)
        try:  # the monitor validates the atoms (Monitor._validate): the adapter need not
            raw = self.orbit_model.evaluate(atoms, matrices,
                                            list(names.values()) + list(features),
                                            checked=True)
        except OrbitOutOfMemory:
            raise
        except Exception as error:  # noqa: BLE001 - allocation failures only
            if not is_out_of_memory(error):
                raise
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        else:
            values = {q: raw[names[q]] for q in quantities}
            values.update({name: raw[name] for name in features})
            return values
        import gc

        gc.collect()  # the failed call's tensors, held by the exception's frames until now
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise OrbitOutOfMemory(f"the orbit of this structure ({len(atoms)} atoms, "
                               f"{len(matrices)} copies) does not fit in memory ({reason})")

    def _remove_mean(self, stacks: Dict[str, Dict[str, torch.Tensor]]) -> None:
        if not (self.nc_forces and self.orbit_model.removes_net_force):
            return
        for values in stacks.values():
            if "forces" in values:
                values["forces"] = without_net_force(values["forces"])

    # -- warm-up -----------------------------------------------------------------------
    def warm_up(self, n_copies: int, features: Sequence[str] = ()) -> float:
        """Run the base call and a batched call of ``n_copies`` three times on the
        adapter's warm-up structure (TorchScript compiles on the first calls of each
        path); returns the seconds it took (0 where the adapter needs none)."""
        atoms = self.orbit_model.warm_up_atoms()
        if atoms is None or self.inner is None:
            return 0.0
        start = time.perf_counter()
        quantities = self.quantities(atoms)
        matrices = np.repeat(IDENTITY, max(1, n_copies), axis=0)
        for _ in range(WARM_UP_CALLS):
            atoms.positions[1, 2] += 0.01
            ase_predictions(self.inner, atoms, quantities)
            self.orbit(atoms, matrices, quantities, features)
        self.inner.reset()
        return time.perf_counter() - start
