"""Eager metatrain models on an O(3) orbit, with forward hooks on internal modules.

A metatrain checkpoint (``model.ckpt``, ``model_<epoch>.ckpt``) is loaded as the
*eager* ``torch.nn.Module`` (:mod:`~symmon.adapters.metatrain_checkpoint`), not the
exported TorchScript model, so that forward hooks can be placed on any named
sub-module. :class:`MetatrainOrbitModel` is composed of

* an :class:`~symmon.adapters.catalogue.OutputCatalogue` of the model's outputs
  (declared units, the sample kinds it was trained for);
* an :class:`~symmon.adapters.orbit_systems.OrbitSystems` (System, neighbour lists
  rotated, never recomputed: atoms and edges keep their order in every copy) and a
  :class:`~symmon.adapters.batched.BatchedEvaluator` calling the eager module;
* :class:`~symmon.adapters.pet_modules.ModuleNames` (hookable modules, PET's
  default set, patterns) and :class:`~symmon.adapters.hooks.ForwardHooks`.

On top of ``evaluate`` it has :meth:`MetatrainOrbitModel.capture`, which returns the
outputs of hooked modules as float64 arrays ``(K, n_samples, d)``
(:mod:`~symmon.adapters.hooks`).
"""

from __future__ import annotations

import os
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..core.outputs import canonical_name, output
from .base import OrbitModel, check_species, validate_atoms, validate_matrices
from .batched import BatchedEvaluator
from .memory import ChunkPlanner
from .catalogue import OutputCatalogue
from .hooks import (CaptureResult, ForwardHooks, edge_index, hooked_bases,
                    split_module_output)
from .metatrain_checkpoint import checkpoint_epoch, load_metatrain_checkpoint
from .orbit_systems import OrbitSystems, output_values
from .pet_modules import OUTPUT_PREFIX, ModuleNames, default_pet_modules, split_suffix
from .registry import Family, register

__all__ = ["CaptureResult", "MetatrainOrbitModel", "default_pet_modules",
           "load_metatrain_checkpoint", "checkpoint_epoch", "OUTPUT_PREFIX"]

_DIAGNOSTIC_TRIGGER = "mtt::feature::node_backbone.0"
_DEFAULT_OUTPUTS = ("energy", "non_conservative_force", "non_conservative_forces",
                    "non_conservative_stress")
_LAWS = {(0, 1): "scalar", (0, -1): "pseudoscalar", (1, 1): "vector", (1, -1): "pseudovector"}


def _eager_model(model, weights, dtype, device):
    """``(module, info, path)`` of a checkpoint path or an eager module."""
    if isinstance(model, (str, bytes, os.PathLike)):
        module, info = load_metatrain_checkpoint(model, weights=weights, dtype=dtype,
                                                 device=device)
        return module, info, os.fspath(model)
    if isinstance(model, torch.nn.Module):
        return model.to(dtype=dtype, device=device).eval(), {"path": None, "epoch": None}, None
    raise TypeError(f"cannot use {type(model).__name__} as a metatrain model; pass a "
                    ".ckpt path or an eager metatrain model")


def _trained_sample_kinds(model) -> Dict[str, str]:
    """Per-atom/per-structure of each target as trained (PET declares 'atom' for all)."""
    targets = getattr(getattr(model, "dataset_info", None), "targets", None) or {}
    return {name: info.sample_kind for name, info in targets.items()
            if hasattr(info, "sample_kind")}


