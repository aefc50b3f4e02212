"""Equivariance error and character spectra of outputs sampled on an O(3) orbit.

Given an output ``f`` evaluated on the orbit ``{Q_k x}`` of a grid (see
:mod:`symmon.core.grids`), with weights ``w_k`` summing to one:

Equivariance error (paper Eq. 1-2). With ``y_k = rho(Q_k)^{-1} f(Q_k x)`` the
output brought back to the input frame,

    eps^2 = sum_k w_k || y_k - <y> ||^2  =  <||f||^2> - ||<y>||^2,

summed over all components; computed from centred moments in float64. For a
random (Monte-Carlo) grid of ``P`` pairs ``(R_i, -R_i)`` the unbiased
U-statistic over pairs is used instead and a jackknife standard error is
reported.

Character spectrum (paper Eq. 3-4). ``F(Q) = f(Q x)`` is a function on O(3);
its power in the isotypic component of the irrep ``(l, sigma)`` is

    c(l, sigma) = (2l+1) sum_{m,n} || ∫_SO(3) F_p(R) D^l_mn(R) dR ||^2,
    F_p(R) = (F(R) + p F(-R)) / 2,    p = sigma (-1)^l,

so that ``sum_{l, sigma} c(l, sigma) = <||f||^2>`` (Peter-Weyl). The
normalised spectrum is ``c~ = c / <||f||^2>`` and the *residual* is the power
beyond ``l_max``, ``<||f||^2> - sum_{l<=l_max} c``. An exact grid must have
degree ``>= 2 l_max`` (orthogonality of ``D^l`` and ``D^l'`` for
``l, l' <= l_max``). Everything here is torch, float64, on the values' device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Tuple

import numpy as np
import torch

from .grids import O3Grid, make_grid
from .irreps import Irrep, irreps_up_to
from .representations import Representation, get_representation

__all__ = [
    "EquivarianceError", "CharacterSpectrum", "OrbitMetrics", "back_transform",
    "equivariance_error", "character_spectrum", "orbit_average", "orbit_metrics",
    "transform_points",
]


def _as_float64(values, device=None) -> torch.Tensor:
    tensor = torch.as_tensor(values)
    if device is not None:
        tensor = tensor.to(device)
    return tensor.to(torch.float64)


def _check_orbit(values: torch.Tensor, grid: O3Grid) -> None:
    if values.dim() == 0 or values.shape[0] != len(grid):
        raise ValueError(
            f"orbit values must have a leading axis of length {len(grid)} (one entry per "
            f"grid element), got shape {tuple(values.shape)}"
        )
    if not torch.isfinite(values).all():
        raise ValueError("orbit values contain NaN or infinite entries")


def back_transform(values, grid: O3Grid, kind) -> torch.Tensor:
    """``rho(Q_k)^{-1} f(Q_k x)`` for every grid element, float64, ``(K, ...)``."""
    representation = get_representation(kind)
    values = _as_float64(values)
    _check_orbit(values, grid)
    matrices = grid.torch_matrices(values.device)
    determinants = torch.as_tensor(grid.determinants, dtype=torch.float64, device=values.device)
    return representation.back_transform(values, matrices, determinants)


def orbit_average(values, grid: O3Grid, kind) -> torch.Tensor:
    """The O(3)-averaged (symmetrised) prediction in the input frame."""
    back = back_transform(values, grid, kind)
    weights = grid.torch_weights(back.device)
    return torch.tensordot(weights, back, dims=1)


# --------------------------------------------------------------------------------------
# equivariance error
# --------------------------------------------------------------------------------------
@dataclass
class EquivarianceError:
    """Equivariance error of one output on one structure.

    Units are those of the output (eV, eV/Å, eV/Å^3, ...).

    :ivar eps: total ``eps`` (square root of the variance summed over components)
    :ivar eps_sq: ``eps**2``
    :ivar per_item: ``eps`` of each transforming object (per atom for per-atom
        vectors), shape of the output without its ``item_shape``
    :ivar per_component: ``eps`` of each component, shape of one output
    :ivar rms: orbit RMS ``sqrt(<||f||^2>)`` of the output
    :ivar relative: ``eps / rms`` (dimensionless)
    :ivar mean: orbit average in the input frame (the symmetrised prediction)
    :ivar eps_stderr: standard error of ``eps`` (Monte-Carlo grids; 0 for quadratures)
    :ivar estimator: ``"quadrature"`` or ``"unbiased_pairs"``
    """

    eps: float
    eps_sq: float
    per_item: np.ndarray
    per_component: np.ndarray
    rms: float
    relative: float
    mean: np.ndarray
    eps_stderr: float
    estimator: str
    n_elements: int

    def as_dict(self) -> dict:
        return {"eps": self.eps, "relative": self.relative, "rms": self.rms,
                "eps_stderr": self.eps_stderr, "estimator": self.estimator,
                "n_elements": self.n_elements}


def _weighted_variance(back: torch.Tensor, weights: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensordot(weights, back, dims=1)
    centred = back - mean
    variance = torch.tensordot(weights, centred * centred, dims=1)
    return mean, variance


def _paired_unbiased_variance(back: torch.Tensor):
    """Unbiased per-component variance from ``P`` independent pairs ``(R_i, -R_i)``.

    ``var = mean_i a_i - U``, ``a_i = (y_i+^2 + y_i-^2)/2``, ``u_i = (y_i+ + y_i-)/2``,
    ``U = (|sum u|^2 - sum |u|^2) / (P (P-1))`` estimates ``|<y>|^2`` without bias.
    Returns the mean, the per-component variance and the jackknife variance of
    its sum over components.
    """
    n_pairs = back.shape[0] // 2
    if n_pairs < 2:
        raise ValueError("a Monte-Carlo equivariance error needs at least 2 random rotations")
    mean = back.mean(dim=0)
    centred = back - mean  # the estimator is shift invariant; centring avoids cancellation
    plus, minus = centred[:n_pairs], centred[n_pairs:]
    a = (plus * plus + minus * minus) / 2
    u = (plus + minus) / 2
    sum_u = u.sum(dim=0)
    sum_u2 = (u * u).sum(dim=0)
    variance = a.mean(dim=0) - (sum_u * sum_u - sum_u2) / (n_pairs * (n_pairs - 1))

    jackknife_var = torch.zeros((), dtype=back.dtype, device=back.device)
    if n_pairs >= 3:
        flat_a = a.reshape(n_pairs, -1).sum(dim=1)
        flat_u = u.reshape(n_pairs, -1)
        flat_sum_u = sum_u.reshape(-1)
        u_norm2 = (flat_u * flat_u).sum(dim=1)
        loo_sum_norm2 = (flat_sum_u * flat_sum_u).sum() - 2 * flat_u @ flat_sum_u + u_norm2
        loo_u2 = sum_u2.sum() - u_norm2
        loo = (flat_a.sum() - flat_a) / (n_pairs - 1) - (loo_sum_norm2 - loo_u2) / (
            (n_pairs - 1) * (n_pairs - 2))
        jackknife_var = (n_pairs - 1) / n_pairs * ((loo - loo.mean()) ** 2).sum()
    return mean, variance, jackknife_var


def equivariance_error(values, grid: O3Grid, kind) -> EquivarianceError:
    """Equivariance error (paper Eq. 1-2) of an output sampled on ``grid``'s orbit.

    :param values: ``(len(grid), ...)`` outputs ``f(Q_k x)``, any float dtype/device
    :param grid: the :class:`~symmon.core.grids.O3Grid` the orbit was sampled on
    :param kind: output kind (``"scalar"``, ``"vector"``, ``"symmetric_tensor"``, ...)
    """
    representation = get_representation(kind)
    back = back_transform(values, grid, representation)
    if grid.is_exact:
        mean, variance = _weighted_variance(back, grid.torch_weights(back.device))
        eps_sq_var = torch.zeros((), dtype=torch.float64)
        estimator = "quadrature"
    else:
        mean, variance, eps_sq_var = _paired_unbiased_variance(back)
        estimator = "unbiased_pairs"
    weights = grid.torch_weights(back.device)
    mean_square = torch.tensordot(weights, back * back, dims=1).sum()
    variance = variance.clamp_min(0.0) if grid.is_exact else variance

    n_item = len(representation.item_shape)
    item_dims = tuple(range(variance.dim() - n_item, variance.dim()))
    per_item = variance.sum(dim=item_dims) if n_item else variance
    eps_sq = float(variance.sum())
    eps = float(np.sqrt(max(eps_sq, 0.0)))
    rms = float(torch.sqrt(mean_square))
    stderr = float(np.sqrt(float(eps_sq_var))) / (2 * eps) if eps > 0 else 0.0
    return EquivarianceError(
        eps=eps, eps_sq=eps_sq,
        per_item=per_item.clamp_min(0.0).sqrt().cpu().numpy(),
        per_component=variance.clamp_min(0.0).sqrt().cpu().numpy(),
        rms=rms, relative=eps / rms if rms > 0 else float("nan"),
        mean=mean.cpu().numpy(), eps_stderr=stderr, estimator=estimator,
        n_elements=len(grid),
    )


# --------------------------------------------------------------------------------------
# character spectra
# --------------------------------------------------------------------------------------
@dataclass
class CharacterSpectrum:
    """Character spectrum of a feature sampled on an O(3) orbit.

    :ivar irreps: the irreps ``(l, sigma)`` with ``l <= l_max``, in the order of ``power``
    :ivar power: unnormalised ``c(l, sigma)``, shape ``(n_irreps, *samples)``
    :ivar total: ``<||f||^2>`` per sample, shape ``samples``
    :ivar power_stderr: standard error of the power summed over samples
        (Monte-Carlo grids; zeros for quadratures), shape ``(n_irreps,)``
    """

    irreps: Tuple[Irrep, ...]
    power: np.ndarray
    total: np.ndarray
    power_stderr: np.ndarray
    l_max: int
    estimator: str

    @property
    def residual(self) -> np.ndarray:
        """Power beyond ``l_max`` per sample (aliasing-free only for band-limited features)."""
        return self.total - self.power.sum(axis=0)

    @property
    def normalized(self) -> np.ndarray:
        """Aggregated ``c~(l, sigma)``: power summed over samples / total power."""
        total = self.total.sum()
        return self.power.reshape(len(self.irreps), -1).sum(axis=1) / total

    @property
    def normalized_stderr(self) -> np.ndarray:
        return self.power_stderr / self.total.sum()

    @property
    def residual_fraction(self) -> float:
        """Fraction of the total power beyond ``l_max`` (aggregated)."""
        return float(1.0 - self.normalized.sum())

    @property
    def per_sample_normalized(self) -> np.ndarray:
        """``c~`` of every sample, shape ``(n_irreps, *samples)`` (NaN where total is 0)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.power / self.total

    def fraction(self, irreps: Iterable[Irrep]) -> float:
        """Aggregated fraction of the power in the given irreps."""
        wanted = set(irreps)
        return float(sum(c for ir, c in zip(self.irreps, self.normalized) if ir in wanted))

    def contamination(self, targets: Iterable[Irrep]) -> float:
        """Fraction of the power outside ``targets`` (residual included)."""
        return 1.0 - self.fraction(targets)

    def as_dict(self) -> dict:
        return {str(ir): float(c) for ir, c in zip(self.irreps, self.normalized)} | {
            "residual": self.residual_fraction}


