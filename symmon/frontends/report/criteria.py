"""The verdict: each monitored quantity graded ok / caution / problem on the one
thresholds table (:mod:`symmon.monitoring.thresholds`), ranked, with one action.

Per quantity ``q`` the statistic judged is the 95th percentile over monitored steps of
its per-atom-normalised ε (:mod:`.series`), with the median orbit RMS as the size of
the output; :func:`symmon.monitoring.thresholds.grade` compares it with the model's own
error (``--model-error``) or a typical MLIP error, and the relative ε with
``eps / max(rms, floor)`` (no flag from dividing by a vanishing force or stress).
A single step whose ε alone would grade *problem* makes an *ok* quantity *caution*.

What is judged is what the run returned: in ``mode="average"`` the returned
predictions are the O(3) average (exactly symmetric up to quadrature error) while the
logged ε is the base model's; in ``mode="purified"`` the logged ε is that of the
purified predictions the run returned.
"""

from __future__ import annotations

import json
import math
import os
from typing import Mapping

import numpy as np

from ...core.outputs import EV_PER_A3_IN_GPA, pretty_unit
from ...monitoring.thresholds import (FLOORS, LEVELS, REFERENCE_ERRORS, grade, grade_levels,
                                      rule)
from .numbers import fmt, percent
from .series import QUANTITIES, QuantitySeries

#: what a person calls each check, and what it means
CHECK_NAMES = {"energy": "Energy ε per atom", "forces": "Forces ε per atom (RMS over atoms)",
               "stress": "Stress ε"}
EXPLANATIONS = {
    "energy": "how much the energy per atom changes when the structure is rotated or "
              "reflected, against the model's energy error",
    "forces": "how much each atom's force changes (beyond rotating with the structure) "
              "under rotations and reflections, RMS over atoms, against the model's force "
              "error",
    "stress": "how much the stress changes (beyond rotating with the cell) under "
              "rotations and reflections, against the model's stress error",
}
SIZE_NAMES = {"energy": "|E| per atom", "forces": "|F|", "stress": "|σ|"}
PER_ATOM_WORDS = {"energy": "", "forces": " per atom", "stress": ""}
ERROR_NOUNS = {"energy": "energy", "forces": "force", "stress": "stress"}
ACTIONS = {
    "ok": "No action needed: symmetry breaking is small against the error it is judged by.",
    "caution": "Compare the observables you care about with a run in mode='average' "
               "(exactly symmetric predictions) before relying on them.",
    "problem": "Do not use these results as they are: rerun with mode='average' "
               "(O(3)-averaged predictions), or retrain the model with rotational "
               "augmentation.",
}


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
            unit = entry.get("unit", _default_unit(q))
            factor = _EVAL_UNITS[q].get(unit)
            if factor is None:
                raise ValueError(f"{path}: {q} RMSE in unit {unit!r}; expected one of "
                                 f"{sorted(_EVAL_UNITS[q])}")
            errors[q] = float(entry["rmse"]) * factor
    return errors


def _default_unit(q: str) -> str:
    return next(iter(_EVAL_UNITS[q]))


def judge(series: Mapping[str, QuantitySeries], returned: np.ndarray | None = None,
          model_error: Mapping[str, float] | None = None,
          overrides: Mapping[str, float] | None = None) -> list[dict]:
    """One check per quantity, worst first; ``returned`` masks the steps whose
    predictions the run returned as measured (None: all)."""
    checks = [_check(s, returned, (model_error or {}).get(q), overrides)
              for q, s in series.items()]
    checks = [c for c in checks if c is not None]
    return sorted(checks, key=_severity)


def _severity(check: dict) -> tuple:
    """Sort key: worst level first, then the larger ε / scale; among ok checks forces
    first (the number a person looks for)."""
    level = LEVELS.index(check["level"])
    if level == 0:
        return (0, QUANTITIES.index(check["quantity"]) != 1, 0)
    return (-level, False, -(check["ratio"] or 0))


def _check(s: QuantitySeries, returned, model_error, overrides) -> dict | None:
    keep = np.isfinite(s.eps) & (returned if returned is not None else True)
    if not keep.any():
        return None
    eps, rms, step = s.eps[keep], s.rms[keep], s.step[keep]
    finite_rms = rms[np.isfinite(rms)]
    rms_median = float(np.median(finite_rms)) if finite_rms.size else None
    p95 = float(np.percentile(eps, 95))
    judged = rule(s.quantity, model_error, overrides)
    relative = eps / np.maximum(np.where(np.isfinite(rms), rms, 0.0), judged.floor)
    main = grade(s.quantity, p95, rms_median, model_error, overrides,
                 relative=float(np.percentile(relative, 95)))
    worst = int(np.argmax(eps))
    spike = grade(s.quantity, float(eps[worst]), _finite(rms[worst]), model_error, overrides)
    level = main.level
    if level == "ok" and spike.level == "problem":
        level = "caution"
    flagged = grade_levels(s.quantity, eps, rms, model_error, overrides) > 0
    return {
        "quantity": s.quantity, "name": CHECK_NAMES[s.quantity],
        "explanation": EXPLANATIONS[s.quantity], "unit": s.unit, "statistic": "p95",
        "n": int(len(eps)), "eps": p95, "max": float(eps[worst]),
        "max_step": int(step[worst]), "rms": rms_median, "floor": judged.floor, "scale": main.scale,
        "scale_source": main.scale_source, "ratio": main.ratio, "relative": main.relative,
        "relative_judged": judged.judged,
        "level": level, "level_p95": main.level, "level_max": spike.level,
        "reasons": list(main.reasons), "limits": _plain(main.limits),
        "dominated": main.dominated,
        "fraction_steps_flagged": float(flagged.mean()),
        "first_step_flagged": int(step[np.argmax(flagged)]) if flagged.any() else None,
    }


