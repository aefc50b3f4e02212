"""Evaluate a function on the O(3) orbit of a point cloud and measure its symmetry.

Default degree. The quadrature is exact for ``eps`` when the back-transformed output
has no content above ``l = degree / 2`` and for a spectrum to ``l_max`` when the
feature has none above ``degree - l_max``; a model's band limit is rarely known.
With ``band_limit=L`` the degree is ``max(2 L, 2 l_max)``. Without it (and without
``degree``/``grid``), :func:`orbit_metrics` starts at ``max(2 l_max, 8)`` and doubles
the degree while the exactness check of :func:`~symmon.core.error.equivariance_error`
fires, up to ``max_degree``; the last two values give ``quadrature_error``, and if the
check still fires the result says so (``error.exact`` False, ``degree_note``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import numpy as np
import torch

from .error import EquivarianceError, equivariance_error
from .grids import O3Grid, make_grid, quadrature_grid
from .orbit_values import transform_points
from .representations import Representation, parse_kind
from .spectrum import CharacterSpectrum, character_spectrum

#: first degree tried when neither degree nor band limit is given
DEFAULT_DEGREE = 8


@dataclass
class OrbitMetrics:
    """Equivariance error and character spectrum of one output on one input."""

    error: Optional[EquivarianceError]
    spectrum: Optional[CharacterSpectrum]
    representation: Representation
    grid: O3Grid
    orbit_values: Optional[np.ndarray] = field(default=None, repr=False)
    degree_note: str = ""

    @property
    def contamination(self) -> Optional[float]:
        """Spectral power outside the representation's target irreps."""
        if self.spectrum is None or self.representation.targets is None:
            return None
        return self.spectrum.contamination(self.representation.targets)


def orbit_metrics(fn: Callable, points, kind: str = "scalar", *, l_max: Optional[int] = 4,
                  degree: Optional[int] = None, grid=None, band_limit: Optional[int] = None,
                  max_degree: int = 24, sample_dims: Optional[int] = None,
                  batch_size: Optional[int] = None, keep_values: bool = False) -> OrbitMetrics:
    """Evaluate ``fn`` on the O(3) orbit of a point cloud and measure its symmetry.

    :param fn: maps a batch of transformed point clouds ``(B, N, 3)`` to outputs
        ``(B, ...)``
    :param points: ``(N, 3)`` input point cloud
    :param kind: the output's transformation law (``"scalar"``, ``"vector"``,
        ``"pseudovector"``, ``"symmetric_tensor"``, ``"feature"``, ...); a suffix
        ``_per_point``/``_per_atom`` resolves spectra per point
    :param l_max: character spectra up to this order (``None``: no spectrum)
    :param degree: quadrature degree (default: see the module docstring)
    :param grid: an explicit :class:`O3Grid` (overrides ``degree``)
    :param band_limit: the output's known band limit ``L`` (degree ``max(2L, 2 l_max)``)
    :param max_degree: largest degree the adaptive default tries
    :param batch_size: at most this many transformed copies per call of ``fn``
    """
    representation, default_sample_dims = parse_kind(kind)
    sample_dims = default_sample_dims if sample_dims is None else sample_dims
    points = torch.as_tensor(points)
    if points.dim() != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {tuple(points.shape)}")
    spectrum_degree = 2 * (l_max or 0)
    if grid is not None or degree is not None:
        chosen = make_grid(grid if grid is not None else degree)
        return _measure(fn, points, chosen, representation, l_max, sample_dims, batch_size,
                        keep_values)
    if band_limit is not None:
        chosen = quadrature_grid(max(2 * int(band_limit), spectrum_degree, 1))
        return _measure(fn, points, chosen, representation, l_max, sample_dims, batch_size,
                        keep_values, note=f"degree from band limit {band_limit}")
    return _adaptive(fn, points, representation, l_max, sample_dims, batch_size, keep_values,
                     max(spectrum_degree, DEFAULT_DEGREE), max_degree)


def _adaptive(fn, points, representation, l_max, sample_dims, batch_size, keep_values,
              first_degree, max_degree) -> OrbitMetrics:
    """Double the degree while the exactness check fires (outputs with a law only)."""
    current_degree, previous = first_degree, None
    while True:
        result = _measure(fn, points, quadrature_grid(current_degree), representation, l_max,
                          sample_dims, batch_size, keep_values)
        error = result.error
        if error is None:
            result.degree_note = ("degree chosen from l_max only: a feature has no law "
                                  "against which to check exactness")
            return result
        if previous is not None:
            result.error = replace(error, quadrature_error=abs(error.eps - previous.eps))
        if error.exact:
            result.degree_note = f"degree {current_degree} passed the exactness check"
            return result
        if 2 * current_degree > max_degree:
            result.degree_note = (
                f"cannot know: the exactness check still fires at degree {current_degree} "
                f"(max_degree={max_degree}); the output has content above l = "
                f"{current_degree // 2}; pass band_limit or a larger degree")
            return result
        previous, current_degree = error, 2 * current_degree


def _measure(fn, points, grid, representation, l_max, sample_dims, batch_size, keep_values,
             note="") -> OrbitMetrics:
    copies = transform_points(points, grid)
    step = batch_size or len(grid)
    outputs = [torch.as_tensor(fn(copies[i:i + step])) for i in range(0, len(grid), step)]
    raw = torch.cat(outputs)
    values = raw.to(torch.float64)
    error = (equivariance_error(values, grid, representation, dtype=raw.dtype)
             if representation.has_law else None)
    spectrum = None
    if l_max is not None:
        measured = representation.canonical(values)
        spectrum = character_spectrum(measured, grid, l_max, sample_dims)
    return OrbitMetrics(error, spectrum, representation, grid,
                        values.cpu().numpy() if keep_values else None, note)
