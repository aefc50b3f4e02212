"""Eager metatrain models on an O(3) orbit, with forward hooks on internal modules.

A metatrain checkpoint (``model.ckpt``, ``model_<epoch>.ckpt``) is loaded as the
*eager* ``torch.nn.Module`` (not the exported TorchScript model) so that forward
hooks can be placed on any named sub-module. By default the checkpoint's *epoch*
weights (``model_state_dict``, ``context="restart"``) are used; ``mtt export`` and
``metatrain.utils.io.load_model`` use the *best* weights (``best_model_state_dict``)
instead — pass ``weights="best"`` for those. The model is converted to float64 and
put in eval mode (so the scaler and the composition model are applied).

:class:`MetatrainOrbitModel` is an :class:`~symmon.adapters.base.OrbitModel` (it
reuses :class:`~symmon.adapters.metatomic.MetatomicOrbitModel`'s construction
of the System, its neighbour lists and the ``K`` rotated copies made with
``metatomic.torch.o3.O3Transformations``: the neighbour list is rotated, never
recomputed, so atoms and edges keep their order in every copy). On top of
``evaluate`` it has :meth:`MetatrainOrbitModel.capture`, which returns the outputs of
hooked modules as float64 arrays ``(K, n_samples, d)``:

* node features ``(n_atoms, d)``: samples are the atoms;
* PET edge tokens ``(n_atoms, max_neighbors, d)``: samples are the *real* edges,
  padding removed with PET's own ``centers`` / ``nef_to_edges_neighbor`` indices
  (in the neighbour list's order);
* per-structure tensors: one sample per structure;
* modules returning tuples give one entry per element (PET's GNN layers:
  ``NAME:node`` and ``NAME:edge``); modules returning ``Dict[str, TensorMap]``
  (additive models, scaler) one entry per key.

The default module set of a PET (:func:`default_pet_modules`) follows the paper's
Fig. 4: geometry embedding, each GNN layer's node and edge outputs (and the edge
messages after the combination MLP), the backbone features, each head's last-layer
features, each readout layer and each model output.
"""

from __future__ import annotations

import fnmatch
import os
import pathlib
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..core.outputs import canonical_name, output
from .base import validate_atoms, validate_matrices
from .metatomic import MetatomicOrbitModel, per_copy_values

__all__ = ["CaptureResult", "MetatrainOrbitModel", "default_pet_modules",
           "load_metatrain_checkpoint", "checkpoint_epoch", "OUTPUT_PREFIX"]

#: prefix of the pseudo-module names that stand for the model's outputs
OUTPUT_PREFIX = "output:"
_DIAGNOSTIC_TRIGGER = "mtt::feature::node_backbone.0"
_DEFAULT_OUTPUTS = ("energy", "non_conservative_force", "non_conservative_forces",
                    "non_conservative_stress")
_SYSTEM_OUTPUTS = ("energy", "non_conservative_stress")


def checkpoint_epoch(path, checkpoint: Optional[dict] = None) -> Optional[int]:
    """The epoch of a checkpoint: from ``model_<epoch>.ckpt`` or the checkpoint itself."""
    match = re.search(r"model_(\d+)\.ckpt$", os.fspath(path))
    if match:
        return int(match.group(1))
    if checkpoint is not None and checkpoint.get("epoch") is not None:
        return int(checkpoint["epoch"])
    return None


