"""``summarize``: a JSON-able summary of one run's log (or several shards of one run):
the run, ε statistics in per-atom-normalised units, contamination, worst steps and
atoms, and the verdict.  Schema: ``docs/report.md``."""

from __future__ import annotations

import math
import os
from typing import Mapping

import numpy as np

from ...core.irreps import Irrep
from ...core.outputs import EV_PER_A3_IN_GPA
from ...core.quantities import QUANTITY
from ...io.files import jsonable
from ...io.log import LogFormatError, LogReader
from ...io.mismatch import ShardMismatch
from .criteria import judge, resolve_thresholds, verdict
from .series import (lookup, monitored_quantities, per_atom_row, per_atom_sample,
                     quantity_series, rank_order, read, sample_stride, symbols)

SCHEMA = "symmon-report/2"
TOP_STEPS = 5
TOP_ATOMS = 5
ERROR_SUFFIXES = ("_error", "_model_error")  # optional logged reference model errors
METADATA_KEYS = ("model_file", "model_sha256", "base_calculator", "mode", "every",
                 "overhead", "full_every", "random_rotations", "degree", "l_max", "seed", "thresholds",
                 "on_violation", "average_degree", "symmon_version")


def summarize(reader_or_paths, thresholds=None, model_error=None) -> dict:
    """Summary of a log: a :class:`LogReader`, a path or a list of shard paths.
    ``thresholds``: see :func:`~.criteria.resolve_thresholds`; ``model_error``:
    ``{quantity: RMSE}`` (see :func:`~.criteria.load_model_error`)."""
    overrides = resolve_thresholds(thresholds)
    if isinstance(reader_or_paths, LogReader):
        return summarize_reader(reader_or_paths, overrides, model_error)
    paths = as_paths(reader_or_paths)
    with open_reader(paths) as reader:
        return guarded(paths, lambda: summarize_reader(reader, overrides, model_error))


