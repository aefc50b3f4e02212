"""Figures of layer spectra: modules x irreps (paper Fig. 4), irreps x epochs
(paper Fig. 3/6), and equivariance error / RMSE against the epoch (detached figures:
the session's matplotlib backend is left alone)."""

from __future__ import annotations

import os
from typing import Dict, List, Sequence

import numpy as np

from ..figure_file import new_figure, save_figure

__all__ = ["plot_layers", "plot_module_epochs", "plot_output_metrics"]

_FLOOR = 1e-6


def _format(value: float) -> str:
    if not np.isfinite(value):
        return ""
    if value >= 0.1:
        return f"{value:.2f}"
    if value < _FLOOR:
        return "0"
    return f"{value:.0e}".replace("e-0", "e-")


def _heatmap(ax, values, row_labels, col_labels):
    from matplotlib.colors import LogNorm

    shown = np.clip(np.nan_to_num(values, nan=_FLOOR), _FLOOR, 1.0)
    image = ax.imshow(shown, norm=LogNorm(vmin=_FLOOR, vmax=1.0), cmap="viridis",
                      aspect="auto")
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=60, ha="right",
                  fontsize=7)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=7)
    if values.size <= 900:
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                color = "black" if shown[i, j] > 1e-2 else "white"
                ax.text(j, i, _format(values[i, j]), ha="center", va="center",
                        fontsize=5.5, color=color)
    return image


def plot_layers(result: Dict, path: str, statistic: str = "aggregate",
                title: str = "") -> str:
    """Modules (rows) x irreps + residual (columns) heatmap, log colour scale."""
    names = list(result["modules"])
    values = np.array([result["modules"][n][statistic] for n in names])
    columns = result["columns"]
    rows = [f"{short_name(n)} [{result['modules'][n]['sample_kind']}]" for n in names]
    fig = new_figure(3.0 + 0.6 * len(columns), 1.4 + 0.3 * len(rows))
    ax = fig.subplots()
    image = _heatmap(ax, values, rows, columns)
    fig.colorbar(image, ax=ax, label=f"normalised power ({statistic})")
    ax.set_title(title or f"character spectra ({statistic})", fontsize=9)
    return save_figure(fig, path, dpi=150, bbox_inches="tight")


def plot_module_epochs(name: str, epochs: Sequence[int], spectra: np.ndarray,
                       columns: Sequence[str], path: str, statistic="aggregate") -> str:
    """Irreps + residual (rows) x epochs (columns) heatmap of one module."""
    fig = new_figure(2.0 + 0.45 * len(epochs), 1.0 + 0.35 * len(columns))
    ax = fig.subplots()
    image = _heatmap(ax, np.asarray(spectra).T, list(columns), [str(e) for e in epochs])
    ax.set_xlabel("epoch")
    fig.colorbar(image, ax=ax, label=f"normalised power ({statistic})")
    ax.set_title(short_name(name), fontsize=9)
    return save_figure(fig, path, dpi=150, bbox_inches="tight")


def plot_output_metrics(epochs: Sequence[int], outputs: Dict[str, Dict[str, List[float]]],
                        path: str) -> str:
    """Relative equivariance error and RMSE of every output against the epoch."""
    names = list(outputs)
    fig = new_figure(8, 2.4 * max(1, len(names)))
    axes = fig.subplots(len(names), 2, squeeze=False)
    for row, name in enumerate(names):
        data = outputs[name]
        ax = axes[row, 0]
        ax.semilogy(epochs, np.maximum(data["relative_mean"], 1e-16), "o-")
        ax.set_ylabel(f"{name}\nmean eps / rms", fontsize=8)
        ax = axes[row, 1]
        if np.any(np.isfinite(data["rmse"])):
            ax.semilogy(epochs, data["rmse"], "o-", label="lab frame")
            ax.semilogy(epochs, data["rmse_symmetrized"], "s--", label="O(3)-averaged")
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no labels", ha="center", va="center", transform=ax.transAxes)
        ax.set_ylabel("RMSE", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    return save_figure(fig, path, dpi=150, bbox_inches="tight")


def short_name(name: str) -> str:
    """Module name without the ``backend.`` prefix (for figure labels)."""
    return name[len("backend."):] if name.startswith("backend.") else name


def safe_filename(name: str) -> str:
    keep = [c if (c.isalnum() or c in "._-") else "_" for c in name]
    return "".join(keep)[:150]


def figures_dir(output: str) -> str:
    stem = os.path.splitext(output)[0]
    return stem + "_figures"

