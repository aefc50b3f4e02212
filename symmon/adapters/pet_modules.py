"""Names of an eager model's hookable modules, PET's default set, and pattern matching.

A module name may end in ``:node`` / ``:edge`` / ``:0``... to select one element of
a module that returns a tuple (PET's GNN layers return ``(node, edge)``);
``output:NAME`` stands for the model's output ``NAME``. The default module set of a
PET (:func:`default_pet_modules`) follows the paper's Fig. 4: geometry embedding,
each GNN layer's node and edge outputs (and the edge messages after the combination
MLP), the backbone features, each head's last-layer features, each readout layer and
each model output.
"""

from __future__ import annotations

import fnmatch
import re
from typing import List, Optional, Sequence, Tuple

#: prefix of the pseudo-module names that stand for the model's outputs
OUTPUT_PREFIX = "output:"
_SUFFIX = re.compile(r"^(node|edge|\d+)$")


def split_suffix(name: str) -> Tuple[str, str]:
    """``"backend.gnn_layers.0:edge"`` -> ``("backend.gnn_layers.0", "edge")``; module
    names may themselves contain ``::`` (``node_heads.mtt::dipole.0``)."""
    base, sep, suffix = name.rpartition(":")
    if sep and base and not base.endswith(":") and _SUFFIX.match(suffix):
        return base, suffix
    return name, ""


def is_pet_like(model) -> bool:
    backend = getattr(model, "backend", None)
    return backend is not None and hasattr(backend, "gnn_layers") and \
        hasattr(backend, "preprocess")


def default_pet_modules(model) -> List[str]:
    """The default hooked modules of a (metatrain) PET, in forward order."""
    backend = model.backend
    names = dict(model.named_modules())
    n_readout = getattr(backend, "num_readout_layers", 1)
    feedforward = getattr(backend, "featurizer_type", "feedforward") == "feedforward"
    modules = ["backend.edge_embedder"]  # neighbour-species embedding (input messages)
    for i in range(len(backend.gnn_layers)):
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


class ModuleNames:
    """The hookable modules of one eager model and its outputs as ``output:NAME``."""

    def __init__(self, model, target_names: Sequence[str]):
        self.model = model
        self.is_pet = is_pet_like(model)
        self.modules = [n for n, _ in model.named_modules() if n]
        self.outputs = [OUTPUT_PREFIX + n for n in target_names]

    @property
    def all(self) -> List[str]:
        return self.modules + self.outputs

    def default(self) -> List[str]:
        return default_pet_modules(self.model) if self.is_pet else list(self.outputs)

    def resolve(self, patterns: Optional[Sequence[str]] = None) -> List[str]:
        """Module names matching fnmatch ``patterns`` (default: :meth:`default`).

        Raises ``ValueError`` naming the available modules when a pattern matches
        nothing.
        """
        if not patterns:
            return self.default()
        resolved: List[str] = []
        for pattern in patterns:
            matches = self._matches(pattern)
            if not matches:
                raise ValueError(self._no_match(pattern))
            resolved += [m for m in matches if m not in resolved]
        return resolved

    def _matches(self, pattern: str) -> List[str]:
        if pattern.startswith(OUTPUT_PREFIX):
            return fnmatch.filter(self.outputs, pattern)
        base, suffix = split_suffix(pattern)
        # with a ':node'/':edge' suffix, '*' does not cross dots (the suffix only
        # makes sense for the tuple-returning module itself, not its children)
        match = _match_no_dots if suffix else fnmatch.filter
        matches = match(self.modules, base)
        if not matches and not base.startswith("backend.") and self.is_pet:
            matches = match(self.modules, "backend." + base)
        return [m + (":" + suffix if suffix else "") for m in matches]

    def _no_match(self, pattern: str) -> str:
        shown = self.modules if len(self.modules) <= 200 else self.modules[:200] + ["..."]
        return (f"module pattern {pattern!r} matches no module of this "
                f"{type(self.model).__name__}. Available modules (fnmatch patterns, "
                f"e.g. 'backend.gnn_layers.*.edge_embedder'; outputs as "
                f"'{OUTPUT_PREFIX}NAME'): " + ", ".join(shown + self.outputs))


def _match_no_dots(names, pattern):
    regex = re.compile("^" + ".*".join("[^.]*".join(re.escape(part) for part in
                                                    chunk.split("*"))
                                       for chunk in pattern.split("**")) + "$")
    return [n for n in names if regex.match(n)]
