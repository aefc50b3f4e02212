"""Forward hooks on an eager model: internal features of every copy of an orbit.

The outputs of hooked modules come back as float64 tensors ``(K, n_samples, d)``:

* node features ``(n_atoms, d)``: samples are the atoms;
* PET edge tokens ``(n_atoms, max_neighbors, d)``: samples are the *real* edges,
  padding removed with PET's own ``centers`` / ``nef_to_edges_neighbor`` indices
  (in the neighbour list's order);
* per-structure tensors: one sample per structure;
* modules returning tuples give one entry per element (PET's GNN layers:
  ``NAME:node`` and ``NAME:edge``); modules returning ``Dict[str, TensorMap]``
  (additive models, scaler) one entry per key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from .pet_modules import split_suffix

_PET_BATCH_KEYS = ("centers", "neighbors", "nef_to_edges_neighbor", "padding_mask")


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


class ForwardHooks:
    """Context manager recording the outputs of ``modules`` in every forward call.

    For a PET it also records the batch's edge indices (``centers``, ...) returned
    by ``backend.preprocess``, which :func:`to_samples` needs to drop the padding.
    """

    def __init__(self, model, modules: List[str], is_pet: bool):
        self.model, self.modules, self.is_pet = model, modules, is_pet
        self.calls: Dict[str, List] = {}
        self.batch: Dict[str, torch.Tensor] = {}

    def clear(self) -> None:
        self.calls.clear()
        self.batch.clear()

    def __enter__(self):
        by_name = dict(self.model.named_modules())
        self._handles = [by_name[name].register_forward_hook(self._hook(name))
                         for name in self.modules]
        if self.is_pet:
            backend = self.model.backend
            original = backend.preprocess

            def preprocess(*args, **kwargs):
                data = original(*args, **kwargs)
                self.batch.update({key: data[key] for key in _PET_BATCH_KEYS})
                return data
            backend.preprocess = preprocess
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        if self.is_pet:
            del self.model.backend.preprocess  # back to the class method
        return False

    def _hook(self, name):
        def hook(module, inputs, output):
            self.calls.setdefault(name, []).append(_detach(output))
        return hook


def edge_index(batch, k: int, n_atoms: int) -> Optional[np.ndarray]:
    """``(n_edges, 2)`` centre/neighbour of every edge, checked equal in all copies."""
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


def split_module_output(base, suffixes, values, batch, k, n_atoms, is_pet):
    """``{entry: ((k, n_samples, d) float64 cpu, sample_kind)}`` of one module."""
    entries = {}
    for call, output in enumerate(values):
        tag = f"[{call}]" if len(values) > 1 else ""
        if isinstance(output, (tuple, list)):
            parts = _tuple_parts(base, suffixes, output, tag, is_pet)
            for entry, part in parts.items():
                if torch.is_tensor(part):
                    entries[entry] = to_samples(base, part, batch, k, n_atoms)
        elif isinstance(output, dict):
            for key, value in output.items():
                tensor = value.block().values if hasattr(value, "block") else value
                if torch.is_tensor(tensor):
                    entries[f"{base}:{key}{tag}"] = to_samples(base, tensor, batch, k, n_atoms)
        elif torch.is_tensor(output):
            if any(suffixes):
                raise ValueError(f"module {base!r} returns a single tensor; drop the "
                                 f"':{[s for s in suffixes if s][0]}' suffix")
            entries[base + tag] = to_samples(base, output, batch, k, n_atoms)
        else:
            raise ValueError(f"module {base!r} returns {type(output).__name__}, which "
                             "cannot be analysed (tensors, tuples of tensors and "
                             "dicts of TensorMaps can)")
    return entries


def _tuple_parts(base, suffixes, output, tag, is_pet) -> Dict[str, object]:
    labels = ["node", "edge"] if (is_pet and len(output) == 2 and
                                  base.startswith("backend.")) else \
        [str(i) for i in range(len(output))]
    wanted = [s for s in suffixes if s]
    if not wanted:
        return {f"{base}:{label}{tag}": part for label, part in zip(labels, output)}
    bad = [s for s in wanted if s not in labels]
    if bad:
        raise ValueError(f"module {base!r} returns a tuple; select one of "
                         f"{[base + ':' + label for label in labels]}")
    by_label = dict(zip(labels, output))
    return {f"{base}:{s}{tag}": by_label[s] for s in wanted}


def to_samples(base, tensor, batch, k, n_atoms):
    """One module tensor as ``(k, n_samples, d)`` float64 on the CPU, and its sample kind."""
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


def hooked_bases(names: List[str], output_prefix: str) -> Dict[str, List[str]]:
    """Module name -> the ``:suffix`` selections asked of it (``""``: all of it)."""
    hooked: Dict[str, List[str]] = {}
    for name in names:
        if not name.startswith(output_prefix):
            base, suffix = split_suffix(name)
            hooked.setdefault(base, []).append(suffix)
    return hooked


def _detach(output):
    if torch.is_tensor(output):
        return output.detach()
    if isinstance(output, (tuple, list)):
        return type(output)(_detach(o) for o in output)
    return output
