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
from .registry import Family, register

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
    :ivar path: which evaluation path is used, and why

    Built from a ``MetatomicCalculator``, that calculator is :attr:`calculator` (its
    predictions are the unrotated copy's: the monitor folds it into the orbit) and its
    ``non_conservative`` parameter says which quantities are :attr:`direct`; it returns
    direct forces less their mean (:attr:`removes_net_force`).
    """

    family = "metatomic"
    batched = True
    removes_net_force = True
    has_features = True

    def __init__(self, model, *, device: Optional[str] = None,
                 chunk_size: Optional[int] = None, extensions_directory=None):
        from metatomic.torch import pick_device

        if isinstance(model, metatomic_calculator_class()):
            self.calculator = model
            non_conservative = model.parameters.get("non_conservative", False)
            self.direct = frozenset(q for q in ("forces", "stress")
                                    if non_conservative in (True, q))
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
        #: outputs :meth:`evaluate` leaves on the model's device (for a consumer that
        #: uses them there: the monitor's purified readout corrects with its features)
        self.device_outputs: Tuple[str, ...] = ()
        if inputs:
            self.batched = False

    def _neighbor_calculators(self):
        from vesin.metatomic import neighbor_lists_for_model

        return neighbor_lists_for_model("angstrom", self.model, skin=0.0)

    # -- capabilities --------------------------------------------------------------
    @property
    def chunk_size(self) -> Optional[int]:
        """Copies per forward call set by the user (``None``: planned); the planner's."""
        return self.planner.chunk_size

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

    def warm_up_atoms(self):
        """A periodic dimer of the model's first species, 2 Å apart (half the cutoff
        if shorter), in a box of twice the cutoff plus margins: TorchScript optimises
        each code path on its first calls."""
        from ase import Atoms

        species = self.atomic_types[0]
        distance = min(2.0, 0.5 * self.cutoff) or 1.0
        box = 2 * self.cutoff + 2 * distance + 1.0
        return Atoms(numbers=[species, species], positions=[[0, 0, 0], [0, 0, distance]],
                     cell=np.eye(3) * box, pbc=True)

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
        on_device = [name for name in outputs if name in self.device_outputs]
        if on_device and isinstance(self.evaluator, BatchedEvaluator):
            return self.evaluator.evaluate(atoms, matrices, outputs, on_device)
        return self.evaluator.evaluate(atoms, matrices, outputs)


def metatomic_calculator(path, *, device: Optional[str] = None, non_conservative=False):
    """``MetatomicCalculator`` for a ``.pt`` file, with exact neighbour lists (no skin).

    ``non_conservative=True`` on a model with direct forces but no direct stress head
    means direct forces only (``"forces"``), as it does for a molecule. The file is
    loaded once: the calculator gets the loaded model, and its ``parameters["model"]``
    names the file as if it had loaded it itself (``todict``, the log's model hash)."""
    from metatomic.torch import load_atomistic_model
    from metatomic_ase import MetatomicCalculator

    if not isinstance(path, (str, bytes, os.PathLike)):  # an AtomisticModel
        return MetatomicCalculator(path, device=device, neighbor_skin=0.0,
                                   non_conservative=_direct_heads(path, non_conservative))
    with loading_model_file(path) as checked:
        model = load_atomistic_model(checked)
        calculator = MetatomicCalculator(model, device=device, neighbor_skin=0.0,
                                         non_conservative=_direct_heads(model,
                                                                        non_conservative))
    calculator.parameters["model"] = checked
    return calculator


def _direct_heads(model, non_conservative):
    """``"forces"`` for ``True`` on a model that declares no direct stress."""
    from ..core.outputs import spellings

    declared = model.capabilities().outputs.keys()
    if non_conservative is True and not any(name in declared for name in
                                            spellings("non_conservative_stress")):
        return "forces"
    return non_conservative


def _is_atomistic_model(obj) -> bool:
    return hasattr(obj, "capabilities") and hasattr(obj, "requested_neighbor_lists") \
        and hasattr(obj, "metadata")


def _recognises(obj) -> bool:
    return _is_atomistic_model(obj) or isinstance(obj, metatomic_calculator_class())


def _is_symmetrized(calculator) -> bool:
    """metatomic-ase's ``SymmetrizedCalculator`` returns an average, not its inner
    model's values: never looked through."""
    try:
        from metatomic_ase import SymmetrizedCalculator
    except ImportError:  # pragma: no cover
        return False
    return isinstance(calculator, SymmetrizedCalculator)


def _opens(path: str) -> bool:
    """Every file but a checkpoint: an exported model, or one refused with a sentence."""
    return not path.endswith(".ckpt")


def _build(model, *, device=None, chunk_size=None, extensions_directory=None, **_):
    return MetatomicOrbitModel(model, device=device, chunk_size=chunk_size,
                               extensions_directory=extensions_directory)


register(Family("metatomic", _recognises, _build, opens=_opens,
                calculator=metatomic_calculator, opaque=_is_symmetrized))
