"""Adapter for metatomic models: the whole orbit through the model's own ``forward``.

:class:`MetatomicOrbitModel` is composed of three parts:

* an :class:`~symmon.adapters.catalogue.OutputCatalogue`: which outputs the model
  declares under which spelling, and how to request them;
* an :class:`~symmon.adapters.orbit_systems.OrbitSystems`: the structure's System
  and neighbour lists, built once, and its rotated copies;
* an evaluator: :class:`~symmon.adapters.batched.BatchedEvaluator` (chunks of copies
  through ``AtomisticModel.forward``) or, for models that request extra inputs,
  :class:`~symmon.adapters.per_copy.CalculatorLoop` (one ``MetatomicCalculator``
  call per copy). :attr:`MetatomicOrbitModel.path` says which, and why.

Both evaluators call the public ``AtomisticModel`` interface, so the orbit values are
what the model returns to any engine (names translated, units converted); tests
check them against per-copy ``MetatomicCalculator`` calls for every model variant.
"""

from __future__ import annotations

import os
import warnings
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from .base import OrbitModel, check_species, validate_atoms, validate_matrices
from .batched import BatchedEvaluator, atomistic_model_runner
from .memory import ChunkPlanner
from .catalogue import OutputCatalogue
from .model_file import loading_model_file
from .orbit_systems import OrbitSystems, per_copy_values  # noqa: F401 (re-exported)
from .per_copy import CalculatorLoop

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def metatomic_calculator_class():
    """``metatomic_ase.MetatomicCalculator``, or an empty tuple when not installed."""
    try:
        from metatomic_ase import MetatomicCalculator
    except ImportError:  # pragma: no cover - metatomic-ase is a dependency
        return ()
    return MetatomicCalculator


def load_metatomic_model(model, extensions_directory=None):
    """An :class:`~metatomic.torch.AtomisticModel` from a path, a model or a calculator."""
    from metatomic.torch import load_atomistic_model

    if isinstance(model, (str, bytes, os.PathLike)):
        with loading_model_file(os.fsdecode(model)) as path:
            return load_atomistic_model(path, extensions_directory=extensions_directory)
    if hasattr(model, "capabilities") and hasattr(model, "requested_neighbor_lists"):
        return model
    if isinstance(model, metatomic_calculator_class()):
        return model.model()
    raise TypeError(f"cannot use {type(model).__name__} as a metatomic model; pass a .pt "
                    "path, an AtomisticModel or a MetatomicCalculator")


def _model_file(model) -> Optional[str]:
    """The file a model came from (a path, or a MetatomicCalculator's ``model`` parameter)."""
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    parameters = getattr(model, "parameters", None)
    return parameters.get("model") if isinstance(parameters, dict) else None


def model_label(atomistic_model, path: Optional[str]) -> str:
    """How messages name a model: its file, else its metadata name."""
    if path:
        return f"model {os.path.basename(path)!r}"
    name = atomistic_model.metadata().name if hasattr(atomistic_model, "metadata") else ""
    return f"model {name!r}" if name else "the metatomic model"