def _finite(x) -> float | None:
    return float(x) if np.isfinite(x) else None


def _plain(limits: Mapping) -> dict:
    """``{"ratio": {"caution": c, "problem": p}, "relative": {...}}`` for the JSON."""
    return {name: {"caution": lim.caution, "problem": lim.problem}
            for name, lim in limits.items()}


def verdict(checks: list[dict], run: dict, contamination: Mapping | None = None,
            averaged_from: int | None = None) -> dict:
    """Level, headline (worst quantity and its number), ranked reasons, one action.

    ``averaged_from``: first step from which the run returned O(3)-averaged predictions
    (their ε is the base model's; ``checks`` then judge only the earlier steps, or all
    steps for information when every step was averaged)."""
    mode = run["metadata"].get("mode", "monitor")
    notes = _notes(run)
    if not checks:
        return {"level": "ok", "headline": "no finite ε in the log", "reasons": [],
                "action": ACTIONS["ok"], "notes": notes, "judged": mode, "checks": []}
    reasons = [_reason(c, (contamination or {}).get(c["quantity"])) for c in checks]
    fewest = min(c["n"] for c in checks)
    if fewest < FEW_STEPS:
        notes.insert(0, f"Only {fewest} monitored step(s): too few to judge a run by. For "
                     "short runs (a relaxation, a few hundred MD steps) monitor with every=1 "
                     "or a fixed every=N; the default overhead budget (every='auto') "
                     "monitors one step in tens to hundreds.")
    level = checks[0]["level"]
    headline = _sentence(checks[0])
    action = ACTIONS[level]
    averaged_all = averaged_from is not None and averaged_from <= run["first_step"]
    if averaged_all:
        reasons.insert(0, "The run returned O(3)-averaged predictions (quadrature degree "
                       f"{run['metadata'].get('average_degree', '?')}): exactly symmetric up "
                       "to quadrature error. The ε below was measured on the base model.")
        headline = f"returned predictions O(3)-averaged; base model {headline}"
        action = ("No action needed for this run's results; the base model alone would be "
                  f"'{level}', so keep mode='average' for it.")
        level = "ok"
    elif averaged_from is not None:
        notes.insert(0, f"From step {averaged_from} on the run returned O(3)-averaged "
                     "predictions (exactly symmetric); the verdict judges the steps before.")
    elif mode == "purified":
        notes.insert(0, "ε was measured on the purified predictions the run returned.")
    return {"level": level, "headline": headline, "reasons": reasons, "action": action,
            "notes": notes, "judged": "average" if averaged_all else mode, "checks": checks}


def _sentence(c: dict) -> str:
    """``forces: ε 0.06 eV/Å per atom, 8 % of |F|, comparable to a typical MLIP error``."""
    q, unit = c["quantity"], pretty_unit(c["unit"])
    text = f"{q}: ε {fmt(c['eps'])} {unit}{PER_ATOM_WORDS[q]}"
    if c.get("dominated") and c["rms"] is not None:  # the third rule: say its number
        share = c["eps"] / max(c["rms"], REFERENCE_ERRORS[q])
        text += f", {percent(share)} % of {SIZE_NAMES[q]} itself"
    elif c["relative"] is not None:
        size = SIZE_NAMES[q]
        floor = c.get("floor", FLOORS[q])
        if c["rms"] is None or c["rms"] < floor:
            size = f"{SIZE_NAMES[q]} (floored at {fmt(floor)} {unit})"
        text += f", {percent(c['relative'])} % of {size}"
    whose = "the model's" if c["scale_source"] == "model error" else "a typical MLIP"
    return f"{text}, {_comparison(c)} {whose} {ERROR_NOUNS[q]} error ({fmt(c['scale'])} {unit})"


def _comparison(c: dict) -> str:
    """Words for ``ratio = eps / scale``: *well below* while the ratio is ok by the
    table, then the fraction, *comparable to* up to twice, else the factor."""
    caution, _ = _ratio_limits(c)
    ratio = c["ratio"]
    if ratio <= caution:
        return "well below"
    if ratio < 1:
        return f"{percent(ratio)} % of"
    return "comparable to" if ratio <= 2 else f"{fmt(ratio, 2)}× the size of"


def _ratio_limits(c: dict) -> tuple[float, float]:
    limits = c["limits"]["ratio"]
    return limits["caution"], limits["problem"]


def _reason(c: dict, contamination: Mapping | None) -> str:
    text = f"{c['level']}: {_sentence(c)} (95th percentile of {c['n']} steps)"
    if c["level"] != "ok" and c["level_p95"] == "ok":
        text += (f"; a spike of {fmt(c['max'])} {pretty_unit(c['unit'])} at step "
                 f"{c['max_step']} grades '{c['level_max']}'")
    if c["first_step_flagged"] is not None and c["level"] != "ok":
        text += (f"; {percent(c['fraction_steps_flagged'])} % of steps above the "
                 f"caution limits, first at step {c['first_step_flagged']}")
    top = (contamination or {}).get("top_irreps") or []
    if c["level"] != "ok" and top:
        text += f"; the breaking sits mostly in the {top[0]['irrep']} channel"
    return text + "."


#: fewer monitored steps than this get a note that the verdict rests on too few
FEW_STEPS = 10


def _notes(run: dict) -> list[str]:
    notes = []
    if run["full_orbit_steps"] == 0:
        notes.append("No full-orbit steps: ε comes from random-subset estimates only; "
                     "contamination and character spectra are not available.")
    if run["violation_steps"]:
        notes.append(f"The monitor flagged {run['violation_steps']} step(s) during the run.")
    return notes
