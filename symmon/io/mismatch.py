"""Why two logs (or a log and a new run) cannot be one, in a few short items.

A refused append or shard merge is one sentence: the first :data:`SHOWN` differences,
each value cut to about :data:`VALUE_WIDTH` characters, and how many more there are.
"""

from __future__ import annotations

import json
from typing import Mapping

import numpy as np

from .h5md import LogFormatError

#: differences named in a refusal (the rest are counted)
SHOWN = 3
#: characters of one value in a difference (``'abc…'``)
VALUE_WIDTH = 28
#: observable names named per side when the declarations differ
NAMES_SHOWN = 2
#: metadata that tells one run from another (a log is continued only by a run that
#: agrees on all of them)
RUN_IDENTITY = ("model_sha256", "base_calculator", "base_parameters", "seed")
#: metadata that tells one model from another (shards of one run share them)
MODEL_IDENTITY = ("model_sha256", "base_calculator")
#: metadata named "settings" when logs are refused as shards of one run
RUN_SETTINGS = RUN_IDENTITY[1:] + ("mode", "every", "full_every", "random_rotations")


class ShardMismatch(LogFormatError):
    """Logs given as shards of one run that are not: ``paths`` and ``why`` (words such
    as ``"model"``, ``"observables"``)."""

    def __init__(self, paths: list[str], why: list[str]):
        self.paths, self.why = paths, why
        super().__init__(f"{' and '.join(paths)} are not shards of one run (different "
                         f"{', '.join(why)}); read each log on its own")


def shortened(value, width: int = VALUE_WIDTH) -> str:
    """``repr(value)`` cut to ``width`` characters (``…`` marks the cut)."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def listed(problems: list[str], shown: int = SHOWN) -> str:
    """The first ``shown`` problems joined by ``;``, then ``and N more``."""
    more = len(problems) - shown
    return "; ".join(problems[:shown]) + (f"; and {more} more" if more > 0 else "")


def metadata_differences(stored: Mapping, new: Mapping, keys) -> list[str]:
    """``key 'old' vs 'new'`` for each of ``keys`` whose values differ; a dict (or a
    JSON text of one, as ``base_parameters``) names its differing entries instead
    (``base_parameters.model 'a.pt' vs 'b.pt'``)."""
    problems = []
    for key in keys:
        a, b = _as_dict(stored.get(key)), _as_dict(new.get(key))
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            inner = sorted(set(a) | set(b), key=str)
            problems += [f"{key}.{p}" for p in metadata_differences(a, b, inner)]
        else:
            problems.append(f"{key} {shortened(a)} vs {shortened(b)}")
    return problems


def _as_dict(value):
    """A JSON object text as its dict; anything else as it is."""
    if isinstance(value, str) and value.startswith("{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def spec_differences(a: Mapping, b: Mapping, sides=("the log", "the new run")) -> list[str]:
    """Why observable declarations ``a`` and ``b`` (named ``sides``) cannot share a log
    (empty: they can): the names only one side declares, and the shared names whose
    shape, dtype, unit or labels differ."""
    problems = []
    if set(a) != set(b):
        problems.append(f"observables differ ({_only_in(a, b, sides[0])}; "
                        f"{_only_in(b, a, sides[1])})")
    for name in sorted(set(a) & set(b)):
        if not a[name].same_layout(b[name]):
            sa, sb = ((s.shape, str(s.dtype), s.unit) for s in (a[name], b[name]))
            problems.append(f"observable {name!r} (shape, dtype, unit) {shortened(sa)} vs "
                            f"{shortened(sb)} or its labels differ")
    return problems


def _only_in(a, b, where: str) -> str:
    names = sorted(set(a) - set(b))
    if not names:
        return f"none only in {where}"
    shown = ", ".join(names[:NAMES_SHOWN]) + (", …" if len(names) > NAMES_SHOWN else "")
    return f"{len(names)} only in {where}: {shown}"


def shard_differences(a, b) -> list[str]:
    """Why the log headers ``a`` and ``b`` are not shards of one run, in words (empty:
    they can be merged).  Their layouts (schema, species, periodicity, stored positions,
    observables) and the model (its SHA-256, or the base calculator) decide; the
    settings are named too when something else refuses."""
    layout = [word for word, differs in (
        ("schema version", a.schema_version != b.schema_version),
        ("species", not np.array_equal(a.species, b.species)),
        ("periodicity", a.pbc != b.pbc),
        ("stored positions", a.has_positions != b.has_positions),
        ("meaning of forces_eps", a.semantics.forces_eps_summed != b.semantics.forces_eps_summed),
        ("observables", bool(spec_differences(a.specs, b.specs)))) if differs]
    model = _other_model(a.metadata, b.metadata)
    if not layout and not model:
        return []
    settings = bool(metadata_differences(a.metadata, b.metadata, RUN_SETTINGS))
    return ["model"] * model + ["settings"] * settings + layout


def _other_model(a: Mapping, b: Mapping) -> bool:
    """Whether two logs are of different models: their SHA-256 or base calculator, and
    for calculators without a model file (SHA None: an ASE calculator) their parameters
    but the device (clients of one i-PI run may sit on different GPUs)."""
    if metadata_differences(a, b, MODEL_IDENTITY):
        return True
    if a.get("model_sha256") is not None:
        return False
    first, second = _as_dict(a.get("base_parameters")), _as_dict(b.get("base_parameters"))
    if isinstance(first, dict) and isinstance(second, dict):
        first, second = ({k: v for k, v in p.items() if k != "device"} for p in (first, second))
    return first != second
