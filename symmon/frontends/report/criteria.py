"""The verdict: each monitored quantity graded ok / caution / problem on the one
thresholds table (:mod:`symmon.monitoring.thresholds`), ranked, with one action.

Per quantity ``q`` the statistics judged are 95th percentiles over monitored steps of
its per-step numbers (:mod:`.series`): the per-atom-normalised ε (against the model's
own error, ``--model-error``, or a typical MLIP error), the relative ε
(:func:`~symmon.monitoring.thresholds.relative_eps`, the number the log, the tables and
the histogram hold at each step) and the share of the quantity
(:func:`~symmon.monitoring.thresholds.dominant_share`). A single step whose ε alone
would grade *problem* makes an *ok* quantity *caution*. Every sentence comes from the
Grade it states (:mod:`symmon.monitoring.policy`).

What is judged is what the run returned: in ``mode="average"`` the returned
predictions are the O(3) average (exactly symmetric up to quadrature error) while the
logged ε is the base model's; in ``mode="purified"`` the logged ε is that of the
purified predictions the run returned.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from ...core.irreps import Irrep
from ...core.outputs import EV_PER_A3_IN_GPA, pretty_unit
from ...core.quantities import QUANTITY
from ...monitoring.policy import number, percent, rule_words, statement
from ...monitoring.thresholds import LEVELS, Grade, grade, grade_levels
from .series import QUANTITIES, QuantitySeries

#: what each check means (its name: the quantity's ``title``)
EXPLANATIONS = {
    "energy": "how much the energy per atom changes when the structure is rotated or "
              "reflected, against the model's energy error",
    "forces": "how much each atom's force changes (beyond rotating with the structure) "
              "under rotations and reflections, RMS over atoms, against the model's force "
              "error",
    "stress": "how much the stress changes (beyond rotating with the cell) under "
              "rotations and reflections, against the model's stress error",
}
POWER_OF = {"energy": "the energy's", "forces": "the forces'", "stress": "the stress's"}
#: steps listed by name in a note (the JSON has them all)
LISTED_STEPS = 5


def resolve_thresholds(thresholds=None) -> dict[str, float]:
    """Overrides ``{quantity: problem limit on its relative ε}`` for
    :func:`~symmon.monitoring.thresholds.grade`, from a dict or ``(name, value)`` pairs;
    ``forces_rel_eps`` is accepted for ``forces``."""
    items = thresholds.items() if isinstance(thresholds, Mapping) else (thresholds or [])
    overrides = {}
    for key, value in items:
        name = str(key).strip().removesuffix("_rel_eps")
        if name not in QUANTITIES:
            raise ValueError(f"unknown threshold {key!r}: use energy=, forces= or stress= "
                             "(the problem limit on that quantity's relative ε)")
        value = float(value)
        if math.isnan(value) or value < 0:
            raise ValueError(f"threshold {key}={value}: must be a number >= 0 (or inf)")
        overrides[name] = value
    return overrides


#: unit spellings ``symmon eval`` may write -> factor to the per-atom-normalised unit
_EVAL_UNITS = {"energy": {"eV/atom": 1.0},
               "forces": {"eV/angstrom": 1.0, "eV/Å": 1.0},
               "stress": {"eV/angstrom^3": 1.0, "eV/Å³": 1.0, "GPa": 1 / EV_PER_A3_IN_GPA}}


def load_model_error(path: str | os.PathLike) -> dict[str, float]:
    """``{quantity: RMSE}`` (eV/atom, eV/Å, eV/Å³) from the JSON ``symmon eval
    --format json`` writes (``{"quantities": {q: {"rmse": x, "unit": u}}}``)."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not a JSON file ({error}); give the file written by "
                             "'symmon eval --format json'") from None
    quantities = data.get("quantities") if isinstance(data, dict) else None
    if not isinstance(quantities, dict):
        raise ValueError(f"{path}: no 'quantities' table; give the file written by "
                         "'symmon eval --format json'")
    errors = {}
    for q, entry in quantities.items():
        if q in QUANTITIES and isinstance(entry, dict) and entry.get("rmse") is not None:
            unit = entry.get("unit", next(iter(_EVAL_UNITS[q])))
            factor = _EVAL_UNITS[q].get(unit)
            if factor is None:
                raise ValueError(f"{path}: {q} RMSE in unit {unit!r}; expected one of "
                                 f"{sorted(_EVAL_UNITS[q])}")
            errors[q] = float(entry["rmse"]) * factor
    return errors


