"""How the report prints numbers: 3 significant digits, scientific notation for small
and large magnitudes (never "0" for 1e-7), rounding noise of fractions shown as such."""

from __future__ import annotations

import math

from ...monitoring.policy import number, percent  # noqa: F401 (the one spelling)

NUMERICAL_ZERO = 1e-12   # power fractions below this are rounding noise


fmt = number


def fmt_fraction(x) -> str:
    """A power fraction: values below :data:`NUMERICAL_ZERO` (including the negative
    rounding noise of an exactly symmetric output) print as ``< 1e-12``."""
    if x is not None and math.isfinite(float(x)) and float(x) < NUMERICAL_ZERO:
        return f"< {NUMERICAL_ZERO:.0e}"
    return fmt(x)
