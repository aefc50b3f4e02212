"""Readout purification (paper §III.3, Eq. 5): the closed-form, symmetry-penalised fit.

The model's output on the copy ``Q x`` is corrected by a linear function of its
last-layer features ``phi`` (LLF), ``f'(Q) = f(Q) + A phi(Q)``, and ``A`` is fitted in
closed form over the O(3) orbit of every structure of a data set:

    L(A) = sum_x < || y'(Q) - t(x) ||^2 >_Q  +  lambda sum_x < || y'(Q) - <y'> ||^2 >_Q,

with ``y'(Q) = rho(Q)^-1 f'(Q)`` the corrected output brought back to the input frame,
``t`` the reference labels (or, without labels, the model's own orbit average) and the
second term the squared equivariance error of the corrected output.

Writing ``y'(Q) = y(Q) + M(Q) theta`` with ``theta = vec(A)`` and
``M(Q) = rho(Q)^-1 (x) phi(Q)^T``, orthogonality of ``rho`` gives
``M^T M = I (x) phi phi^T`` and the normal equations

    [(1 + lambda) I (x) G - lambda sum_x Mbar^T Mbar + mu I] theta
        = -sum_x <M^T (y - t)> - lambda sum_x <M^T (y - ybar)>,

``G = sum_x <phi phi^T>``, ``Mbar = <M>``; all sums are accumulated in one sweep
(float64, features scaled to unit RMS before the solve; ``mu`` is an optional ridge
relative to the mean diagonal). Accumulators of disjoint sets of structures add
(``a += b``), so a sweep can be split over processes. Derivation: docs/purification.md.
numpy/torch only (no ASE, no files).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np
import torch

from .grids import O3Grid
from .orbit_values import back_transform
from .representations import get_representation

__all__ = ["NormalEquations", "apply_correction", "apply_correction_torch", "choose_lambda", "inverse_representation",
           "scan_lambdas"]


def _item_size(kind: str) -> int:
    return int(np.prod(get_representation(kind).item_shape, dtype=int))


#: grid -> {kind: rho^-1}: built once per (grid, kind), released with the grid
_INVERSE_REPRESENTATIONS: "weakref.WeakKeyDictionary[O3Grid, Dict[str, np.ndarray]]" = \
    weakref.WeakKeyDictionary()


def inverse_representation(grid: O3Grid, kind: str) -> np.ndarray:
    """``rho(Q_k)^-1`` as ``(K, m, m)`` matrices acting on flattened outputs.

    Built once per (grid, kind) and shared (read-only): every structure of a sweep
    uses the same matrices."""
    by_kind = _INVERSE_REPRESENTATIONS.setdefault(grid, {})
    if kind not in by_kind:
        matrices = _build_inverse_representation(grid, kind)
        matrices.flags.writeable = False
        by_kind[kind] = matrices
    return by_kind[kind]


def _build_inverse_representation(grid: O3Grid, kind: str) -> np.ndarray:
    item = get_representation(kind).item_shape
    m = _item_size(kind)
    basis = torch.eye(m, dtype=torch.float64).reshape((m,) + item)
    orbit_basis = basis.unsqueeze(0).expand((len(grid), m) + item).contiguous()
    # back_transform acts on (K, ..., *item): columns of rho^-1 are images of unit outputs
    images = back_transform(orbit_basis, grid, kind).reshape(len(grid), m, m)
    return images.transpose(1, 2).numpy()


def _flatten_outputs(values: np.ndarray, kind: str, per_atom: bool) -> np.ndarray:
    """``(K, S, m)`` from orbit outputs ``(K, [N,] *item)``."""
    m = _item_size(kind)
    return values.reshape(values.shape[0], -1 if per_atom else 1, m)


def _with_intercept(features: np.ndarray, intercept: bool) -> np.ndarray:
    """``features`` (float64) with a column of ones appended when ``intercept``."""
    features = np.asarray(features, dtype=np.float64)
    if intercept:
        features = np.concatenate([features, np.ones(features.shape[:-1] + (1,))], axis=-1)
    return features


def _flatten_features(features, per_atom: bool, intercept: bool) -> np.ndarray:
    """``(K, S, d)`` per-sample features from ``(K, N, d)`` or ``(K, d)`` (per structure);
    per-structure targets sum the atoms' features."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim == 2:
        features = features[:, None, :]
    elif not per_atom:
        features = features.sum(axis=1, keepdims=True)
    return _with_intercept(features, intercept)


def _check_target(target, shape, per_atom) -> np.ndarray:
    target = np.asarray(target, dtype=np.float64)
    n_samples, m = shape
    if target.size != n_samples * m:
        raise ValueError(f"labels of shape {target.shape} do not match the output "
                         f"({n_samples} {'atoms' if per_atom else 'structure'} x {m} components)")
    return target.reshape(n_samples, m)


def _weighted_sum_sq(weights, residual) -> float:
    return float(np.einsum("k,ksm->", weights, residual ** 2))