class MetatrainOrbitModel(OrbitModel):
    """An eager metatrain model evaluated on O(3)-transformed copies of a structure.

    :param model: checkpoint path (``.ckpt``) or an eager metatrain model
    :param device: torch device (default: CUDA when available, else CPU)
    :param chunk_size: copies per forward call (default: planned from the memory one
        copy takes, :class:`~symmon.adapters.memory.ChunkPlanner`)
    :param dtype: floating point type of the evaluation (default float64)
    :param weights: ``"epoch"`` or ``"best"`` weights of a checkpoint
    """

    family = "metatrain"
    batched = True
    has_layer_hooks = True

    def __init__(self, model, *, device: Optional[str] = None,
                 chunk_size: Optional[int] = None,
                 dtype=torch.float64, weights: str = "epoch", length_unit: str = "angstrom"):
        from vesin.metatomic import neighbor_lists_for_model

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device, self.dtype = torch.device(device), dtype
        self.model, self.info, self.model_path = _eager_model(model, weights, dtype,
                                                              self.device)
        self.planner = ChunkPlanner(self.device, chunk_size)
        self.atomic_types = sorted(int(t) for t in getattr(self.model, "atomic_types", []))
        self.label = (f"checkpoint {os.path.basename(self.model_path)!r}" if self.model_path
                      else f"the {type(self.model).__name__} model")
        declared = getattr(self.model, "outputs", None)
        if declared is None and hasattr(self.model, "supported_outputs"):
            declared = self.model.supported_outputs()
        self.catalogue = OutputCatalogue(
            {k: v for k, v in dict(declared or {}).items()
             if not k.startswith(("mtt::aux::", "mtt::feature::"))},
            self.label, convert_units=False, sample_kinds=_trained_sample_kinds(self.model))
        self.systems = OrbitSystems(neighbor_lists_for_model(
            length_unit, self.model, model_length_unit=length_unit, skin=0.0),
            self.dtype, self.device)
        self.evaluator = BatchedEvaluator(self.systems, self.catalogue,
                                          lambda systems, requests: self.model(systems,
                                                                               requests),
                                          self.planner)
        self.path = "batched: chunks of rotated copies through the eager module"
        self.modules = ModuleNames(self.model, self.target_names)
        self.is_pet = self.modules.is_pet

    # -- capabilities --------------------------------------------------------------
    @property
    def chunk_size(self) -> Optional[int]:
        """Copies per forward call set by the user (``None``: planned); the planner's."""
        return self.planner.chunk_size

    @property
    def available_outputs(self) -> Sequence[str]:
        return self.catalogue.available

    def model_key(self, name: str) -> str:
        return self.catalogue.key(name) or name

    @property
    def cutoff(self) -> float:
        return float(max(o.cutoff for o in self.model.requested_neighbor_lists()))

    @property
    def target_names(self) -> List[str]:
        return [n for n in self.catalogue.declared if n != "feature"]

    @property
    def module_names(self) -> List[str]:
        """Every named sub-module (hookable) and ``output:NAME`` for each output."""
        return self.modules.all

    def default_modules(self) -> List[str]:
        return self.modules.default()

    def resolve_modules(self, patterns: Optional[Sequence[str]] = None) -> List[str]:
        """Module names matching fnmatch ``patterns`` (default: :meth:`default_modules`);
        see :meth:`~symmon.adapters.pet_modules.ModuleNames.resolve`."""
        return self.modules.resolve(patterns)

    def output_kind(self, name: str) -> Optional[str]:
        """Transformation law of an output (``None`` when symmon has none for it)."""
        row = output(name)
        if row is not None:
            return row.kind
        targets = getattr(getattr(self.model, "dataset_info", None), "targets", {})
        info = targets.get(self.model_key(name)) if targets else None
        if info is None:
            return None
        keys = info.layout.keys
        if "o3_lambda" in keys.names and len(keys) == 1:
            return _LAWS.get((int(keys.column("o3_lambda")[0]),
                              int(keys.column("o3_sigma")[0])))
        return {0: "scalar", 1: "vector"}.get(len(info.layout.block().components))

    # -- evaluation ----------------------------------------------------------------
    def evaluate(self, atoms, matrices, outputs: Sequence[str], *,
                 checked: bool = False) -> Dict[str, torch.Tensor]:
        """Outputs on the copies ``x Q_k^T`` (transformed frame), float64 ``(K, ...)``
        (``checked``: :meth:`OrbitModel.evaluate`)."""
        self.catalogue.check(outputs)
        validate_atoms(atoms, outputs, overlaps=not checked, cell=not checked)
        check_species(atoms, self.atomic_types, self.label)
        return self.evaluator.evaluate(atoms, validate_matrices(matrices), outputs)

    def capture(self, atoms, matrices, modules: Optional[Sequence[str]] = None,
                outputs: Optional[Sequence[str]] = None, progress=None) -> CaptureResult:
        """Hooked module outputs and model outputs on the copies ``x Q_k^T``.

        :param modules: module names or fnmatch patterns (default: the PET set);
            ``output:NAME`` entries are the model's outputs viewed as features
        :param outputs: model outputs to return in ``CaptureResult.outputs`` (default:
            energy, non-conservative forces and stress when the model has them)
        :param progress: optional callable ``progress(n_copies_done)``
        """
        names = self.resolve_modules(modules)
        matrices = validate_matrices(matrices)
        check_species(atoms, self.atomic_types, self.label)
        outputs = self._capture_outputs(outputs)
        feature_outputs = [self.model_key(n[len(OUTPUT_PREFIX):]) for n in names
                           if n.startswith(OUTPUT_PREFIX)]
        wanted = list(dict.fromkeys(list(outputs) + feature_outputs))
        validate_atoms(atoms, [o for o in wanted if "stress" in o])
        hooked = hooked_bases(names, OUTPUT_PREFIX)
        requests = self._capture_requests(wanted, hooked)
        collected, kinds, values, edges = self._run_hooked(atoms, matrices, hooked, requests,
                                                           wanted, progress)
        result = CaptureResult(edges=edges)
        self._add_features(result, names, collected, kinds, values, len(atoms))
        for name in outputs:
            result.outputs[canonical_name(name)] = values[name]
        return result

    # -- capture helpers -----------------------------------------------------------
    def _capture_outputs(self, outputs) -> List[str]:
        if outputs is None:
            outputs = [n for n in self.target_names
                       if n in _DEFAULT_OUTPUTS or self.output_kind(n) is not None]
        outputs = [self.model_key(n) for n in outputs]
        for name in outputs:
            if name not in self.catalogue.declared:
                raise ValueError(f"the model has no output {name!r}; it has "
                                 f"{sorted(self.catalogue.declared)}")
        return outputs

    def _capture_requests(self, wanted, hooked):
        requests = self.catalogue.requests(wanted)
        if self.is_pet and any("_backbone." in b for b in hooked):
            from metatomic.torch import ModelOutput  # PET calls its backbone Identity
            requests[_DIAGNOSTIC_TRIGGER] = ModelOutput(sample_kind="atom")  # modules only then
        return requests

    def _run_hooked(self, atoms, matrices, hooked, requests, wanted, progress):
        system = self.systems.system(atoms)
        n_atoms = len(atoms)
        collected: Dict[str, List[torch.Tensor]] = {}
        kinds: Dict[str, str] = {}
        chunks: Dict[str, List[torch.Tensor]] = {n: [] for n in wanted}
        edges = None
        with torch.no_grad(), ForwardHooks(self.model, list(hooked), self.is_pet) as hooks:
            def forward(start, stop):
                block = torch.as_tensor(matrices[start:stop], dtype=self.dtype,
                                        device=self.device)
                k = block.shape[0]
                hooks.clear()
                raw = self.model(self.systems.copies(system, block), requests)
                values = {name: output_values(raw[name].block(), name, k, n_atoms)
                          .to("cpu", torch.float64) for name in wanted}
                entries = {}
                for base, suffixes in hooked.items():
                    entries.update(split_module_output(base, suffixes,
                                                       hooks.calls.get(base, []),
                                                       hooks.batch, k, n_atoms, self.is_pet))
                chunk_edges = edge_index(hooks.batch, k, n_atoms)
                hooks.clear()
                if progress is not None:
                    progress(k)
                return values, entries, chunk_edges

            for values, entries, chunk_edges in self.planner.run(len(matrices), n_atoms,
                                                                 forward):
                for name in wanted:
                    chunks[name].append(values[name])
                edges = _same_edges(edges, chunk_edges)
                for entry, (value, kind) in entries.items():
                    collected.setdefault(entry, []).append(value)
                    kinds[entry] = kind
        return collected, kinds, {n: torch.cat(v) for n, v in chunks.items()}, edges

    def _add_features(self, result, names, collected, kinds, values, n_atoms) -> None:
        """Features in the order of ``names``: outputs as features, module entries."""
        def belongs(entry, name):
            children = ("[",) if split_suffix(name)[1] else (":", "[")
            return entry == name or entry.startswith(tuple(name + c for c in children))

        for name in names:
            if name.startswith(OUTPUT_PREFIX):
                result.features[name], result.sample_kind[name] = self._output_feature(
                    name[len(OUTPUT_PREFIX):], values, n_atoms)
                continue
            for entry in (e for e in collected if belongs(e, name)):
                result.features[entry] = torch.cat(collected[entry])
                result.sample_kind[entry] = kinds[entry]
        missing = [n for n in names if not any(f == n or f.startswith((n + ":", n + "["))
                                               for f in result.features)]
        if missing:
            warnings.warn(f"modules {missing} were not called in the forward pass (unused "
                          "in this configuration); they are left out", stacklevel=3)

    def _output_feature(self, target, values, n_atoms):
        """A model output as ``(K, n_samples, d)`` features, and its sample kind."""
        value = values[self.model_key(target)]
        row = output(target)
        if value.dim() == 1 or value.shape[1] != n_atoms or (row is not None and
                                                             not row.per_atom):
            return value.reshape(value.shape[0], 1, -1), "structure"
        return value.reshape(value.shape[0], n_atoms, -1), "atom"


def _same_edges(edges, chunk_edges):
    if chunk_edges is None or edges is None:
        return chunk_edges if edges is None else edges
    if not np.array_equal(edges, chunk_edges):
        raise RuntimeError("the model's edges changed between copies")
    return edges


def _recognises(obj) -> bool:
    """An eager metatrain model (a ``torch.nn.Module`` of a metatrain architecture)."""
    return isinstance(obj, torch.nn.Module) and type(obj).__module__.startswith("metatrain.")


def _calculator(path, **_):
    """A checkpoint has no ASE calculator: the sentence with the export command."""
    from .model_file import _not_exported

    raise ValueError(_not_exported(os.fspath(path), "a metatrain checkpoint"))


def _build(model, *, device=None, chunk_size=None, dtype=torch.float64, weights="epoch",
           **_):
    return MetatrainOrbitModel(model, device=device, chunk_size=chunk_size,
                               dtype=dtype, weights=weights)


register(Family("metatrain", _recognises, _build,
                opens=lambda path: path.endswith(".ckpt"), calculator=_calculator))