def _spectrum_coefficients(values_pm, rotation_weights, wigner):
    """``sum_k w_k D^l_mn(R_k) F(R_k)`` for proper and improper halves at once."""
    # values_pm: (2, P, s, c); wigner: (P, d, d) -> (2, s, d, d, c)
    return torch.einsum("k,kmn,hksc->hsmnc", rotation_weights, wigner, values_pm)


def character_spectrum(values, grid: O3Grid, l_max: int = 4,
                       sample_dims: int = 0) -> CharacterSpectrum:
    """Character spectrum (paper Eq. 3-4) of orbit samples ``f(Q_k x)``.

    :param values: ``(len(grid), *samples, *components)`` values; the power is summed
        over the component axes and kept per sample
    :param grid: the grid of the orbit; an exact grid needs ``degree >= 2 * l_max``
    :param l_max: largest angular order resolved
    :param sample_dims: how many axes after the orbit axis are samples (atoms, edges, ...)
    """
    if not isinstance(l_max, (int, np.integer)) or l_max < 0:
        raise ValueError(f"l_max must be a non-negative integer, got {l_max!r}")
    if grid.is_exact and grid.degree < 2 * l_max:
        raise ValueError(
            f"a quadrature of degree {grid.degree} cannot resolve character spectra up to "
            f"l_max={l_max}: the degree must be at least 2*l_max = {2 * l_max}"
        )
    values = _as_float64(values)
    _check_orbit(values, grid)
    if sample_dims < 0 or sample_dims > values.dim() - 1:
        raise ValueError(f"sample_dims={sample_dims} is out of range for orbit values of "
                         f"shape {tuple(values.shape)}")
    sample_shape = tuple(values.shape[1:1 + sample_dims])
    n_rot = grid.n_rotations
    flat = values.reshape(2, n_rot, int(np.prod(sample_shape, dtype=int)), -1)
    squared_norms = (flat * flat).sum(dim=-1)  # (2, P, s)
    irreps = irreps_up_to(int(l_max))

    if grid.is_exact:
        rotation_weights = torch.as_tensor(grid.rotation_weights, dtype=torch.float64,
                                           device=values.device)
        total = 0.5 * torch.einsum("k,hks->s", rotation_weights, squared_norms)
    else:
        rotation_weights = torch.full((n_rot,), 1.0 / n_rot, dtype=torch.float64,
                                      device=values.device)
        total = squared_norms.mean(dim=(0, 1))

    powers, stderrs = [], []
    for l in range(int(l_max) + 1):
        wigner = grid.wigner(l, values.device)
        coefficients = _spectrum_coefficients(flat, rotation_weights, wigner)
        for sigma in (1, -1):
            parity = sigma * (-1) ** l
            projected = (coefficients[0] + parity * coefficients[1]) / 2  # (s, d, d, c)
            if grid.is_exact:
                power = (2 * l + 1) * (projected * projected).sum(dim=(1, 2, 3))
                stderr = torch.zeros((), dtype=torch.float64)
            else:
                half = (flat[0] + parity * flat[1]) / 2  # (P, s, c)
                power, stderr = _unbiased_power(projected, half, wigner, l)
            powers.append(power)
            stderrs.append(stderr)
    power = torch.stack(powers).reshape((len(irreps),) + sample_shape)
    return CharacterSpectrum(
        irreps=irreps, power=power.cpu().numpy(),
        total=total.reshape(sample_shape).cpu().numpy(),
        power_stderr=torch.stack([s.reshape(()) for s in stderrs]).cpu().numpy(),
        l_max=int(l_max), estimator="quadrature" if grid.is_exact else "unbiased_pairs",
    )


