"""The verdict on one step (ok / caution / problem) and what to do about a problem.

Grading uses the one table of :mod:`symmon.monitoring.thresholds`, so a step flagged
by the monitor and a problem in ``symmon report`` mean the same thing. The policy only
*decides*; acting (warning, raising, switching the monitor to averaging) is the
monitor's, which logs it as an event -- nothing here changes a mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional

import numpy as np

from ..core.quantities import QUANTITY
from .options import MonitorOptions
from .schema import NAMES
from .thresholds import DOMINANT_RATIO, DOMINANT_SHARE, LEVELS, Grade, grade


class SymmetryViolation(RuntimeError):
    """Raised with ``on_violation="raise"`` when a step is graded ``problem``."""


class SymmetryViolationWarning(UserWarning):
    """Issued with ``on_violation="warn"`` the first time a quantity is graded
    ``problem`` (later problem steps are counted in the log's ``violation``), and when
    the monitor switches to averaging."""


# ------------------------------------------------------------------ sentences
# Every sentence is generated from the numbers it states: a percentage of the quantity
# is the Grade's ``relative`` (or ``share``), the same number the log and the report's
# JSON hold, and a floor is named where it is used.


def number(x, digits: int = 3) -> str:
    """``0.0612``, ``1.2e-07``, ``3.4e+05``; ``–`` for None/NaN/inf; integers as they
    are (how every sentence and table prints a value: never "0" for 1e-7)."""
    if x is None:
        return "–"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(x)
    x = float(x)
    if not math.isfinite(x):
        return "–"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e4:
        return f"{x:.{digits}g}"
    return f"{x:.{digits - 1}e}"


def percent(fraction) -> str:
    """``0.27`` -> ``27``, ``1.06`` -> ``106``, ``0.031`` -> ``3.1`` (no unit sign)."""
    value = 100 * float(fraction)
    return f"{value:.0f}" if abs(value) >= 10 else number(value, 2)


def unit_of(quantity: str) -> str:
    """The per-atom unit of ``quantity``'s ε, as printed (``eV/Å``)."""
    return QUANTITY[quantity].pretty_eps_unit()


def scale_words(g: Grade) -> str:
    """``a typical MLIP force error (0.05 eV/Å)`` / ``the model's force error (...)``."""
    whose = "the model's" if g.scale_source == "model error" else "a typical MLIP"
    return f"{whose} {QUANTITY[g.quantity].noun} error ({number(g.scale)} {unit_of(g.quantity)})"


def comparison(g: Grade) -> str:
    """Words for ``ratio = eps / scale``: *well below* while the ratio is ok by the
    table, then the percentage, *comparable to* up to twice, else the factor."""
    ratio = g.ratio
    if ratio <= g.limits["ratio"].caution:
        return "well below"
    if ratio < 1:
        return f"{percent(ratio)} % of"
    return "comparable to" if ratio <= 2 else f"{number(ratio, 2)}× the size of"


def size_words(g: Grade) -> str:
    """ε against the quantity itself, from the Grade's own numbers: ``49 % of |F|``;
    ``|F| is tiny (0.013 eV/Å); judged against the 0.5 eV/Å floor (relative ε 0.037)``;
    ``140 % of |F| (0.013 eV/Å) itself`` (the third rule); '' for a relative ε that is
    not judged (the energy, whose zero is arbitrary)."""
    q, unit = g.quantity, unit_of(g.quantity)
    size = QUANTITY[q].size_label
    if g.dominated and g.share is not None:
        rms = f" ({number(g.rms)} {unit})" if g.rms is not None else ""
        return f"{percent(g.share)} % of {size}{rms} itself"
    if not g.judged or g.relative is None:
        return ""
    if g.rms is not None and g.floor is not None and g.rms < g.floor:
        return (f"{size} is tiny ({number(g.rms)} {unit}); judged against the "
                f"{number(g.floor)} {unit} floor (relative ε {number(g.relative)})")
    return f"{percent(g.relative)} % of {size}"


def statement(g: Grade) -> str:
    """``forces: ε 0.3 eV/Å per atom, 49 % of |F|, 6× the size of a typical MLIP force
    error (0.05 eV/Å)`` -- every number from ``g``."""
    q = g.quantity
    text = f"{q}: ε {number(g.eps)} {unit_of(q)}{QUANTITY[q].unit_words}"
    size = size_words(g)
    if size:
        text += f", {size}"
    return f"{text}, {comparison(g)} {scale_words(g)}"


def rule_words(g: Grade, rule: str) -> str:
    """Why question ``rule`` (:attr:`Grade.rules`) raised the level, with its limit."""
    level = g.limits["ratio" if rule == "ratio" else "relative"]
    if rule == "ratio":
        limit = level.problem if g.ratio > level.problem else level.caution
        return f"ε is above {number(limit)}× the {g.scale_source}"
    if rule == "relative":
        limit = level.problem if g.relative > level.problem else level.caution
        return f"relative ε {number(g.relative)} is above {number(limit)}"
    return (f"ε is at least {percent(DOMINANT_SHARE)} % of the quantity itself and above "
            f"{number(DOMINANT_RATIO)}× the typical MLIP error: the breaking is the "
            "quantity")


def problem_text(g: Grade) -> str:
    """One problem, stated and explained: :func:`statement` and, for each question that
    graded it, :func:`rule_words` (never empty: every rule has its words)."""
    why = "; ".join(rule_words(g, rule) for rule in g.rules) or f"graded {g.level}"
    return f"{statement(g)} ({why})"


@dataclass(frozen=True)
class Verdict:
    """The grades of one step's quantities."""

    grades: Mapping[str, Grade]

    @property
    def level(self) -> str:
        return max((g.level for g in self.grades.values()), key=LEVELS.index, default="ok")

    @property
    def problems(self) -> Dict[str, Grade]:
        return {q: g for q, g in self.grades.items() if g.level == "problem"}

    def values(self) -> Dict[str, object]:
        """What the log records: relative ε, ratio and level per quantity, the step's."""
        values: Dict[str, object] = {}
        for quantity, g in self.grades.items():
            names = NAMES[quantity]
            values[names.rel_eps] = float("nan") if g.relative is None else g.relative
            values[names.ratio] = g.ratio
            values[names.level] = LEVELS.index(g.level)
        values["level"] = LEVELS.index(self.level)
        values["violation"] = int(self.level == "problem")
        return values

    def describe(self) -> str:
        """The problems of the step in words (:func:`problem_text`)."""
        return "; ".join(problem_text(g) for g in self.problems.values())


class Policy:
    """Grades steps with the thresholds table and names the action for a problem."""

    def __init__(self, options: MonitorOptions):
        self.overrides = dict(options.thresholds)
        self.model_errors = dict(options.model_errors)
        self.on_violation = options.on_violation

    def judge(self, values: Mapping[str, float], quantities: Iterable[str]) -> Verdict:
        """Grade the per-atom-normalised ε of each quantity against the table."""
        grades = {}
        for quantity in quantities:
            names = NAMES[quantity]
            grades[quantity] = grade(quantity, values[names.eps], rms=values[names.rms],
                                     model_error=self.model_errors.get(quantity),
                                     overrides=self.overrides)
        return Verdict(grades)

    def action(self, verdict: Verdict, averaging: bool) -> Optional[str]:
        """``None`` (nothing to do), ``"warn"``, ``"raise"`` or ``"average"`` (switch on)."""
        if verdict.level != "problem":
            return None
        if self.on_violation == "average":
            return None if averaging else "average"
        return self.on_violation
