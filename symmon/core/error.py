"""Equivariance error (paper Eq. 1-2) with a stated interval, a checked exactness and a noise floor.

With ``y_k = rho(Q_k)^{-1} f(Q_k x)`` the output brought back to the input frame and
weights ``w_k`` summing to one,

    eps^2 = sum_k w_k || y_k - <y> ||^2  =  <||f||^2> - ||<y>||^2,

summed over all components, from centred moments in float64.

* Quadrature of degree ``D``: exact when ``y`` has no content above ``l = D/2``
  (``|y|^2`` then has degree ``<= D``). This is *checked*: the power ``a`` of the
  centred ``y`` beyond ``l = D/2`` is measured on the same grid (it is zero up to
  round-off for band-limited ``y``, by the discrete Bessel inequality). The
  unresolved power bounds the error in practice, ``|Δeps^2| <~ ALIAS_FACTOR a``
  (measured: 0.4 a and 0.07 a on unaugmented and augmented tiny PETs, 1.5 a on a
  quartic lab anisotropy at degree 4), so ``quadrature_error =
  sqrt(eps^2 + 2 a) - eps`` and ``exact = a <= max(0.1 eps^2, noise_floor^2,
  (1e-12 rms)^2)`` (``eps`` within ~5 %, or an error at float64 round-off of the output).
* Random grid of ``P`` pairs: unbiased ``eps^2``; its interval is the bootstrap pivot
  interval of a reference orbit of the same shape (``calibration``,
  :mod:`symmon.core.calibration`; the monitor's calibration steps), or of the grid
  itself when it has ``>= 16`` pairs, else a Student-t interval on ``log eps^2``
  (:mod:`symmon.core.intervals`; approximate: see docs/theory.md).
* Noise floor: ``NOISE_ULPS * finfo(dtype).eps * rms`` for the dtype the model computed
  in (float32: ``1.9e-6 rms``; float32 Lennard-Jones forces measured 9 ulps); ``eps`` below it is *at precision floor*.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from .calibration import (MIN_REFERENCE_PAIRS, PairCalibration, calibration_from_back,
                          pooled, METHOD as CALIBRATED_METHOD)
from .grids import O3Grid
from .intervals import METHOD as PAIRS_METHOD, pair_estimate
from .orbit_values import back_transform, back_transform_array
from .representations import get_representation
from .spectrum import paired_samples, quadrature_powers

#: rounding noise assumed per component, in units of the dtype's machine epsilon
NOISE_ULPS = 16.0
#: aliased power allowed relative to eps^2 on an "exact" quadrature (eps within ~5 %)
ALIAS_TOLERANCE = 0.1
#: |Δeps^2| <= ALIAS_FACTOR * (aliased power) on every case measured (worst 1.5)
ALIAS_FACTOR = 2.0
#: ... or in absolute terms: an error of eps below this fraction of the output's RMS (~4500
#: float64 ulps; the RMS includes an invariant offset, so a larger fraction would let a
#: big constant energy hide real aliasing) is
#: immaterial at any reading (it keeps round-off of an exactly symmetric float64 model,
#: e.g. EMT's 1e-13 eV/Å, from being flagged as under-resolved)
NEGLIGIBLE_ERROR = 1e-12


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
    :ivar eps_stderr: half width of the 68 % interval (0 on exact quadratures);
        a summary only, the interval is the calibrated statement
    :ivar estimator: ``"quadrature"`` or ``"unbiased_pairs"``
    :ivar interval_68, interval_95: ``(low, high)`` of ``eps`` with that coverage
        (random grids), ``(eps, eps)`` on exact quadratures, ``eps ∓ quadrature_error``
        (no stated coverage) on quadratures that failed the check
    :ivar interval_method: ``"calibrated_bootstrap"`` (a reference orbit's pivot law),
        ``"bootstrap"`` (the grid's own, >= 16 pairs), ``"student_t_log_pairs"``
        (data only, approximate), ``"exact_quadrature"`` or ``"aliasing_bound"``
    :ivar calibration_source: the reference of a calibrated interval (e.g.
        ``"random(32)"``), else ``""``
    :ivar calibration: this orbit as a reference for later random grids
        (:class:`~symmon.core.calibration.PairCalibration`; only with ``calibrate=True``)
    :ivar exact: True only on quadratures that passed the exactness check
    :ivar alias_power: power of the centred back-transformed output beyond
        ``l = degree // 2`` (quadratures; NaN on random grids), units of ``eps**2``
    :ivar quadrature_error: estimated ``|Δeps|`` from the aliased power, ``sqrt(eps^2 + 2a) - eps``
        (quadratures; NaN on random grids; ``|eps(D) - eps(D/2)|`` from adaptive orbit_metrics)
    :ivar noise_floor: ``NOISE_ULPS * finfo(dtype).eps * rms``
    :ivar at_floor: ``eps <= noise_floor``: the value is rounding noise
    :ivar dtype: name of the dtype the noise floor assumes
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
    interval_68: Tuple[float, float]
    interval_95: Tuple[float, float]
    interval_method: str
    exact: bool
    alias_power: float
    quadrature_error: float
    noise_floor: float
    at_floor: bool
    dtype: str
    calibration_source: str = ""
    calibration: Optional[PairCalibration] = None

    @property
    def mean_square(self) -> float:
        """``<||f||^2>`` over the orbit, summed over components (``rms**2``)."""
        return self.rms ** 2

    def as_dict(self) -> dict:
        return {"eps": self.eps, "relative": self.relative, "rms": self.rms,
                "eps_stderr": self.eps_stderr, "estimator": self.estimator,
                "n_elements": self.n_elements, "interval_68": list(self.interval_68),
                "interval_95": list(self.interval_95), "interval_method": self.interval_method,
                "exact": self.exact, "alias_power": self.alias_power,
                "quadrature_error": self.quadrature_error, "noise_floor": self.noise_floor,
                "at_floor": self.at_floor, "dtype": self.dtype,
                "calibration_source": self.calibration_source}


def equivariance_error(values, grid: O3Grid, kind, *, dtype=None,
                       check_exactness: bool = True,
                       calibration: Optional[PairCalibration] = None,
                       calibrate: bool = False) -> EquivarianceError:
    """Equivariance error (paper Eq. 1-2) of an output sampled on ``grid``'s orbit.

    :param values: ``(len(grid), ...)`` outputs ``f(Q_k x)``, any float dtype/device
    :param grid: the :class:`~symmon.core.grids.O3Grid` the orbit was sampled on
    :param kind: output kind (``"scalar"``, ``"vector"``, ``"vector_per_atom"``,
        ``"symmetric_tensor"``, ...)
    :param dtype: dtype the model computed in (default: that of ``values``), for the
        noise floor
    :param check_exactness: measure the aliased power on quadratures (else ``exact``
        is False: unchecked)
    :param calibration: reference orbit of the same output (an earlier result's
        ``calibration``, or a :class:`~symmon.core.calibration.CalibrationPool` of
        several) whose pivot law gives a random grid's interval; a grid of >= 16 pairs
        is pooled with it
    :param calibrate: also return this orbit as a reference (``.calibration``; grids of
        at least 16 pairs)
    """
    representation = get_representation(kind)
    dtype = torch.as_tensor(values).dtype if dtype is None else dtype
    # a random grid's few copies are cheaper in NumPy than through torch's per-op cost
    back = (back_transform(values, grid, representation) if grid.is_exact
            else back_transform_array(values, grid, representation))
    # this orbit as a reference: asked for, or a random grid big enough to be its own
    own = (calibration_from_back(back, grid)
           if grid.n_rotations >= MIN_REFERENCE_PAIRS and (calibrate or not grid.is_exact)
           else None)
    if grid.is_exact:
        weights = grid.torch_weights(back.device)
        mean_square = float(torch.tensordot(weights, back * back, dims=1).sum())
        floor = _noise_floor(dtype, mean_square)
        mean, variance = _weighted_variance(back, weights)
        variance = variance.clamp_min(0.0)
        eps_sq = float(variance.sum())
        stats = _quadrature_statistics(back, mean, grid, eps_sq, floor, check_exactness,
                                       float(np.sqrt(mean_square)))
        mean, variance = mean.cpu().numpy(), variance.cpu().numpy()
    else:
        given = calibration is not None and calibration.usable
        reference = pooled(calibration, own)  # a grid of >= 16 pairs joins the reference
        # a few small arrays: NumPy's per-operation cost is a fraction of torch's
        mean_square, mean, variance = _paired_variance(back)
        floor = _noise_floor(dtype, mean_square)
        eps_sq = float(variance.sum())  # W + B, the unbiased pair estimate
        stats = _pair_statistics(back, grid, eps_sq, floor, reference,
                                 CALIBRATED_METHOD if given else "bootstrap")
    rms = float(np.sqrt(mean_square))
    eps = float(np.sqrt(max(eps_sq, 0.0)))
    n_item = len(representation.item_shape)
    item_axes = tuple(range(variance.ndim - n_item, variance.ndim))
    per_item = variance.sum(axis=item_axes) if n_item else variance
    return EquivarianceError(
        eps=eps, eps_sq=eps_sq,
        per_item=np.sqrt(np.maximum(per_item, 0.0)),
        per_component=np.sqrt(np.maximum(variance, 0.0)),
        rms=rms, relative=eps / rms if rms > 0 else float("nan"),
        mean=mean, estimator="quadrature" if grid.is_exact else "unbiased_pairs",
        n_elements=len(grid), noise_floor=floor, at_floor=bool(eps <= floor),
        dtype=str(dtype).replace("torch.", ""),
        calibration=own if calibrate else None, **stats,
    )


def _noise_floor(dtype, mean_square: float) -> float:
    return NOISE_ULPS * float(torch.finfo(_torch_dtype(dtype)).eps) * float(np.sqrt(mean_square))


def _torch_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype if dtype.is_floating_point else torch.float64
    kind = np.dtype(dtype)
    return {np.dtype("float32"): torch.float32, np.dtype("float16"): torch.float16}.get(
        kind, torch.float64)


def _weighted_variance(back: torch.Tensor, weights: torch.Tensor):
    mean = torch.tensordot(weights, back, dims=1)
    centred = back - mean
    return mean, torch.tensordot(weights, centred * centred, dims=1)


def _paired_variance(back: np.ndarray):
    """``<||y||^2>``, the orbit mean and the per-component unbiased variance
    ``mean_i d_i^2 + sample var of u_i`` (its sum ``W + B`` is the pair estimate of
    ``eps^2``; see intervals), from ``(2P, ...)`` values."""
    n_pairs = back.shape[0] // 2
    plus, minus = back[:n_pairs], back[n_pairs:]
    d, u = (plus - minus) / 2, (plus + minus) / 2
    mean = u.sum(axis=0) / n_pairs  # = back.mean(axis=0)
    deviations = u - mean
    mean_square = float(np.vdot(back, back)) / back.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):  # one pair: no B (NaN), as before
        between = (deviations * deviations).sum(axis=0) / (n_pairs - 1) if n_pairs > 1 \
            else np.full_like(mean, np.nan)
    return mean_square, mean, (d * d).sum(axis=0) / n_pairs + between


def _quadrature_statistics(back, mean, grid: O3Grid, eps_sq, floor, check, rms) -> dict:
    eps = float(np.sqrt(eps_sq))
    if not check:
        return _quadrature_result(eps, float("nan"), float("nan"), False)
    alias = alias_power(back - mean, grid)
    exact = alias <= max(ALIAS_TOLERANCE * eps_sq, floor ** 2, (NEGLIGIBLE_ERROR * rms) ** 2)
    error = float(np.sqrt(eps_sq + ALIAS_FACTOR * alias) - eps)
    return _quadrature_result(eps, alias, error, bool(exact))


def _quadrature_result(eps, alias, error, exact) -> dict:
    width = 0.0 if exact or not np.isfinite(error) else error
    interval = (max(eps - width, 0.0), eps + width)
    return {"interval_68": interval, "interval_95": interval, "exact": exact,
            "interval_method": "exact_quadrature" if exact else "aliasing_bound",
            "eps_stderr": 0.0 if exact else width, "alias_power": alias,
            "quadrature_error": error}


def _sqrt_interval(interval):
    low, high = interval
    return np.sqrt(np.maximum(low, 0.0)), np.sqrt(np.maximum(high, 0.0))


def _widened(interval, floor: float):
    low, high = map(float, interval)
    return max(low - floor, 0.0), high + floor


def alias_power(centred: torch.Tensor, grid: O3Grid) -> float:
    """Power of ``(K, ...)`` values beyond ``l = degree // 2``, measured on the quadrature."""
    values = centred.reshape(len(grid), 1, -1)
    flat, _ = paired_samples(values, grid, 1)
    weights = grid.torch_weights(centred.device)
    total = float(torch.tensordot(weights, centred * centred, dims=1).sum())
    resolved = float(quadrature_powers(flat, grid, int(grid.degree) // 2).sum())
    return max(total - resolved, 0.0)


def _pair_statistics(back, grid: O3Grid, eps_sq: float, floor: float, reference=None,
                     method="") -> dict:
    """Intervals of ``eps`` from random pairs (from ``reference``'s pivot law when
    given, else the data-only Student-t), never narrower than the noise floor: when
    every pair gives the same value (a constant lab field) the estimate is exact up to
    round-off, and a zero-width interval would miss the truth by round-off alone."""
    n_pairs = grid.n_rotations
    if reference is None:
        estimate = pair_estimate(back[:n_pairs], back[n_pairs:])
        intervals, method, source = [estimate.eps_interval(level) for level in (0.68, 0.95)], \
            PAIRS_METHOD, ""
    else:
        intervals = [_sqrt_interval(reference.interval(eps_sq, n_pairs, level))
                     for level in (0.68, 0.95)]
        source = reference.source
    low68, high68 = _widened(intervals[0], floor)
    low95, high95 = _widened(intervals[1], floor)
    return {"interval_68": (low68, high68), "interval_95": (low95, high95),
            "interval_method": method, "calibration_source": source, "exact": False,
            "eps_stderr": (high68 - low68) / 2, "alias_power": float("nan"),
            "quadrature_error": float("nan")}