def _unbiased_power(mean_projection, half_values, wigner, l):
    """U-statistic estimate of ``(2l+1) ||E[D F_p]||^2`` from ``P`` i.i.d. rotations.

    ``mean_projection`` is ``(1/P) sum_i D(R_i) F_p(R_i)``; the diagonal terms
    ``||D F_p||^2 = (2l+1) ||F_p||^2`` (``D`` orthogonal) are removed.
    Also returns the jackknife standard error of the power summed over samples.
    """
    n = half_values.shape[0]
    dim = 2 * l + 1
    sum_z = mean_projection * n  # (s, d, d, c)
    norm_sum = (sum_z * sum_z).sum(dim=(1, 2, 3))  # (s,)
    z_norms = dim * (half_values * half_values).sum(dim=-1)  # (P, s)
    power = dim * (norm_sum - z_norms.sum(dim=0)) / (n * (n - 1))
    if n < 3:
        return power, torch.zeros((), dtype=torch.float64)
    cross = torch.einsum("smnc,imn,isc->i", sum_z, wigner, half_values)  # S.z_i summed over s
    loo = dim * ((norm_sum.sum() - 2 * cross + z_norms.sum(dim=1))
                 - (z_norms.sum() - z_norms.sum(dim=1))) / ((n - 1) * (n - 2))
    variance = (n - 1) / n * ((loo - loo.mean()) ** 2).sum()
    return power, variance.sqrt()


