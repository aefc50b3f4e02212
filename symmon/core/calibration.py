"""Calibrated intervals for ``eps^2`` from ``P`` random pairs: the pivot's law from a reference orbit.

The random-pair estimate is ``eps_hat^2 = W + B`` (:mod:`symmon.core.intervals`). Its
relative error ``T = eps_hat^2 / eps^2`` has a law fixed by the *shape* of the orbit
distribution of ``(y(R), y(-R))`` and by ``P``, not by its scale. With 2-10 pairs that
law cannot be learnt from the pairs themselves (a skewed or heavy-tailed orientation
dependence hides its tail, so data-only intervals under-cover; docs/theory.md shows
that even the exact variance of ``T`` with a Gamma law misses by up to 9 points).

A *reference* sample of the same orbit, ``C`` pairs (a random grid of ``C >= 16``
rotations, or a quadrature with its weights), gives that law by the bootstrap: draw
``P`` pairs from the reference, compute the same estimator, and divide by the
reference's own value (``E[T*] = 1``):

* a quadrature (weights ``v_c``, ``C >> P``): with replacement, probabilities ``v_c``,
  ``T* = eps*^2 / eps_ref^2``, ``eps_ref^2 = sum_c v_c ||d_c||^2 + sum_c v_c ||u_c - u_bar||^2``;
* a random reference (equal weights): ``P`` distinct pairs, relative to the estimator on
  all ``C`` pairs, with the finite-population correction ``s = sqrt(C/(C-P))`` on the
  log scale, ``(T*)^s`` normalised to mean 1 (:func:`_stretched`; with replacement,
  most draws of 10 out of 32 repeat a pair, which widens the law: the 68 % interval
  then covered 79 % on a tensor model).

The interval of a step with estimate ``eps_hat^2`` is the pivot interval ``[eps_hat^2 / q*_{(1+a)/2}, eps_hat^2 / q*_{(1-a)/2}]``. Its coverage is
nominal when the step's orbit has the reference's shape (up to scale): the monitor takes
the reference from a calibration step of the same trajectory (a larger random grid, or
a full-orbit step) and carries it to the following steps; measured coverage on analytic
models with the reference on a *different* (perturbed) structure and along tiny-PET MD
is in docs/theory.md.

Only ``||d_c||^2`` and the Gram matrix of the ``u_c`` are kept (``C + C^2`` numbers); a
table of draws is one product with the matrix of pair counts per draw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

METHOD = "calibrated_bootstrap"
#: bootstrap draws per quantile table (the 2.5 % quantile to ~0.25 % in probability)
DRAWS = 4000
#: fewest reference pairs accepted (the bootstrap must see the orbit's spread)
MIN_REFERENCE_PAIRS = 16


class _PivotLaw:
    """Quantiles of the law of ``T = eps_hat^2 / eps^2`` and the pivot interval; the
    subclass gives ``ratio_table(n_pairs)`` (sorted draws) and a ``_tables`` cache."""

    def ratio_quantiles(self, n_pairs: int, probabilities: Sequence[float]) -> np.ndarray:
        """Quantiles of ``T*`` for ``n_pairs`` pairs (cached)."""
        key = (n_pairs, tuple(float(p) for p in probabilities))
        if key not in self._tables:
            self._tables[key] = np.quantile(self.ratio_table(n_pairs), key[1])
        return self._tables[key]

    def interval(self, eps_sq, n_pairs: int, level: float) -> Tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` of ``eps^2`` with coverage ``level`` for estimates ``eps_sq``."""
        low_q, high_q = self.ratio_quantiles(n_pairs, [(1 - level) / 2, (1 + level) / 2])
        eps_sq = np.asarray(eps_sq, dtype=float)
        high = eps_sq / low_q if low_q > 0 else np.full_like(eps_sq, np.inf)
        return eps_sq / high_q, high