# ------------------------------------------------------------------ checks


@dataclass
class Check:
    """The judgement of one quantity over the run (95th percentiles over steps)."""

    grade: Grade                 # of the 95th percentiles (not in the JSON: its numbers are)
    name: str
    explanation: str
    unit: str
    n: int
    max: float
    max_step: int
    level: str                   # level_p95, raised to caution by a problem spike
    level_max: str
    fraction_steps_flagged: float
    first_step_flagged: int | None
    statistic: str = "p95"

    @property
    def quantity(self) -> str:
        return self.grade.quantity

    @property
    def eps(self) -> float:
        return self.grade.eps

    def to_json(self) -> dict:
        g = self.grade
        return {
            "quantity": g.quantity, "name": self.name, "explanation": self.explanation,
            "unit": self.unit, "statistic": self.statistic, "n": self.n, "eps": g.eps,
            "max": self.max, "max_step": self.max_step, "rms": g.rms, "floor": g.floor,
            "scale": g.scale, "scale_source": g.scale_source, "ratio": g.ratio,
            "relative": g.relative, "share": g.share, "relative_judged": g.judged,
            "level": self.level, "level_p95": g.level, "level_max": self.level_max,
            "reasons": [rule_words(g, r) for r in g.rules],
            "limits": {name: {"caution": lim.caution, "problem": lim.problem}
                       for name, lim in g.limits.items()},
            "dominated": g.dominated,
            "fraction_steps_flagged": self.fraction_steps_flagged,
            "first_step_flagged": self.first_step_flagged,
        }


def judge(series: Mapping[str, QuantitySeries], returned: np.ndarray | None = None,
          model_error: Mapping[str, float] | None = None,
          overrides: Mapping[str, float] | None = None) -> list[Check]:
    """One check per quantity, worst first; ``returned`` masks the steps whose
    predictions the run returned as measured (None: all)."""
    checks = [_check(s, returned, (model_error or {}).get(q), overrides)
              for q, s in series.items()]
    return sorted((c for c in checks if c is not None), key=_severity)


def _severity(check: Check) -> tuple:
    """Sort key: worst level first, then the larger ε / scale; among ok checks forces
    first (the number a person looks for)."""
    level = LEVELS.index(check.level)
    if level == 0:
        return (0, QUANTITIES.index(check.quantity) != 1, 0)
    return (-level, False, -(check.grade.ratio or 0))


def _p95(values) -> float | None:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return float(np.percentile(values, 95)) if values.size else None


def _check(s: QuantitySeries, returned, model_error, overrides) -> Check | None:
    keep = np.isfinite(s.eps) & (returned if returned is not None else True)
    if not keep.any():
        return None
    eps, rms, step = s.eps[keep], s.rms[keep], s.step[keep]
    finite_rms = rms[np.isfinite(rms)]
    main = grade(s.quantity, _p95(eps), float(np.median(finite_rms)) if finite_rms.size
                 else None, model_error, overrides, relative=_p95(s.relative[keep]),
                 share=_p95(s.share[keep]))
    worst = int(np.argmax(eps))
    spike = grade(s.quantity, float(eps[worst]), rms[worst], model_error, overrides)
    level = main.level
    if level == "ok" and spike.level == "problem":
        level = "caution"
    flagged = grade_levels(s.quantity, eps, rms, model_error, overrides) > 0
    return Check(main, QUANTITY[s.quantity].title, EXPLANATIONS[s.quantity], s.unit,
                 int(len(eps)), float(eps[worst]), int(step[worst]), level, spike.level,
                 float(flagged.mean()),
                 int(step[np.argmax(flagged)]) if flagged.any() else None)


# ------------------------------------------------------------------ channels in words


def channel_words(irrep: Irrep | str, of: str = "") -> str:
    """An irrep channel in words, its label in brackets: ``a part that stays fixed in
    the lab frame (0,+1)``; ``of``: whose part (``the traceless stress``)."""
    irrep = Irrep.coerce(irrep)
    whose = f" of {of}" if of else ""
    if irrep.l == 0:
        text = f"a part{whose} that stays fixed in the lab frame"
        if irrep.sigma < 0:
            text += " but flips sign under reflections"
    elif irrep.l == 1:
        text = f"a part{whose} that rotates like a vector"
        if irrep.sigma < 0:
            text += " but has the wrong sign under reflections (an axial vector)"
    else:
        text = f"a part{whose} that rotates like an l = {irrep.l} tensor"
        if irrep.sigma < 0:
            text += " with the wrong sign under reflections"
    return f"{text} {irrep}"


