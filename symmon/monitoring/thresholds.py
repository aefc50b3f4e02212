"""The one table of thresholds: when is a symmetry error ok, worth a caution, a problem?

Used by the monitor's alarms (``SymmetryMonitor(thresholds=..., on_violation=...)``) and by
``symmon report``'s verdict, so that a step flagged in the log and a problem in the report
mean the same thing. All ε are in the per-atom units a person reads: energy in eV/atom,
forces as the RMS over atoms of each atom's ε (eV/Å), stress in eV/Å³.

Three questions are asked of every ε, and the worst answer wins:

1. **Is ε small compared with the model's error?** ``ratio = ε / scale``.
   When the model's own test RMSE is known (``symmon eval``; ``--model-error``) it is the
   scale: the paper (Fig. 2) finds well-trained unconstrained models with ε well below
   their own error; a symmetry error of half the model error or more is as large as what
   the model gets wrong anyway (``problem``), a fifth of it is noticeable (``caution``)
   (:data:`MODEL_RATIO_LIMITS`). Otherwise the scale is the typical error of a good
   general-purpose MLIP (:data:`REFERENCE_ERRORS`); since this is not the model's own
   error, ε comparable to it (half or more) is a ``caution``, and only ε five times above
   it, which no accurate model can have, is a ``problem`` (:data:`REFERENCE_RATIO_LIMITS`).
2. **Is ε small compared with the quantity itself?** ``relative = ε / max(RMS, floor)``, the
   RMS being the orbit RMS of the prediction: :func:`relative_eps`, the one function
   every relative ε a person reads comes from (the monitor's log and warnings, the
   report's verdict, tables, histogram and JSON, ``symmon export``). 5 % of the signal is ``caution``, 25 %
   ``problem`` (:data:`RELATIVE_LIMITS`). The floor (:data:`FLOORS`) keeps a vanishing
   quantity (zero pressure, forces at a minimum) from turning a tiny ε into a large
   relative one; it is ten typical errors (:data:`FLOOR_FACTOR`), where 5 % of the
   quantity is half a typical error: below it the relative check cautions exactly where
   the ratio check does, and calls a problem from 2.5 typical errors on (a quarter of a
   quantity that small). Above it, the relative check is the sharper one (MD forces of
   ~1 eV/Å: 5 % is 0.05 eV/Å). A floor equal to the typical error would make an ε of a
   quarter of a typical error a ``problem`` on any relaxed crystal.
   Not asked of the energy, whose zero is arbitrary (its relative ε is still reported),
   nor where the model's own error is known: then the model error is the judge. A user's
   own relative limit (``thresholds={"forces": 0.05}``) is a share of the quantity itself:
   its floor is the typical error only.
3. **Is the breaking the quantity itself?** ε of at least half the quantity (floor: the
   typical error) and more than twice a typical error is a ``problem`` however small
   the quantity: a lab-frame force of 0.12 eV/Å on a relaxed crystal, a 1 GPa lab-frame
   stress at zero pressure (:data:`DOMINANT_SHARE`, :data:`DOMINANT_RATIO`; asked where
   2. is).

The table must separate a model trained with O(3) augmentation from its unaugmented
twin (same data and seed) and call exactly equivariant models ``ok``: checked on the
bundled pair ``symmon/data/tiny_pet_{aug,noaug}.pt`` (``caution`` vs ``problem``) by
``tests/test_report.py`` and ``python -m benchmarks.verdict_pair``.

Why ε is a fair thing to hold against an error: the RMSE of a model's predictions over
the orbit of a structure, against the (exactly symmetric) truth, is at least ε — the
orbit variance is part of the error whatever the labels — so ε is a lower bound on the
error of the model on randomly oriented inputs.

Reference errors (typical test RMSEs of universal MLIPs such as PET-MAD, MACE-MP, Orb on
their own test sets, rounded): energy 5 meV/atom, forces 50 meV/Å, stress 3 meV/Å³
(0.5 GPa). Floors are ten times these (see 2.).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

LEVELS = ("ok", "caution", "problem")


@dataclass(frozen=True)
class Limits:
    """Values above ``caution`` (and above ``problem``) raise the level."""

    caution: float
    problem: float

    def level(self, value: Optional[float]) -> str:
        if value is None or value != value:  # None or NaN: nothing to judge
            return "ok"
        return "problem" if value > self.problem else "caution" if value > self.caution \
            else "ok"

    def level_indices(self, values: np.ndarray) -> np.ndarray:
        """:meth:`level` of many values as indices into :data:`LEVELS` (NaN: ok)."""
        values = np.asarray(values, dtype=float)
        with np.errstate(invalid="ignore"):
            return (values > self.caution).astype(np.int8) + (values > self.problem)


#: typical test RMSE of a good MLIP, per quantity, in eV/atom, eV/Å, eV/Å³
REFERENCE_ERRORS: Dict[str, float] = {"energy": 0.005, "forces": 0.05, "stress": 0.003}
#: ε / the model's own test RMSE
MODEL_RATIO_LIMITS = Limits(caution=0.2, problem=0.5)
#: ε / the typical MLIP error of REFERENCE_ERRORS (the model's own error unknown)
REFERENCE_RATIO_LIMITS = Limits(caution=0.5, problem=5.0)
#: ε / max(orbit RMS, floor)
RELATIVE_LIMITS = Limits(caution=0.05, problem=0.25)
#: the floor in units of the typical error: the size at which the relative caution limit
#: is the ratio's (5 % of 10 errors = half an error), so a quantity smaller than it (a
#: relaxed crystal's forces, zero pressure) is not cautioned for what the ratio calls ok
FLOOR_FACTOR = REFERENCE_RATIO_LIMITS.caution / RELATIVE_LIMITS.caution
#: eps at least this share of the quantity (floor: the typical error) and above
#: DOMINANT_RATIO typical errors is a problem whatever the floor (:func:`_dominated`)
DOMINANT_SHARE = 0.5
#: "more than comparable to" a typical error, in the report's words (up to twice it is
#: "comparable"): a 1 GPa lab-frame stress at zero pressure (2.07 typical errors) is a
#: problem, a breaking comparable to the typical error stays a caution
DOMINANT_RATIO = 2.0
#: absolute floor of the scale of relative measures (same units): 0.05 eV/atom,
#: 0.5 eV/Å, 0.03 eV/Å³ (4.8 GPa)
FLOORS: Dict[str, float] = {q: FLOOR_FACTOR * e for q, e in REFERENCE_ERRORS.items()}


@dataclass(frozen=True)
class Grade:
    """The judgement of one ε: level, the numbers behind it and why."""

    quantity: str
    level: str
    eps: float
    scale: float
    scale_source: str
    ratio: float
    relative: Optional[float]
    #: the questions that raised the level: ``"ratio"`` (1.), ``"relative"`` (2.),
    #: ``"dominant"`` (3.); :mod:`symmon.monitoring.policy` words them
    rules: Tuple[str, ...] = ()
    limits: Mapping[str, Limits] = field(default_factory=dict)
    dominated: bool = False  # a problem by the third rule (:func:`_dominated`)
    rms: Optional[float] = None      # the size of the quantity (orbit RMS)
    floor: Optional[float] = None    # the floor of the relative ε (:func:`floor`)
    share: Optional[float] = None    # :func:`dominant_share`
    judged: bool = True              # whether the relative ε is judged (:class:`Rule`)

    @property
    def severity(self) -> int:
        return LEVELS.index(self.level)


def _worse(a: str, b: str) -> str:
    return a if LEVELS.index(a) >= LEVELS.index(b) else b


@dataclass(frozen=True)
class Rule:
    """How one quantity is judged: the error ``scale`` (and its ``source``), the limits
    of ``ratio = eps / scale`` and of ``relative = eps / max(rms, floor)``, whether the
    relative ε is ``judged``, and its ``floor``."""

    scale: float
    source: str
    ratio_limits: Limits
    relative_limits: Limits
    judged: bool
    floor: float


def floor(quantity: str, overrides: Optional[Mapping[str, float]] = None) -> float:
    """The floor of the relative ε of ``quantity``: :data:`FLOORS` (ten typical
    errors), or the typical error where the user set a relative limit (``overrides``):
    a user's limit is a share of the quantity itself, the floor only a guard against a
    vanishing quantity."""
    if quantity not in REFERENCE_ERRORS:
        raise ValueError(f"no thresholds for {quantity!r}; known: {sorted(REFERENCE_ERRORS)}")
    if overrides and quantity in overrides:
        return REFERENCE_ERRORS[quantity]
    return FLOORS[quantity]


def relative_eps(quantity: str, eps, rms, overrides: Optional[Mapping[str, float]] = None):
    """The relative ε a person reads, everywhere (the monitor's ``<q>_rel_eps``, the
    report's verdict, tables, histogram and JSON, the export):
    ``eps / max(rms, floor(quantity, overrides))``, elementwise; NaN where ``rms`` is NaN.
    ``eps`` and ``rms`` (the orbit RMS of the prediction) in the quantity's ``eps_unit``
    (:mod:`symmon.core.quantities`)."""
    scale = np.maximum(np.asarray(rms, dtype=float), floor(quantity, overrides))
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.asarray(eps, dtype=float) / scale
    return value.item() if value.ndim == 0 else value


def dominant_share(quantity: str, eps, rms):
    """ε as a share of the quantity itself, ``eps / max(rms, typical error)``: what the
    third question (:data:`DOMINANT_SHARE`) asks; elementwise."""
    scale = np.maximum(np.asarray(rms, dtype=float), REFERENCE_ERRORS[quantity])
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.asarray(eps, dtype=float) / scale
    return value.item() if value.ndim == 0 else value


def rule(quantity: str, model_error: Optional[float] = None,
         overrides: Optional[Mapping[str, float]] = None) -> Rule:
    """The :class:`Rule` of :func:`grade` (its floor: :func:`floor`)."""
    relative_floor = floor(quantity, overrides)
    if model_error is not None and model_error > 0:
        scale, source, ratio_limits = float(model_error), "model error", MODEL_RATIO_LIMITS
    else:
        scale, source = REFERENCE_ERRORS[quantity], "typical MLIP error"
        ratio_limits = REFERENCE_RATIO_LIMITS
    relative_limits = RELATIVE_LIMITS
    overridden = bool(overrides and quantity in overrides)
    if overridden:
        problem = float(overrides[quantity])
        relative_limits = Limits(min(RELATIVE_LIMITS.caution, problem / 5), problem)
    judged = overridden or (quantity != "energy" and source != "model error")
    return Rule(scale, source, ratio_limits, relative_limits, judged, relative_floor)


def _dominated(quantity: str, share, ratio):
    """Symmetry breaking that *is* the quantity: a :func:`dominant_share` of at least
    ``DOMINANT_SHARE`` and above ``DOMINANT_RATIO`` typical errors -- a problem however
    small the quantity (a lab-frame force on a relaxed crystal, a lab-frame stress at zero
    pressure), which the ten-error floor of the relative check alone would call caution
    up to 2.5 typical errors."""
    with np.errstate(invalid="ignore"):
        return (np.asarray(share) >= DOMINANT_SHARE) & (np.asarray(ratio) > DOMINANT_RATIO)


def grade_levels(quantity: str, eps: np.ndarray, rms: np.ndarray,
                 model_error: Optional[float] = None,
                 overrides: Optional[Mapping[str, float]] = None) -> np.ndarray:
    """``LEVELS.index(grade(quantity, e, r, ...).level)`` for every step at once (a NaN
    ``rms``: no relative judgement, as ``rms=None``)."""
    r = rule(quantity, model_error, overrides)
    eps = np.asarray(eps, dtype=float)
    ratio = eps / r.scale
    levels = r.ratio_limits.level_indices(ratio)
    if r.judged:
        rms = np.asarray(rms, dtype=float)
        finite = np.isfinite(rms)
        relative = relative_eps(quantity, eps, rms, overrides)
        levels = np.maximum(levels, r.relative_limits.level_indices(relative))
        share = dominant_share(quantity, eps, rms)
        levels = np.where(finite & _dominated(quantity, share, ratio), 2, levels)
    return levels


def grade(quantity: str, eps: float, rms: Optional[float] = None,
          model_error: Optional[float] = None,
          overrides: Optional[Mapping[str, float]] = None,
          relative: Optional[float] = None, share: Optional[float] = None) -> Grade:
    """Grade ``eps`` of ``quantity`` (``"energy"``, ``"forces"`` or ``"stress"``).

    ``eps`` and ``rms`` in the quantity's ``eps_unit`` (per atom, :mod:`symmon.core.quantities`); ``model_error`` is the
    model's test RMSE in the same units (``None``: judged against REFERENCE_ERRORS).
    ``relative`` and ``share`` give the relative ε and the :func:`dominant_share`
    directly (e.g. percentiles of per-step values) instead of :func:`relative_eps` and
    :func:`dominant_share` of ``eps`` and ``rms``. Where the model's own error is known,
    the verdict is against it alone (the relative ε is reported, not judged), unless an
    override asks for the relative limit of that quantity.
    ``overrides`` maps quantities to the ``problem`` limit of their relative ε (the
    monitor's ``thresholds={"forces": 0.05}``); the ``caution`` limit is then a fifth of
    it, capped by the table's.
    """
    eps = float(eps)
    r = rule(quantity, model_error, overrides)
    ratio = eps / r.scale
    rms = None if rms is None or rms != rms else float(rms)
    if relative is None and rms is not None:
        relative = relative_eps(quantity, eps, rms, overrides)
    if share is None and rms is not None:
        share = dominant_share(quantity, eps, rms)
    by_ratio = r.ratio_limits.level(ratio)
    by_relative = r.relative_limits.level(relative) if r.judged else "ok"
    rules = []
    if by_ratio != "ok":
        rules.append("ratio")
    if by_relative != "ok":
        rules.append("relative")
    dominated = r.judged and share is not None and bool(_dominated(quantity, share, ratio))
    if dominated:
        by_relative = "problem"
        rules.append("dominant")
    return Grade(quantity, _worse(by_ratio, by_relative), eps, r.scale, r.source, ratio,
                 relative, tuple(rules), {"ratio": r.ratio_limits,
                                          "relative": r.relative_limits}, dominated,
                 rms=rms, floor=r.floor, share=share, judged=r.judged)
