"""Report figures (matplotlib, Agg, no pyplot state): ``{name: Figure}``.

Every axis says its quantity and unit; each figure has one legend.  Several runs
(``--compare``) share the figures, one colour per run.  Plotted curves hold at most
:data:`MAX_POINTS` points; heatmaps at most :data:`MAX_HEATMAP_COLUMNS` columns.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Mapping

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ...core.irreps import Irrep
from ...core.outputs import pretty_unit
from ...io.log import LogReader
from .series import lookup, per_atom_sample, quantity_series, read, symbols
from .summary import error_observable, target_irreps

MAX_POINTS = 5000            # points per plotted curve
MAX_HEATMAP_COLUMNS = 1500   # full-orbit steps shown in a spectrum heatmap
MAX_FULL_POINTS = 400        # full-orbit dots on the ε series (evenly spaced, + the worst)
SPECTRUM_FLOOR = 1e-10       # lower end of the c~ colour scale
EPS_FLOOR = 1e-17            # plotted in place of ε <= 0 on log axes
LIMIT_COLOURS = {"caution": "#d98e04", "problem": "#c0392b"}

CAPTIONS = {
    "eps_time": "Equivariance error ε over the run, per atom where it applies (log scale): "
                "random-subset estimates with their standard-error band, exact full-orbit "
                "steps as dots; dashed: the caution and problem limits against the error "
                "scale the verdict uses (the model's own error or a typical MLIP error).",
    "eps_hist": "Distribution over monitored steps of the relative ε = ε / max(orbit RMS, "
                "floor), one panel per quantity judged by it (not the energy, whose zero "
                "is arbitrary), with that quantity's own limits.",
    "spectra": "Character spectra c̃(l,σ) on full-orbit steps (log colour); ★ marks the "
               "target irreps, every other bright row is symmetry breaking in that channel.",
    "per_atom": "Force ε of each atom (median and 5-95 % range over sampled steps, left) "
                "and per element (right).",
    "eps_vs_error": "ε against the model error logged at the same steps; points above the "
                    "diagonal mean symmetry breaking exceeds the model error.",
}


@dataclass(frozen=True)
class Run:
    """One run's log and summary, with the label it has in a comparison."""

    label: str
    reader: LogReader
    summary: dict

    @cached_property
    def series(self) -> dict:
        """Per-step ε of each quantity (:func:`~.series.quantity_series`), read once."""
        return {q: quantity_series(self.reader, q) for q in self.summary["run"]["quantities"]}


def make_figures(reader, summary: dict | None = None, max_points: int = MAX_POINTS,
                 labels=None) -> dict[str, Figure]:
    """Figures ``{name: Figure}`` (names as in :data:`CAPTIONS`; absent when the log
    lacks the data) of one reader, or of several readers (with their summaries) side
    by side."""
    from .summary import summarize_reader

    readers = reader if isinstance(reader, (list, tuple)) else [reader]
    summaries = summary if isinstance(summary, (list, tuple)) else [summary] * len(readers)
    labels = labels or [os.path.basename(r.paths[0]) for r in readers]
    runs = [Run(lab, r, s if s is not None else summarize_reader(r))
            for lab, r, s in zip(labels, readers, summaries)]
    figures = {
        "eps_time": _fig_eps_time(runs, max_points),
        "eps_hist": _fig_eps_hist(runs),
        "spectra": _fig_spectra(runs),
        "per_atom": _fig_per_atom(runs),
        "eps_vs_error": _fig_eps_vs_error(runs, max_points),
    }
    return {name: fig for name, fig in figures.items() if fig is not None}


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of a figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.05)
    return buffer.getvalue()


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


# ------------------------------------------------------------------ helpers


def _new_figure(width: float, height: float) -> Figure:
    """A detached Agg figure (no pyplot state) with constrained layout."""
    return Figure(figsize=(width, height), layout="constrained")


def _positive(values, floor=EPS_FLOOR) -> np.ndarray:
    return np.where(np.isfinite(values), np.maximum(values, floor), np.nan)


def _downsample(n: int, max_points: int) -> np.ndarray:
    """Evenly spaced row indices, at most ``max_points``."""
    return np.arange(0, n, max(1, math.ceil(n / max_points)))


def _binned(x, v, n_bins):
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


def _use_time(runs) -> bool:
    return all(r.summary["run"]["has_time"] for r in runs)


def _x_label(use_time: bool) -> str:
    return "time (ps)" if use_time else "MD step"


def _quantities(runs) -> list[str]:
    return [q for q in ("energy", "forces", "stress")
            if any(q in r.summary["run"]["quantities"] for r in runs)]


def _check(run: Run, q: str) -> dict | None:
    return next((c for c in run.summary["verdict"]["checks"] if c["quantity"] == q), None)