# ------------------------------------------------------------------ the verdict


@dataclass
class Action:
    """What to do: one sentence, a runnable line, what it costs, cheaper options."""

    text: str
    code: str | None = None
    cost: str | None = None
    alternatives: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {"text": self.text, "code": self.code, "cost": self.cost,
                "alternatives": list(self.alternatives)}

    def __str__(self) -> str:
        parts = [self.text]
        if self.code:
            parts.append(self.code + (f"  # {self.cost}" if self.cost else ""))
        if self.alternatives:
            parts.append("Other options: " + "; ".join(self.alternatives) + ".")
        return " ".join(parts) if not self.code else "\n".join(parts)


@dataclass
class Flagged:
    """Steps the monitor graded problem during the run, and why."""

    count: int
    steps: list            # every flagged step
    by_quantity: dict      # quantity -> flagged steps of that quantity
    first_why: str | None = None   # the problem at the first flagged step, in words

    def to_json(self) -> dict:
        return {"count": self.count, "steps": list(self.steps),
                "by_quantity": {q: list(v) for q, v in self.by_quantity.items()},
                "first_why": self.first_why}


@dataclass(frozen=True)
class Reason:
    """One ranked reason: its level, the statement (every number from the Grade) and the
    details (statistic, rules, spike, flagged steps, channel); ``str``: the sentence."""

    level: str
    statement: str
    details: str = ""

    def __str__(self) -> str:
        if not self.level:
            return self.statement
        return f"{self.level}: {self.statement}" + (f" {self.details}" if self.details
                                                     else "") + "."


@dataclass
class Verdict:
    level: str
    headline: str
    reasons: list
    action: Action
    notes: list
    judged: str
    checks: list            # [Check], worst first

    def to_json(self) -> dict:
        return {"level": self.level, "headline": self.headline,
                "reasons": [str(r) for r in self.reasons], "action": str(self.action),
                "what_to_do": self.action.to_json(), "notes": list(self.notes),
                "judged": self.judged, "checks": [c.to_json() for c in self.checks]}


def verdict(checks: list[Check], run, contamination: Mapping | None = None,
            averaged_from: int | None = None, flagged: Flagged | None = None,
            cost=None) -> Verdict:
    """Level, headline (worst quantity and its number), ranked reasons, one action.

    ``run``: the :class:`~.summary.RunInfo`; ``averaged_from``: first step from which the
    run returned O(3)-averaged predictions (their ε is the base model's; ``checks`` then
    judge only the earlier steps, or all steps for information when every step was
    averaged); ``cost``: :class:`~.summary.Cost` of the remedies."""
    mode = run.metadata.get("mode", "monitor")
    notes = _notes(run, flagged)
    if not checks:
        return Verdict("ok", "no finite ε in the log", [], action_for("ok", run, cost),
                       notes, mode, [])
    reasons = [_reason(c, (contamination or {}).get(c.quantity)) for c in checks]
    fewest = min(c.n for c in checks)
    if fewest < FEW_STEPS:
        notes.insert(0, f"Only {fewest} monitored step(s): too few to judge a run by. For "
                     "short runs (a relaxation, a few hundred MD steps) monitor with every=1 "
                     "or a fixed every=N; the default overhead budget (every='auto') "
                     "monitors one step in tens to hundreds.")
    level = checks[0].level
    headline = statement(checks[0].grade)
    action = action_for(level, run, cost)
    averaged_all = averaged_from is not None and averaged_from <= run.first_step
    if averaged_all:
        reasons.insert(0, Reason("", "The run returned O(3)-averaged predictions "
                                 f"(quadrature degree {run.metadata.get('average_degree', '?')}"
                                 "): exactly symmetric up to quadrature error. The ε below "
                                 "was measured on the base model."))
        headline = f"returned predictions O(3)-averaged; base model {headline}"
        action = Action("No action needed for this run's results; the base model alone "
                        f"would be '{level}', so keep mode='average' for it.")
        level = "ok"
    elif averaged_from is not None:
        notes.insert(0, f"From step {averaged_from} on the run returned O(3)-averaged "
                     "predictions (exactly symmetric); the verdict judges the steps before.")
    elif mode == "purified":
        notes.insert(0, "ε was measured on the purified predictions the run returned.")
    return Verdict(level, headline, reasons, action, list(dict.fromkeys(notes)),
                   "average" if averaged_all else mode, checks)


