"""The figure of ``symmon eval``: equivariance error against model error (paper Fig. 2).

One panel per quantity: each structure is a point (its error against the labels,
its ε), log-log, with the line ε = error and the line ε = error/10; the title gives
the median ratio. A quantity without labels gets a histogram of ε instead. The figure is a detached
``matplotlib.figure.Figure`` (:mod:`symmon.frontends.figure_file`): pyplot's state and
the session's backend are left alone.
"""

from __future__ import annotations

import os

import numpy as np

from ..core.outputs import pretty_unit
from .figure_file import new_figure, save_figure


def _finite_positive(values) -> np.ndarray:
    values = np.array([np.nan if v is None else v for v in values], dtype=float)
    return np.where(np.isfinite(values) & (values > 0), values, np.nan)


def _scatter(ax, quantity, summary, errors, eps):
    unit = pretty_unit(summary["unit"])
    good = np.isfinite(errors) & np.isfinite(eps)
    ax.loglog(errors[good], eps[good], "o", ms=4, alpha=0.7)
    low = np.nanmin(np.concatenate([errors[good], eps[good]])) / 2
    high = np.nanmax(np.concatenate([errors[good], eps[good]])) * 2
    line = np.array([low, high])
    ax.loglog(line, line, "k-", lw=1, label="ε = error")
    ax.loglog(line, line / 10, "k:", lw=1, label="ε = error / 10")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_xlabel(f"model error per structure ({unit})")
    ax.set_ylabel(f"equivariance error ε ({unit})")
    ax.set_title(f"{quantity}: median ε/error {summary['ratio_median']:.2g}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")


def _histogram(ax, quantity, summary, eps):
    from matplotlib.ticker import MaxNLocator, NullFormatter

    unit = pretty_unit(summary["unit"])
    eps = eps[np.isfinite(eps)]
    if len(eps):
        bins = np.logspace(np.log10(eps.min() / 1.5), np.log10(eps.max() * 1.5), 20)
        ax.hist(eps, bins=bins)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"equivariance error ε ({unit})")
    ax.set_ylabel("structures")
    ax.set_title(f"{quantity}: no labels, ε only", fontsize=10)


def eps_vs_error_figure(document, path) -> str:
    """Write the figure of a ``symmon eval`` document to ``path`` (format from its
    extension; written whole or not at all)."""
    quantities = list(document["quantities"])
    fig = new_figure(4.2 * len(quantities), 4)
    axes = fig.subplots(1, len(quantities), squeeze=False)
    for ax, quantity in zip(axes[0], quantities):
        summary = document["quantities"][quantity]
        rows = [s[quantity] for s in document["structures"] if quantity in s]
        eps = _finite_positive([r["eps"] for r in rows])
        errors = _finite_positive([r["error"] for r in rows])
        if np.isfinite(errors).any():
            _scatter(ax, quantity, summary, errors, eps)
        else:
            _histogram(ax, quantity, summary, eps)
    fig.suptitle(f"{os.path.basename(document['model'])}: {document['n_structures']} structures, O(3) degree "
                 f"{document['degree']}", fontsize=9)
    return save_figure(fig, path, dpi=130)
