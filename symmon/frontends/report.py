"""``symmon report``: figures and a verdict from symmon logs.

One call, :func:`run_report`, turns one log (or several shards of one run) into a
self-contained HTML page, a JSON summary or terminal tables.  The pieces are usable on
their own:

* :func:`summarize` -> JSON-able dict (run, ε statistics, contamination, worst steps and
  atoms, verdict); see ``docs/report.md`` for the schema and the verdict rules;
* :func:`make_figures` -> ``{name: matplotlib Figure}`` (Agg, no pyplot state);
* :func:`render_text`, :func:`render_html`.

Memory: scalar series (8 bytes per step each) are read one at a time; per-atom arrays
and spectra are only ever read as evenly strided samples of bounded size
(:data:`SAMPLE_BUDGET` values), and plotted curves hold at most :data:`MAX_POINTS`
points.  Unreadable or non-symmon files raise :class:`symmon.io.log.LogFormatError`
(a ``ValueError``; the CLI exits with code 2).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..io.log import LogFormatError, LogReader

__all__ = ["run_report", "summarize", "make_figures", "render_text", "render_html",
           "render_json", "resolve_thresholds", "CRITERIA", "FORMATS"]

FORMATS = ("html", "json", "text")
QUANTITIES = ("energy", "forces", "stress")
#: representation kind of each monitored output (targets of its character spectrum)
_KINDS = {"energy": "scalar", "forces": "vector", "stress": "symmetric_tensor"}
LEVELS = ("ok", "caution", "problem")
MAX_POINTS = 5000            # points per plotted curve
MAX_HEATMAP_COLUMNS = 1500   # full-orbit steps shown in a spectrum heatmap
SAMPLE_BUDGET = 2_000_000    # values per strided read of per-atom / spectrum arrays
SPECTRUM_FLOOR = 1e-10       # lower end of the c~ colour scale
EPS_FLOOR = 1e-17            # plotted in place of ε <= 0 on log axes
NEGLIGIBLE_POWER = 1e-12     # mean c~ below this is numerical zero
TOP_STEPS = 5
TOP_ATOMS = 5
TYPICAL_FORCE_ERROR = (0.05, 0.1)  # eV/angstrom, typical MLIP force RMSE
EV_A3_TO_GPA = 160.21766208
ERROR_SUFFIXES = ("_error", "_model_error")  # optional reference model errors


@dataclass(frozen=True)
class Criterion:
    """One verdict check: the 95th percentile of ``observable`` (divided by the atom
    count when ``per_atom``) against a caution and a problem limit."""

    name: str
    quantity: str
    observable: str
    label: str
    unit: str
    caution: float
    problem: float
    meaning: str
    per_atom: bool = False


CRITERIA = (
    Criterion("forces_rel_eps", "forces", "forces_rel_eps", "forces relative ε", "1",
              0.01, 0.05, "fraction of the typical force magnitude that changes when the "
              "structure is rotated or reflected"),
    Criterion("forces_eps", "forces", "forces_eps", "forces ε", "eV/Å", 0.01, 0.05,
              "absolute force error from symmetry breaking; typical MLIP force errors are "
              "0.05-0.1 eV/Å, so ε above 0.05 eV/Å is as large as the model's own error"),
    Criterion("energy_rel_eps", "energy", "energy_rel_eps", "energy relative ε", "1",
              0.001, 0.01, "fraction of the energy that changes under rotation "
              "(0.1 % of a cohesive energy of ~3.5 eV/atom is ~3.5 meV/atom)"),
    Criterion("energy_eps_per_atom", "energy", "energy_eps", "energy ε per atom", "eV/atom",
              0.001, 0.005, "typical MLIP energy errors are 1-5 meV/atom", per_atom=True),
    Criterion("stress_rel_eps", "stress", "stress_rel_eps", "stress relative ε", "1",
              0.01, 0.05, "fraction of the stress that changes under rotation"),
    Criterion("stress_eps", "stress", "stress_eps", "stress ε", "eV/Å³", 6e-4, 3e-3,
              "0.1 GPa / 0.5 GPa; typical MLIP stress errors are a few tenths of a GPa"),
    Criterion("forces_contamination", "forces", "forces_contamination",
              "forces contamination", "1", 1e-4, 2.5e-3,
              "power fraction outside (1,+1); about (relative ε)², so these limits match "
              "1 % and 5 % relative ε"),
    Criterion("energy_contamination", "energy", "energy_contamination",
              "energy contamination", "1", 1e-6, 1e-4,
              "power fraction outside (0,+1); the squares of the energy relative-ε limits"),
    Criterion("stress_contamination", "stress", "stress_contamination",
              "stress contamination", "1", 1e-4, 2.5e-3,
              "power fraction outside (0,+1)+(2,+1); the squares of the stress relative-ε "
              "limits"),
)
_CRITERIA = {c.name: c for c in CRITERIA}

HEADLINES = {
    "ok": "Symmetry breaking is negligible for this run.",
    "caution": "Symmetry breaking is measurable: check whether it matters for your "
               "observables.",
    "problem": "Symmetry breaking is large enough to affect this run's results.",
}

CAPTIONS = {
    "eps_time": "Relative equivariance error ε/RMS over the run (log scale): random-subset "
                "estimates with their standard-error band, exact full-orbit steps as black "
                "dots, caution/problem limits dashed.",
    "eps_hist": "Distribution of relative ε over all monitored steps (left) and of the "
                "absolute force ε compared with typical MLIP force errors (right).",
    "spectra": "Character spectra c̃(l,σ) on full-orbit steps (log colour); ★ marks the "
               "target irreps, every other bright row is symmetry breaking in that channel.",
    "per_atom": "Force ε of each atom (median and 5-95 % range over sampled steps, left) "
                "and per element (right).",
    "eps_vs_error": "Equivariance error against the logged model error of the same output; "
                    "points above the diagonal mean symmetry breaking exceeds the model error.",
}


# ============================================================== entry point


def _threshold(text: str):
    import argparse

    name, _, value = text.partition("=")
    if not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. forces=0.05), got {text!r}")
    return name.strip(), float(value)


def add_report_arguments(parser) -> None:
    parser.add_argument("logs", nargs="+", help="log file(s); several shards are merged")
    parser.add_argument("-o", "--output", default=None,
                        help="output file (default: LOG.html / stdout for json and text)")
    parser.add_argument("--format", choices=FORMATS, default="html")
    parser.add_argument("--png-dir", default=None, help="also save the figures as PNG here")
    parser.add_argument("--threshold", type=_threshold, action="append", default=None,
                        metavar="NAME=VALUE",
                        help="verdict threshold on relative eps or contamination, e.g. "
                        "forces_rel_eps=0.02 (repeatable)")


def report_command(args) -> int:
    """``symmon report``."""
    return run_report(args.logs, output=args.output, fmt=args.format, png_dir=args.png_dir,
                      thresholds=args.threshold)


def run_report(paths, output: str | None = None, fmt: str = "html",
               png_dir: str | None = None, thresholds=None) -> int:
    """Summarise log(s) ``paths`` and write the report; returns the exit code 0.

    ``fmt`` is ``"html"`` (default output ``<first log stem>.html`` next to the log),
    ``"json"`` or ``"text"`` (default: stdout).  ``png_dir`` also saves every figure as
    PNG.  ``thresholds``: overrides of the verdict limits, see :func:`resolve_thresholds`.
    Raises ``ValueError`` (``LogFormatError`` for unreadable or non-symmon logs) and
    ``FileNotFoundError``; the CLI turns both into exit code 2.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    paths = [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else list(paths)
    limits = resolve_thresholds(thresholds)
    with _open_reader(paths) as reader:
        summary = _guarded(paths, lambda: _summarize(reader, limits))
        need_figures = fmt == "html" or png_dir is not None
        figures = _guarded(paths, lambda: make_figures(reader, summary)) if need_figures else {}
    pngs = {name: figure_png(fig) for name, fig in figures.items()}  # rendered once
    for fig in figures.values():
        fig.clear()
    if png_dir is not None:
        save_pngs(pngs, png_dir)
    text = {"html": lambda: render_html(summary, pngs), "json": lambda: render_json(summary),
            "text": lambda: render_text(summary)}[fmt]()
    if output is None and fmt == "html":
        output = os.path.splitext(paths[0])[0] + ".html"
    _write_output(text, output)
    return 0


def _write_output(text: str, output: str | None) -> None:
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    with open(output, "w", encoding="utf-8") as handle:
        handle.write(text)


def _open_reader(paths: list[str]) -> LogReader:
    try:
        return LogReader(paths)
    except (OSError, KeyError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise LogFormatError(f"{', '.join(paths)}: cannot read log: {error}") from error


def _guarded(paths, action):
    """Run ``action``; damaged files (h5py OSError/KeyError) become LogFormatError."""
    try:
        return action()
    except (OSError, KeyError) as error:
        raise LogFormatError(f"{', '.join(paths)}: damaged or incomplete symmon log: "
                             f"{error}") from error


def save_pngs(figures: Mapping[str, Figure | bytes], directory: str) -> list[str]:
    """Save each figure (a Figure or PNG bytes) as ``<directory>/<name>.png``."""
    os.makedirs(directory, exist_ok=True)
    written = []
    for name, fig in figures.items():
        path = os.path.join(directory, f"{name}.png")
        with open(path, "wb") as handle:
            handle.write(fig if isinstance(fig, bytes) else figure_png(fig))
        written.append(path)
    return written


# ============================================================== thresholds


def resolve_thresholds(thresholds=None) -> dict[str, tuple[float, float]]:
    """Verdict limits ``{criterion: (caution, problem)}`` with overrides applied.

    ``thresholds`` is a dict or a list of ``(name, value)``.  ``NAME=value`` sets the
    problem limit of criterion ``NAME`` (see :data:`CRITERIA`), ``NAME_caution=value``
    its caution limit; a bare quantity (``forces=0.05``) means ``forces_rel_eps``.
    ``NAME=inf`` disables a check (unless ``NAME_caution`` is also given).  A caution
    limit above the problem limit is lowered to it.
    """
    limits = {c.name: [c.caution, c.problem] for c in CRITERIA}
    cautions_set = set()
    items = thresholds.items() if isinstance(thresholds, Mapping) else (thresholds or [])
    for key, value in items:
        name, which = _threshold_target(str(key).strip())
        value = float(value)
        if math.isnan(value) or value < 0:
            raise ValueError(f"threshold {key}={value}: must be a number >= 0 (or inf)")
        limits[name][which] = value
        if which == 0:
            cautions_set.add(name)
    for name, limit in limits.items():
        if math.isinf(limit[1]) and name not in cautions_set:
            limit[0] = math.inf  # NAME=inf switches the whole check off
    return {name: (min(c, p), p) for name, (c, p) in limits.items()}


def _threshold_target(key: str) -> tuple[str, int]:
    if key in QUANTITIES:
        key = f"{key}_rel_eps"
    which = 1
    for suffix in ("_caution", ":caution"):
        if key.endswith(suffix):
            key, which = key[: -len(suffix)], 0
    if key not in _CRITERIA:
        raise ValueError(f"unknown threshold {key!r}; known: {', '.join(_CRITERIA)} "
                         "(append _caution for the caution limit)")
    return key, which


# ============================================================== summary


def summarize(reader_or_paths, thresholds=None) -> dict:
    """JSON-able summary of a log: a :class:`LogReader`, a path or a list of shard paths."""
    limits = resolve_thresholds(thresholds)
    if isinstance(reader_or_paths, LogReader):
        return _summarize(reader_or_paths, limits)
    paths = reader_or_paths
    paths = [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else list(paths)
    with _open_reader(paths) as reader:
        return _guarded(paths, lambda: _summarize(reader, limits))


def _summarize(reader: LogReader, limits) -> dict:
    quantities = monitored_quantities(reader)
    run = _run_info(reader, quantities)
    checks = []
    eps = {}
    for q in quantities:
        eps[q], q_checks = _eps_summary(reader, q, limits, run["n_atoms"])
        checks += q_checks
    contamination = {}
    for q in quantities:
        contamination[q], q_checks = _contamination_summary(reader, q, limits)
        checks += q_checks
    summary = {
        "schema": "symmon-report/1",
        "logs": list(reader.paths),
        "run": run,
        "eps": eps,
        "contamination": contamination,
        "worst_steps": _worst_steps(reader, quantities),
        **_per_atom_summary(reader),
        "model_error": _model_error_summary(reader, quantities),
        "thresholds": _threshold_table(limits, quantities),
    }
    order = [c.name for c in CRITERIA]
    summary["verdict"] = _verdict(sorted(checks, key=lambda c: order.index(c["name"])), run)
    return _jsonable(summary)


def monitored_quantities(reader: LogReader) -> list[str]:
    """Outputs with ε in the log; LogFormatError when the log holds none."""
    names = set(reader.observable_names)
    quantities = [q for q in QUANTITIES if f"{q}_rel_eps" in names and f"{q}_eps" in names]
    if not quantities:
        raise LogFormatError(
            f"{', '.join(reader.paths)}: symmon log without monitor diagnostics (no "
            f"<quantity>_eps / _rel_eps observables; found {sorted(names)})")
    return quantities


def _read(reader: LogReader, name: str, stride: int | None = None):
    """``(step, time, value)`` of ``name`` with float values (empty if absent)."""
    if name not in reader.observable_names:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    step, time, value = reader.observable(name, stride=stride)
    return step, time, value.astype(np.float64, copy=False)


def _sample_stride(count: int, row_size: int, budget: int) -> int:
    """Stride that keeps a strided read of ``count`` rows within ``budget`` values."""
    return max(1, math.ceil(count * max(1, row_size) / budget))


def _run_info(reader: LogReader, quantities) -> dict:
    ref = f"{quantities[-1] if 'forces' not in quantities else 'forces'}_rel_eps"
    step, time, _ = _read(reader, ref)
    if len(step) == 0:
        raise LogFormatError(f"{', '.join(reader.paths)}: log holds no monitored step yet "
                             "(nothing flushed)")
    full = _read(reader, "full_orbit")[2]
    violations = _read(reader, "violation")[2]
    finite_time = time[np.isfinite(time)]
    meta = reader.metadata
    return {
        "n_atoms": int(len(reader.species)),
        "composition": _composition(reader.species),
        "periodic": bool(all(reader.pbc)),
        "quantities": list(quantities),
        "steps_monitored": int(len(step)),
        "full_orbit_steps": int(np.sum(full == 1)),
        "first_step": int(step[0]),
        "last_step": int(step[-1]),
        "time_start_ps": float(finite_time.min()) if finite_time.size else None,
        "time_end_ps": float(finite_time.max()) if finite_time.size else None,
        "has_time": bool(finite_time.size == len(time)),
        "violation_steps": int(np.sum(violations == 1)),
        "metadata": {k: meta.get(k) for k in (
            "model_file", "model_sha256", "base_calculator", "mode", "every", "full_every",
            "random_rotations", "degree", "l_max", "seed", "thresholds", "symmon_version")
            if k in meta},
    }


def _stats(values: np.ndarray) -> dict:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"n": 0, "mean": None, "median": None, "p95": None, "max": None}
    return {"n": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)),
            "p95": float(np.percentile(v, 95)), "max": float(v.max())}