@dataclass(frozen=True, eq=False)
class PairCalibration(_PivotLaw):
    """The law of ``eps_hat^2 / eps^2`` at any number of pairs, from a reference orbit.

    :ivar within: ``(C,)`` ``||d_c||^2`` of each reference pair (output units squared)
    :ivar gram: ``(C, C)`` Gram matrix ``u_c . u_c'`` of the centred even parts
    :ivar weights: ``(C,)`` pair probabilities (sum 1)
    :ivar eps_sq: the reference's ``eps^2`` (bootstrap estimand)
    :ivar source: where the reference came from (e.g. ``"random_grid(32)"``), logged
    """

    within: np.ndarray
    gram: np.ndarray
    weights: np.ndarray
    eps_sq: float
    source: str = "reference"
    _tables: Dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def n_pairs(self) -> int:
        return len(self.within)

    @property
    def usable(self) -> bool:
        """False when the reference is itself symmetric (``eps_ref = 0``): no shape."""
        return bool(self.eps_sq > 0 and np.isfinite(self.eps_sq))

    def ratio_table(self, n_pairs: int) -> np.ndarray:
        """Sorted ``T* = eps*^2 / eps_ref^2`` of the bootstrap draws at ``n_pairs`` (cached)."""
        if n_pairs not in self._tables:
            self._tables[n_pairs] = np.sort(self._draw_ratios(n_pairs))
        return self._tables[n_pairs]

    def _draw_ratios(self, n_pairs: int) -> np.ndarray:
        """``T*`` of ``DRAWS`` bootstrap samples of ``n_pairs`` pairs.

        Equal weights (a random reference of ``C`` pairs): ``n_pairs`` distinct pairs
        (drawing with replacement from so few repeats pairs in most draws at ``P = 10``,
        which widens the law), relative to the reference's own unbiased value, with
        the finite-population correction of :func:`_stretched`. Unequal
        weights (a quadrature, ``C >> P``): with replacement, probabilities = weights.
        """
        rng = np.random.default_rng(n_pairs)  # same reference, same table
        n_ref = self.n_pairs
        if np.allclose(self.weights, 1.0 / n_ref) and n_pairs < n_ref:
            index = np.argsort(rng.random((DRAWS, n_ref)), axis=1)[:, :n_pairs]
            ratios = self._estimates(index) / self.unbiased_eps_sq
            return _stretched(ratios, np.sqrt(n_ref / (n_ref - n_pairs)))
        index = rng.choice(n_ref, size=(DRAWS, n_pairs), p=self.weights)
        return self._estimates(index) / self.eps_sq

    @property
    def unbiased_eps_sq(self) -> float:
        """The pair estimator on the whole (equal-weight) reference: ``B`` over ``C - 1``."""
        n_ref = self.n_pairs
        between = (np.trace(self.gram) - self.gram.sum() / n_ref) / (n_ref - 1)
        return float(self.within.mean() + between)

    def _estimates(self, index: np.ndarray) -> np.ndarray:
        """The pair estimator ``W + B`` on the reference pairs ``index`` ``(draws, P)``,
        through the count of each reference pair per draw ``c``: ``W = c.w / P``,
        ``B = (c.diag(G) - c G c / P) / (P - 1)`` (one matrix product, not ``P^2``
        look-ups per draw)."""
        n_draws, n_pairs = index.shape
        counts = np.zeros((n_draws, self.n_pairs))
        np.add.at(counts, (np.repeat(np.arange(n_draws), n_pairs), index.ravel()), 1.0)
        within = counts @ self.within / n_pairs
        diagonal = counts @ np.diagonal(self.gram)
        total = np.einsum("dc,dc->d", counts @ self.gram, counts)
        return within + np.maximum((diagonal - total / n_pairs) / (n_pairs - 1), 0.0)


@dataclass(frozen=True, eq=False)
class CalibrationPool(_PivotLaw):
    """Several references of one trajectory as one law: the mixture of their ``T*``
    (each reference's draws with equal weight), so a shape that drifts between
    calibration steps widens the law instead of being missed, and one unlucky
    reference weighs ``1/n``. The monitor pools its last :data:`POOL` references."""

    members: Tuple[PairCalibration, ...]
    _tables: Dict = field(default_factory=dict, repr=False)

    @property
    def usable(self) -> bool:
        return any(member.usable for member in self.members)

    @property
    def source(self) -> str:
        return " + ".join(member.source for member in self.members if member.usable)

    def ratio_table(self, n_pairs: int) -> np.ndarray:
        return np.sort(np.concatenate([member.ratio_table(n_pairs) for member in self.members
                                       if member.usable]))