class MetatomicOrbitModel(OrbitModel):
    """Evaluate a metatomic model on O(3)-transformed copies.

    :param model: ``.pt`` path, :class:`~metatomic.torch.AtomisticModel` or
        ``metatomic_ase.MetatomicCalculator``
    :param device: torch device (default: the first of the model's supported devices
        that is available, CUDA first when the model lists it)
    :param chunk_size: copies per forward call (default: planned from the memory one
        copy takes, :class:`~symmon.adapters.memory.ChunkPlanner`)
    :param wrapper: ``(calculator, attribute)`` when ``model`` is the
        ``MetatomicCalculator`` held by another calculator: on the first call the
        wrapper's energy is checked equal to the model's
    :ivar path: which evaluation path is used, and why
    """

    def __init__(self, model, *, device: Optional[str] = None,
                 chunk_size: Optional[int] = None, extensions_directory=None,
                 wrapper: Optional[Tuple[object, str]] = None):
        from metatomic.torch import pick_device

        self.model = load_metatomic_model(model, extensions_directory)
        self.model_path = _model_file(model)
        self.capabilities = self.model.capabilities()
        self.dtype = _DTYPES[self.capabilities.dtype]
        self.device = torch.device(pick_device(self.capabilities.supported_devices, device))
        self.model.to(self.device)
        #: copies per forward call, from the memory they take (or ``chunk_size``)
        self.planner = ChunkPlanner(self.device, chunk_size)
        self.atomic_types = sorted(int(t) for t in self.capabilities.atomic_types)
        self.label = model_label(self.model, self.model_path)
        self.catalogue = OutputCatalogue(self.capabilities.outputs, self.label)
        self.systems = OrbitSystems(self._neighbor_calculators(), self.dtype, self.device)
        inputs = sorted(self.model.requested_inputs(use_new_names=True))
        if inputs:
            self.path = (f"one MetatomicCalculator call per copy: {self.label} requests "
                         f"the extra inputs {inputs}, which metatomic-ase reads from the Atoms")
            warnings.warn(f"symmon: {self.path} (slower than the batched path)",
                          stacklevel=2)
            self.evaluator = CalculatorLoop(self.model, self.catalogue, self.device)
        else:
            self.path = "batched: chunks of rotated copies through AtomisticModel.forward"
            self.evaluator = BatchedEvaluator(self.systems, self.catalogue,
                                              atomistic_model_runner(self.model),
                                              self.planner)
        self.chunk_size = chunk_size
        self.wrapper = wrapper
        #: outputs :meth:`evaluate` leaves on the model's device (for a consumer that
        #: uses them there: the monitor's purified readout corrects with its features)
        self.device_outputs: Tuple[str, ...] = ()
        if wrapper is not None:
            self.path += (f" (the MetatomicCalculator held in "
                          f"{type(wrapper[0]).__name__}.{wrapper[1]})")

    def _neighbor_calculators(self):
        from vesin.metatomic import neighbor_lists_for_model

        return neighbor_lists_for_model("angstrom", self.model, skin=0.0)

    # -- capabilities --------------------------------------------------------------
    @property
    def available_outputs(self) -> Sequence[str]:
        return self.catalogue.available

    def check_outputs(self, outputs: Sequence[str]) -> None:
        self.catalogue.check(outputs)

    def model_key(self, name: str) -> str:
        """The model's own output name for symmon's ``name``."""
        return self.catalogue.key(name) or name

    def feature_output(self, target: str) -> str:
        """The model's last-layer-feature output of ``target`` (either spelling)."""
        return self.catalogue.feature_output(target)

    @property
    def cutoff(self) -> float:
        return float(self.capabilities.interaction_range)

    def system(self, atoms):
        """The structure's System with every neighbour list the model requests."""
        return self.systems.system(atoms)

    # -- evaluation ----------------------------------------------------------------
    def evaluate(self, atoms, matrices, outputs: Sequence[str], *,
                 checked: bool = False) -> Dict[str, torch.Tensor]:
        """Outputs on the copies ``x Q_k^T`` (transformed frame), float64 ``(K, ...)``
        on the CPU, but on the batched path those in :attr:`device_outputs`, which stay
        on the model's device in its dtype (``checked``: :meth:`OrbitModel.evaluate`)."""
        self.check_outputs(outputs)
        validate_atoms(atoms, outputs, overlaps=not checked, cell=not checked)
        check_species(atoms, self.atomic_types, self.label)
        matrices = validate_matrices(matrices)
        if self.wrapper is not None:
            self._check_wrapper(atoms)
        on_device = [name for name in outputs if name in self.device_outputs]
        if on_device and isinstance(self.evaluator, BatchedEvaluator):
            return self.evaluator.evaluate(atoms, matrices, outputs, on_device)
        return self.evaluator.evaluate(atoms, matrices, outputs)

    def _check_wrapper(self, atoms) -> None:
        """Refuse a wrapper whose energy is not its inner model's (checked once)."""
        calculator, attribute = self.wrapper
        if not self.catalogue.has_energy():
            self.wrapper = None
            return
        theirs = float(calculator.get_property("energy", atoms.copy()))
        ours = float(self.evaluator.evaluate(atoms, np.eye(3)[None], ["energy"])["energy"][0])
        tolerance = (1e-5 if self.dtype == torch.float32 else 1e-9) * max(1.0, abs(ours))
        if abs(theirs - ours) > tolerance:
            name = type(calculator).__name__
            raise ValueError(
                f"{name} returns an energy {theirs - ours:+.6g} eV away from the "
                f"MetatomicCalculator it holds in .{attribute}: it adds something, which "
                f"the batched path would not monitor; give symmon {name}.{attribute} "
                f"itself, or ASEOrbitModel({name}) to monitor it copy by copy")
        self.wrapper = None