def _eps_summary(reader, q, limits, n_atoms) -> tuple[dict, list]:
    step, time, eps = _read(reader, f"{q}_eps")
    rel_step, rel_time, rel = _read(reader, f"{q}_rel_eps")
    err = _read(reader, f"{q}_eps_err")[2]
    out = {"unit": reader.unit(f"{q}_eps"), "abs": _stats(eps), "rel": _stats(rel),
           "eps_err_median": _stats(err)["median"]}
    if q == "energy":
        out["abs_per_atom"] = _stats(eps / n_atoms)
    if q == "stress":
        out["abs_gpa"] = _stats(eps * EV_A3_TO_GPA)
    checks = []
    for c in CRITERIA:
        if c.quantity != q or c.observable not in (f"{q}_eps", f"{q}_rel_eps"):
            continue
        if c.observable == f"{q}_eps":
            values = eps / n_atoms if c.per_atom else eps
            checks.append(_check(c, limits[c.name], step, time, values))
        else:
            checks.append(_check(c, limits[c.name], rel_step, rel_time, rel))
    return out, [ch for ch in checks if ch is not None]


def _check(c: Criterion, limit, step, time, values) -> dict | None:
    """Level of one criterion: problem if p95 > problem; caution if p95 > caution or
    max > problem; else ok.  Also when (first step above) and how often."""
    finite = np.isfinite(values)
    if not finite.any():
        return None
    step, time, v = step[finite], time[finite], values[finite]
    caution, problem = limit
    p95, vmax = float(np.percentile(v, 95)), float(v.max())
    level = "problem" if p95 > problem else (
        "caution" if p95 > caution or vmax > problem else "ok")
    limit_crossed = problem if vmax > problem else caution
    above = np.flatnonzero(v > limit_crossed)
    first = int(above[0]) if above.size else None
    return {
        "name": c.name, "quantity": c.quantity, "label": c.label, "unit": c.unit,
        "statistic": "p95", "value": p95, "max": vmax, "caution": caution,
        "problem": problem, "level": level, "n": int(v.size),
        "fraction_above_caution": float(np.mean(v > caution)),
        "fraction_above_problem": float(np.mean(v > problem)),
        "first_step_above": int(step[first]) if first is not None else None,
        "first_time_above_ps": float(time[first]) if first is not None else None,
        "limit_crossed": limit_crossed if first is not None else None,
    }