def _eps_label(q: str, unit: str) -> str:
    per_atom = " per atom" if q in ("energy", "forces") else ""
    return f"{q} ε{per_atom}\n({pretty_unit(unit)})"


def _one_legend(fig: Figure, handles) -> None:
    """One legend below the axes; ``handles`` deduplicated by label."""
    unique = {h.get_label(): h for h in handles if not h.get_label().startswith("_")}
    fig.legend(list(unique.values()), list(unique), loc="outside lower center",
               ncols=min(4, max(1, len(unique))), fontsize=8, frameon=False)


# ------------------------------------------------------------------ ε over time


def _fig_eps_time(runs, max_points) -> Figure:
    quantities = _quantities(runs)
    use_time = _use_time(runs)
    fig = _new_figure(10, 1.2 + 2.0 * len(quantities))
    axes = fig.subplots(len(quantities), 1, sharex=True, squeeze=False)[:, 0]
    for ax, q in zip(axes, quantities):
        for k, run in enumerate(runs):
            if q in run.summary["run"]["quantities"]:
                _plot_eps_series(ax, run, q, use_time, max_points, f"C{k}",
                                 run.label if len(runs) > 1 else None)
        _limit_lines(ax, [_check(r, q) for r in runs], len(runs) > 1)
        ax.set_yscale("log")
        ax.set_ylabel(_eps_label(q, runs[0].summary["eps"].get(q, {}).get("unit", "")))
        ax.grid(True, which="major", alpha=0.3)
    axes[-1].set_xlabel(_x_label(use_time))
    handles = [h for ax in axes for h in ax.get_legend_handles_labels()[0]]
    _one_legend(fig, handles)
    fig.suptitle("Equivariance error over the run", fontsize=11)
    return fig