def load_metatrain_checkpoint(path, *, weights: str = "epoch", dtype=torch.float64,
                              device="cpu"):
    """The eager model of a metatrain checkpoint, in eval mode, and the checkpoint's info.

    :param weights: ``"epoch"`` (the weights at the epoch the checkpoint was written,
        ``context="restart"``) or ``"best"`` (the best validation weights, what
        ``mtt export`` uses)
    :return: ``(model, info)``; ``info`` has ``path``, ``epoch``, ``best_epoch``,
        ``weights``, ``architecture``
    """
    import metatomic.torch  # noqa: F401  (registers the TorchScript classes pickled in it)
    from metatrain.utils.io import model_from_checkpoint

    path = pathlib.Path(os.fspath(path))
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if weights not in ("epoch", "best"):
        raise ValueError(f"weights must be 'epoch' or 'best', got {weights!r}")
    try:
        checkpoint = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"cannot read {str(path)!r} as a metatrain checkpoint: {error}") \
            from error
    if not isinstance(checkpoint, dict) or "architecture_name" not in checkpoint:
        raise ValueError(f"{str(path)!r} is not a metatrain checkpoint (no "
                         "'architecture_name'); exported .pt models have no hooks to "
                         "place: use the .ckpt file")
    info = {"path": str(path), "epoch": checkpoint_epoch(path, checkpoint),
            "best_epoch": checkpoint.get("best_epoch"), "weights": weights,
            "architecture": checkpoint["architecture_name"]}
    context = "restart" if weights == "epoch" else "export"
    if weights == "epoch" and checkpoint.get("model_state_dict") is None:
        raise ValueError(f"{str(path)!r} holds no epoch weights (model_state_dict); it "
                         "was probably slimmed for export; use weights='best'")
    model = model_from_checkpoint(checkpoint, context=context)
    model = model.to(dtype=dtype, device=device)
    model.eval()
    return model, info


_SUFFIX = re.compile(r"^(node|edge|\d+)$")


def split_suffix(name: str) -> Tuple[str, str]:
    """``"backend.gnn_layers.0:edge"`` -> ``("backend.gnn_layers.0", "edge")``; module
    names may themselves contain ``::`` (``node_heads.mtt::dipole.0``)."""
    base, sep, suffix = name.rpartition(":")
    if sep and base and not base.endswith(":") and _SUFFIX.match(suffix):
        return base, suffix
    return name, ""


def _pet_like(model) -> bool:
    backend = getattr(model, "backend", None)
    return backend is not None and hasattr(backend, "gnn_layers") and \
        hasattr(backend, "preprocess")


def default_pet_modules(model) -> List[str]:
    """The default hooked modules of a (metatrain) PET, in forward order.

    Entries ending in ``:node`` / ``:edge`` select one element of a module that
    returns ``(node, edge)``; ``output:NAME`` is the model's output ``NAME``.
    """
    backend = model.backend
    names = dict(model.named_modules())
    n_layers = len(backend.gnn_layers)
    n_readout = getattr(backend, "num_readout_layers", 1)
    feedforward = getattr(backend, "featurizer_type", "feedforward") == "feedforward"
    modules = ["backend.edge_embedder"]  # neighbour-species embedding (input messages)
    for i in range(n_layers):
        modules.append(f"backend.gnn_layers.{i}.edge_embedder")  # Linear([r, |r|])
        modules += [f"backend.gnn_layers.{i}:node", f"backend.gnn_layers.{i}:edge"]
        if feedforward:
            modules.append(f"backend.gnn_layers_post_mp_edge.{i}")
    for j in range(n_readout):
        modules += [f"backend.node_backbone.{j}", f"backend.edge_backbone.{j}"]
    targets = list(getattr(model, "target_names", backend.node_heads.keys()))
    for target in targets:
        for j in range(n_readout):
            modules += [f"backend.node_heads.{target}.{j}", f"backend.edge_heads.{target}.{j}"]
            for side in ("node", "edge"):
                prefix = f"backend.{side}_last_layers.{target}.{j}."
                modules += [n for n in names if n.startswith(prefix) and
                            "." not in n[len(prefix):]]
    modules += [OUTPUT_PREFIX + t for t in targets]
    return [m for m in modules if split_suffix(m)[0] in names or m.startswith(OUTPUT_PREFIX)]


@dataclass
class CaptureResult:
    """Hooked features and outputs of one structure's orbit.

    :ivar features: name -> float64 tensor ``(K, n_samples, d)``
    :ivar sample_kind: name -> ``"atom"``, ``"edge"``, ``"structure"`` or ``"token"``
    :ivar outputs: model outputs in the transformed frame (``energy`` ``(K,)``,
        ``non_conservative_forces`` ``(K, N, 3)``, ``non_conservative_stress``
        ``(K, 3, 3)``)
    :ivar edges: ``(n_edges, 2)`` centre and neighbour atom of every edge sample
    """

    features: Dict[str, torch.Tensor] = field(default_factory=dict)
    sample_kind: Dict[str, str] = field(default_factory=dict)
    outputs: Dict[str, torch.Tensor] = field(default_factory=dict)
    edges: Optional[np.ndarray] = None