def _contamination_summary(reader, q, limits) -> tuple[dict | None, list]:
    step, time, cont = _read(reader, f"{q}_contamination")
    if len(step) == 0:
        return None, []
    spectrum = _spectrum_mean(reader, q)
    out = {**_stats(cont), "residual_mean": _stats(_read(reader, f"{q}_residual")[2])["mean"],
           "targets": [_irrep_name(t) for t in target_irreps(q)], **spectrum}
    c = _CRITERIA[f"{q}_contamination"]
    check = _check(c, limits[c.name], step, time, cont)
    return out, [check] if check else []


def target_irreps(q: str) -> list[tuple[int, int]]:
    """Irreps ``(l, sigma)`` an exactly equivariant output ``q`` occupies."""
    from ..core.representations import get_representation

    return [(ir.l, ir.sigma) for ir in get_representation(_KINDS[q]).targets]


def _irrep_name(irrep) -> str:
    l, sigma = int(irrep[0]), int(irrep[1])
    return f"({l},{'+' if sigma > 0 else '-'}1)"


def _spectrum_mean(reader, q) -> dict:
    """Mean c~ per irrep (strided sample of full-orbit steps) and the top off-target irreps."""
    name = f"{q}_spectrum"
    labels = reader.labels(name) if name in reader.observable_names else None
    n = reader.count(name) if labels is not None else 0
    if n == 0:
        return {"mean_spectrum": {}, "top_irreps": []}
    stride = _sample_stride(n, len(labels), SAMPLE_BUDGET)
    values = _read(reader, name, stride=stride)[2]
    mean = np.nanmean(values, axis=0)
    targets = set(target_irreps(q))
    off_target = [(float(p), tuple(int(x) for x in lab)) for p, lab in zip(mean, labels)
                  if tuple(int(x) for x in lab) not in targets and p > NEGLIGIBLE_POWER]
    off_target.sort(reverse=True)
    return {
        "mean_spectrum": {_irrep_name(lab): float(p) for p, lab in zip(mean, labels)},
        "top_irreps": [{"irrep": _irrep_name(lab), "l": lab[0], "sigma": lab[1],
                        "mean_power": p} for p, lab in off_target[:3]],
    }