def _plot_eps_series(ax, run, q, use_time, max_points, colour, label) -> None:
    s = run.series[q]
    full = lookup(s.step, *read(run.reader, "full_orbit")[::2]) == 1
    x = s.time if use_time else s.step.astype(float)
    prefix = f"{label}: " if label else ""
    random_rows = np.flatnonzero(~full)
    if np.any(np.diff(s.step) == 0):  # overlapping shards: points, not a zigzag line
        idx = random_rows[_downsample(random_rows.size, max_points)]
        ax.plot(x[idx], _positive(s.eps[idx]), ".", color=colour, ms=3,
                label=f"{prefix}random subset")
    elif 0 < random_rows.size <= max_points:
        xr, e, b = x[random_rows], s.eps[random_rows], s.eps_err[random_rows]
        ax.fill_between(xr, _positive(e - b), _positive(e + b), color=colour, alpha=0.25,
                        lw=0, label=f"{prefix}± standard error")
        ax.plot(xr, _positive(e), color=colour, lw=1.0, label=f"{prefix}random subset")
    elif random_rows.size:
        xb, lo, med, hi = _binned(x[random_rows], s.eps[random_rows], max(1, max_points // 5))
        ax.fill_between(xb, _positive(lo), _positive(hi), color=colour, alpha=0.25, lw=0,
                        label=f"{prefix}min–max per {math.ceil(random_rows.size / len(xb))} "
                        "steps")
        ax.plot(xb, _positive(med), color=colour, lw=1.0,
                label=f"{prefix}random subset (median)")
    full_rows = np.flatnonzero(full)
    if full_rows.size:
        idx = full_rows[_downsample(full_rows.size, MAX_FULL_POINTS)]
        shown = "" if idx.size == full_rows.size else f"; {idx.size} of {full_rows.size} + the worst"
        worst = full_rows[np.nanargmax(s.eps[full_rows])] if np.isfinite(
            s.eps[full_rows]).any() else full_rows[0]
        idx = np.union1d(idx, [worst])
        ax.plot(x[idx], _positive(s.eps[idx]), "o", color=colour, mec="k", mew=0.5,
                ms=3.5 if idx.size < 150 else 2.5, ls="none",
                label=f"{prefix}full orbit (exact{shown})")


def _limit_lines(ax, checks, several: bool) -> None:
    """Caution / problem limits in ε units: ``ratio limit x error scale`` of each run."""
    for check in checks:
        if check is None:
            continue
        for name, ratio in check["limits"]["ratio"].items():
            value = ratio * check["scale"]
            if math.isfinite(value) and value > 0:
                ax.axhline(value, color=LIMIT_COLOURS[name], ls="--", lw=1.0,
                           label=f"{name} limit ({check['scale_source']})")
        if not several:
            return


# ------------------------------------------------------------------ relative ε


def _fig_eps_hist(runs) -> Figure | None:
    quantities = [q for q in _quantities(runs)  # the energy is not judged relatively
                  if any((_check(r, q) or {}).get("relative_judged") for r in runs)]
    if not quantities:
        return None
    fig = _new_figure(3.4 * len(quantities) + 0.4, 3.4)
    axes = fig.subplots(1, len(quantities), squeeze=False)[0]
    for ax, q in zip(axes, quantities):
        series = [(k, r.series[q].relative) for k, r in enumerate(runs)
                  if q in r.summary["run"]["quantities"]]
        check = next((c for c in (_check(r, q) for r in runs) if c), None)
        limits = check["limits"]["relative"] if check else {}
        edges = _log_edges(np.concatenate([v for _, v in series] +
                                          [np.array(list(limits.values()))]))
        for k, rel in series:
            counts, _ = np.histogram(np.clip(rel[np.isfinite(rel)], edges[0], edges[-1]),
                                     edges)
            ax.stairs(counts, edges, color=f"C{k}", lw=1.5,
                      label=runs[k].label if len(runs) > 1 else "monitored steps")
        for name, value in limits.items():
            if math.isfinite(value) and value > 0:
                ax.axvline(value, color=LIMIT_COLOURS[name], ls="--", lw=1.0,
                           label=f"{name} limit")
        ax.set(xscale="log", xlabel=f"{q} relative ε (1)", ylabel="steps", title=q)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _one_legend(fig, [h for ax in axes for h in ax.get_legend_handles_labels()[0]])
    return fig


def _log_edges(values, n_bins: int = 60) -> np.ndarray:
    v = values[np.isfinite(values) & (values > 0)]
    lo = math.floor(math.log10(v.min())) if v.size else -16
    hi = math.ceil(math.log10(v.max())) if v.size else 0
    return np.logspace(lo, max(hi, lo + 1), n_bins + 1)


# ------------------------------------------------------------------ spectra


def _fig_spectra(runs) -> Figure | None:
    panels = [(r, q) for r in runs for q in r.summary["run"]["quantities"]
              if f"{q}_spectrum" in r.reader.observable_names
              and r.reader.count(f"{q}_spectrum") > 0]
    if not panels:
        return None
    heights = [len(r.reader.labels(f"{q}_spectrum")) + 1 for r, q in panels]
    fig = _new_figure(10, 1.0 + 0.22 * sum(heights) + 0.5 * len(panels))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False, height_ratios=heights)
    use_time = _use_time(runs)
    mesh = None
    for ax, (run, q) in zip(axes[:, 0], panels):
        mesh = _plot_spectrum(ax, run, q, use_time)
        ax.set_ylabel(f"{run.label}\n{q}" if len(runs) > 1 else q)
    axes[-1, 0].set_xlabel(_x_label(use_time))
    axes[-1, 0].set_xlim(*_run_span(runs, use_time))
    fig.colorbar(mesh, ax=axes[:, 0].tolist(), label="c̃(l,σ) (power fraction)", shrink=0.9)
    fig.suptitle("Character projections on full-orbit steps", fontsize=11)
    return fig


def _run_span(runs, use_time) -> tuple[float, float]:
    key = ("time_start_ps", "time_end_ps") if use_time else ("first_step", "last_step")
    lo = min(r.summary["run"][key[0]] for r in runs)
    hi = max(r.summary["run"][key[1]] for r in runs)
    return (lo - 0.5, hi + 0.5) if hi <= lo else (lo, hi)


def _plot_spectrum(ax, run, q, use_time):
    name = f"{q}_spectrum"
    reader = run.reader
    labels = [Irrep(int(l), int(s)) for l, s in reader.labels(name)]
    stride = max(1, math.ceil(reader.count(name) / MAX_HEATMAP_COLUMNS))
    step, time, values = read(reader, name, stride=stride)
    keep = np.isfinite(values).any(axis=1)      # rows of non-full steps may be NaN
    step, time, values = step[keep], time[keep], values[keep]
    residual = lookup(step, *read(reader, f"{q}_residual")[::2])
    matrix = np.vstack([values.T, residual[None, :]])
    x = time if use_time else step.astype(float)
    span = _run_span([run], use_time)
    mesh = ax.pcolormesh(_cell_edges(x, *span), np.arange(len(matrix) + 1),
                         np.clip(np.nan_to_num(matrix, nan=SPECTRUM_FLOOR), SPECTRUM_FLOOR, 1),
                         norm=LogNorm(SPECTRUM_FLOOR, 1), cmap="magma", shading="flat")
    targets = set(target_irreps(q))
    ticks = [str(ir) + (" ★" if ir in targets else "") for ir in labels] + ["l > l_max"]
    ax.set_yticks(np.arange(len(ticks)) + 0.5, ticks, fontsize=7)
    ax.invert_yaxis()
    return mesh


def _cell_edges(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Edges of cells centred on sorted ``x``, the outer ones clipped to ``[lo, hi]``
    (the run's span: a 0-0.4 ps run is drawn from 0 to 0.4 ps)."""
    x = np.asarray(x, dtype=float)
    if len(x) == 1:
        return np.array([lo, hi])
    mid = (x[1:] + x[:-1]) / 2
    edges = np.concatenate([[min(lo, x[0])], mid, [max(hi, x[-1])]])
    return np.maximum.accumulate(edges + np.arange(len(edges)) * 1e-12 * max(1, abs(x[-1])))


# ------------------------------------------------------------------ per atom


def _fig_per_atom(runs) -> Figure | None:
    samples = [(r, per_atom_sample(r.reader)) for r in runs]
    samples = [(r, s) for r, s in samples if s is not None]
    if not samples:
        return None
    fig = _new_figure(10, 0.6 + 3.0 * len(samples))
    axes = fig.subplots(len(samples), 2, width_ratios=[2.2, 1], squeeze=False)
    handles = []
    for (ax_atom, ax_el), (run, (_, values)) in zip(axes, samples):
        handles += _plot_per_atom(ax_atom, ax_el, run, _positive(values), len(runs) > 1)
    _one_legend(fig, handles)
    return fig


def _plot_per_atom(ax_atom, ax_el, run, values, several) -> list:
    names = symbols(run.reader.species)
    elements = list(dict.fromkeys(names))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(values, axis=0)
        lo, hi = np.nanpercentile(values, [5, 95], axis=0)
    for k, el in enumerate(elements):
        idx = np.array([i for i, s in enumerate(names) if s == el])
        ax_atom.errorbar(idx, med[idx], yerr=[med[idx] - lo[idx], hi[idx] - med[idx]],
                         fmt="o", ms=3, lw=0.8, color=f"C{k}", label=el)
    title = f"{run.label}: " if several else ""
    ax_atom.set(yscale="log", xlabel="atom index", ylabel="forces ε of the atom (eV/Å)",
                title=f"{title}per atom: median, 5-95 %")
    data = [_flat_sample(values[:, [i for i, s in enumerate(names) if s == el]])
            for el in elements]
    ax_el.boxplot(data, tick_labels=elements, showfliers=False, whis=(5, 95))
    ax_el.set(yscale="log", ylabel="forces ε of the atom (eV/Å)", title="per element")
    for ax in (ax_atom, ax_el):
        ax.set_ylim(*_log_range(values))
    return ax_atom.get_legend_handles_labels()[0]


def _log_range(values) -> tuple[float, float]:
    """Log-axis limits around the finite values, a factor 2 beyond (never a zero range)."""
    v = values[np.isfinite(values)]
    lo, hi = (float(v.min()), float(v.max())) if v.size else (EPS_FLOOR, 1.0)
    return lo / 2, hi * 2


def _flat_sample(block: np.ndarray, limit: int = 200_000) -> np.ndarray:
    flat = block.ravel()
    flat = flat[np.isfinite(flat)]
    return flat[:: max(1, math.ceil(len(flat) / limit))] if flat.size else np.array([EPS_FLOOR])


# ------------------------------------------------------------------ ε vs model error


def _fig_eps_vs_error(runs, max_points) -> Figure | None:
    pairs = [(k, r, q, error_observable(r.reader, q)) for k, r in enumerate(runs)
             for q in r.summary["run"]["quantities"]]
    pairs = [p for p in pairs if p[3] is not None]
    quantities = list(dict.fromkeys(q for _, _, q, _ in pairs))
    if not quantities:
        return None
    fig = _new_figure(3.3 * len(quantities) + 0.5, 3.6)
    axes = dict(zip(quantities, fig.subplots(1, len(quantities), squeeze=False)[0]))
    for k, run, q, name in pairs:
        s = run.series[q]
        s_err, _, err = read(run.reader, name)
        eps = lookup(s_err, s.step, s.eps)
        idx = _downsample(len(err), max_points)
        ax = axes[q]
        ax.loglog(_positive(err[idx]), _positive(eps[idx]), ".", ms=3, alpha=0.6,
                  color=f"C{k}", label=run.label if len(runs) > 1 else "steps")
        both = _positive(np.r_[err, eps])
        ax.plot([np.nanmin(both), np.nanmax(both)], [np.nanmin(both), np.nanmax(both)],
                "k--", lw=0.8, label="ε = error")
        unit = pretty_unit(s.unit)
        ax.set(xlabel=f"{q} model error ({unit})", ylabel=f"{q} ε ({unit})")
    _one_legend(fig, [h for ax in axes.values() for h in ax.get_legend_handles_labels()[0]])
    return fig


__all__ = ["make_figures", "figure_png", "save_pngs", "CAPTIONS", "MAX_POINTS",
           "MAX_HEATMAP_COLUMNS", "Run"]