@dataclass
class NormalEquations:
    """One-sweep accumulators of the purification least-squares problem."""

    kind: str
    per_atom: bool
    n_features: int
    intercept: bool = False

    def __post_init__(self):
        self.m = _item_size(self.kind)
        self.d = d = self.n_features + int(self.intercept)
        self.gram = np.zeros((d, d))                            # sum <phi phi^T>
        self.mbar_gram = np.zeros((self.m * d, self.m * d))     # sum Mbar^T Mbar
        self.rhs_data = np.zeros(self.m * d)                    # sum <M^T (y - t)>
        self.rhs_eq = np.zeros(self.m * d)                      # sum <M^T (y - ybar)>
        self.sq_data = 0.0                                      # sum <|y - t|^2>
        self.sq_eq = 0.0                                        # sum <|y - ybar|^2> (eps^2)
        self.sq_norm = 0.0                                      # sum <|y|^2>
        self.n_samples = 0

    _SUMS = ("gram", "mbar_gram", "rhs_data", "rhs_eq", "sq_data", "sq_eq", "sq_norm",
             "n_samples")

    def __iadd__(self, other: "NormalEquations") -> "NormalEquations":
        """Add the accumulators of another set of structures (same target and features)."""
        if (other.kind, other.per_atom, other.d) != (self.kind, self.per_atom, self.d):
            raise ValueError("cannot add normal equations of different targets or features")
        for name in self._SUMS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def add(self, grid: O3Grid, orbit_outputs, orbit_features, target=None) -> None:
        """Accumulate one structure: outputs ``f(Q x)`` and LLF on the orbit of ``grid``.

        :param orbit_outputs: ``(K, [N,] *item)`` model outputs in the copies' frames
        :param orbit_features: ``(K, N, d)`` per-atom (or ``(K, d)``) last-layer features
        :param target: labels in the input frame (``([N,] *item)``); ``None`` uses the
            model's own orbit average
        """
        weights = grid.weights
        rho_inv = inverse_representation(grid, self.kind)
        back = back_transform(torch.as_tensor(np.asarray(orbit_outputs, dtype=np.float64)),
                              grid, self.kind).numpy()
        y = _flatten_outputs(back, self.kind, self.per_atom)                     # (K, S, m)
        phi = _flatten_features(orbit_features, self.per_atom, self.intercept)   # (K, S, d)
        if phi.shape[-1] != self.d or phi.shape[:2] != y.shape[:2]:
            raise ValueError(f"features of shape {np.shape(orbit_features)} do not match "
                             f"outputs of shape {np.shape(orbit_outputs)} (expected "
                             f"{self.n_features} features)")
        ybar = np.einsum("k,ksm->sm", weights, y)
        t = ybar if target is None else _check_target(target, y.shape[1:], self.per_atom)
        weighted_phi = weights[:, None, None] * phi
        self.gram += np.einsum("ksi,ksj->ij", weighted_phi, phi, optimize=True)
        mbar = np.einsum("kab,ksj->sabj", rho_inv, weighted_phi, optimize=True).reshape(
            y.shape[1], self.m, self.m * self.d)
        self.mbar_gram += np.einsum("sap,saq->pq", mbar, mbar, optimize=True)
        # M^T v = sum_a rho^-1_ab v_a phi_j  -> index (b, j)
        for rhs, residual in ((self.rhs_data, y - t[None]), (self.rhs_eq, y - ybar[None])):
            rotated = np.einsum("kab,ksa->ksb", rho_inv, residual, optimize=True)
            rhs += np.einsum("ksb,ksj->bj", rotated, weighted_phi, optimize=True).reshape(-1)
        self.sq_data += _weighted_sum_sq(weights, y - t[None])
        self.sq_eq += _weighted_sum_sq(weights, y - ybar[None])
        self.sq_norm += _weighted_sum_sq(weights, y)
        self.n_samples += y.shape[1]

    def losses(self, matrix: np.ndarray):
        """``(L_MSE, L_eq)`` of the corrected outputs, exactly, from the accumulators.

        Both are quadratic in ``theta``: ``L_MSE = theta^T (I (x) G) theta + 2 theta^T
        b_data + <|y-t|^2>``, ``L_eq = theta^T (I (x) G - Mbar^T Mbar) theta + 2 theta^T
        b_eq + <|y-ybar|^2>``, so held-out errors for any ``lambda`` need no re-evaluation.
        """
        theta = np.asarray(matrix, dtype=np.float64).reshape(-1)
        data_gram = np.kron(np.eye(self.m), self.gram)
        mse = theta @ data_gram @ theta + 2 * theta @ self.rhs_data + self.sq_data
        eq = theta @ (data_gram - self.mbar_gram) @ theta + 2 * theta @ self.rhs_eq + self.sq_eq
        return max(float(mse), 0.0), max(float(eq), 0.0)

    def scores(self, matrix: np.ndarray) -> Dict[str, float]:
        """RMSE per component against the data term; eps as an RMS per sample (per atom
        for per-atom targets, per structure otherwise), summed over all samples
        (``eps_total``) and relative to the orbit RMS."""
        mse, eq = self.losses(matrix)
        return {"rmse": float(np.sqrt(mse / (self.n_samples * self.m))),
                "eps": float(np.sqrt(eq / self.n_samples)), "eps_total": float(np.sqrt(eq)),
                "rel_eps": float(np.sqrt(eq / self.sq_norm)) if self.sq_norm > 0 else np.nan}

    def solve(self, lam: float, ridge: float = 1e-10) -> np.ndarray:
        """Optimal ``A`` (``(m, d)``, acting on ``phi`` in each copy's frame) for ``lambda``."""
        if lam < 0 or ridge < 0:
            raise ValueError(f"lambda and ridge must be non-negative, got {lam}, {ridge}")
        if self.n_samples == 0:
            raise ValueError("no structures were accumulated")
        scale = np.sqrt(np.clip(np.diag(self.gram) / self.n_samples, 1e-300, None))
        full_scale = np.tile(scale, self.m)  # theta index (b, j): j fastest
        gram = self.gram / np.outer(scale, scale)
        matrix = (1 + lam) * np.kron(np.eye(self.m), gram) \
            - lam * self.mbar_gram / np.outer(full_scale, full_scale)
        rhs = -(self.rhs_data + lam * self.rhs_eq) / full_scale
        matrix += ridge * np.trace(matrix) / len(matrix) * np.eye(len(matrix))
        try:
            theta = np.linalg.solve(matrix, rhs)
        except np.linalg.LinAlgError:
            theta = np.linalg.lstsq(matrix, rhs, rcond=None)[0]
        return (theta / full_scale).reshape(self.m, self.d)