def as_paths(paths) -> list[str]:
    """A list of distinct paths; one file given twice would count every step twice."""
    paths = [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else \
        [os.fspath(p) for p in paths]
    seen = {}
    for p in paths:
        key = os.path.realpath(p)
        if key in seen:
            raise ValueError(f"{p} is given twice (as {seen[key]} and {p}): its steps would "
                             "be counted twice; give each shard once")
        seen[key] = p
    return paths


def open_reader(paths: list[str]) -> LogReader:
    try:
        return LogReader(paths)
    except ShardMismatch as error:
        raise LogFormatError(f"{' and '.join(paths)} are not shards of one run (different "
                             f"{', '.join(error.why)}); to compare runs: symmon report "
                             f"--compare {' '.join(paths)}") from None
    except (OSError, KeyError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise LogFormatError(f"{', '.join(paths)}: cannot read log: {error}") from error


def guarded(paths, action):
    """Run ``action``; damaged files (h5py OSError/KeyError) become LogFormatError."""
    try:
        return action()
    except (OSError, KeyError) as error:
        raise LogFormatError(f"{', '.join(paths)}: damaged or incomplete symmon log: "
                             f"{error}") from error


def summarize_reader(reader: LogReader, overrides: Mapping[str, float] | None = None,
                     model_error: Mapping[str, float] | None = None) -> dict:
    quantities = monitored_quantities(reader)
    series = {q: quantity_series(reader, q) for q in quantities}
    run = run_info(reader, series)
    contamination = {q: contamination_summary(reader, q) for q in quantities}
    step = series[quantities[0]].step
    returned = _returned_as_measured(reader, step, run)
    averaged_from = None
    if returned is not None and not returned.all():
        averaged_from = int(step[~returned].min())
        returned = returned if returned.any() else None   # all averaged: judge the base
    model_error = {**logged_model_errors(reader), **(model_error or {})}
    checks = judge(series, returned, model_error, overrides)
    summary = {
        "schema": SCHEMA,
        "logs": list(reader.paths),
        "run": run,
        "eps": {q: eps_summary(s) for q, s in series.items()},
        "contamination": contamination,
        **per_atom_summary(reader),
        "logged_model_error": logged_model_error(reader, series),
        "model_error": model_error,
        "threshold_overrides": dict(overrides or {}),
        "net": net_signals(reader),
        "verdict": verdict(checks, run, contamination, averaged_from),
    }
    summary["worst_steps"] = worst_steps(reader, series, summary["worst_atoms"])
    return jsonable(summary)


def _returned_as_measured(reader, step, run) -> np.ndarray | None:
    """Steps whose ε measures the predictions the run returned (the log's
    ``eps_of_returned``; older logs: none in ``mode="average"``, and with
    ``on_violation="average"`` those up to the first flagged step); None: all."""
    if "eps_of_returned" in reader.observable_names:
        return lookup(step, *read(reader, "eps_of_returned")[::2]) == 1
    meta = run["metadata"]
    if meta.get("mode") == "average":
        return np.zeros(len(step), bool)
    first = run["first_violation_step"]
    if meta.get("on_violation") == "average" and first is not None:
        return step <= first
    return None


def logged_model_errors(reader) -> dict:
    """``{quantity: RMSE}`` the monitor was given (metadata ``model_errors``), if any."""
    errors = reader.metadata.get("model_errors")
    if not isinstance(errors, Mapping):
        return {}
    return {q: float(v) for q, v in errors.items() if isinstance(v, (int, float))}


def run_info(reader: LogReader, series) -> dict:
    ref = series["forces"] if "forces" in series else next(iter(series.values()))
    step, time = ref.step, ref.time
    if len(step) == 0:
        raise LogFormatError(f"{', '.join(reader.paths)}: log holds no monitored step yet "
                             "(nothing flushed)")
    full = read(reader, "full_orbit")[2]
    v_step, _, violations = read(reader, "violation")
    flagged = v_step[violations == 1]
    finite_time = time[np.isfinite(time)]
    meta = reader.metadata
    return {
        "n_atoms": int(len(reader.species)),
        "composition": composition(reader.species),
        "periodic": bool(all(reader.pbc)),
        "quantities": list(series),
        "steps_monitored": int(len(step)),
        "full_orbit_steps": int(np.sum(full == 1)),
        "first_step": int(step.min()),
        "last_step": int(step.max()),
        "time_start_ps": float(finite_time.min()) if finite_time.size else None,
        "time_end_ps": float(finite_time.max()) if finite_time.size else None,
        "has_time": bool(finite_time.size == len(time)),
        "violation_steps": int(flagged.size),
        "first_violation_step": int(flagged.min()) if flagged.size else None,
        "metadata": run_metadata(meta),
    }


def run_metadata(meta: Mapping) -> dict:
    """The :data:`METADATA_KEYS` of a log's metadata; ``average_degree`` is the degree
    of the averaging grid the run used (``average_grid``), not the setting, which is
    None when the monitor chose the degree."""
    shown = {k: meta.get(k) for k in METADATA_KEYS if k in meta}
    grid = meta.get("average_grid")
    if isinstance(grid, Mapping) and grid.get("degree") is not None:
        shown["average_degree"] = grid["degree"]
    return shown


#: the zero-cost signals of an exactly symmetric model (0 for both), and their units
NET_SIGNALS = {"net_force_per_atom": "eV/angstrom", "net_torque": "eV"}


def net_signals(reader: LogReader) -> dict:
    """:func:`stats` of the logged net force per atom and net torque (non-periodic), and
    which forces they are of (``"raw direct forces"`` of the unrotated copy on the steps
    that evaluate it, or ``"returned forces"``)."""
    direct = reader.metadata.get("forces_source") == "non_conservative"
    out = {"forces": "raw direct forces" if direct else "returned forces"}
    for name, unit in NET_SIGNALS.items():
        if name in reader.observable_names:
            values = stats(read(reader, name)[2])
            if values["n"]:
                out[name] = dict(values, unit=unit)
    return out


def stats(values) -> dict:
    """``{n, mean, median, p95, max}`` of the finite values."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"n": 0, "mean": None, "median": None, "p95": None, "max": None}
    return {"n": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)),
            "p95": float(np.percentile(v, 95)), "max": float(v.max())}


def eps_summary(s) -> dict:
    out = {"unit": s.unit, "abs": stats(s.eps), "rel": stats(s.relative),
           "rms": stats(s.rms), "eps_err_median": stats(s.eps_err)["median"]}
    if s.quantity == "stress":
        out["abs_gpa"] = stats(s.eps * EV_PER_A3_IN_GPA)
    return out


def target_irreps(q: str) -> list[Irrep]:
    """Irreps an exactly equivariant output ``q`` occupies."""
    from ...core.representations import get_representation

    return list(get_representation(QUANTITY[q].kind).targets)


def contamination_summary(reader, q) -> dict | None:
    """Power outside the targets on full-orbit steps (rounding noise below 0 -> 0)."""
    cont = read(reader, f"{q}_contamination")[2]
    cont = np.clip(cont[np.isfinite(cont)], 0, None)
    if cont.size == 0:
        return None
    residual = np.clip(read(reader, f"{q}_residual")[2], 0, None)
    summary = {**stats(cont), "residual_mean": stats(residual)["mean"],
               "targets": [str(t) for t in target_irreps(q)], **spectrum_mean(reader, q)}
    if q == "stress" and "stress_traceless_spectrum" in reader.observable_names:
        # the traceless part may only be (2,+1): name the channels it breaks in
        traceless = spectrum_mean(reader, q, "stress_traceless_spectrum", [Irrep(2, 1)])
        summary["top_irreps"] = [dict(t, irrep=f"traceless stress's {t['irrep']}")
                                 for t in traceless["top_irreps"]]
    return summary


def spectrum_mean(reader, q, name=None, targets=None) -> dict:
    """Mean c~ per irrep (strided sample of full-orbit steps) and the top irreps outside
    ``targets`` (default: the quantity's; mean c~ above rounding noise)."""
    from .numbers import NUMERICAL_ZERO

    name = name or f"{q}_spectrum"
    n = reader.count(name) if name in reader.observable_names else 0
    if n == 0:
        return {"mean_spectrum": {}, "top_irreps": []}
    labels = [Irrep(int(l), int(s)) for l, s in reader.labels(name)]
    values = read(reader, name, stride=sample_stride(n, len(labels)))[2]
    with np.errstate(all="ignore"):
        mean = np.clip(np.nanmean(values, axis=0), 0, None)
    targets = set(target_irreps(q) if targets is None else targets)
    off = sorted(((float(p), ir) for p, ir in zip(mean, labels)
                  if ir not in targets and p > NUMERICAL_ZERO), reverse=True)
    return {"mean_spectrum": {str(ir): float(p) for p, ir in zip(mean, labels)},
            "top_irreps": [{"irrep": str(ir), "l": ir.l, "sigma": ir.sigma, "mean_power": p}
                           for p, ir in off[:3]]}


def worst_steps(reader, series, worst_atoms) -> list[dict]:
    """The top steps by forces ε per atom (or the first quantity's ε) and each worst
    atom's worst step, largest ε first, with each quantity's ε and relative ε and the
    step's worst atom."""
    key = "forces" if "forces" in series else next(iter(series))
    ref = series[key]
    ranked = rank_order(ref.eps)
    rows_of_atoms = [np.flatnonzero(ref.step == a["worst_step"])[:1] for a in worst_atoms]
    order = list(dict.fromkeys([*ranked[:TOP_STEPS].tolist(),
                                *(int(r[0]) for r in rows_of_atoms if r.size)]))
    order.sort(key=lambda i: -np.nan_to_num(ref.eps[i], nan=-np.inf))
    full = lookup(ref.step, *read(reader, "full_orbit")[::2])
    atoms_at = _worst_atom_at(reader, ref.step[order])
    rows = []
    for i in order:
        row = {"step": int(ref.step[i]), "time_ps": float(ref.time[i]),
               "full_orbit": bool(full[i] == 1)}
        for q, s in series.items():
            row[f"{q}_eps"] = float(s.eps[i])
            row[f"{q}_rel_eps"] = float(s.relative[i])
        row["worst_atom"] = atoms_at.get(int(ref.step[i]))
        rows.append(row)
    return rows


def _worst_atom_at(reader, steps) -> dict:
    """``{step: {index, symbol, eps}}`` of the atom with the largest ε at each step."""
    name = "forces_eps_per_atom"
    if name not in reader.observable_names or len(steps) == 0:
        return {}
    if reader.count(name) != reader.count("forces_eps"):  # written with the per-atom ε
        return {}
    names = symbols(reader.species)
    out = {}
    for step in steps:
        row = per_atom_row(reader, step)
        if row is not None and np.isfinite(row[1]).any():
            i = int(rank_order(row[1])[0])
            out[int(step)] = {"index": i, "symbol": names[i], "eps": float(row[1][i])}
    return out


def per_atom_summary(reader) -> dict:
    sample = per_atom_sample(reader)
    if sample is None:
        return {"worst_atoms": [], "species_eps": {}, "per_atom_sampled_steps": 0}
    steps, values = sample
    names = symbols(reader.species)
    with np.errstate(all="ignore"):
        median = np.nanmedian(values, axis=0)
        p95 = np.nanpercentile(values, 95, axis=0)
        vmax = np.nanmax(values, axis=0)
        peak_row = np.nanargmax(np.nan_to_num(values, nan=-np.inf), axis=0)
    order = np.argsort(np.where(np.isfinite(median), median, -np.inf))[::-1][:TOP_ATOMS]
    worst = [{"index": int(i), "symbol": names[i], "median_eps": median[i],
              "p95_eps": p95[i], "max_eps": vmax[i], "worst_step": int(steps[peak_row[i]])}
             for i in order]
    species = {}
    for sym in dict.fromkeys(names):
        cols = [i for i, s in enumerate(names) if s == sym]
        species[sym] = {"n_atoms": len(cols), **stats(values[:, cols].ravel())}
    return {"worst_atoms": worst, "species_eps": species,
            "per_atom_sampled_steps": int(len(values))}


def error_observable(reader, q) -> str | None:
    """Name of a logged reference model error of output ``q`` (optional)."""
    for suffix in ERROR_SUFFIXES:
        name = f"{q}{suffix}"
        if name in reader.observable_names and reader.spec(name).shape == ():
            return name
    return None


def logged_model_error(reader, series) -> dict:
    """Per-atom-normalised ε against a per-step model error logged alongside (taken to
    be in the same per-atom units)."""
    out = {}
    for q, s in series.items():
        name = error_observable(reader, q)
        if name is None:
            continue
        s_err, _, err = read(reader, name)
        eps_at = lookup(s_err, s.step, s.eps)
        with np.errstate(all="ignore"):
            ratio = eps_at / err
        out[q] = {"observable": name, "unit": reader.unit(name), "error": stats(err),
                  "eps_over_error": stats(ratio)}
    return out


def composition(species) -> dict:
    names = symbols(species)
    return {s: names.count(s) for s in dict.fromkeys(names)}


