"""PLACEHOLDER (report branch) for the lead's one thresholds table; replaced on merge.

Implements the announced API only so the report can be developed against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LEVELS = ("ok", "caution", "problem")
REFERENCE_ERRORS = {"energy": 0.003, "forces": 0.07, "stress": 6e-4}
FLOORS = {"energy": 0.01, "forces": 0.1, "stress": 6e-4}
RATIO_LIMITS = (0.1, 0.5)
RELATIVE_LIMITS = {"energy": (1e-3, 1e-2), "forces": (0.01, 0.05), "stress": (0.01, 0.05)}


@dataclass(frozen=True)
class Grade:
    level: str
    quantity: str
    eps: float
    scale: float
    scale_source: str
    ratio: float
    relative: float | None
    reasons: list = field(default_factory=list)
    limits: dict = field(default_factory=dict)


def _level(value, limits):
    if value is None:
        return "ok"
    return "problem" if value > limits[1] else "caution" if value > limits[0] else "ok"


def grade(quantity, eps, rms=None, model_error=None, overrides=None) -> Grade:
    scale = model_error if model_error is not None else REFERENCE_ERRORS[quantity]
    source = "model error" if model_error is not None else "typical MLIP error"
    ratio = eps / scale
    relative = None if rms is None else eps / max(rms, FLOORS[quantity])
    rel_limits = RELATIVE_LIMITS[quantity]
    if overrides and quantity in overrides:
        rel_limits = (min(rel_limits[0], overrides[quantity]), overrides[quantity])
    levels = [_level(ratio, RATIO_LIMITS), _level(relative, rel_limits)]
    level = max(levels, key=LEVELS.index)
    reasons = []
    if levels[0] != "ok":
        reasons.append(f"ε is {ratio:.2g} of the {source}")
    if levels[1] != "ok":
        reasons.append(f"relative ε {relative:.2g}")
    return Grade(level, quantity, eps, scale, source, ratio, relative, reasons,
                 {"ratio": RATIO_LIMITS, "relative": rel_limits})