def apply_correction(outputs, features, matrix: np.ndarray, kind: str, per_atom: bool,
                     intercept: bool = False) -> np.ndarray:
    """Corrected outputs ``f + A phi`` (any leading axes), same shape as ``outputs``."""
    outputs = np.asarray(outputs, dtype=np.float64)
    item = get_representation(kind).item_shape
    phi = np.asarray(features, dtype=np.float64)
    if not per_atom and phi.ndim >= 2:  # per-structure target: sum over atoms
        phi = phi.sum(axis=-2)
    phi = _with_intercept(phi, intercept)
    correction = np.einsum("md,...d->...m", matrix, phi)
    return outputs + correction.reshape(outputs.shape[:outputs.ndim - len(item)] + item)


def apply_correction_torch(outputs: torch.Tensor, features: torch.Tensor,
                           matrix: torch.Tensor, kind: str, per_atom: bool,
                           intercept: bool = False) -> torch.Tensor:
    """:func:`apply_correction` in torch, float64, where ``features`` are (the model's
    device: only the correction, of the outputs' size, is copied to ``outputs``' device;
    ``matrix`` ``(m, d)`` on the features' device)."""
    item = get_representation(kind).item_shape
    phi = features.to(torch.float64)
    if not per_atom and phi.dim() >= 2:  # per-structure target: sum over atoms
        phi = phi.sum(dim=-2)
    n_features = phi.shape[-1]
    correction = phi @ matrix[:, :n_features].T
    if intercept:
        correction = correction + matrix[:, n_features]
    correction = correction.to(outputs.device)
    return outputs.to(torch.float64) + correction.reshape(
        outputs.shape[:outputs.dim() - len(item)] + item)


def _row(lam, train, holdout, baseline, matrix) -> Dict:
    return {"lambda": float(lam), "train_rmse": train["rmse"],
            "train_rel_eps": train["rel_eps"], "holdout_rmse": holdout["rmse"],
            "holdout_eps": holdout["eps"], "holdout_rel_eps": holdout["rel_eps"],
            "eps_reduction": baseline["eps"] / max(holdout["eps"], 1e-300),
            "rmse_change": holdout["rmse"] / baseline["rmse"] - 1.0
            if baseline["rmse"] > 0 else np.nan,
            "matrix": matrix}


def scan_lambdas(train: NormalEquations, holdout: NormalEquations, lambdas: Sequence[float],
                 ridge: float = 1e-10) -> List[Dict]:
    """For each lambda: solve on ``train``, score both sets exactly.

    Row 0 is the model as is (``lambda`` NaN, ``matrix`` None); ``eps_reduction`` and
    ``rmse_change`` compare the held-out scores with it.
    """
    zero = np.zeros((train.m, train.d))
    baseline = holdout.scores(zero)
    rows = [_row(np.nan, train.scores(zero), baseline, baseline, None)]
    for lam in lambdas:
        matrix = train.solve(float(lam), ridge)
        rows.append(_row(lam, train.scores(matrix), holdout.scores(matrix), baseline, matrix))
    return rows


def choose_lambda(table: List[Dict[str, float]], max_rmse_increase: float = 0.01) -> Dict:
    """The row with the lowest held-out eps whose RMSE rose by at most the given fraction.

    When no lambda lowers the held-out eps within that budget, the model's own row is
    returned (``lambda`` NaN, a zero correction): purification would not help.
    """
    baseline = table[0]
    rows = [row for row in table[1:] if row["rmse_change"] <= max_rmse_increase
            and row["holdout_eps"] < baseline["holdout_eps"]]
    if not rows:
        return baseline
    return min(rows, key=lambda row: row["holdout_eps"])
