"""Orbit values in, back-transformed values out: checks, float64, ``rho(Q)^{-1} f(Q x)``."""

from __future__ import annotations

import numpy as np
import torch

from .grids import O3Grid
from .representations import get_representation


def as_float64(values, device=None) -> torch.Tensor:
    tensor = torch.as_tensor(values)
    if device is not None:
        tensor = tensor.to(device)
    return tensor.to(torch.float64)


class NonFiniteOrbit(ValueError):
    """Orbit values with NaN or infinite entries (a caller may explain the cause)."""


def check_orbit(values: torch.Tensor, grid: O3Grid) -> None:
    if values.dim() == 0 or values.shape[0] != len(grid):
        raise ValueError(
            f"orbit values must have a leading axis of length {len(grid)} (one entry per "
            f"grid element), got shape {tuple(values.shape)}"
        )
    if not torch.isfinite(values).all():
        raise NonFiniteOrbit("orbit values contain NaN or infinite entries")


def back_transform(values, grid: O3Grid, kind) -> torch.Tensor:
    """``rho(Q_k)^{-1} f(Q_k x)`` for every grid element, float64, ``(K, ...)``.

    ``kind`` may carry a sample suffix (``"vector_per_atom"``); a ``symmetric_tensor``
    is symmetrised first (see :mod:`symmon.core.representations`).
    """
    representation = get_representation(kind)
    values = as_float64(values)
    check_orbit(values, grid)
    matrices = grid.torch_matrices(values.device)
    determinants = grid.torch_determinants(values.device)
    return representation.back_transform(values, matrices, determinants)


def back_transform_array(values, grid: O3Grid, kind) -> np.ndarray:
    """:func:`back_transform` in NumPy, for host values (a CPU tensor or an array): a
    few-copy orbit costs a fraction of the torch path's per-operation overhead."""
    representation = get_representation(kind)
    values = (values.detach().to("cpu", torch.float64).numpy()  # bfloat16 has no NumPy dtype
              if isinstance(values, torch.Tensor) else np.asarray(values, dtype=np.float64))
    if values.ndim == 0 or values.shape[0] != len(grid):
        check_orbit(torch.as_tensor(values), grid)
    if not np.isfinite(values.sum()) and not np.isfinite(values).all():
        raise NonFiniteOrbit("orbit values contain NaN or infinite entries")
    return representation.back_transform(values, grid.matrices_array(),
                                         grid.determinants_array())


def orbit_average(values, grid: O3Grid, kind) -> torch.Tensor:
    """The O(3)-averaged (symmetrised) prediction in the input frame."""
    back = back_transform(values, grid, kind)
    weights = grid.torch_weights(back.device)
    return torch.tensordot(weights, back, dims=1)


def transform_points(points, grid: O3Grid) -> torch.Tensor:
    """All grid images ``x Q_k^T`` of a ``(N, 3)`` point cloud, shape ``(K, N, 3)``."""
    points = torch.as_tensor(points)
    matrices = grid.torch_matrices(points.device, points.dtype)
    return torch.einsum("ni,kji->knj", points, matrices)
