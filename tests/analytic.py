"""Analytic functions of point clouds with known symmetry (for engine tests).

All functions map a batch of point clouds ``(B, N, 3)`` (torch, float64) to outputs.
"""

import numpy as np
import torch
from scipy.special import sph_harm_y


def real_sh(l: int, r: np.ndarray) -> np.ndarray:
    """Real spherical harmonics ``Y_lm(r/|r|)``, ``m = -l..l``, Condon-Shortley phase."""
    r = np.asarray(r, dtype=np.float64)
    r = r / np.linalg.norm(r, axis=-1, keepdims=True)
    theta = np.arccos(np.clip(r[..., 2], -1, 1))
    phi = np.arctan2(r[..., 1], r[..., 0])
    out = []
    for m in range(-l, l + 1):
        y = sph_harm_y(l, abs(m), theta, phi)
        if m > 0:
            out.append(np.sqrt(2) * (-1) ** m * y.real)
        elif m < 0:
            out.append(np.sqrt(2) * (-1) ** m * y.imag)
        else:
            out.append(y.real)
    return np.stack(out, -1)


def lj_energy(x: torch.Tensor) -> torch.Tensor:
    """Lennard-Jones energy (sigma = epsilon = 1) of each cloud, ``(B,)``."""
    n = x.shape[1]
    rij = x[:, :, None] - x[:, None]
    d2 = (rij ** 2).sum(-1) + torch.eye(n, dtype=x.dtype)
    inv6 = 1 / d2 ** 3
    mask = 1 - torch.eye(n, dtype=x.dtype)
    return 2 * ((inv6 ** 2 - inv6) * mask).sum((1, 2))


def lj_forces(x: torch.Tensor) -> torch.Tensor:
    """``-dE/dx`` of :func:`lj_energy`, ``(B, N, 3)``."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(lj_energy(x).sum(), x)
    return -grad


def triple_product_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over bond triplets from atom 0 of ``r_i . (r_j x r_k)`` (paper Eq. 6), ``(B,)``."""
    bonds = x[:, 1:] - x[:, :1]
    total = torch.zeros(x.shape[0], dtype=x.dtype)
    n = bonds.shape[1]
    for i in range(n):
        for j in range(i + 1, n):
            for k in range(j + 1, n):
                total = total + (bonds[:, i] * torch.cross(bonds[:, j], bonds[:, k], dim=-1)).sum(-1)
    return total


def dipole(x: torch.Tensor, charges) -> torch.Tensor:
    """``mu = sum_i q_i x_i``, ``(B, 3)``."""
    return torch.einsum("i,bij->bj", torch.as_tensor(charges, dtype=x.dtype), x)


def gyration_tensor(x: torch.Tensor) -> torch.Tensor:
    """``S = sum_i r_i r_i^T`` of positions relative to atom 0, ``(B, 3, 3)``."""
    r = x - x[:, :1]
    return torch.einsum("bni,bnj->bij", r, r)


def chbrclf() -> np.ndarray:
    """A rattled tetrahedral CHBrClF-like geometry (C first), Å."""
    directions = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)
    lengths = np.array([1.09, 1.93, 1.77, 1.35])
    rattle = np.random.default_rng(7).normal(scale=0.05, size=(4, 3))
    return np.vstack([[0.0, 0.0, 0.0], directions * lengths[:, None] + rattle])


def cluster(n: int = 6, seed: int = 0) -> np.ndarray:
    """A compact random cluster without close contacts, Å (LJ units ~ 1)."""
    rng = np.random.default_rng(seed)
    points = [np.zeros(3)]
    while len(points) < n:
        candidate = rng.uniform(-1.2, 1.2, size=3)
        if min(np.linalg.norm(candidate - p) for p in points) > 0.95:
            points.append(candidate)
    return np.array(points)
