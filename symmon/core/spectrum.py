"""Character spectra of features sampled on an O(3) orbit (paper Eq. 3-4).

``F(Q) = f(Q x)`` is a function on O(3); its power in the isotypic component of the
irrep ``(l, sigma)`` is

    c(l, sigma) = (2l+1) sum_{m,n} || ∫_SO(3) F_p(R) D^l_mn(R) dR ||^2,
    F_p(R) = (F(R) + p F(-R)) / 2,    p = sigma (-1)^l,

so that ``sum_{l, sigma} c(l, sigma) = <||f||^2>`` (Peter-Weyl). The normalised
spectrum is ``c~ = c / <||f||^2>`` and the *residual* is the power beyond ``l_max``,
``<||f||^2> - sum_{l<=l_max} c``. An exact grid must have degree ``>= 2 l_max``
(orthogonality of ``D^l`` and ``D^l'`` for ``l, l' <= l_max``). On a random grid of
``P`` pairs the squared norms are U-statistics (unbiased) with jackknife errors; that
needs ``P >= 3``. Everything is torch, float64, on the values' device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Tuple

import numpy as np
import torch

from .grids import O3Grid
from .irreps import Irrep, irreps_up_to
from .orbit_values import as_float64, check_orbit

#: fewest random rotations for a spectrum with an error bar (jackknife over pairs)
MIN_SPECTRUM_ROTATIONS = 3


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
    def mean_square(self) -> float:
        """``<||f||^2>`` summed over samples (the denominator of :attr:`normalized`)."""
        return float(self.total.sum())

    @property
    def residual(self) -> np.ndarray:
        """Power beyond ``l_max`` per sample (aliasing-free only for band-limited features)."""
        return self.total - self.power.sum(axis=0)

    @property
    def normalized(self) -> np.ndarray:
        """Aggregated ``c~(l, sigma)``: power summed over samples / total power."""
        return self.power.reshape(len(self.irreps), -1).sum(axis=1) / self.mean_square

    @property
    def residual_fraction(self) -> float:
        """Fraction of the total power beyond ``l_max`` (aggregated)."""
        return float(1.0 - self.normalized.sum())

    def fraction(self, irreps: Iterable) -> float:
        """Aggregated fraction of the power in the given irreps (``Irrep``, ``(l, sigma)``
        or labels such as ``"1o"``)."""
        wanted = {Irrep.coerce(ir) for ir in irreps}
        return float(sum(c for ir, c in zip(self.irreps, self.normalized) if ir in wanted))

    def contamination(self, targets: Iterable) -> float:
        """Fraction of the power outside ``targets`` (residual included)."""
        return 1.0 - self.fraction(targets)

    def as_dict(self) -> dict:
        return {str(ir): float(c) for ir, c in zip(self.irreps, self.normalized)} | {
            "residual": self.residual_fraction}


def paired_samples(values: torch.Tensor, grid: O3Grid, sample_dims: int):
    """``(2, P, samples, components)`` view of orbit values, and the sample shape."""
    if sample_dims < 0 or sample_dims > values.dim() - 1:
        raise ValueError(f"sample_dims={sample_dims} is out of range for orbit values of "
                         f"shape {tuple(values.shape)}")
    sample_shape = tuple(values.shape[1:1 + sample_dims])
    flat = values.reshape(2, grid.n_rotations, int(np.prod(sample_shape, dtype=int)), -1)
    return flat, sample_shape


def quadrature_powers(flat: torch.Tensor, grid: O3Grid, l_max: int) -> torch.Tensor:
    """Exact-grid ``c(l, sigma)`` per sample, ``(n_irreps, s)``, from ``(2, P, s, c)`` values."""
    weights = torch.as_tensor(grid.rotation_weights, dtype=torch.float64, device=flat.device)
    powers = []
    for l, wigner in enumerate(grid.wigner_matrices(l_max, flat.device)):
        coefficients = _coefficients(flat, weights, wigner)
        for sigma in (1, -1):
            projected = (coefficients[0] + sigma * (-1) ** l * coefficients[1]) / 2
            powers.append((2 * l + 1) * (projected * projected).sum(dim=(1, 2, 3)))
    return torch.stack(powers)


def _coefficients(values_pm, rotation_weights, wigner):
    """``sum_k w_k D^l_mn(R_k) F(R_k)`` for proper and improper halves at once."""
    # values_pm: (2, P, s, c); wigner: (P, d, d) -> (2, s, d, d, c)
    return torch.einsum("k,kmn,hksc->hsmnc", rotation_weights, wigner, values_pm)


def character_spectrum(values, grid: O3Grid, l_max: int = 4,
                       sample_dims: int = 0) -> CharacterSpectrum:
    """Character spectrum (paper Eq. 3-4) of orbit samples ``f(Q_k x)``.

    :param values: ``(len(grid), *samples, *components)`` values; the power is summed
        over the component axes and kept per sample
    :param grid: the grid of the orbit; an exact grid needs ``degree >= 2 * l_max``, a
        random grid at least 3 rotations
    :param l_max: largest angular order resolved
    :param sample_dims: how many axes after the orbit axis are samples (atoms, edges, ...)
    """
    _check_spectrum_grid(grid, l_max)
    values = as_float64(values)
    check_orbit(values, grid)
    flat, sample_shape = paired_samples(values, grid, sample_dims)
    squared_norms = (flat * flat).sum(dim=-1)  # (2, P, s)
    irreps = irreps_up_to(int(l_max))
    if grid.is_exact:
        weights = torch.as_tensor(grid.rotation_weights, dtype=torch.float64, device=flat.device)
        total = 0.5 * torch.einsum("k,hks->s", weights, squared_norms)
        power = quadrature_powers(flat, grid, int(l_max))
        stderr = torch.zeros(len(irreps), dtype=torch.float64)
    else:
        total = squared_norms.mean(dim=(0, 1))
        power, stderr = _monte_carlo_powers(flat, grid, int(l_max))
    return CharacterSpectrum(
        irreps=irreps, power=power.reshape((len(irreps),) + sample_shape).cpu().numpy(),
        total=total.reshape(sample_shape).cpu().numpy(), power_stderr=stderr.cpu().numpy(),
        l_max=int(l_max), estimator="quadrature" if grid.is_exact else "unbiased_pairs",
    )


def _check_spectrum_grid(grid: O3Grid, l_max) -> None:
    if not isinstance(l_max, (int, np.integer)) or l_max < 0:
        raise ValueError(f"l_max must be a non-negative integer, got {l_max!r}")
    if grid.is_exact and grid.degree < 2 * l_max:
        raise ValueError(
            f"a quadrature of degree {grid.degree} cannot resolve character spectra up to "
            f"l_max={l_max}: the degree must be at least 2*l_max = {2 * l_max}"
        )
    if not grid.is_exact and grid.n_rotations < MIN_SPECTRUM_ROTATIONS:
        raise ValueError(
            f"a Monte-Carlo character spectrum needs at least {MIN_SPECTRUM_ROTATIONS} random "
            f"rotations (got {grid.n_rotations}): with fewer, the unbiased power is undefined "
            "or has no error bar; use random_grid(n) with n >= 3 or a quadrature")


def _monte_carlo_powers(flat: torch.Tensor, grid: O3Grid, l_max: int):
    n_rot = grid.n_rotations
    weights = torch.full((n_rot,), 1.0 / n_rot, dtype=torch.float64, device=flat.device)
    powers, stderrs = [], []
    for l, wigner in enumerate(grid.wigner_matrices(l_max, flat.device)):
        coefficients = _coefficients(flat, weights, wigner)
        for sigma in (1, -1):
            parity = sigma * (-1) ** l
            projected = (coefficients[0] + parity * coefficients[1]) / 2  # (s, d, d, c)
            half = (flat[0] + parity * flat[1]) / 2  # (P, s, c)
            power, stderr = _unbiased_power(projected, half, wigner, l)
            powers.append(power)
            stderrs.append(stderr)
    return torch.stack(powers), torch.stack(stderrs)


def _unbiased_power(mean_projection, half_values, wigner, l):
    """U-statistic estimate of ``(2l+1) ||E[D F_p]||^2`` from ``P >= 3`` i.i.d. rotations.

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
    cross = torch.einsum("smnc,imn,isc->i", sum_z, wigner, half_values)  # S.z_i summed over s
    loo = dim * ((norm_sum.sum() - 2 * cross + z_norms.sum(dim=1))
                 - (z_norms.sum() - z_norms.sum(dim=1))) / ((n - 1) * (n - 2))
    variance = (n - 1) / n * ((loo - loo.mean()) ** 2).sum()
    return power, variance.sqrt()
