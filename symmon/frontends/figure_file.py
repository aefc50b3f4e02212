"""Figures of the command-line tools, detached from pyplot: no backend is switched.

A :class:`matplotlib.figure.Figure` made directly (not by ``pyplot``) joins no pyplot
state and needs no ``matplotlib.use``: calling these tools from a notebook or a GUI
session leaves the user's backend and open figures as they were. :func:`save_figure`
renders with the canvas matplotlib picks for the file's format and writes the bytes
whole or not at all (:func:`symmon.io.files.write_atomically`).
"""

from __future__ import annotations

import io
import os

from matplotlib.figure import Figure

from ..io.files import write_atomically


def new_figure(width: float, height: float) -> Figure:
    """A detached figure of ``width`` x ``height`` inches, tight layout at each draw."""
    return Figure(figsize=(width, height), layout="tight")


def save_figure(fig: Figure, path, dpi: int, **savefig_options) -> str:
    """Write ``fig`` to ``path`` (format from its extension, PNG without one)."""
    path = os.fspath(path)
    extension = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    buffer = io.BytesIO()
    fig.savefig(buffer, format=extension, dpi=dpi, **savefig_options)
    write_atomically(path, buffer.getvalue())
    return path