def _lookup(step_ref, steps, values) -> np.ndarray:
    """Values at ``step_ref`` (first row with that step; NaN where missing)."""
    if len(steps) == 0:
        return np.full(len(step_ref), np.nan)
    idx = np.clip(np.searchsorted(steps, step_ref), 0, len(steps) - 1)
    return np.where(steps[idx] == step_ref, values[idx], np.nan)


def _worst_steps(reader, quantities) -> list[dict]:
    """Top steps by forces relative ε (or the first monitored quantity)."""
    key = "forces" if "forces" in quantities else quantities[0]
    step, time, rel = _read(reader, f"{key}_rel_eps")
    order = np.argsort(np.where(np.isfinite(rel), rel, -np.inf))[::-1][:TOP_STEPS]
    rows = [{"step": int(step[i]), "time_ps": float(time[i])} for i in order]
    if not rows:
        return rows
    others = [f"{q}_rel_eps" for q in quantities if q != key]
    columns = [f"{key}_rel_eps", f"{key}_eps", *others, "full_orbit"]
    for name in columns:
        s, _, v = _read(reader, name)
        for row, value in zip(rows, _lookup(step[order], s, v)):
            row[name] = int(value) if name == "full_orbit" and np.isfinite(value) else value
    return rows


def _per_atom_sample(reader, budget: int | None = None):
    """Evenly strided sample ``(steps, (n_rows, N) values)`` of forces_eps_per_atom,
    at most ``budget`` (default :data:`SAMPLE_BUDGET`) values."""
    budget = budget or SAMPLE_BUDGET
    name = "forces_eps_per_atom"
    if name not in reader.observable_names or reader.count(name) == 0:
        return None
    stride = _sample_stride(reader.count(name), len(reader.species), budget)
    step, _, values = _read(reader, name, stride=stride)
    return step, values


def _per_atom_summary(reader) -> dict:
    sample = _per_atom_sample(reader)
    if sample is None:
        return {"worst_atoms": [], "species_eps": {}, "per_atom_sampled_steps": 0}
    _, values = sample
    symbols = _symbols(reader.species)
    with np.errstate(all="ignore"):
        median = np.nanmedian(values, axis=0)
        p95 = np.nanpercentile(values, 95, axis=0)
        vmax = np.nanmax(values, axis=0)
    order = np.argsort(np.where(np.isfinite(median), median, -np.inf))[::-1][:TOP_ATOMS]
    worst = [{"index": int(i), "symbol": symbols[i], "median_eps": median[i],
              "p95_eps": p95[i], "max_eps": vmax[i]} for i in order]
    species = {}
    for sym in dict.fromkeys(symbols):
        cols = [i for i, s in enumerate(symbols) if s == sym]
        species[sym] = {"n_atoms": len(cols), **_stats(values[:, cols].ravel())}
    return {"worst_atoms": worst, "species_eps": species,
            "per_atom_sampled_steps": int(len(values))}


def error_observable(reader, q) -> str | None:
    """Name of a logged reference model error of output ``q`` (optional)."""
    for suffix in ERROR_SUFFIXES:
        name = f"{q}{suffix}"
        if name in reader.observable_names and reader.spec(name).shape == ():
            return name
    return None


def _model_error_summary(reader, quantities) -> dict:
    out = {}
    for q in quantities:
        name = error_observable(reader, q)
        if name is None:
            continue
        s_err, _, err = _read(reader, name)
        s_eps, _, eps = _read(reader, f"{q}_eps")
        eps_at = _lookup(s_err, s_eps, eps)
        with np.errstate(all="ignore"):
            ratio = eps_at / err
        out[q] = {"observable": name, "error": _stats(err), "eps_over_error": _stats(ratio)}
    return out


def _threshold_table(limits, quantities) -> dict:
    return {c.name: {"caution": limits[c.name][0], "problem": limits[c.name][1],
                     "unit": c.unit, "label": c.label, "meaning": c.meaning}
            for c in CRITERIA if c.quantity in quantities}


def _verdict(checks: list[dict], run: dict) -> dict:
    level = max((c["level"] for c in checks), key=LEVELS.index, default="ok")
    reasons = [_reason(c) for c in sorted(checks, key=lambda c: -LEVELS.index(c["level"]))
               if c["level"] != "ok"]
    if not reasons:
        reasons.append("All checks are below their caution limits" + _ok_detail(checks) + ".")
    notes = []
    if run["full_orbit_steps"] == 0:
        notes.append("No full-orbit steps: ε comes from random-subset estimates only; "
                     "contamination and character spectra are not available.")
    if run["violation_steps"]:
        notes.append(f"The monitor flagged {run['violation_steps']} step(s) above its own "
                     "thresholds during the run.")
    return {"level": level, "headline": HEADLINES[level], "reasons": reasons,
            "notes": notes, "checks": checks}


