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
from typing import Mapping

import matplotlib
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ...core.outputs import pretty_unit
from ...core.quantities import QUANTITY, QUANTITY_NAMES
from .numbers import percent
from .series import MAX_SPECTRUM_ROWS, RunSeries
from .summary import Summary

MAX_POINTS = 5000            # points per plotted curve
MAX_HEATMAP_COLUMNS = MAX_SPECTRUM_ROWS   # full-orbit steps shown in a spectrum heatmap
MAX_FULL_POINTS = 400        # full-orbit dots on the ε series (evenly spaced, + the worst)
EPS_FLOOR = 1e-17            # plotted in place of ε <= 0 on log axes
LIMIT_COLOURS = {"caution": "#d98e04", "problem": "#c0392b"}

CAPTIONS = {
    "eps_time": "Equivariance error ε over the run, per atom where it applies (log scale): "
                "random-subset estimates with their standard-error band, exact full-orbit "
                "steps as dots; dashed: the caution and problem limits against the error "
                "scale the verdict uses (the model's own error or a typical MLIP error).",
    "eps_hist": "Distribution over monitored steps of the relative ε = ε / max(|Q|, "
                "floor) (the number the tables and the JSON hold for each step), one panel "
                "per quantity judged by it (not the energy, whose zero is arbitrary), with "
                "that quantity's own limits and floor.",
    "spectra": "Where each output's power sits, by channel (l,σ), on full-orbit steps. "
               "Blue rows (★) are the channels an exactly equivariant output occupies: "
               "they hold nearly all the power. Other rows are channels it leaves empty, "
               "on a log scale of their share of the power: a share p is a part about √p "
               "the output's size (1e-4: 1 %, 1e-2: 10 %). White (below 1e-6, 0.1 %) is "
               "rounding noise or negligible; yellow is small; orange to red is a part "
               "of the output that breaks symmetry and matters. The contamination table "
               "gives their mean.",
    "per_atom": "Force ε of each atom (median and 5-95 % range over sampled steps, left) "
                "and per element (right).",
    "eps_vs_error": "ε against the model error logged at the same steps; points above the "
                    "diagonal mean symmetry breaking exceeds the model error.",
}

OFF_TARGET_FLOOR = 1e-6      # off-target shares below this are drawn white (0.1 % in size)


@dataclass(frozen=True)
class Run:
    """One run's series and summary, with the label it has in a comparison."""

    label: str
    data: RunSeries
    summary: Summary

    @property
    def series(self) -> dict:
        return self.data.quantities


def make_figures(data, summary=None, max_points: int = MAX_POINTS,
                 labels=None) -> dict[str, Figure]:
    """Figures ``{name: Figure}`` (names as in :data:`CAPTIONS`; absent when the log
    lacks the data) of one run's :class:`~.series.RunSeries` and
    :class:`~.summary.Summary`, or of several runs side by side (lists)."""
    from .summary import build_summary

    datas = data if isinstance(data, (list, tuple)) else [data]
    summaries = summary if isinstance(summary, (list, tuple)) else [summary] * len(datas)
    labels = labels or [os.path.basename(d.paths[0]) for d in datas]
    runs = [Run(lab, d, s if s is not None else build_summary(d))
            for lab, d, s in zip(labels, datas, summaries)]
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
    return all(r.summary.run.has_time for r in runs)


def _x_label(use_time: bool) -> str:
    return "time (ps)" if use_time else "MD step"


def _quantities(runs) -> list[str]:
    return [q for q in QUANTITY_NAMES if any(q in r.series for r in runs)]


def _check(run: Run, q: str):
    return run.summary.check(q)


def _eps_label(q: str, unit: str) -> str:
    return f"{QUANTITY[q].eps_label}\n({pretty_unit(unit)})"


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
            if q in run.series:
                _plot_eps_series(ax, run, q, use_time, max_points, f"C{k}",
                                 run.label if len(runs) > 1 else None)
        _limit_lines(ax, [_check(r, q) for r in runs], len(runs) > 1)
        ax.set_yscale("log")
        ax.set_ylabel(_eps_label(q, next(r.series[q].unit for r in runs if q in r.series)))
        ax.grid(True, which="major", alpha=0.3)
    axes[-1].set_xlabel(_x_label(use_time))
    handles = [h for ax in axes for h in ax.get_legend_handles_labels()[0]]
    _one_legend(fig, handles)
    fig.suptitle("Equivariance error over the run", fontsize=11)
    return fig


def _plot_eps_series(ax, run, q, use_time, max_points, colour, label) -> None:
    s = run.series[q]
    full = s.full
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
        g = check.grade
        for name in ("caution", "problem"):
            value = getattr(g.limits["ratio"], name) * g.scale
            if math.isfinite(value) and value > 0:
                ax.axhline(value, color=LIMIT_COLOURS[name], ls="--", lw=1.0,
                           label=f"{name} limit ({g.scale_source})")
        if not several:
            return


# ------------------------------------------------------------------ relative ε


