"""Finite sets of O(3) elements with weights: exact quadratures and Haar samples.

Every grid here is *paired*: its ``2P`` matrices are ``P`` proper rotations
``R_k`` followed by the improper elements ``-R_k`` in the same order, each
half carrying half of the total weight (weights sum to 1). Averages over the
grid therefore approximate the normalised Haar average over O(3),

    <f> = 1/2 ∫_SO(3) f(R) dR + 1/2 ∫_SO(3) f(-R) dR.

A group element ``Q`` acts on positions stored as rows by ``x -> x Q^T``.

Quadrature (degree ``D``): Lebedev rule of order ``>= D`` on the sphere for
the first two ZYZ Euler angles ``(alpha, beta)``, times ``D + 1`` equally
spaced ``gamma`` (trapezoid rule). It integrates every Wigner-D matrix element
``D^l_mn`` with ``l <= D`` exactly, hence products of two with
``l + l' <= D``; character spectra up to ``l_max`` need ``D >= 2 l_max``.
Lebedev orders with negative weights (13, 25, 27 in SciPy) are skipped.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

#: orders available in ``scipy.integrate.lebedev_rule``
_SCIPY_LEBEDEV_ORDERS = (3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 35,
                         41, 47, 53, 59, 65, 71, 77, 83, 89, 95, 101, 107, 113, 119,
                         125, 131)


@functools.lru_cache(maxsize=None)
def _lebedev(order: int) -> Tuple[np.ndarray, np.ndarray]:
    from scipy.integrate import lebedev_rule

    points, weights = lebedev_rule(order)
    return points.T.copy(), weights / weights.sum()


@functools.lru_cache(maxsize=None)
def positive_lebedev_order(degree: int) -> int:
    """Smallest SciPy Lebedev order ``>= degree`` whose weights are all positive."""
    for order in _SCIPY_LEBEDEV_ORDERS:
        if order >= degree and _lebedev(order)[1].min() > 0:
            return order
    raise ValueError(
        f"quadrature degree {degree} exceeds the largest Lebedev order "
        f"({_SCIPY_LEBEDEV_ORDERS[-1]})"
    )


def lebedev_nodes(degree: int) -> Tuple[np.ndarray, np.ndarray]:
    """Nodes ``(n, 3)`` and weights (summing to one) of a positive Lebedev rule of order >= degree."""
    return _lebedev(positive_lebedev_order(degree))


def _zyz_matrices(alpha: np.ndarray, beta: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """``Rz(alpha) @ Ry(beta) @ Rz(gamma)`` for arrays of angles, shape ``(n, 3, 3)``."""

    def rz(t):
        c, s = np.cos(t), np.sin(t)
        z, o = np.zeros_like(t), np.ones_like(t)
        return np.stack([c, -s, z, s, c, z, z, z, o], -1).reshape(-1, 3, 3)

    def ry(t):
        c, s = np.cos(t), np.sin(t)
        z, o = np.zeros_like(t), np.ones_like(t)
        return np.stack([c, z, s, z, o, z, -s, z, c], -1).reshape(-1, 3, 3)

    return rz(alpha) @ ry(beta) @ rz(gamma)


def _haar_rotations(n: int, seed: int) -> np.ndarray:
    """``n`` Haar-random proper rotations (seeded).

    Uniform unit quaternions ``(x, y, z, w)`` (normalised 4D Gaussians), the same draws
    and matrices as SciPy's ``Rotation.random(n, random_state=default_rng(seed))`` (to
    round-off) without the ``Rotation`` object (0.12 vs 0.20 ms within an MD step, where
    caches are cold); metatomic's ``random_transformations``
    also builds Wigner-D matrices for every element (~0.3 ms each), too slow to call
    on every MD step.
    """
    return quaternion_matrices(np.random.default_rng(seed).normal(size=(n, 4)))


def quaternion_matrices(q: np.ndarray) -> np.ndarray:
    """``(n, 3, 3)`` rotation matrices of ``(n, 4)`` quaternions ``(x, y, z, w)``
    (normalised here)."""
    n = q.shape[0]
    x, y, z, w = (q / np.sqrt((q * q).sum(axis=1, keepdims=True))).T
    xx, yy, zz, xy, xz, yz, wx, wy, wz = x * x, y * y, z * z, x * y, x * z, y * z, \
        w * x, w * y, w * z
    return np.stack([1 - 2 * (yy + zz), 2 * (xy - wz), 2 * (xz + wy),
                     2 * (xy + wz), 1 - 2 * (xx + zz), 2 * (yz - wx),
                     2 * (xz - wy), 2 * (yz + wx), 1 - 2 * (xx + yy)], axis=1).reshape(n, 3, 3)


@dataclass(frozen=True, eq=False)
class O3Grid:
    """A paired set of O(3) elements with weights summing to one.

    :param rotations: ``(P, 3, 3)`` proper rotations; the grid's elements are
        ``[R_1..R_P, -R_1..-R_P]``
    :param rotation_weights: ``(P,)`` weights of the rotations, summing to one;
        each of ``R_k`` and ``-R_k`` carries half of it
    :param kind: ``"quadrature"``, ``"randomized_quadrature"`` or ``"random"``
    :param degree: exactness degree of a quadrature (``None`` for random grids)
    :param seed: seed of the random rotation / sample (``None`` for plain quadrature)
    """

    rotations: np.ndarray
    rotation_weights: np.ndarray
    kind: str
    degree: Optional[int] = None
    seed: Optional[int] = None
    lebedev_order: Optional[int] = None
    _cache: Dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if self.rotations.ndim != 3 or self.rotations.shape[1:] != (3, 3):
            raise ValueError(f"rotations must have shape (P, 3, 3), got {self.rotations.shape}")
        if self.rotation_weights.shape != self.rotations.shape[:1]:
            raise ValueError("one weight per rotation is required")
        if not abs(float(self.rotation_weights.sum()) - 1.0) <= 1e-12 + 1e-5:  # np.isclose's
            raise ValueError("grid weights must sum to one")
        if np.any(np.linalg.det(self.rotations) < 0):
            raise ValueError("O3Grid.rotations must be proper rotations")

    # -- sizes and elements -------------------------------------------------
    @property
    def n_rotations(self) -> int:
        """Number ``P`` of proper rotations (the grid has ``2P`` elements)."""
        return self.rotations.shape[0]

    def __len__(self) -> int:
        return 2 * self.n_rotations

    @property
    def is_exact(self) -> bool:
        """True for quadratures (exact up to ``degree``), False for Monte-Carlo grids."""
        return self.kind != "random"

    @property
    def matrices(self) -> np.ndarray:
        """``(2P, 3, 3)`` group elements: rotations then their improper partners."""
        return np.concatenate([self.rotations, -self.rotations])

    @property
    def weights(self) -> np.ndarray:
        """``(2P,)`` weights of :attr:`matrices`, summing to one."""
        return np.concatenate([self.rotation_weights, self.rotation_weights]) / 2

    @property
    def determinants(self) -> np.ndarray:
        """``(2P,)`` ``+1`` for proper and ``-1`` for improper elements."""
        ones = np.ones(self.n_rotations)
        return np.concatenate([ones, -ones])

    def matrices_array(self) -> np.ndarray:
        """:attr:`matrices`, built once (read-only)."""
        return self._cached_array("matrices")

    def determinants_array(self) -> np.ndarray:
        """:attr:`determinants`, built once (read-only)."""
        return self._cached_array("determinants")

    def _cached_array(self, name: str) -> np.ndarray:
        if name not in self._cache:
            array = getattr(self, name)
            array.setflags(write=False)
            self._cache[name] = array
        return self._cache[name]

    def torch_matrices(self, device="cpu", dtype=torch.float64) -> torch.Tensor:
        key = ("matrices", str(device), dtype)
        if key not in self._cache:
            self._cache[key] = torch.as_tensor(self.matrices, dtype=dtype, device=device)
        return self._cache[key]

    def torch_determinants(self, device="cpu") -> torch.Tensor:
        """:attr:`determinants` as a float64 tensor (cached)."""
        key = ("determinants", str(device))
        if key not in self._cache:
            self._cache[key] = torch.as_tensor(self.determinants, dtype=torch.float64,
                                               device=device)
        return self._cache[key]

    def torch_weights(self, device="cpu") -> torch.Tensor:
        key = ("weights", str(device))
        if key not in self._cache:
            self._cache[key] = torch.as_tensor(self.weights, dtype=torch.float64, device=device)
        return self._cache[key]

    def wigner(self, l: int, device="cpu") -> torch.Tensor:
        """Real Wigner-D matrices ``(P, 2l+1, 2l+1)`` of the proper rotations (float64).

        See :mod:`symmon.core.wigner` (real spherical harmonics ordered ``m = -l..l``,
        ``Y_l(R r) = D^l(R) Y_l(r)``).
        """
        return self.wigner_matrices(l, device)[l]

    def wigner_matrices(self, l_max: int, device="cpu") -> List[torch.Tensor]:
        """``[D^0, ..., D^lmax]`` of the proper rotations, built once for all ``l``."""
        from .wigner import wigner_d_matrices

        built = self._cache.get("wigner")
        if built is None or len(built) <= l_max:
            built = [torch.from_numpy(d) for d in wigner_d_matrices(self.rotations, l_max)]
            self._cache["wigner"] = built
        key = ("wigner", str(device))
        if self._cache.get(key) is None or len(self._cache[key]) != len(built):
            self._cache[key] = [d.to(device) for d in built]
        return self._cache[key][: l_max + 1]

    def describe(self) -> dict:
        """JSON-able description (for logs)."""
        return {"kind": self.kind, "degree": self.degree, "seed": self.seed,
                "lebedev_order": self.lebedev_order, "n_elements": len(self)}


@functools.lru_cache(maxsize=32)
def quadrature_grid(degree: int) -> O3Grid:
    """Exact O(3) product quadrature of the given degree (cached).

    Lebedev order ``>= degree`` (positive weights) times ``degree + 1`` in-plane
    angles; ``2 * n_lebedev * (degree + 1)`` elements in total.
    """
    if not isinstance(degree, (int, np.integer)) or degree < 0:
        raise ValueError(f"quadrature degree must be a non-negative integer, got {degree!r}")
    order = positive_lebedev_order(max(int(degree), 1))
    points, sphere_weights = _lebedev(order)
    n_gamma = int(degree) + 1
    alpha = np.arctan2(points[:, 1], points[:, 0])
    beta = np.arccos(np.clip(points[:, 2], -1.0, 1.0))
    gamma = 2 * np.pi * np.arange(n_gamma) / n_gamma
    rotations = _zyz_matrices(np.repeat(alpha, n_gamma), np.repeat(beta, n_gamma),
                              np.tile(gamma, len(alpha)))
    weights = np.repeat(sphere_weights, n_gamma) / n_gamma
    return O3Grid(rotations, weights / weights.sum(), "quadrature", int(degree),
                  lebedev_order=order)


def random_grid(n_rotations: int, seed: int = 0) -> O3Grid:
    """``n_rotations`` Haar-random rotations, each paired with ``-R`` (equal weights)."""
    if not isinstance(n_rotations, (int, np.integer)) or n_rotations < 1:
        raise ValueError(f"n_rotations must be a positive integer, got {n_rotations!r}")
    rotations = _haar_rotations(int(n_rotations), seed)
    weights = np.full(int(n_rotations), 1.0 / n_rotations)
    return O3Grid(rotations, weights, "random", None, int(seed))


def randomized_quadrature_grid(degree: int, seed: int = 0) -> O3Grid:
    """The quadrature of ``degree`` right-multiplied by one Haar-random rotation.

    ``{R_k R_0}`` integrates exactly what ``{R_k}`` does (Haar invariance), but
    the orbit is sampled at different points for each seed.
    """
    base = quadrature_grid(degree)
    offset = _haar_rotations(1, seed)[0]
    return O3Grid(base.rotations @ offset, base.rotation_weights.copy(),
                  "randomized_quadrature", base.degree, int(seed), base.lebedev_order)


def make_grid(spec) -> O3Grid:
    """Build a grid from an :class:`O3Grid`, ``int`` degree, or a dict description."""
    if isinstance(spec, O3Grid):
        return spec
    if isinstance(spec, (int, np.integer)):
        return quadrature_grid(int(spec))
    if isinstance(spec, dict):
        kind = spec.get("kind", "quadrature")
        if kind == "quadrature":
            return quadrature_grid(spec["degree"])
        if kind == "randomized_quadrature":
            return randomized_quadrature_grid(spec["degree"], spec.get("seed", 0))
        if kind == "random":
            return random_grid(spec["n_rotations"], spec.get("seed", 0))
        raise ValueError(f"unknown grid kind {kind!r}; expected quadrature, "
                         "randomized_quadrature or random")
    raise TypeError(f"cannot build an O3Grid from {type(spec).__name__}")