def _ok_detail(checks) -> str:
    forces = next((c for c in checks if c["name"] == "forces_eps"), None)
    if forces is None:
        return ""
    return (f" (forces ε 95th percentile {_fmt(forces['value'])} eV/Å, against typical "
            f"MLIP force errors of {TYPICAL_FORCE_ERROR[0]}-{TYPICAL_FORCE_ERROR[1]} eV/Å)")


def _reason(c: dict) -> str:
    unit = "" if c["unit"] == "1" else f" {c['unit']}"
    limit = c["problem"] if c["value"] > c["problem"] else c["caution"]
    text = (f"{c['label']}: 95th percentile {_fmt(c['value'])}{unit} > "
            f"{'problem' if limit == c['problem'] else 'caution'} limit {_fmt(limit)}{unit}")
    if c["value"] <= c["caution"]:  # caution only because of spikes above the problem limit
        text = (f"{c['label']}: max {_fmt(c['max'])}{unit} > problem limit "
                f"{_fmt(c['problem'])}{unit} (95th percentile {_fmt(c['value'])}{unit})")
    crossed = c["limit_crossed"]
    fraction = c["fraction_above_problem"] if crossed == c["problem"] else \
        c["fraction_above_caution"]
    when = f"; {100 * fraction:.3g} % of {c['n']} steps above {_fmt(crossed)}{unit}"
    if c["first_step_above"] is not None:
        when += f", first at step {c['first_step_above']}"
        t = c["first_time_above_ps"]
        if t is not None and np.isfinite(t):
            when += f" (t = {t:.4g} ps)"
    return text + when + "."


def pretty_unit(unit: str) -> str:
    """Unit for display: angstrom -> Å, ^3 -> ³, "1" -> ""."""
    if unit == "1":
        return ""
    return unit.replace("angstrom", "Å").replace("^3", "³").replace("^2", "²")


def _composition(species) -> dict:
    symbols = _symbols(species)
    return {s: symbols.count(s) for s in dict.fromkeys(symbols)}


def _symbols(species) -> list[str]:
    try:
        from ase.data import chemical_symbols
    except ImportError:  # pragma: no cover - ase is a dependency
        chemical_symbols = []
    return [chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z{z}"
            for z in np.asarray(species).tolist()]


