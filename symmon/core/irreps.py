"""Irreducible representations of O(3), labelled ``(l, sigma)``.

``sigma = +1`` ("proper") transforms like the spherical harmonic ``Y_l`` under
inversion, i.e. acquires ``(-1)^l``; ``sigma = -1`` ("pseudo") acquires
``-(-1)^l``. Scalars are ``(0, +1)``, pseudoscalars ``(0, -1)``, vectors
``(1, +1)``, axial vectors ``(1, -1)``. This is metatomic's
``o3_lambda`` / ``o3_sigma`` convention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Tuple

import numpy as np


@dataclass(frozen=True, order=True)
class Irrep:
    """One irrep ``(l, sigma)`` of O(3); immutable and printable.

    Build it from two ints, a tuple ``(l, sigma)``, another ``Irrep``, or a string:
    ``"(1,-1)"``, ``"1,-1"``, ``"1-"`` or e3nn's ``"1o"`` / ``"2e"`` (``o``/``e`` =
    odd/even *parity* ``p`` under inversion; ``sigma = p (-1)^l``, so ``"1o"`` is the
    vector ``(1,+1)`` and ``"1e"`` the axial vector ``(1,-1)``): see :meth:`coerce`.
    """

    l: int
    sigma: int

    def __post_init__(self):
        if isinstance(self.l, bool) or not isinstance(self.l, (int, np.integer)) or self.l < 0:
            raise ValueError(f"irrep angular order l must be a non-negative int, got {self.l!r}")
        if self.sigma not in (1, -1):
            raise ValueError(f"irrep parity sigma must be +1 or -1, got {self.sigma!r}")
        object.__setattr__(self, "l", int(self.l))
        object.__setattr__(self, "sigma", int(self.sigma))

    @property
    def dim(self) -> int:
        """Dimension ``2l + 1``."""
        return 2 * self.l + 1

    @property
    def inversion_sign(self) -> int:
        """Eigenvalue of the inversion ``-I`` in this irrep: ``sigma * (-1)^l``."""
        return self.sigma * (-1) ** self.l

    def __str__(self) -> str:
        return f"({self.l},{'+' if self.sigma > 0 else '-'}1)"

    @property
    def e3nn(self) -> str:
        """e3nn's label, ``"1o"`` for ``(1,+1)``."""
        return f"{self.l}{'e' if self.inversion_sign > 0 else 'o'}"

    @classmethod
    def coerce(cls, value) -> "Irrep":
        """An ``Irrep`` from an ``Irrep``, a pair ``(l, sigma)`` or a label string."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        try:
            l, sigma = value
        except (TypeError, ValueError):
            raise ValueError(f"cannot read {value!r} as an irrep; use (l, sigma), "
                             "'(1,-1)' or '1o'") from None
        return cls(l, sigma)

    @classmethod
    def parse(cls, text: str) -> "Irrep":
        """Parse ``"(1,-1)"``, ``"1,-1"``, ``"1-"`` or e3nn's ``"1o"``/``"2e"``."""
        cleaned = text.strip().strip("()").replace(" ", "")
        try:
            if "," in cleaned:
                l_text, sigma_text = cleaned.split(",")
                return cls(int(l_text), int(sigma_text))
            l, tail = int(cleaned[:-1]), cleaned[-1]
        except (ValueError, IndexError):
            raise ValueError(f"cannot parse irrep label {text!r}; use e.g. '(1,-1)' or '1o'"
                             ) from None
        if tail in "+-":
            return cls(l, 1 if tail == "+" else -1)
        if tail in "eo":
            parity = 1 if tail == "e" else -1
            return cls(l, parity * (-1) ** l)
        raise ValueError(f"cannot parse irrep label {text!r}; use e.g. '(1,-1)' or '1o'")


def irreps_up_to(l_max: int) -> Tuple[Irrep, ...]:
    """All irreps with ``l <= l_max``, ordered ``(0,+1), (0,-1), (1,+1), (1,-1), ...``."""
    if l_max < 0:
        raise ValueError(f"l_max must be non-negative, got {l_max}")
    return tuple(Irrep(l, s) for l in range(l_max + 1) for s in (1, -1))


def irrep_labels(irreps: Iterable[Irrep]):
    """``(n, 2)`` integer array of ``(l, sigma)``, for storage."""
    return np.array([[ir.l, ir.sigma] for ir in map(Irrep.coerce, irreps)],
                    dtype=np.int64).reshape(-1, 2)


