"""How the report prints numbers: 3 significant digits, scientific notation for small
and large magnitudes (never "0" for 1e-7), rounding noise of fractions shown as such."""

from __future__ import annotations

import math

import numpy as np

NUMERICAL_ZERO = 1e-12   # power fractions below this are rounding noise


def fmt(x, digits: int = 3) -> str:
    """``0.0612``, ``1.2e-07``, ``3.4e+05``; ``–`` for None/NaN; integers as they are."""
    if x is None:
        return "–"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(x)
    x = float(x)
    if not math.isfinite(x):
        return "–"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e4:
        return f"{x:.{digits}g}"
    return f"{x:.{digits - 1}e}"


def fmt_fraction(x) -> str:
    """A power fraction: values below :data:`NUMERICAL_ZERO` (including the negative
    rounding noise of an exactly symmetric output) print as ``< 1e-12``."""
    if x is not None and math.isfinite(float(x)) and float(x) < NUMERICAL_ZERO:
        return f"< {NUMERICAL_ZERO:.0e}"
    return fmt(x)


def percent(fraction) -> str:
    """``0.27`` -> ``27``, ``1.06`` -> ``106``, ``0.031`` -> ``3.1`` (no unit sign)."""
    value = 100 * float(fraction)
    return f"{value:.0f}" if abs(value) >= 10 else fmt(value, 2)