# --------------------------------------------------------------------------------------
# generic point-cloud API
# --------------------------------------------------------------------------------------
_SAMPLE_SUFFIXES = ("_per_point", "_per_atom", "_per_edge", "_per_token")


def parse_kind(kind: str) -> Tuple[Representation, int]:
    """``"vector_per_point"`` -> (vector representation, sample_dims=1)."""
    for suffix in _SAMPLE_SUFFIXES:
        if isinstance(kind, str) and kind.endswith(suffix):
            return get_representation(kind[: -len(suffix)]), 1
    return get_representation(kind), 0


def transform_points(points, grid: O3Grid) -> torch.Tensor:
    """All grid images ``x Q_k^T`` of a ``(N, 3)`` point cloud, shape ``(K, N, 3)``."""
    points = torch.as_tensor(points)
    matrices = grid.torch_matrices(points.device, points.dtype)
    return torch.einsum("ni,kji->knj", points, matrices)


@dataclass
class OrbitMetrics:
    """Equivariance error and character spectrum of one output on one input."""

    error: Optional[EquivarianceError]
    spectrum: Optional[CharacterSpectrum]
    representation: Representation
    grid: O3Grid
    orbit_values: Optional[np.ndarray] = field(default=None, repr=False)

    @property
    def contamination(self) -> Optional[float]:
        """Spectral power outside the representation's target irreps."""
        if self.spectrum is None or self.representation.targets is None:
            return None
        return self.spectrum.contamination(self.representation.targets)


