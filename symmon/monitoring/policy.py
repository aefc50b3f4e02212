"""The verdict on one step (ok / caution / problem) and what to do about a problem.

Grading uses the one table of :mod:`symmon.monitoring.thresholds`, so a step flagged
by the monitor and a problem in ``symmon report`` mean the same thing. The policy only
*decides*; acting (warning, raising, switching the monitor to averaging) is the
monitor's, which logs it as an event -- nothing here changes a mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional

from ..core.quantities import QUANTITY
from .options import MonitorOptions
from .schema import NAMES
from .thresholds import LEVELS, Grade, grade


class SymmetryViolation(RuntimeError):
    """Raised with ``on_violation="raise"`` when a step is graded ``problem``."""


class SymmetryViolationWarning(UserWarning):
    """Issued with ``on_violation="warn"`` the first time a quantity is graded
    ``problem`` (later problem steps are counted in the log's ``violation``), and when
    the monitor switches to averaging."""


def _problem_text(g: Grade) -> str:
    """``forces relative eps 0.71 > 0.25, eps 0.05 eV/Å is 1× the typical MLIP error``."""
    parts = []
    if g.limits["relative"].level(g.relative) == "problem":
        parts.append(f"{g.quantity} relative eps {g.relative:.3g} > "
                     f"{g.limits['relative'].problem:.3g}")
    if g.limits["ratio"].level(g.ratio) == "problem":
        parts.append(f"{g.quantity} eps {g.eps:.3g} {QUANTITY[g.quantity].pretty_eps_unit()} is "
                     f"{g.ratio:.2g}x the {g.scale_source} (> {g.limits['ratio'].problem:g}x)")
    return ", ".join(parts)


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
        return "; ".join(_problem_text(g) for g in self.problems.values())


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
