"""Real Wigner-D matrices of many rotations, built once for every ``l <= l_max``.

Real spherical harmonics ``Y_l`` (orthonormal on the sphere, ordered ``m = -l..l``)
are ``Y_lm = sqrt(2) (-1)^m Re Y_l^m`` for ``m > 0``, ``Y_l0 = Y_l^0`` and
``Y_lm = sqrt(2) (-1)^m Im Y_l^|m|`` for ``m < 0``, with SciPy's complex ``Y_l^m``
(Condon-Shortley phase included); for ``l = 1`` the basis is ``(y, z, x)`` up to a
constant. This is metatomic's convention (checked in ``tests/test_o3.py``). The real
Wigner matrix of ``R`` is defined by ``Y_l(R r) = D^l(R) Y_l(r)`` and computed as

    D^l(R) = 4 pi sum_j w_j Y_l(R r_j) Y_l(r_j)^T

over a Lebedev rule ``{r_j, w_j}`` (weights summing to one) of order ``>= 2 l_max``:
the integrand is a spherical polynomial of degree ``2l``, so the sum equals
``D^l(R) * 4 pi ∫ Y_l Y_l^T dr / (4 pi) = D^l(R)`` exactly (up to round-off). One
evaluation of all harmonics at all rotated nodes serves every ``l``.
"""

from __future__ import annotations

from typing import List

import numpy as np


def real_spherical_harmonics(l_max: int, directions: np.ndarray) -> List[np.ndarray]:
    """``[Y_0, ..., Y_lmax]`` at unit vectors ``(..., 3)``; ``Y_l`` has shape ``(2l+1, ...)``.

    ``Y_l,±m = N_lm Q_l^m(z) {Re, Im} (x + i y)^m`` with ``N_lm = sqrt(2 (2l+1)/(4 pi)
    (l-m)!/(l+m)!)`` (no ``sqrt 2`` for ``m = 0``) and ``Q_l^m = P_l^m / sin^m(theta)``
    (no Condon-Shortley phase) from the standard three-term recursion in ``l``.
    """
    x, y, z = (np.ascontiguousarray(directions[..., i]) for i in range(3))
    cos_m, sin_m = [np.ones_like(x)], [np.zeros_like(x)]
    for _ in range(l_max):  # Re/Im of (x + i y)^m
        c, s_ = cos_m[-1], sin_m[-1]
        cos_m.append(c * x - s_ * y)
        sin_m.append(c * y + s_ * x)
    q = {}  # q[l, m] = Q_l^m(z)
    for m in range(l_max + 1):
        q[m, m] = np.full_like(z, float(np.prod(np.arange(1, 2 * m, 2))))
        if m < l_max:
            q[m + 1, m] = (2 * m + 1) * z * q[m, m]
        for l in range(m + 2, l_max + 1):
            q[l, m] = ((2 * l - 1) * z * q[l - 1, m] - (l + m - 1) * q[l - 2, m]) / (l - m)
    out = []
    for l in range(l_max + 1):
        rows = []
        for m in range(-l, l + 1):
            a = abs(m)
            norm = np.sqrt((2 * l + 1) / (4 * np.pi) / np.prod(np.arange(l - a + 1, l + a + 1.0)))
            trig = cos_m[a] if m >= 0 else sin_m[a]
            rows.append((norm * (np.sqrt(2) if m else 1.0)) * q[l, a] * trig)
        out.append(np.stack(rows))
    return out


def wigner_d_matrices(rotations: np.ndarray, l_max: int) -> List[np.ndarray]:
    """``[D^0, ..., D^lmax]`` of ``(P, 3, 3)`` rotations; ``D^l`` has shape ``(P, 2l+1, 2l+1)``."""
    from .grids import lebedev_nodes

    nodes, weights = lebedev_nodes(max(2 * int(l_max), 1))
    rotated = np.einsum("pij,nj->pni", rotations, nodes)  # R r_j, (P, n, 3)
    at_rotated = real_spherical_harmonics(l_max, rotated)
    at_nodes = real_spherical_harmonics(l_max, nodes)
    # D_mk(R_p) = 4 pi sum_n Y_m(R_p r_n) w_n Y_k(r_n); y_rot is (2l+1, P, n)
    return [np.ascontiguousarray(np.moveaxis(
                4 * np.pi * np.tensordot(y_rot, weights * y_ref, axes=([2], [1])), 0, 1))
            for y_rot, y_ref in zip(at_rotated, at_nodes)]
