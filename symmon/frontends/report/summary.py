"""``summarize``: the typed summary of one run's log (or several shards of one run): the
run, ε statistics in per-atom-normalised units, contamination, worst steps and atoms,
and the verdict. :func:`build_summary` makes a :class:`Summary` from a
:class:`~.series.RunSeries`; its ``to_json()`` is the JSON (schema: ``docs/report.md``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from ...core.outputs import EV_PER_A3_IN_GPA
from ...io.files import jsonable
from ...io.log import LogFormatError, LogReader
from ...io.mismatch import ShardMismatch
from .criteria import Flagged, judge, resolve_thresholds, verdict
from .series import (QUANTITIES, RunSeries, lookup, per_atom_row, read_run,
                     worst_atoms_of, worst_step_rows)

SCHEMA = "symmon-report/3"
TOP_STEPS = 5
TOP_ATOMS = 5
METADATA_KEYS = ("model_file", "model_sha256", "base_calculator", "mode", "every",
                 "overhead", "full_every", "random_rotations", "degree", "l_max", "seed",
                 "thresholds", "on_violation", "average_degree", "forces_source",
                 "symmon_version")


# ------------------------------------------------------------------ typed pieces


@dataclass(frozen=True)
class Stats:
    """``n, mean, median, p95, max`` of the finite values."""

    n: int
    mean: float | None = None
    median: float | None = None
    p95: float | None = None
    max: float | None = None

    @classmethod
    def of(cls, values) -> "Stats":
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        if v.size == 0:
            return cls(0)
        return cls(int(v.size), float(v.mean()), float(np.median(v)),
                   float(np.percentile(v, 95)), float(v.max()))

    def to_json(self) -> dict:
        return {"n": self.n, "mean": self.mean, "median": self.median, "p95": self.p95,
                "max": self.max}


@dataclass(frozen=True)
class EpsStats:
    """One quantity's per-step numbers over the run: ε, relative ε (the one function),
    orbit RMS (the quantity's size), all per atom where it applies."""

    quantity: str
    unit: str
    abs: Stats
    rel: Stats
    rms: Stats
    eps_err_median: float | None
    floor: float
    abs_gpa: Stats | None = None

    def to_json(self) -> dict:
        out = {"unit": self.unit, "abs": self.abs.to_json(), "rel": self.rel.to_json(),
               "rms": self.rms.to_json(), "eps_err_median": self.eps_err_median,
               "floor": self.floor}
        if self.abs_gpa is not None:
            out["abs_gpa"] = self.abs_gpa.to_json()
        return out


@dataclass(frozen=True)
class Contamination:
    """Power outside the target irreps on full-orbit steps, and where it sits."""

    stats: Stats
    residual_mean: float | None
    targets: list
    mean_spectrum: dict
    top: list           # [{irrep, l, sigma, mean_power}], largest first
    traceless: bool     # ``top`` is of the traceless stress (which may only be (2,+1))

    def to_json(self) -> dict:
        top = [dict(t, irrep=("traceless stress's " if self.traceless else "") + t["irrep"])
               for t in self.top]
        return {**self.stats.to_json(), "residual_mean": self.residual_mean,
                "targets": list(self.targets), "mean_spectrum": dict(self.mean_spectrum),
                "top_irreps": top, "top_irreps_of": "traceless stress" if self.traceless
                else "output"}


@dataclass(frozen=True)
class Cost:
    """What ``mode="average"`` costs this run's model at this size: model calls per
    step at the averaging degree, and the time of one model call measured on the run's
    first monitored step (``first_step_s`` over the copies it evaluated)."""

    calls_per_step: int
    degree: int
    ms_per_call: float | None
    measured_on: str | None

    def words(self) -> str:
        text = f"{self.calls_per_step} model calls per step (degree {self.degree})"
        if self.ms_per_call is not None:
            text += (f", ≈ {self.calls_per_step * self.ms_per_call / 1000:.3g} s per step "
                     f"for this model and size ({self.ms_per_call:.3g} ms per call, "
                     f"{self.measured_on})")
        return text

    def to_json(self) -> dict:
        return {"calls_per_step": self.calls_per_step, "degree": self.degree,
                "ms_per_call": self.ms_per_call, "measured_on": self.measured_on}


@dataclass(frozen=True)
class StepRow:
    """One of the worst steps: each quantity's ε and relative ε, and its worst atom."""

    step: int
    time_ps: float
    full_orbit: bool
    eps: dict                  # quantity -> ε (per atom where it applies)
    relative: dict             # quantity -> relative ε (:func:`thresholds.relative_eps`)
    worst_atom: dict | None    # {index, symbol, eps} at this step

    def to_json(self) -> dict:
        out = {"step": self.step, "time_ps": self.time_ps, "full_orbit": self.full_orbit}
        for q in self.eps:
            out[f"{q}_eps"] = self.eps[q]
            out[f"{q}_rel_eps"] = self.relative[q]
        out["worst_atom"] = self.worst_atom
        return out


@dataclass(frozen=True)
class AtomRow:
    """One of the worst atoms by median forces ε over the sampled steps (eV/Å)."""

    index: int
    symbol: str
    median_eps: float
    p95_eps: float
    max_eps: float
    worst_step: int

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class SpeciesStats:
    """Forces ε of the atoms of one element over the sampled steps (eV/Å)."""

    n_atoms: int
    stats: Stats

    def to_json(self) -> dict:
        return {"n_atoms": self.n_atoms, **self.stats.to_json()}


@dataclass(frozen=True)
class LoggedErrorStats:
    """ε against a per-step model error logged beside it (same per-atom units)."""

    observable: str
    unit: str
    error: Stats
    eps_over_error: Stats

    def to_json(self) -> dict:
        return {"observable": self.observable, "unit": self.unit,
                "error": self.error.to_json(), "eps_over_error": self.eps_over_error.to_json()}


@dataclass(frozen=True)
class NetSignals:
    """The zero-cost signals: net force per atom (eV/Å) and net torque (eV, molecules),
    and which forces they are of (``"returned forces"`` or ``"raw direct forces"``)."""

    forces: str
    net_force_per_atom: Stats | None = None
    net_torque: Stats | None = None

    def to_json(self) -> dict:
        out = {"forces": self.forces}
        for name, unit in NET_SIGNALS.items():
            value = getattr(self, name)
            if value is not None:
                out[name] = dict(value.to_json(), unit=unit)
        return out


@dataclass(frozen=True)
class RunInfo:
    n_atoms: int
    composition: dict
    periodic: bool
    quantities: list
    steps_monitored: int
    full_orbit_steps: int
    first_step: int
    last_step: int
    time_start_ps: float | None
    time_end_ps: float | None
    has_time: bool
    violation_steps: int
    first_violation_step: int | None
    metadata: dict

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Summary:
    """One run's report: every number the page shows (``to_json()``: the JSON)."""

    logs: list
    run: RunInfo
    eps: dict                 # q -> EpsStats
    contamination: dict       # q -> Contamination | None
    worst_steps: list         # [StepRow], worst first
    worst_atoms: list         # [AtomRow], worst first
    species_eps: dict         # element -> SpeciesStats
    per_atom_sampled_steps: int
    logged_model_error: dict  # quantity -> LoggedErrorStats
    model_error: dict
    threshold_overrides: dict
    net: NetSignals
    flagged: Flagged
    cost: Cost | None
    verdict: object           # criteria.Verdict
    schema: str = SCHEMA
    extra: dict = field(default_factory=dict)   # sections other front-ends add

    def check(self, quantity: str):
        """The verdict's check of ``quantity`` (None if not judged)."""
        return next((c for c in self.verdict.checks if c.quantity == quantity), None)

    def to_json(self) -> dict:
        return jsonable({
            "schema": self.schema, "logs": list(self.logs), "run": self.run.to_json(),
            "eps": {q: e.to_json() for q, e in self.eps.items()},
            "contamination": {q: None if c is None else c.to_json()
                              for q, c in self.contamination.items()},
            "worst_atoms": [a.to_json() for a in self.worst_atoms],
            "species_eps": {el: v.to_json() for el, v in self.species_eps.items()},
            "per_atom_sampled_steps": self.per_atom_sampled_steps,
            "logged_model_error": {q: e.to_json() for q, e in
                                   self.logged_model_error.items()},
            "model_error": self.model_error,
            "threshold_overrides": self.threshold_overrides, "net": self.net.to_json(),
            "flagged": self.flagged.to_json(),
            "cost_of_average": None if self.cost is None else self.cost.to_json(),
            "verdict": self.verdict.to_json(),
            "worst_steps": [r.to_json() for r in self.worst_steps],
            **self.extra})


# ------------------------------------------------------------------ entry points


def summarize(reader_or_paths, thresholds=None, model_error=None) -> Summary:
    """The :class:`Summary` of a log: a :class:`LogReader`, a path or a list of shard paths.
    ``thresholds``: see :func:`~.criteria.resolve_thresholds`; ``model_error``:
    ``{quantity: RMSE}`` (see :func:`~.criteria.load_model_error`)."""
    overrides = resolve_thresholds(thresholds)
    if isinstance(reader_or_paths, LogReader):
        return summarize_reader(reader_or_paths, overrides, model_error)
    paths = as_paths(reader_or_paths)
    with open_reader(paths) as reader:
        return guarded(paths, lambda: summarize_reader(reader, overrides, model_error))


def summarize_reader(reader: LogReader, overrides: Mapping[str, float] | None = None,
                     model_error: Mapping[str, float] | None = None) -> Summary:
    """:func:`summarize` of an open reader."""
    return build_summary(read_run(reader, overrides), model_error, reader)


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


def build_summary(data: RunSeries, model_error: Mapping[str, float] | None = None,
                  reader: LogReader | None = None) -> Summary:
    """The :class:`Summary` of one run's series (``reader``: for the worst atom of each
    worst step, one row each; optional)."""
    series = data.quantities
    run = run_info(data)
    contamination = {q: contamination_of(data, q) for q in series}
    step = series[run.quantities[0]].step
    returned = _returned_as_measured(data, step, run)
    averaged_from = None
    if returned is not None and not returned.all():
        averaged_from = int(step[~returned].min())
        returned = returned if returned.any() else None   # all averaged: judge the base
    model_error = {**logged_model_errors(data.metadata), **(model_error or {})}
    checks = judge(series, returned, model_error, data.overrides)
    flagged = flagged_steps(data)
    cost = average_cost(data)
    atoms = per_atom_summary(data)
    summary = Summary(
        logs=list(data.paths), run=run,
        eps={q: eps_summary(s, data.overrides) for q, s in series.items()},
        contamination=contamination, worst_steps=[], worst_atoms=atoms["worst_atoms"],
        species_eps=atoms["species_eps"],
        per_atom_sampled_steps=atoms["per_atom_sampled_steps"],
        logged_model_error=logged_model_error(data), model_error=model_error,
        threshold_overrides=dict(data.overrides), net=net_signals(data), flagged=flagged,
        cost=cost, verdict=verdict(checks, run, contamination, averaged_from, flagged, cost))
    summary.worst_steps = worst_steps(data, summary.worst_atoms, reader)
    return summary


# ------------------------------------------------------------------ pieces


def _returned_as_measured(data: RunSeries, step, run: RunInfo) -> np.ndarray | None:
    """Steps whose ε measures the predictions the run returned (the log's
    ``eps_of_returned``; older logs: none in ``mode="average"``, and with
    ``on_violation="average"`` those up to the first flagged step); None: all."""
    if "eps_of_returned" in data.scalars:
        return data.scalar("eps_of_returned", step) == 1
    meta = run.metadata
    if meta.get("mode") == "average":
        return np.zeros(len(step), bool)
    first = run.first_violation_step
    if meta.get("on_violation") == "average" and first is not None:
        return step <= first
    return None


def logged_model_errors(metadata: Mapping) -> dict:
    """``{quantity: RMSE}`` the monitor was given (metadata ``model_errors``), if any."""
    errors = metadata.get("model_errors")
    if not isinstance(errors, Mapping):
        return {}
    return {q: float(v) for q, v in errors.items() if isinstance(v, (int, float))}


def run_info(data: RunSeries) -> RunInfo:
    series = data.quantities
    ref = series["forces"] if "forces" in series else next(iter(series.values()))
    step, time = ref.step, ref.time
    if len(step) == 0:
        raise LogFormatError(f"{', '.join(data.paths)}: log holds no monitored step yet "
                             "(nothing flushed)")
    flagged = flagged_steps(data)
    finite_time = time[np.isfinite(time)]
    return RunInfo(
        n_atoms=data.n_atoms, composition=composition(data.symbols),
        periodic=bool(all(data.pbc)), quantities=list(series),
        steps_monitored=int(len(step)), full_orbit_steps=int(np.sum(ref.full)),
        first_step=int(step.min()), last_step=int(step.max()),
        time_start_ps=float(finite_time.min()) if finite_time.size else None,
        time_end_ps=float(finite_time.max()) if finite_time.size else None,
        has_time=bool(finite_time.size == len(time)),
        violation_steps=flagged.count,
        first_violation_step=min(flagged.steps) if flagged.steps else None,
        metadata=run_metadata(data.metadata))


def flagged_steps(data: RunSeries) -> Flagged:
    """The steps the monitor graded problem (its ``violation``), and by quantity (its
    ``<q>_level``)."""
    if "violation" not in data.scalars:
        return Flagged(0, [], {})
    step, value = data.scalars["violation"]
    steps = sorted(set(np.asarray(step)[np.asarray(value) == 1].tolist()))
    by_quantity = {}
    for q, s in data.quantities.items():
        levels = data.scalar(f"{q}_level", s.step) if f"{q}_level" in data.scalars else None
        if levels is not None:
            by_quantity[q] = sorted(set(s.step[levels == 2].tolist()))
    return Flagged(len(steps), steps, by_quantity, _why(data, steps[0]) if steps else None)


def _why(data: RunSeries, step: int) -> str | None:
    """The problems at ``step`` in the monitor's words (its thresholds and model errors,
    from the log: :func:`symmon.monitoring.policy.problem_text`)."""
    from ...monitoring.policy import problem_text
    from ...monitoring.thresholds import grade
    from .series import log_thresholds

    overrides = log_thresholds(data.metadata)
    errors = logged_model_errors(data.metadata)
    texts = []
    for q, s in data.quantities.items():
        rows = np.flatnonzero(s.step == step)
        if rows.size and np.isfinite(s.eps[rows[0]]):
            g = grade(q, s.eps[rows[0]], s.rms[rows[0]], errors.get(q), overrides)
            if g.level == "problem":
                texts.append(problem_text(g))
    return "; ".join(texts) or None


def run_metadata(meta: Mapping) -> dict:
    """The :data:`METADATA_KEYS` of a log's metadata; ``average_degree`` is the degree
    of the averaging grid the run used (``average_grid``), not the setting, which is
    None when the monitor chose the degree."""
    shown = {k: meta.get(k) for k in METADATA_KEYS if k in meta}
    grid = meta.get("average_grid")
    if isinstance(grid, Mapping) and grid.get("degree") is not None:
        shown["average_degree"] = grid["degree"]
    return shown


def average_cost(data: RunSeries) -> Cost | None:
    """:class:`Cost` of ``mode="average"`` for this run's quantities."""
    from ...core.grids import quadrature_grid
    from ...monitoring.schedule import average_degree

    degree = data.metadata.get("average_degree") or average_degree(list(data.quantities))
    try:
        calls = len(quadrature_grid(int(degree)))
    except (TypeError, ValueError):
        return None
    ms, measured = None, None
    first_s = data.metadata.get("first_step_s")
    if isinstance(first_s, (int, float)) and first_s > 0 and "n_elements" in data.scalars:
        steps, n = data.scalars["n_elements"]
        if len(steps):
            first = int(np.argmin(steps))
            pairs = data.scalar("calibration_rotations", steps[first:first + 1])[0]
            copies = int(n[first]) + 1 + (2 * int(pairs) if np.isfinite(pairs) else 0)
            ms = 1000 * first_s / copies
            measured = f"the run's first monitored step: {first_s:.3g} s for {copies} copies"
    return Cost(calls, int(degree), ms, measured)


#: the zero-cost signals of an exactly symmetric model (0 for both), and their units
NET_SIGNALS = {"net_force_per_atom": "eV/angstrom", "net_torque": "eV"}


def net_signals(data: RunSeries) -> NetSignals:
    """Stats of the logged net force per atom and net torque (non-periodic), and which
    forces they are of (``"raw direct forces"`` of the unrotated copy on the steps that
    evaluate it, or ``"returned forces"``)."""
    direct = data.metadata.get("forces_source") == "non_conservative"
    stats = {name: Stats.of(data.scalars[name][1]) for name in NET_SIGNALS
             if name in data.scalars}
    return NetSignals("raw direct forces" if direct else "returned forces",
                      **{name: v for name, v in stats.items() if v.n})


def eps_summary(s, overrides) -> EpsStats:
    from ...monitoring.thresholds import floor

    return EpsStats(s.quantity, s.unit, Stats.of(s.eps), Stats.of(s.relative),
                    Stats.of(s.rms), Stats.of(s.eps_err).median, floor(s.quantity, overrides),
                    Stats.of(s.eps * EV_PER_A3_IN_GPA) if s.quantity == "stress" else None)


def contamination_of(data: RunSeries, q: str) -> Contamination | None:
    """Power outside the targets on full-orbit steps (rounding noise below 0 -> 0); for
    the stress, the top channels of its traceless part (which may only be (2,+1))."""
    spectrum = data.spectra.get(q)
    if spectrum is None or f"{q}_contamination" not in data.scalars:
        return None
    cont = np.clip(data.scalars[f"{q}_contamination"][1], 0, None)
    cont = cont[np.isfinite(cont)]
    if cont.size == 0:
        return None
    mean, top = spectrum_mean(spectrum)
    traceless = data.spectra.get(f"{q}_traceless")
    if traceless is not None:
        top = spectrum_mean(traceless)[1]
    return Contamination(Stats.of(cont), Stats.of(np.clip(spectrum.residual, 0, None)).mean,
                         [str(t) for t in spectrum.targets], mean, top,
                         traceless is not None)


def spectrum_mean(spectrum) -> tuple[dict, list]:
    """Mean c~ per irrep, and the top three irreps outside the targets (above rounding
    noise)."""
    from .numbers import NUMERICAL_ZERO

    with np.errstate(all="ignore"):
        mean = np.clip(np.nanmean(spectrum.values, axis=0), 0, None)
    targets = set(spectrum.targets)
    off = sorted(((float(p), ir) for p, ir in zip(mean, spectrum.irreps)
                  if ir not in targets and p > NUMERICAL_ZERO), reverse=True)
    return ({str(ir): float(p) for p, ir in zip(mean, spectrum.irreps)},
            [{"irrep": str(ir), "l": ir.l, "sigma": ir.sigma, "mean_power": p}
             for p, ir in off[:3]])


def worst_steps(data: RunSeries, worst_atoms, reader: LogReader | None) -> list[StepRow]:
    """The top steps by forces ε per atom (or the first quantity's ε) and each worst
    atom's worst step, largest ε first, with each quantity's ε and relative ε and the
    step's worst atom (:func:`~.series.worst_step_rows`)."""
    series = data.quantities
    ref = series["forces"] if "forces" in series else next(iter(series.values()))
    rows_of_atoms = [np.flatnonzero(ref.step == a.worst_step)[:1] for a in worst_atoms]
    order = list(dict.fromkeys([*worst_step_rows(ref.eps, TOP_STEPS).tolist(),
                                *(int(r[0]) for r in rows_of_atoms if r.size)]))
    order.sort(key=lambda i: -np.nan_to_num(ref.eps[i], nan=-np.inf))
    return [StepRow(int(ref.step[i]), float(ref.time[i]), bool(ref.full[i]),
                    {q: float(x.eps[i]) for q, x in series.items()},
                    {q: float(x.relative[i]) for q, x in series.items()},
                    _worst_atom_at(reader, data, int(ref.step[i]))) for i in order]


def _worst_atom_at(reader, data: RunSeries, step: int) -> dict | None:
    """``{index, symbol, eps}`` of the atom with the largest ε at ``step``."""
    if reader is None:
        return None
    row = per_atom_row(reader, step)
    if row is None or not np.isfinite(row[1]).any():
        return None
    i = int(worst_atoms_of(row[1], 1)[0])
    return {"index": i, "symbol": data.symbols[i], "eps": float(row[1][i])}


def per_atom_summary(data: RunSeries) -> dict:
    if data.per_atom is None:
        return {"worst_atoms": [], "species_eps": {}, "per_atom_sampled_steps": 0}
    steps, values = data.per_atom
    names = data.symbols
    with np.errstate(all="ignore"):
        median = np.nanmedian(values, axis=0)
        p95 = np.nanpercentile(values, 95, axis=0)
        vmax = np.nanmax(values, axis=0)
        peak_row = np.nanargmax(np.nan_to_num(values, nan=-np.inf), axis=0)
    worst = [AtomRow(int(i), names[i], float(median[i]), float(p95[i]), float(vmax[i]),
                     int(steps[peak_row[i]])) for i in worst_atoms_of(median, TOP_ATOMS)]
    species = {}
    for sym in dict.fromkeys(names):
        cols = [i for i, s in enumerate(names) if s == sym]
        species[sym] = SpeciesStats(len(cols), Stats.of(values[:, cols].ravel()))
    return {"worst_atoms": worst, "species_eps": species,
            "per_atom_sampled_steps": int(len(values))}


def logged_model_error(data: RunSeries) -> dict[str, LoggedErrorStats]:
    """Per-atom-normalised ε against a per-step model error logged alongside (taken to
    be in the same per-atom units)."""
    out = {}
    for q, e in data.logged_errors.items():
        with np.errstate(all="ignore"):
            ratio = e.eps / e.error
        out[q] = LoggedErrorStats(e.observable, e.unit, Stats.of(e.error), Stats.of(ratio))
    return out


def composition(names) -> dict:
    return {s: list(names).count(s) for s in dict.fromkeys(names)}


__all__ = ["Summary", "build_summary", "summarize", "summarize_reader", "QUANTITIES"]