def _jsonable(x):
    """Plain Python types; NaN/inf become None."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer, bool, np.bool_)):
        return bool(x) if isinstance(x, (bool, np.bool_)) else int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


# ============================================================== figures


def make_figures(reader: LogReader, summary: dict | None = None,
                 max_points: int = MAX_POINTS) -> dict[str, Figure]:
    """Report figures ``{name: Figure}``; names as in :data:`CAPTIONS` (absent when the
    log lacks the data, e.g. no ``spectra`` without full-orbit steps)."""
    summary = summary if summary is not None else summarize(reader)
    quantities = summary["run"]["quantities"]
    use_time = summary["run"]["has_time"]
    figures = {
        "eps_time": _fig_eps_time(reader, summary, quantities, use_time, max_points),
        "eps_hist": _fig_eps_hist(reader, summary, quantities),
        "spectra": _fig_spectra(reader, quantities, use_time),
        "per_atom": _fig_per_atom(reader),
        "eps_vs_error": _fig_eps_vs_error(reader, quantities, max_points),
    }
    return {name: fig for name, fig in figures.items() if fig is not None}


def _new_figure(width: float, height: float) -> Figure:
    """A detached Agg figure (no pyplot state) with constrained layout."""
    return Figure(figsize=(width, height), layout="constrained")


def _positive(values, floor=EPS_FLOOR) -> np.ndarray:
    return np.where(np.isfinite(values), np.maximum(values, floor), np.nan)


def _downsample(n: int, max_points: int) -> np.ndarray:
    """Evenly spaced row indices, at most ``max_points``."""
    return np.arange(0, n, max(1, math.ceil(n / max_points)))


def _binned(x, v, n_bins) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bin centres' x, and min, median, max of ``v`` in consecutive bins (keeps the
    spikes a plain stride would hide)."""
    size = max(1, math.ceil(len(v) / n_bins))
    n_bins = math.ceil(len(v) / size)
    padded = np.full(n_bins * size, np.nan)
    padded[: len(v)] = v
    blocks = padded.reshape(n_bins, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bins
        stats = [np.nanmin(blocks, 1), np.nanmedian(blocks, 1), np.nanmax(blocks, 1)]
    centres = x[np.minimum(np.arange(n_bins) * size + size // 2, len(x) - 1)]
    return (centres, *stats)


def _x_label(use_time: bool) -> str:
    return "time (ps)" if use_time else "MD step"


def _fig_eps_time(reader, summary, quantities, use_time, max_points) -> Figure:
    fig = _new_figure(10, 0.6 + 2.1 * len(quantities))
    axes = fig.subplots(len(quantities), 1, sharex=True, squeeze=False)[:, 0]
    limits = summary["thresholds"]
    for ax, q in zip(axes, quantities):
        _plot_eps_series(ax, reader, q, use_time, max_points)
        _threshold_lines(ax, limits.get(f"{q}_rel_eps"), horizontal=True)
        ax.set_yscale("log")
        ax.set_ylabel(f"{q}\nrelative ε")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    axes[-1].set_xlabel(_x_label(use_time))
    fig.suptitle("Equivariance error over the run", fontsize=11)
    return fig


def _plot_eps_series(ax, reader, q, use_time, max_points) -> None:
    step, time, rel = _read(reader, f"{q}_rel_eps")
    eps = _lookup(step, *_read(reader, f"{q}_eps")[::2])
    err = _lookup(step, *_read(reader, f"{q}_eps_err")[::2])
    full = _lookup(step, *_read(reader, "full_orbit")[::2]) == 1
    x = time if use_time else step.astype(float)
    with np.errstate(all="ignore"):
        band = np.where(eps > 0, rel * err / eps, 0.0)
    random_rows = np.flatnonzero(~full)
    if np.any(np.diff(step) == 0):  # overlapping shards: points, not a zigzag line
        idx = random_rows[_downsample(random_rows.size, max_points)]
        ax.plot(x[idx], _positive(rel[idx]), ".", color="C0", ms=3, label="random subset")
    elif 0 < random_rows.size <= max_points:
        xr, r, b = x[random_rows], rel[random_rows], band[random_rows]
        ax.fill_between(xr, _positive(r - b), _positive(r + b), color="C0", alpha=0.25, lw=0,
                        label="± standard error")
        ax.plot(xr, _positive(r), color="C0", lw=1.0, label="random subset")
    elif random_rows.size:
        xb, lo, med, hi = _binned(x[random_rows], rel[random_rows], max(1, max_points // 5))
        ax.fill_between(xb, _positive(lo), _positive(hi), color="C0", alpha=0.25, lw=0,
                        label=f"min–max per {math.ceil(random_rows.size / len(xb))} steps")
        ax.plot(xb, _positive(med), color="C0", lw=1.0, label="random subset (median)")
    full_rows = np.flatnonzero(full)
    if full_rows.size:
        idx = full_rows[_downsample(full_rows.size, max_points)]
        ax.plot(x[idx], _positive(rel[idx]), "o", color="k", ms=3 if idx.size < 300 else 1.5,
                label="full orbit (exact)")


def _threshold_lines(ax, limit: dict | None, horizontal: bool) -> None:
    if not limit:
        return
    for key, color in (("caution", "#d98e04"), ("problem", "#c0392b")):
        value = limit[key]
        if value is None or not math.isfinite(value) or value <= 0:
            continue
        line = ax.axhline if horizontal else ax.axvline
        line(value, color=color, ls="--", lw=1.0, label=f"{key} {value:.3g}")


def _fig_eps_hist(reader, summary, quantities) -> Figure:
    fig = _new_figure(10, 3.4)
    ax_rel, ax_abs = fig.subplots(1, 2)
    series = {q: _read(reader, f"{q}_rel_eps")[2] for q in quantities}
    edges = _log_edges(np.concatenate(list(series.values())))
    for i, (q, rel) in enumerate(series.items()):
        counts, _ = np.histogram(np.clip(rel[np.isfinite(rel)], edges[0], edges[-1]), edges)
        ax_rel.stairs(counts, edges, color=f"C{i}", lw=1.5, label=q)
    _threshold_lines(ax_rel, summary["thresholds"].get("forces_rel_eps"), horizontal=False)
    ax_rel.set(xscale="log", xlabel="relative ε", ylabel="steps",
               title="relative ε (limits: forces)")
    ax_rel.legend(fontsize=8, frameon=False)
    ax_rel.yaxis.set_major_locator(MaxNLocator(integer=True))
    if "forces" in quantities:
        _force_eps_hist(ax_abs, _read(reader, "forces_eps")[2])
    else:
        ax_abs.set_axis_off()
    return fig


def _log_edges(values, n_bins: int = 60) -> np.ndarray:
    v = values[np.isfinite(values) & (values > 0)]
    lo = math.floor(math.log10(v.min())) if v.size else -16
    hi = math.ceil(math.log10(v.max())) if v.size else 0
    hi = max(hi, lo + 1)
    return np.logspace(lo, hi, n_bins + 1)


def _force_eps_hist(ax, eps) -> None:
    lo_err, hi_err = TYPICAL_FORCE_ERROR
    edges = _log_edges(np.concatenate([eps, [hi_err]]))
    counts, _ = np.histogram(np.clip(eps[np.isfinite(eps)], edges[0], edges[-1]), edges)
    ax.stairs(counts, edges, color="C1", lw=1.5, fill=True, alpha=0.6, label="forces ε")
    ax.axvspan(lo_err, hi_err, color="grey", alpha=0.25, label="typical MLIP force error")
    ax.set(xscale="log", xlabel="forces ε (eV/Å)", ylabel="steps", title="absolute forces ε")
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _fig_spectra(reader, quantities, use_time) -> Figure | None:
    names = [q for q in quantities if f"{q}_spectrum" in reader.observable_names
             and reader.count(f"{q}_spectrum") > 0]
    if not names:
        return None
    n_rows = sum(len(reader.labels(f"{q}_spectrum")) + 1 for q in names)
    fig = _new_figure(10, 1.0 + 0.22 * n_rows + 0.5 * len(names))
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False,
                        height_ratios=[len(reader.labels(f"{q}_spectrum")) + 1 for q in names])
    mesh = None
    for ax, q in zip(axes[:, 0], names):
        mesh = _plot_spectrum(ax, reader, q, use_time)
    axes[-1, 0].set_xlabel(_x_label(use_time))
    fig.colorbar(mesh, ax=axes[:, 0].tolist(), label="c̃(l,σ) (power fraction)", shrink=0.9)
    fig.suptitle("Character projections on full-orbit steps", fontsize=11)
    return fig


def _plot_spectrum(ax, reader, q, use_time):
    name = f"{q}_spectrum"
    labels = reader.labels(name)
    stride = max(1, math.ceil(reader.count(name) / MAX_HEATMAP_COLUMNS))
    step, time, values = _read(reader, name, stride=stride)
    residual = _lookup(step, *_read(reader, f"{q}_residual")[::2])
    matrix = np.vstack([values.T, residual[None, :]])
    x = time if use_time else step.astype(float)
    mesh = ax.pcolormesh(_cell_edges(x), np.arange(len(matrix) + 1),
                         np.clip(np.nan_to_num(matrix, nan=SPECTRUM_FLOOR), SPECTRUM_FLOOR, 1),
                         norm=LogNorm(SPECTRUM_FLOOR, 1), cmap="magma", shading="flat")
    targets = set(target_irreps(q))
    ticks = [_irrep_name(lab) + (" ★" if tuple(int(v) for v in lab) in targets else "")
             for lab in labels] + ["l > l_max"]
    ax.set_yticks(np.arange(len(ticks)) + 0.5, ticks, fontsize=7)
    ax.invert_yaxis()
    ax.set_ylabel(q)
    return mesh


def _cell_edges(x: np.ndarray) -> np.ndarray:
    """Edges of cells centred on sorted ``x`` (unit width for a single point)."""
    x = np.asarray(x, dtype=float)
    if len(x) == 1:
        return np.array([x[0] - 0.5, x[0] + 0.5])
    mid = (x[1:] + x[:-1]) / 2
    first, last = x[0] - (mid[0] - x[0]), x[-1] + (x[-1] - mid[-1])
    edges = np.concatenate([[first], mid, [last]])
    return np.maximum.accumulate(edges + np.arange(len(edges)) * 1e-12 * max(1, abs(x[-1])))


def _fig_per_atom(reader) -> Figure | None:
    sample = _per_atom_sample(reader)
    if sample is None:
        return None
    _, values = sample
    symbols = _symbols(reader.species)
    elements = list(dict.fromkeys(symbols))
    fig = _new_figure(10, 3.4)
    ax_atom, ax_el = fig.subplots(1, 2, width_ratios=[2.2, 1])
    values = _positive(values)
    with np.errstate(all="ignore"):
        med = np.nanmedian(values, axis=0)
        lo, hi = np.nanpercentile(values, [5, 95], axis=0)
    for k, el in enumerate(elements):
        idx = np.array([i for i, s in enumerate(symbols) if s == el])
        ax_atom.errorbar(idx, med[idx], yerr=[med[idx] - lo[idx], hi[idx] - med[idx]],
                         fmt="o", ms=3, lw=0.8, color=f"C{k}", label=el)
    ax_atom.set(yscale="log", xlabel="atom index", ylabel="forces ε per atom (eV/Å)",
                title="per atom: median, 5-95 %")
    ax_atom.legend(fontsize=8, frameon=False)
    data = [_flat_sample(values[:, [i for i, s in enumerate(symbols) if s == el]])
            for el in elements]
    ax_el.boxplot(data, tick_labels=elements, showfliers=False, whis=(5, 95))
    ax_el.set(yscale="log", ylabel="forces ε per atom (eV/Å)", title="per element")
    return fig


def _flat_sample(block: np.ndarray, limit: int = 200_000) -> np.ndarray:
    flat = block.ravel()
    flat = flat[np.isfinite(flat)]
    return flat[:: max(1, math.ceil(len(flat) / limit))] if flat.size else np.array([EPS_FLOOR])


def _fig_eps_vs_error(reader, quantities, max_points) -> Figure | None:
    pairs = [(q, error_observable(reader, q)) for q in quantities]
    pairs = [(q, name) for q, name in pairs if name is not None]
    if not pairs:
        return None
    fig = _new_figure(3.3 * len(pairs) + 0.5, 3.3)
    for ax, (q, name) in zip(fig.subplots(1, len(pairs), squeeze=False)[0], pairs):
        s_err, _, err = _read(reader, name)
        eps = _lookup(s_err, *_read(reader, f"{q}_eps")[::2])
        idx = _downsample(len(err), max_points)
        ax.loglog(_positive(err[idx]), _positive(eps[idx]), ".", ms=3, alpha=0.6)
        lims = [np.nanmin(_positive(np.r_[err, eps])), np.nanmax(_positive(np.r_[err, eps]))]
        ax.plot(lims, lims, "k--", lw=0.8, label="ε = error")
        unit = pretty_unit(reader.unit(f"{q}_eps"))
        ax.set(xlabel=f"{q} model error ({unit})", ylabel=f"{q} ε ({unit})")
        ax.legend(fontsize=8, frameon=False)
    return fig


# ============================================================== rendering


def render_json(summary: dict) -> str:
    """The summary as JSON (NaN written as null)."""
    return json.dumps(_jsonable(summary), indent=2)


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(x)
    x = float(x)
    if not math.isfinite(x):
        return "–"
    return f"{x:.{digits}g}"


def _tables(summary: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every summary table, shared by text and HTML."""
    return [t for t in (_run_table(summary), _eps_table(summary),
                        _contamination_table(summary), _worst_steps_table(summary),
                        _worst_atoms_table(summary), _species_table(summary),
                        _model_error_table(summary), _threshold_rows(summary)) if t[2]]


def _run_table(s):
    run = s["run"]
    span = "–"
    if run["time_start_ps"] is not None:
        span = f"{_fmt(run['time_start_ps'], 4)} – {_fmt(run['time_end_ps'], 4)} ps"
    meta = run["metadata"]
    rows = [["logs", ", ".join(os.path.basename(p) for p in s["logs"])],
            ["atoms", f"{run['n_atoms']} (" + ", ".join(
                f"{n} {el}" for el, n in run["composition"].items()) + ")"],
            ["steps monitored", f"{run['steps_monitored']} (steps {run['first_step']}"
                                f"–{run['last_step']})"],
            ["full-orbit steps", str(run["full_orbit_steps"])],
            ["time span", span],
            ["model", str(meta.get("model_file") or meta.get("base_calculator") or "–")],
            ["monitor", ", ".join(f"{k}={meta[k]}" for k in ("mode", "every", "full_every",
                                                            "random_rotations", "l_max", "seed")
                                  if k in meta) or "–"]]
    return "Run", ["", ""], rows


def _eps_table(s):
    rows = []
    for q, e in s["eps"].items():
        stats = ("median", "p95", "max")
        rows.append([q, pretty_unit(e["unit"]), *(_fmt(e["abs"][k]) for k in stats),
                     *(_fmt(e["rel"][k]) for k in ("median", "p95", "max"))])
        if "abs_per_atom" in e:
            a = e["abs_per_atom"]
            rows.append(["energy / atom", "eV/atom", *(_fmt(a[k]) for k in ("median", "p95",
                                                                           "max")), "", "", ""])
        if "abs_gpa" in e:
            a = e["abs_gpa"]
            rows.append(["stress", "GPa", *(_fmt(a[k]) for k in ("median", "p95", "max")),
                         "", "", ""])
    header = ["output", "unit", "ε median", "ε p95", "ε max", "rel median", "rel p95",
              "rel max"]
    return "Equivariance error ε (all monitored steps)", header, rows


def _contamination_table(s):
    rows = []
    for q, c in s["contamination"].items():
        if c is None:
            continue
        top = ", ".join(f"{t['irrep']} {_fmt(t['mean_power'], 2)}" for t in c["top_irreps"])
        rows.append([q, str(c["n"]), _fmt(c["mean"]), _fmt(c["max"]), _fmt(c["residual_mean"]),
                     " + ".join(c["targets"]), top or "none"])
    header = ["output", "full steps", "mean", "max", "beyond l_max", "targets",
              "top off-target irreps (mean c̃)"]
    return "Contamination (power outside the target irreps, full-orbit steps)", header, rows


def _worst_steps_table(s):
    rows = s["worst_steps"]
    if not rows:
        return "", [], []
    columns = [k for k in rows[0] if k not in ("step", "time_ps")]
    table = [[str(r["step"]), _fmt(r["time_ps"], 4), *(_fmt(r[k]) for k in columns)]
             for r in rows]
    return "Worst steps", ["step", "time (ps)", *columns], table


def _worst_atoms_table(s):
    rows = [[str(a["index"]), a["symbol"], _fmt(a["median_eps"]), _fmt(a["p95_eps"]),
             _fmt(a["max_eps"])] for a in s["worst_atoms"]]
    title = f"Worst atoms (forces ε in eV/Å over {s['per_atom_sampled_steps']} sampled steps)"
    return title, ["atom", "element", "median", "p95", "max"], rows


def _species_table(s):
    rows = [[el, str(v["n_atoms"]), _fmt(v["median"]), _fmt(v["p95"]), _fmt(v["max"])]
            for el, v in s["species_eps"].items()]
    return "Forces ε by element (eV/Å)", ["element", "atoms", "median", "p95", "max"], rows


def _model_error_table(s):
    rows = [[q, m["observable"], _fmt(m["error"]["median"]), _fmt(m["eps_over_error"]["median"]),
             _fmt(m["eps_over_error"]["max"])] for q, m in s["model_error"].items()]
    return "ε against logged model error", ["output", "observable", "error median",
                                            "ε/error median", "ε/error max"], rows


def _threshold_rows(s):
    levels = {c["name"]: c for c in s["verdict"]["checks"]}
    rows = []
    for name, t in s["thresholds"].items():
        check = levels.get(name)
        rows.append([name, pretty_unit(t["unit"]), _fmt(t["caution"]), _fmt(t["problem"]),
                     _fmt(check["value"]) if check else "–",
                     check["level"] if check else "n/a"])
    return ("Verdict checks (95th percentile against limits)",
            ["check", "unit", "caution >", "problem >", "p95", "level"], rows)


def render_text(summary: dict) -> str:
    """Terminal tables, verdict first."""
    v = summary["verdict"]
    lines = [f"symmon report: {', '.join(summary['logs'])}", "",
             f"VERDICT: {v['level'].upper()} - {v['headline']}"]
    lines += [f"  * {r}" for r in v["reasons"]] + [f"  note: {n}" for n in v["notes"]]
    for title, header, rows in _tables(summary):
        lines += ["", title, *_text_table(header, rows)]
    return "\n".join(lines) + "\n"


def _text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa
    lines = [fmt(header)] if any(header) else []
    if lines:
        lines.append("  ".join("-" * w for w in widths))
    return lines + [fmt(r) for r in rows]


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;
max-width:1080px;padding:16px 20px;color:#222;line-height:1.4}
h1{font-size:1.35em;margin:0 0 10px} h2{font-size:1.1em;margin:22px 0 6px}
.verdict{border-radius:8px;padding:12px 16px;margin:8px 0 16px;border:2px solid}
.verdict h2{margin:0 0 6px;font-size:1.2em}.verdict ul{margin:4px 0 0 18px;padding:0}
.ok{background:#e8f6ec;border-color:#2e8b57}.caution{background:#fff5e0;border-color:#d98e04}
.problem{background:#fdecea;border-color:#c0392b}
table{border-collapse:collapse;font-size:.88em;margin:4px 0}
th,td{padding:3px 9px;border-bottom:1px solid #ddd;text-align:left}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:14px 0} figure img{width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.88em;color:#555} .small{font-size:.85em;color:#666}
"""


def render_html(summary: dict, figures: Mapping[str, Figure | bytes] | None = None) -> str:
    """One self-contained HTML page (inline CSS, figures as base64 PNG); ``figures``
    maps names (see :data:`CAPTIONS`) to Figures or PNG bytes."""
    title = f"symmon report: {', '.join(os.path.basename(p) for p in summary['logs'])}"
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>", _html_verdict(summary["verdict"])]
    for heading, header, rows in _tables(summary):
        parts.append(_html_table(heading, header, rows))
    for name, fig in (figures or {}).items():
        parts.append(_html_figure(name, fig))
    parts.append("<p class='small'>Thresholds, figures and the JSON schema are described in "
                 "symmon's docs/report.md.</p></body></html>")
    return "\n".join(parts)


def _html_verdict(v: dict) -> str:
    items = "".join(f"<li>{html.escape(r)}</li>" for r in v["reasons"] + v["notes"])
    return (f"<div class='verdict {v['level']}'><h2>Verdict: {v['level'].upper()}</h2>"
            f"<div>{html.escape(v['headline'])}</div><ul>{items}</ul></div>")


def _html_table(heading: str, header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header) if any(header) else ""
    body = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in rows)
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<h2>{html.escape(heading)}</h2><table>{thead}<tbody>{body}</tbody></table>"


def _html_cell(text) -> str:
    text = str(text)
    try:
        float(text)
        return f"<td class='num'>{html.escape(text)}</td>"
    except ValueError:
        return f"<td>{html.escape(text)}</td>"


def _html_figure(name: str, fig) -> str:
    png = fig if isinstance(fig, bytes) else figure_png(fig)
    data = base64.b64encode(png).decode("ascii")
    caption = CAPTIONS.get(name, name)
    return (f"<figure id='{html.escape(name)}'><img alt='{html.escape(name)}' "
            f"src=\"data:image/png;base64,{data}\"><figcaption>{html.escape(caption)}"
            f"</figcaption></figure>")


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of a figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.05)
    return buffer.getvalue()

