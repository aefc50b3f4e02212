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


@dataclass(frozen=True, order=True)
class Irrep:
    """One irrep ``(l, sigma)`` of O(3)."""

    l: int
    sigma: int

    def __post_init__(self):
        if not isinstance(self.l, int) or self.l < 0:
            raise ValueError(f"irrep angular order l must be a non-negative int, got {self.l!r}")
        if self.sigma not in (1, -1):
            raise ValueError(f"irrep parity sigma must be +1 or -1, got {self.sigma!r}")

    @property
    def dim(self) -> int:
        """Dimension ``2l + 1``."""
        return 2 * self.l + 1

    @property
    def inversion_sign(self) -> int:
        """Eigenvalue of the inversion ``-I`` in this irrep: ``sigma * (-1)^l``."""
        return self.sigma * (-1) ** self.l

    @property
    def is_proper(self) -> bool:
        return self.sigma == 1

    def __str__(self) -> str:
        return f"({self.l},{'+' if self.sigma > 0 else '-'}1)"

    @classmethod
    def parse(cls, text: str) -> "Irrep":
        """Parse ``"(1,-1)"``, ``"1,-1"`` or ``"1o"``/``"1e"``-free forms like ``"1-"``."""
        cleaned = text.strip().strip("()").replace(" ", "")
        if "," in cleaned:
            l_text, sigma_text = cleaned.split(",")
            return cls(int(l_text), int(sigma_text))
        if cleaned[-1] in "+-":
            return cls(int(cleaned[:-1]), 1 if cleaned[-1] == "+" else -1)
        raise ValueError(f"cannot parse irrep label {text!r}; use e.g. '(1,-1)'")


def irreps_up_to(l_max: int) -> Tuple[Irrep, ...]:
    """All irreps with ``l <= l_max``, ordered ``(0,+1), (0,-1), (1,+1), (1,-1), ...``."""
    if l_max < 0:
        raise ValueError(f"l_max must be non-negative, got {l_max}")
    return tuple(Irrep(l, s) for l in range(l_max + 1) for s in (1, -1))


def irrep_labels(irreps: Iterable[Irrep]):
    """``(n, 2)`` integer array of ``(l, sigma)``, for storage."""
    import numpy as np

    return np.array([[ir.l, ir.sigma] for ir in irreps], dtype=np.int64).reshape(-1, 2)


SCALAR = Irrep(0, 1)
PSEUDOSCALAR = Irrep(0, -1)
VECTOR = Irrep(1, 1)
PSEUDOVECTOR = Irrep(1, -1)
SYMMETRIC_TRACELESS = Irrep(2, 1)