def orbit_metrics(fn: Callable, points, kind: str = "scalar", *, l_max: Optional[int] = 4,
                  degree: Optional[int] = None, grid=None, sample_dims: Optional[int] = None,
                  batch_size: Optional[int] = None, keep_values: bool = False) -> OrbitMetrics:
    """Evaluate ``fn`` on the O(3) orbit of a point cloud and measure its symmetry.

    :param fn: maps a batch of transformed point clouds ``(B, N, 3)`` to outputs
        ``(B, ...)``
    :param points: ``(N, 3)`` input point cloud
    :param kind: the output's transformation law (``"scalar"``, ``"vector"``,
        ``"pseudovector"``, ``"symmetric_tensor"``, ``"feature"``, ...); a suffix
        ``_per_point`` resolves spectra per point
    :param l_max: character spectra up to this order (``None``: no spectrum)
    :param degree: quadrature degree (default ``2 * l_max``, at least 2)
    :param grid: an explicit :class:`O3Grid` (overrides ``degree``)
    :param batch_size: at most this many transformed copies per call of ``fn``
    """
    representation, default_sample_dims = parse_kind(kind)
    sample_dims = default_sample_dims if sample_dims is None else sample_dims
    if grid is None:
        grid = make_grid(degree if degree is not None else max(2 * (l_max or 0), 2))
    else:
        grid = make_grid(grid)
    points = torch.as_tensor(points)
    if points.dim() != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {tuple(points.shape)}")
    copies = transform_points(points, grid)
    step = batch_size or len(grid)
    outputs = [torch.as_tensor(fn(copies[i:i + step])) for i in range(0, len(grid), step)]
    values = torch.cat(outputs).to(torch.float64)
    error = equivariance_error(values, grid, representation) if representation.has_law else None
    spectrum = character_spectrum(values, grid, l_max, sample_dims) if l_max is not None else None
    return OrbitMetrics(error, spectrum, representation, grid,
                        values.cpu().numpy() if keep_values else None)