#: references the monitor pools (its last calibration steps, the current one included)
POOL = 4


def pooled(*references) -> Optional[_PivotLaw]:
    """One law from references and pools (None and unusable ones dropped); a single
    law is returned as it is, with its cached quantile tables (a new pool would sort
    its members' draws again: ~2 ms per quantity and step)."""
    given = [reference for reference in references if reference is not None]
    if len(given) == 1:
        return given[0] if given[0].usable else None
    members = []
    for reference in given:
        members += list(getattr(reference, "members", (reference,)))
    members = [member for member in members if member.usable]
    if not members:
        return None
    return members[0] if len(members) == 1 else CalibrationPool(tuple(members))


def pair_calibration(plus, minus, weights=None, source: str = "reference") -> PairCalibration:
    """:class:`PairCalibration` from back-transformed values at ``R_c`` and ``-R_c``.

    :param plus, minus: ``(C, *components)`` (any float dtype/device)
    :param weights: ``(C,)`` pair weights (quadratures: ``w_k + w_{k+C}``); default equal
    """
    plus = torch.as_tensor(plus, dtype=torch.float64).reshape(len(plus), -1).cpu()
    minus = torch.as_tensor(minus, dtype=torch.float64).reshape(len(minus), -1).cpu()
    n_pairs = plus.shape[0]
    if n_pairs < MIN_REFERENCE_PAIRS:
        raise ValueError(f"a reference orbit needs at least {MIN_REFERENCE_PAIRS} rotation "
                         f"pairs to calibrate intervals (got {n_pairs}); use "
                         f"random_grid({MIN_REFERENCE_PAIRS * 2}) or a quadrature_grid")
    v = (torch.full((n_pairs,), 1.0 / n_pairs, dtype=torch.float64) if weights is None
         else torch.as_tensor(np.asarray(weights, dtype=float) / np.sum(weights)))
    d, u = (plus - minus) / 2, (plus + minus) / 2
    u = u - (v[:, None] * u).sum(dim=0)
    within = (d * d).sum(dim=1)
    gram = u @ u.T
    eps_sq = float((v * within).sum() + (v * torch.diagonal(gram)).sum())
    return PairCalibration(within.numpy(), gram.numpy(), v.numpy(), eps_sq, source)


def calibration_from_back(back: torch.Tensor, grid) -> PairCalibration:
    """:func:`pair_calibration` of back-transformed values ``(2C, ...)`` on ``grid``."""
    n_pairs = grid.n_rotations
    return pair_calibration(back[:n_pairs], back[n_pairs:], grid.rotation_weights,
                            grid_label(grid))


def grid_label(grid) -> str:
    """``"random(32)"`` or ``"quadrature(8)"``: what a reference was sampled on."""
    size = grid.n_rotations if grid.kind == "random" else grid.degree
    return f"{grid.kind}({size})"


def _stretched(ratios: np.ndarray, stretch: float) -> np.ndarray:
    """The finite-population correction of ``T*``: ``(T*)^s / mean((T*)^s)``, its spread
    widened by ``s`` on the log scale with the mean kept at 1.

    Near ``T* = 1`` this is the linear ``1 + s (T* - 1)`` (the variance of a mean of
    ``P`` of ``C`` values drawn without replacement is ``(1 - P/C)`` that of ``P``
    independent draws); unlike it, it never pushes a small ratio below 0. The linear
    stretch, clipped at 0, made the 2.5 % quantile 0 -- an infinite upper bound -- on
    2 of 3 references of the unaugmented tiny PET's energy at P = 3, where the law of
    1000 pairs has 0.029 (upper bound 5.9 ε̂); this one gives 0.015-0.059 (10th-90th
    percentile over 60 references) and covered 67 / 93 % (docs/theory.md)."""
    positive = ratios > 0
    widened = np.zeros_like(ratios)
    widened[positive] = ratios[positive] ** stretch
    mean = widened.mean()
    return widened / mean if mean > 0 else widened
