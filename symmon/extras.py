"""Optional dependencies (pyproject's extras): import one, or say how to install it."""

from __future__ import annotations

import importlib


def require(library: str, extra: str, what: str):
    """``import library``, or one sentence naming the ``pip install`` that adds it.

    >>> require("math", "none", "this").__name__
    'math'
    """
    try:
        return importlib.import_module(library)
    except ImportError:
        raise ImportError(f"{what} needs the {library!r} package, which is not installed: "
                          f"pip install 'symmon[{extra}]'") from None