class MetatrainOrbitModel(MetatomicOrbitModel):
    """An eager metatrain model evaluated on O(3)-transformed copies of a structure.

    :param model: checkpoint path (``.ckpt``) or an eager metatrain model
    :param device: torch device (default: CUDA when available, else CPU)
    :param chunk_size: copies per forward call
    :param dtype: floating point type of the evaluation (default float64)
    :param weights: ``"epoch"`` or ``"best"`` weights of a checkpoint
    """

    def __init__(self, model, *, device: Optional[str] = None, chunk_size: int = 32,
                 dtype=torch.float64, weights: str = "epoch", length_unit: str = "angstrom"):
        from vesin.metatomic import neighbor_lists_for_model

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.dtype = dtype
        if isinstance(model, (str, bytes, os.PathLike)):
            self.model, self.info = load_metatrain_checkpoint(
                model, weights=weights, dtype=dtype, device=self.device)
            self.model_path = os.fspath(model)
        elif isinstance(model, torch.nn.Module):
            self.model = model.to(dtype=dtype, device=self.device).eval()
            self.info, self.model_path = {"path": None, "epoch": None}, None
        else:
            raise TypeError(f"cannot use {type(model).__name__} as a metatrain model; pass a "
                            ".ckpt path or an eager metatrain model")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.chunk_size = chunk_size
        self.capabilities = None
        self.atomic_types = sorted(int(t) for t in getattr(self.model, "atomic_types", []))
        self._neighbor_calculators = neighbor_lists_for_model(
            length_unit, self.model, model_length_unit=length_unit, skin=0.0)
        supported = getattr(self.model, "outputs", None)
        if supported is None and hasattr(self.model, "supported_outputs"):
            supported = self.model.supported_outputs()
        self._outputs = {k: v for k, v in dict(supported or {}).items()
                         if not k.startswith(("mtt::aux::", "mtt::feature::"))}
        self._module_names = [n for n, _ in self.model.named_modules() if n]
        self.is_pet = _pet_like(self.model)

    # -- capabilities --------------------------------------------------------------
    @property
    def cutoff(self) -> float:
        return float(max(o.cutoff for o in self.model.requested_neighbor_lists()))

    @property
    def target_names(self) -> List[str]:
        return [n for n in self._outputs if n not in ("feature",)]

    @property
    def module_names(self) -> List[str]:
        """Every named sub-module (hookable) and ``output:NAME`` for each output."""
        return self._module_names + [OUTPUT_PREFIX + n for n in self.target_names]

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
            l, sigma = int(keys.column("o3_lambda")[0]), int(keys.column("o3_sigma")[0])
            return {(0, 1): "scalar", (0, -1): "pseudoscalar", (1, 1): "vector",
                    (1, -1): "pseudovector"}.get((l, sigma))
        components = info.layout.block().components
        return {0: "scalar", 1: "vector"}.get(len(components))

    def default_modules(self) -> List[str]:
        if self.is_pet:
            return default_pet_modules(self.model)
        return [OUTPUT_PREFIX + n for n in self.target_names]

    def resolve_modules(self, patterns: Optional[Sequence[str]] = None) -> List[str]:
        """Module names matching fnmatch ``patterns`` (default: :meth:`default_modules`).

        A pattern may end in ``:node``/``:edge``/``:0``... to select one element of a
        tuple output. Raises ``ValueError`` naming the available modules when a pattern
        matches nothing.
        """
        if not patterns:
            return self.default_modules()
        resolved: List[str] = []
        for pattern in patterns:
            base, suffix = split_suffix(pattern) if not pattern.startswith(
                OUTPUT_PREFIX) else (pattern, "")
            sep = ":" if suffix else ""
            if base.startswith(OUTPUT_PREFIX):
                matches = fnmatch.filter([OUTPUT_PREFIX + n for n in self.target_names], base)
            else:
                # with a ':node'/':edge' suffix, '*' does not cross dots (the suffix only
                # makes sense for the tuple-returning module itself, not its children)
                match = _match_no_dots if suffix else fnmatch.filter
                matches = match(self._module_names, base)
                if not matches and not base.startswith("backend.") and self.is_pet:
                    matches = match(self._module_names, "backend." + base)
                matches = [m + sep + suffix for m in matches]
            if not matches:
                shown = self._module_names if len(self._module_names) <= 200 else \
                    self._module_names[:200] + ["..."]
                raise ValueError(
                    f"module pattern {pattern!r} matches no module of this "
                    f"{type(self.model).__name__}. Available modules (fnmatch patterns, "
                    f"e.g. 'backend.gnn_layers.*.edge_embedder'; outputs as "
                    f"'{OUTPUT_PREFIX}NAME'): "
                    + ", ".join(shown + [OUTPUT_PREFIX + n for n in self.target_names]))
            resolved += [m for m in matches if m not in resolved]
        return resolved

    # -- evaluation ----------------------------------------------------------------
    def _run(self, systems: List, requests) -> Dict:
        return self.model(systems, requests)

    def _output_requests(self, names: Sequence[str]):
        from metatomic.torch import ModelOutput

        requests = {}
        for name in names:
            key = self.model_key(name)
            declared = self._outputs[key]
            targets = getattr(getattr(self.model, "dataset_info", None), "targets", {})
            if key in _SYSTEM_OUTPUTS:
                sample_kind = "system"
            elif targets and key in targets:  # as trained (PET declares 'atom' for all)
                sample_kind = getattr(targets[key], "sample_kind", declared.sample_kind)
            else:
                sample_kind = declared.sample_kind
            requests[key] = ModelOutput(unit=declared.unit,
                                        sample_kind=sample_kind)
        return requests

    def _requests(self, outputs: Sequence[str]):  # used by evaluate()
        from metatomic.torch import ModelOutput

        names = [n for n in outputs if n not in ("energy", "energies", "forces", "stress")]
        requests = self._output_requests(names)
        if any(n in outputs for n in ("energy", "energies", "forces", "stress")):
            requests["energy"] = ModelOutput(
                unit="eV",
                sample_kind="atom" if "energies" in outputs else "system")
        return requests

    @staticmethod
    def _unpack_output(tensor_map, n_copies: int, n_atoms: int) -> torch.Tensor:
        values = per_copy_values(tensor_map.block(), n_copies, n_atoms)
        return values[..., 0] if values.shape[-1] == 1 else values

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
        self._check_species(atoms)
        if outputs is None:
            outputs = [n for n in self.target_names
                       if n in _DEFAULT_OUTPUTS or self.output_kind(n) is not None]
        outputs = [self.model_key(n) for n in outputs]
        for name in outputs:
            if name not in self._outputs:
                raise ValueError(f"the model has no output {name!r}; it has "
                                 f"{sorted(self._outputs)}")
        feature_outputs = [n[len(OUTPUT_PREFIX):] for n in names if n.startswith(OUTPUT_PREFIX)]
        wanted_outputs = list(dict.fromkeys(list(outputs) + feature_outputs))
        validate_atoms(atoms, [o for o in wanted_outputs if "stress" in o])
        hooked: Dict[str, List[str]] = {}
        for name in names:
            if name.startswith(OUTPUT_PREFIX):
                continue
            base, suffix = split_suffix(name)
            hooked.setdefault(base, []).append(suffix)

        system = self.system(atoms)
        n_atoms = len(atoms)
        modules_by_name = dict(self.model.named_modules())
        calls: Dict[str, List] = {}
        batch: Dict[str, torch.Tensor] = {}

        def make_hook(module_name):
            def hook(module, inputs, output):
                calls.setdefault(module_name, []).append(_detach(output))
            return hook

        handles = [modules_by_name[b].register_forward_hook(make_hook(b)) for b in hooked]
        backend = getattr(self.model, "backend", None)
        original_preprocess = None
        if self.is_pet:
            original_preprocess = backend.preprocess

            def preprocess(*args, **kwargs):
                data = original_preprocess(*args, **kwargs)
                batch["centers"] = data["centers"]
                batch["neighbors"] = data["neighbors"]
                batch["nef_to_edges_neighbor"] = data["nef_to_edges_neighbor"]
                batch["padding_mask"] = data["padding_mask"]
                return data
            backend.preprocess = preprocess
        requests = self._output_requests(wanted_outputs)
        if self.is_pet and any("_backbone." in b for b in hooked):
            from metatomic.torch import ModelOutput  # PET calls its backbone Identity
            requests[_DIAGNOSTIC_TRIGGER] = ModelOutput(sample_kind="atom")  # modules only then

        collected: Dict[str, List[torch.Tensor]] = {}
        kinds: Dict[str, str] = {}
        out_chunks: Dict[str, List[torch.Tensor]] = {n: [] for n in wanted_outputs}
        edges = None
        try:
            with torch.no_grad():
                for start in range(0, len(matrices), self.chunk_size):
                    block = torch.as_tensor(matrices[start:start + self.chunk_size],
                                            dtype=self.dtype, device=self.device)
                    k = block.shape[0]
                    calls.clear()
                    batch.clear()
                    raw = self._run(self._copies(system, block), requests)
                    for name in wanted_outputs:
                        out_chunks[name].append(self._unpack_output(raw[name], k, n_atoms)
                                                .to("cpu", torch.float64))
                    chunk_edges = self._edge_index(batch, k, n_atoms)
                    if chunk_edges is not None:
                        if edges is None:
                            edges = chunk_edges
                        elif not np.array_equal(edges, chunk_edges):
                            raise RuntimeError("the model's edges changed between copies")
                    for base, suffixes in hooked.items():
                        if base not in calls:
                            continue
                        for entry, (value, kind) in self._split(
                                base, suffixes, calls[base], batch, k, n_atoms).items():
                            collected.setdefault(entry, []).append(value)
                            kinds[entry] = kind
                    if progress is not None:
                        progress(k)
        finally:
            for handle in handles:
                handle.remove()
            if original_preprocess is not None:
                del backend.preprocess  # back to the class method

        result = CaptureResult(edges=edges)
        for name in names:
            if name.startswith(OUTPUT_PREFIX):
                value = torch.cat(out_chunks[name[len(OUTPUT_PREFIX):]])
                if value.dim() == 1 or value.shape[1] != n_atoms or \
                        name[len(OUTPUT_PREFIX):] in _SYSTEM_OUTPUTS:
                    value, kind = value.reshape(value.shape[0], 1, -1), "structure"
                else:
                    value, kind = value.reshape(value.shape[0], n_atoms, -1), "atom"
                result.features[name], result.sample_kind[name] = value, kind
                continue
            entries = [e for e in collected if e == name or e.startswith(name + "[")] if \
                split_suffix(name)[1] else [e for e in collected if e == name or
                                            e.startswith(name + ":") or
                                            e.startswith(name + "[")]
            for entry in entries:
                result.features[entry] = torch.cat(collected[entry])
                result.sample_kind[entry] = kinds[entry]
        missing = [n for n in names if not any(f == n or f.startswith(n + ":") or
                                               f.startswith(n + "[")
                                               for f in result.features)]
        if missing:
            import warnings

            warnings.warn(f"modules {missing} were not called in the forward pass (unused "
                          "in this configuration); they are left out", stacklevel=2)
        for name in outputs:
            value = torch.cat(out_chunks[name])
            result.outputs[canonical_name(name)] = value
        return result

    # -- helpers -------------------------------------------------------------------
    @staticmethod
    def _edge_index(batch, k: int, n_atoms: int) -> Optional[np.ndarray]:
        if "centers" not in batch:
            return None
        centers, neighbors = batch["centers"], batch["neighbors"]
        if centers.numel() % k:
            raise RuntimeError("the copies do not have the same number of edges")
        per_copy = centers.numel() // k
        offsets = (torch.arange(k, device=centers.device) * n_atoms).repeat_interleave(per_copy)
        pairs = torch.stack([centers - offsets, neighbors - offsets], dim=1).reshape(k, per_copy, 2)
        if not bool((pairs == pairs[:1]).all()):
            raise RuntimeError("the edges are not in the same order in every copy")
        return pairs[0].cpu().numpy()

    def _split(self, base, suffixes, values, batch, k, n_atoms):
        """``{entry: ((k, n_samples, d) float64 cpu, sample_kind)}`` of one module."""
        entries = {}
        for call, output in enumerate(values):
            tag = f"[{call}]" if len(values) > 1 else ""
            if isinstance(output, (tuple, list)):
                labels = ["node", "edge"] if (self.is_pet and len(output) == 2 and
                                              base.startswith("backend.")) else \
                    [str(i) for i in range(len(output))]
                parts = {f"{base}:{label}{tag}": (label, part)
                         for label, part in zip(labels, output)}
                wanted = [s for s in suffixes if s]
                if wanted:
                    parts = {f"{base}:{s}{tag}": (s, dict(zip(labels, output)).get(s))
                             for s in wanted}
                    bad = [s for s in wanted if s not in labels]
                    if bad:
                        raise ValueError(f"module {base!r} returns a tuple; select one of "
                                         f"{[base + ':' + label for label in labels]}")
                for entry, (_, part) in parts.items():
                    if torch.is_tensor(part):
                        entries[entry] = self._to_samples(base, part, batch, k, n_atoms)
            elif isinstance(output, dict):
                for key, value in output.items():
                    tensor = value.block().values if hasattr(value, "block") else value
                    if torch.is_tensor(tensor):
                        entries[f"{base}:{key}{tag}"] = self._to_samples(
                            base, tensor, batch, k, n_atoms)
            elif torch.is_tensor(output):
                if any(suffixes):
                    raise ValueError(f"module {base!r} returns a single tensor; drop the "
                                     f"':{[s for s in suffixes if s][0]}' suffix")
                entries[base + tag] = self._to_samples(base, output, batch, k, n_atoms)
            else:
                raise ValueError(f"module {base!r} returns {type(output).__name__}, which "
                                 "cannot be analysed (tensors, tuples of tensors and "
                                 "dicts of TensorMaps can)")
        return entries

    @staticmethod
    def _to_samples(base, tensor, batch, k, n_atoms):
        tensor = tensor.detach()
        if not tensor.is_floating_point():
            tensor = tensor.to(torch.float64)
        total_atoms = k * n_atoms
        max_neighbors = int(batch["padding_mask"].shape[1]) if "padding_mask" in batch else -1
        if tensor.dim() == 3 and tensor.shape[0] == total_atoms and tensor.shape[1] == 1 \
                and max_neighbors != 1:
            tensor = tensor[:, 0]  # PET's node token in a length-1 slot
        if tensor.dim() >= 3 and tensor.shape[0] == total_atoms and \
                tensor.shape[1] == max_neighbors:
            flat = tensor[batch["centers"], batch["nef_to_edges_neighbor"]]
            kind, values = "edge", flat.reshape(k, -1, int(np.prod(flat.shape[1:])))
        elif tensor.dim() >= 1 and tensor.shape[0] == total_atoms:
            kind, values = "atom", tensor.reshape(k, n_atoms, -1)
        elif tensor.dim() >= 1 and tensor.shape[0] == k:
            kind, values = "structure", tensor.reshape(k, 1, -1)
        elif tensor.dim() >= 1 and tensor.shape[0] % k == 0:
            kind, values = "token", tensor.reshape(k, tensor.shape[0] // k, -1)
        else:
            raise ValueError(f"cannot split the output of {base!r} (shape "
                             f"{tuple(tensor.shape)}) into {k} copies")
        return values.to("cpu", torch.float64), kind


def _match_no_dots(names, pattern):
    regex = re.compile("^" + ".*".join("[^.]*".join(re.escape(part) for part in
                                                    chunk.split("*"))
                                       for chunk in pattern.split("**")) + "$")
    return [n for n in names if regex.match(n)]


def _detach(output):
    if torch.is_tensor(output):
        return output.detach()
    if isinstance(output, (tuple, list)):
        return type(output)(_detach(o) for o in output)
    return output