def _fig_eps_hist(runs) -> Figure | None:
    quantities = [q for q in _quantities(runs)  # the energy is not judged relatively
                  if any(_check(r, q) is not None and _check(r, q).grade.judged
                         for r in runs)]
    if not quantities:
        return None
    fig = _new_figure(3.4 * len(quantities) + 0.4, 3.4)
    axes = fig.subplots(1, len(quantities), squeeze=False)[0]
    for ax, q in zip(axes, quantities):
        series = [(k, r.series[q].relative) for k, r in enumerate(runs) if q in r.series]
        check = next((c for c in (_check(r, q) for r in runs) if c), None)
        limits = {} if check is None else {
            name: getattr(check.grade.limits["relative"], name)
            for name in ("caution", "problem")}
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
                           label=f"{name} limit ({percent(value)} %)")
        floor = f"floor {check.grade.floor:.3g} {pretty_unit(check.unit)}" if check else ""
        ax.set(xscale="log", xlabel=f"{q} relative ε = ε / max(|Q|, floor)", ylabel="steps",
               title=f"{q} ({floor})" if floor else q)
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
    panels = [(r, q) for r in runs for q in r.series if q in r.data.spectra]
    if not panels:
        return None
    heights = [len(r.data.spectra[q].irreps) + 1 for r, q in panels]
    fig = _new_figure(10, 1.2 + 0.22 * sum(heights) + 0.5 * len(panels))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False, height_ratios=heights)
    use_time = _use_time(runs)
    meshes = None
    for ax, (run, q) in zip(axes[:, 0], panels):
        meshes = _plot_spectrum(ax, run, q, use_time)
        ax.set_ylabel(f"{run.label}\n{q}" if len(runs) > 1 else q)
    axes[-1, 0].set_xlabel(_x_label(use_time))
    axes[-1, 0].set_xlim(*_run_span(runs, use_time))
    on, off = meshes
    bar = fig.colorbar(off, ax=axes[:, 0].tolist(), shrink=0.9, pad=0.01, extend="min",
                       label="share of power in a wrong channel (its size ≈ √share)")
    ticks = [1e-6, 1e-4, 1e-2, 1.0]
    bar.set_ticks(ticks, labels=[f"{t:.0e} ({percent(math.sqrt(t))} %)" for t in ticks])
    fig.colorbar(on, ax=axes[:, 0].tolist(), shrink=0.9, pad=0.01,
                 label="share in the target channels ★")
    fig.suptitle("Where each output's power sits (channels (l,σ), full-orbit steps)",
                 fontsize=11)
    return fig


def _run_span(runs, use_time) -> tuple[float, float]:
    run = [r.summary.run for r in runs]
    if use_time:
        lo, hi = min(r.time_start_ps for r in run), max(r.time_end_ps for r in run)
    else:
        lo, hi = min(r.first_step for r in run), max(r.last_step for r in run)
    return (lo - 0.5, hi + 0.5) if hi <= lo else (lo, hi)


def _plot_spectrum(ax, run, q, use_time):
    """Target rows in blue (linear share, 0..1), the others yellow to red (log share,
    :data:`OFF_TARGET_FLOOR`..1, white below); returns both meshes."""
    spectrum = run.data.spectra[q]
    matrix = np.vstack([spectrum.values.T, spectrum.residual[None, :]])
    x = spectrum.time if use_time else spectrum.step.astype(float)
    edges = _cell_edges(x, *_run_span([run], use_time)), np.arange(len(matrix) + 1)
    targets = set(spectrum.targets)
    is_target = np.array([ir in targets for ir in spectrum.irreps] + [False])
    values = np.nan_to_num(matrix, nan=0.0)
    on = np.ma.masked_where(~np.broadcast_to(is_target[:, None], values.shape), values)
    rows = np.broadcast_to(is_target[:, None], values.shape)
    off = np.ma.masked_where(rows, np.where(values > 0, np.minimum(values, 1), 1e-300))
    mesh_on = ax.pcolormesh(*edges, np.clip(on, 0, 1), cmap="Blues", vmin=0, vmax=1,
                            shading="flat")
    cmap = matplotlib.colormaps["YlOrRd"].with_extremes(under="white")
    mesh_off = ax.pcolormesh(*edges, off, norm=LogNorm(OFF_TARGET_FLOOR, 1), cmap=cmap,
                             shading="flat")
    ticks = [str(ir) + (" ★" if ir in targets else "") for ir in spectrum.irreps]
    ax.set_yticks(np.arange(len(ticks) + 1) + 0.5, ticks + ["l > l_max"], fontsize=7)
    ax.invert_yaxis()
    return mesh_on, mesh_off


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
    samples = [(r, r.data.per_atom) for r in runs if r.data.per_atom is not None]
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
    names = run.data.symbols
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
    pairs = [(k, r, q, r.data.logged_errors[q]) for k, r in enumerate(runs)
             for q in r.series if q in r.data.logged_errors]
    quantities = list(dict.fromkeys(q for _, _, q, _ in pairs))
    if not quantities:
        return None
    fig = _new_figure(3.3 * len(quantities) + 0.5, 3.6)
    axes = dict(zip(quantities, fig.subplots(1, len(quantities), squeeze=False)[0]))
    for k, run, q, logged in pairs:
        err, eps = logged.error, logged.eps
        idx = _downsample(len(err), max_points)
        ax = axes[q]
        ax.loglog(_positive(err[idx]), _positive(eps[idx]), ".", ms=3, alpha=0.6,
                  color=f"C{k}", label=run.label if len(runs) > 1 else "steps")
        both = _positive(np.r_[err, eps])
        ax.plot([np.nanmin(both), np.nanmax(both)], [np.nanmin(both), np.nanmax(both)],
                "k--", lw=0.8, label="ε = error")
        unit = pretty_unit(run.series[q].unit)
        ax.set(xlabel=f"{q} model error ({unit})", ylabel=f"{q} ε ({unit})")
    _one_legend(fig, [h for ax in axes.values() for h in ax.get_legend_handles_labels()[0]])
    return fig


__all__ = ["make_figures", "figure_png", "save_pngs", "CAPTIONS", "MAX_POINTS",
           "MAX_HEATMAP_COLUMNS", "Run"]