def _reason(c: Check, contamination) -> Reason:
    g = c.grade
    details = f"(95th percentiles over {c.n} step{'s' if c.n != 1 else ''}"
    if g.rules:
        details += f"; {', '.join(rule_words(g, r) for r in g.rules)}"
    details += ")"
    if c.level != "ok" and g.level == "ok":
        details += (f"; a spike of {number(c.max)} {pretty_unit(c.unit)} at step "
                    f"{c.max_step} grades '{c.level_max}'")
    if c.first_step_flagged is not None and c.level != "ok":
        details += (f"; {percent(c.fraction_steps_flagged)} % of steps above the "
                    f"caution limits, first at step {c.first_step_flagged}")
    if c.level != "ok" and contamination is not None and contamination.top:
        top = contamination.top[0]
        of = "the traceless stress" if contamination.traceless else ""
        details += (f"; the breaking sits mostly in {channel_words(top['irrep'], of)} "
                    f"({percent(top['mean_power'])} % of "
                    f"{'its' if of else POWER_OF[c.quantity]} power on full-orbit steps)")
    return Reason(c.level, statement(g), details)


#: fewer monitored steps than this get a note that the verdict rests on too few
FEW_STEPS = 10


def _notes(run, flagged: Flagged | None) -> list[str]:
    notes = []
    if run.full_orbit_steps == 0:
        notes.append("No full-orbit steps: ε comes from random-subset estimates only; "
                     "contamination and character spectra are not available.")
    if flagged is not None and flagged.count:
        steps = ", ".join(str(s) for s in flagged.steps[:LISTED_STEPS])
        more = f" and {flagged.count - LISTED_STEPS} more" if flagged.count > LISTED_STEPS \
            else ""
        by = {q: v for q, v in flagged.by_quantity.items() if v}
        if len(by) == 1 and next(iter(by.values())) == list(flagged.steps):
            why = f" (all by {next(iter(by))})"
        else:
            why = " (" + "; ".join(f"{q} at {_step_list(v)}" for q, v in by.items()) + ")" \
                if by else ""
        first = f" At step {flagged.steps[0]}: {flagged.first_why}." if flagged.first_why \
            else ""
        notes.append(f"The monitor flagged {flagged.count} step(s) as problem during the "
                     f"run: step {steps}{more}{why}.{first}")
    return notes


def _step_list(steps) -> str:
    shown = ", ".join(str(s) for s in steps[:LISTED_STEPS])
    return shown + (f" and {len(steps) - LISTED_STEPS} more" if len(steps) > LISTED_STEPS
                    else "")


ACTION_TEXT = {
    "ok": "No action needed: symmetry breaking is small against the error it is judged by.",
    "caution": "Compare the observables you care about with a run that returns exactly "
               "symmetric (O(3)-averaged) predictions before relying on them:",
    "problem": "Do not use these results as they are; rerun with exactly symmetric "
               "(O(3)-averaged) predictions:",
}


def action_for(level: str, run, cost=None) -> Action:
    """The action for ``level``: a runnable line with its cost for this run's model and
    size (``cost``: :class:`~.summary.Cost`), and the cheaper options."""
    if level == "ok":
        return Action(ACTION_TEXT["ok"])
    code = 'atoms.calc = SymmetryMonitor(base, mode="average")'
    alternatives = ['mode="random_frame" (one model call per step in a random O(3) frame: '
                    'symmetric on average, not step by step)']
    if run.metadata.get("mode") != "purified" and _metatomic(run.metadata):
        alternatives.append('mode="purified" with a readout from `symmon purify` (no '
                            'extra model calls; needs the model\'s last-layer features)')
    if level == "problem":
        alternatives.append("retrain the model with rotational augmentation")
    return Action(ACTION_TEXT[level], code, None if cost is None else cost.words(),
                  alternatives)


def _metatomic(metadata) -> bool:
    """Whether the run's model is a metatomic model file (``symmon purify MODEL.pt`` can
    fit it a purified readout)."""
    return metadata.get("base_calculator") == "MetatomicCalculator" or \
        str(metadata.get("model_file") or "").endswith(".pt")
