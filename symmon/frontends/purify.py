"""Readout purification (paper §III.3, Eq. 5): a symmetry-penalised linear readout.

The model's output on the copy ``Q x`` is corrected by a linear function of its
last-layer features ``phi`` (LLF), ``f'(Q) = f(Q) + A phi(Q)``, and ``A`` is fitted in
closed form over the O(3) orbit of every structure of a data set:

    L(A) = sum_x < || y'(Q) - t(x) ||^2 >_Q  +  lambda sum_x < || y'(Q) - <y'> ||^2 >_Q,

with ``y'(Q) = rho(Q)^-1 f'(Q)`` the corrected output brought back to the input frame,
``t`` the reference labels (or, without labels, the model's own orbit average) and the
second term the squared equivariance error of the corrected output. Adding ``A phi``
to the model's output is the paper's refit of the readout ``W -> W + A`` written so that
it does not depend on the model's internal bias/scaling details.

Writing ``y'(Q) = y(Q) + M(Q) theta`` with ``theta = vec(A)`` and
``M(Q) = rho(Q)^-1 (x) phi(Q)^T``, orthogonality of ``rho`` gives
``M^T M = I (x) phi phi^T`` and the normal equations

    [(1 + lambda) I (x) G - lambda sum_x Mbar^T Mbar + mu I] theta
        = -sum_x <M^T (y - t)> - lambda sum_x <M^T (y - ybar)>,

``G = sum_x <phi phi^T>``, ``Mbar = <M>``; all sums are accumulated in one sweep
(float64, features scaled to unit RMS before the solve; ``mu`` is an optional ridge
relative to the mean diagonal). Derivation and advice: docs/purification.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..core.metrics import back_transform
from ..adapters.base import voigt_to_matrix
from ..io.files import file_sha256
from ..core.grids import O3Grid
from ..core.representations import get_representation

#: purifiable targets -> (kind, per atom?)
TARGETS = {
    "energy": ("scalar", False),
    "non_conservative_forces": ("vector", True),
    "non_conservative_stress": ("symmetric_tensor", False),
}


def inverse_representation(grid: O3Grid, kind: str) -> np.ndarray:
    """``rho(Q_k)^-1`` as ``(K, m, m)`` matrices acting on flattened outputs."""
    representation = get_representation(kind)
    item = representation.item_shape
    m = int(np.prod(item, dtype=int))
    basis = torch.eye(m, dtype=torch.float64).reshape((m,) + item)
    orbit_basis = basis.unsqueeze(0).expand((len(grid), m) + item).contiguous()
    # back_transform acts on (K, ..., *item): columns of rho^-1 are images of unit outputs
    images = back_transform(orbit_basis, grid, kind).reshape(len(grid), m, m)
    return images.transpose(1, 2).numpy()


def _flatten_outputs(values: np.ndarray, kind: str, per_atom: bool) -> np.ndarray:
    """``(K, S, m)`` from orbit outputs ``(K, [N,] *item)``."""
    item = get_representation(kind).item_shape
    k = values.shape[0]
    m = int(np.prod(item, dtype=int))
    return values.reshape(k, -1, m) if per_atom else values.reshape(k, 1, m)


def _flatten_features(features: np.ndarray, per_atom: bool, intercept: bool) -> np.ndarray:
    """``(K, S, d)`` per-sample features; per-structure targets sum atoms' features."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim == 2:  # (K, d): already per structure
        features = features[:, None, :]
    if not per_atom and features.shape[1] != 1:
        features = features.sum(axis=1, keepdims=True)
    if intercept:
        features = np.concatenate([features, np.ones(features.shape[:2] + (1,))], axis=-1)
    return features


@dataclass
class NormalEquations:
    """One-sweep accumulators of the purification least-squares problem."""

    kind: str
    per_atom: bool
    n_features: int
    intercept: bool = False
    gram: np.ndarray = None          # sum <phi phi^T>                   (d, d)
    mbar_gram: np.ndarray = None     # sum Mbar^T Mbar                   (md, md)
    rhs_data: np.ndarray = None      # sum <M^T (y - t)>                 (md,)
    rhs_eq: np.ndarray = None        # sum <M^T (y - ybar)>              (md,)
    sq_data: float = 0.0             # sum <|y - t|^2>
    sq_eq: float = 0.0               # sum <|y - ybar|^2>  (eps^2 of the model)
    sq_norm: float = 0.0             # sum <|y|^2>
    n_samples: int = 0

    def __post_init__(self):
        self.m = int(np.prod(get_representation(self.kind).item_shape, dtype=int))
        d = self.n_features + int(self.intercept)
        self.d = d
        self.gram = np.zeros((d, d))
        self.mbar_gram = np.zeros((self.m * d, self.m * d))
        self.rhs_data = np.zeros(self.m * d)
        self.rhs_eq = np.zeros(self.m * d)

    def add(self, grid: O3Grid, orbit_outputs, orbit_features, target=None) -> None:
        """Accumulate one structure: outputs ``f(Q x)`` and LLF on the orbit of ``grid``.

        :param orbit_outputs: ``(K, [N,] *item)`` model outputs in the copies' frames
        :param orbit_features: ``(K, N, d)`` per-atom (or ``(K, d)``) last-layer features
        :param target: labels in the input frame (``([N,] *item)``); ``None`` uses the
            model's own orbit average
        """
        weights = grid.weights
        rho_inv = self._inverse_representation(grid)
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
        # M^T v = sum_a rho^-1_ab v_a phi_j  -> index (b, j); rho^T v = rho v rotated back
        for rhs, residual in ((self.rhs_data, y - t[None]), (self.rhs_eq, y - ybar[None])):
            rotated = np.einsum("kab,ksa->ksb", rho_inv, residual, optimize=True)
            rhs += np.einsum("ksb,ksj->bj", rotated, weighted_phi, optimize=True).reshape(-1)
        self.sq_data += float(np.einsum("k,ksm->", weights, (y - t[None]) ** 2))
        self.sq_eq += float(np.einsum("k,ksm->", weights, (y - ybar[None]) ** 2))
        self.sq_norm += float(np.einsum("k,ksm->", weights, y ** 2))
        self.n_samples += y.shape[1]

    def _inverse_representation(self, grid: O3Grid) -> np.ndarray:
        """``rho(Q)^-1`` of the grid, computed once per grid (every structure uses it)."""
        if getattr(self, "_rho_grid", None) is not grid:
            self._rho_grid, self._rho_inv = grid, inverse_representation(grid, self.kind)
        return self._rho_inv

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
        """RMSE per component against the data term, and eps (total, relative)."""
        mse, eq = self.losses(matrix)
        return {"rmse": float(np.sqrt(mse / (self.n_samples * self.m))),
                "eps": float(np.sqrt(eq)),
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


def _check_target(target, shape, per_atom) -> np.ndarray:
    target = np.asarray(target, dtype=np.float64)
    n_samples, m = shape
    if target.size != n_samples * m:
        raise ValueError(f"labels of shape {target.shape} do not match the output "
                         f"({n_samples} {'atoms' if per_atom else 'structure'} x {m} components)")
    return target.reshape(n_samples, m)


def apply_correction(outputs, features, matrix: np.ndarray, kind: str, per_atom: bool,
                     intercept: bool = False) -> np.ndarray:
    """Corrected outputs ``f + A phi`` (any leading axes), same shape as ``outputs``."""
    outputs = np.asarray(outputs, dtype=np.float64)
    item = get_representation(kind).item_shape
    phi = np.asarray(features, dtype=np.float64)
    if not per_atom and phi.ndim >= 2:
        phi = phi.sum(axis=-2)
    if intercept:
        phi = np.concatenate([phi, np.ones(phi.shape[:-1] + (1,))], axis=-1)
    correction = np.einsum("md,...d->...m", matrix, phi)
    return outputs + correction.reshape(outputs.shape[:outputs.ndim - len(item)] + item)


# --------------------------------------------------------------------------------------
# model sweep, readout files, inference
# --------------------------------------------------------------------------------------
def feature_name(target_key: str) -> str:
    """metatrain's name of the last-layer features of a target."""
    return f"mtt::aux::{target_key}_last_layer_features"


@dataclass
class PurificationSweep:
    """Accumulated normal equations of the fit and held-out structures for one target."""

    target: str
    feature: str
    train: NormalEquations
    holdout: NormalEquations
    grid: O3Grid
    n_train: int
    n_holdout: int
    labels: str

    def scan(self, lambdas: Sequence[float], ridge: float = 1e-10) -> List[Dict[str, float]]:
        """For each lambda: solve on the training set, score train and held-out sets."""
        rows = []
        baseline_train = self.train.scores(np.zeros((self.train.m, self.train.d)))
        baseline_holdout = self.holdout.scores(np.zeros((self.train.m, self.train.d)))
        for lam in lambdas:
            matrix = self.train.solve(float(lam), ridge)
            train, holdout = self.train.scores(matrix), self.holdout.scores(matrix)
            rows.append({
                "lambda": float(lam),
                "train_rmse": train["rmse"], "train_rel_eps": train["rel_eps"],
                "holdout_rmse": holdout["rmse"], "holdout_eps": holdout["eps"],
                "holdout_rel_eps": holdout["rel_eps"],
                "eps_reduction": baseline_holdout["eps"] / max(holdout["eps"], 1e-300),
                "rmse_change": holdout["rmse"] / baseline_holdout["rmse"] - 1.0
                if baseline_holdout["rmse"] > 0 else np.nan,
                "matrix": matrix,
            })
        rows.insert(0, {"lambda": float("nan"), "train_rmse": baseline_train["rmse"],
                        "train_rel_eps": baseline_train["rel_eps"],
                        "holdout_rmse": baseline_holdout["rmse"],
                        "holdout_eps": baseline_holdout["eps"],
                        "holdout_rel_eps": baseline_holdout["rel_eps"], "eps_reduction": 1.0,
                        "rmse_change": 0.0, "matrix": None})
        return rows


def sweep_structures(orbit_model, structures, target: str, grid: O3Grid,
                     labels_key: Optional[str] = None, holdout: float = 0.25, seed: int = 0,
                     intercept: Optional[bool] = None, progress: bool = True) -> PurificationSweep:
    """One pass over ``structures``: LLF and outputs on the orbit, normal equations.

    :param orbit_model: a :class:`~symmon.adapters.MetatomicOrbitModel`
    :param target: ``energy``, ``non_conservative_forces`` or ``non_conservative_stress``
    :param labels_key: ``atoms.info``/``atoms.arrays`` key of reference labels (eV, eV/Å,
        eV/Å^3, stress as 3x3 or 9 values); ``None``: the model's own orbit average
    :param holdout: fraction of structures kept out of the fit to score it
    """
    from tqdm.auto import tqdm

    if target not in TARGETS:
        raise ValueError(f"cannot purify {target!r}; choose one of {sorted(TARGETS)}")
    kind, per_atom = TARGETS[target]
    key = orbit_model.model_key(target) if hasattr(orbit_model, "model_key") else target
    feature = feature_name(key)
    if feature not in orbit_model.available_outputs:
        raise ValueError(f"the model has no last-layer features for {target!r} (no output "
                         f"{feature!r}); purification needs a metatrain model that exposes "
                         "them")
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be a fraction between 0 and 1, got {holdout}")
    structures = list(structures)
    if len(structures) < 2:
        raise ValueError("purification needs at least 2 structures (fit + held-out)")
    order = np.random.default_rng(seed).permutation(len(structures))
    n_holdout = max(1, int(round(holdout * len(structures))))
    is_holdout = np.zeros(len(structures), bool)
    is_holdout[order[:n_holdout]] = True
    intercept = (kind == "scalar") if intercept is None else intercept
    accumulators = None
    for index, atoms in enumerate(tqdm(structures, desc=f"purify {target}", unit="structure",
                                       disable=not progress)):
        out = orbit_model.evaluate(atoms, grid.matrices, [target, feature])
        features = out[feature].numpy()
        if accumulators is None:
            accumulators = [NormalEquations(kind, per_atom, features.shape[-1], intercept)
                            for _ in range(2)]
        labels = _labels(atoms, labels_key, kind, per_atom) if labels_key else None
        accumulators[int(is_holdout[index])].add(grid, out[target].numpy(), features, labels)
    return PurificationSweep(target, feature, accumulators[0], accumulators[1], grid,
                             int((~is_holdout).sum()), n_holdout,
                             labels_key or "model orbit average")


def _labels(atoms, key, kind, per_atom) -> np.ndarray:
    source = atoms.arrays if per_atom else atoms.info
    if key not in source:
        raise ValueError(f"structure has no label {key!r} in atoms.{'arrays' if per_atom else 'info'}"
                         f"; available: {sorted(k for k in source if k not in ('numbers', 'positions'))}")
    value = np.asarray(source[key], dtype=np.float64)
    item = get_representation(kind).item_shape
    expected = ((len(atoms),) if per_atom else ()) + item
    if value.size == 6 and kind == "symmetric_tensor":  # Voigt xx yy zz yz xz xy
        value = voigt_to_matrix(value.reshape(6))
    if value.size != int(np.prod(expected, dtype=int)):
        raise ValueError(f"label {key!r} has shape {value.shape}, expected {expected}")
    return value.reshape(expected)


@dataclass
class Readout:
    """A fitted correction ``f + A phi`` for one target of one model."""

    target: str
    feature: str
    matrix: np.ndarray
    lam: float
    intercept: bool
    model_sha256: Optional[str] = None
    table: List[Dict[str, float]] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return TARGETS[self.target][0]

    @property
    def per_atom(self) -> bool:
        return TARGETS[self.target][1]

    def correct(self, outputs, features) -> np.ndarray:
        return apply_correction(outputs, features, self.matrix, self.kind, self.per_atom,
                                self.intercept)

    def save(self, path) -> None:
        import h5py

        from .. import __version__

        with h5py.File(path, "w") as f:
            f.attrs.update({"format": "symmon-readout", "version": 1, "target": self.target,
                            "feature": self.feature, "lambda": self.lam,
                            "intercept": self.intercept, "symmon_version": __version__,
                            "model_sha256": self.model_sha256 or ""})
            f["matrix"] = self.matrix
            if self.table:
                columns = [k for k in self.table[0] if k != "matrix"]
                f["scan"] = np.array([[row[c] for c in columns] for row in self.table])
                f["scan"].attrs["columns"] = columns

    @classmethod
    def load(cls, path) -> "Readout":
        import h5py

        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("format") != "symmon-readout":
                    raise ValueError(f"{path!r} is not a symmon readout file")
                return cls(str(f.attrs["target"]), str(f.attrs["feature"]), f["matrix"][()],
                           float(f.attrs["lambda"]), bool(f.attrs["intercept"]),
                           str(f.attrs["model_sha256"]) or None)
        except OSError as error:
            raise ValueError(f"cannot read readout file {path!r}: {error}") from None

    def check_model(self, orbit_model) -> None:
        """Refuse a readout fitted for another model."""
        sha = file_sha256(getattr(orbit_model, "model_path", None))
        if self.model_sha256 and sha and sha != self.model_sha256:
            raise ValueError(f"readout was fitted for a different model (sha256 "
                             f"{self.model_sha256[:12]}…, this model {sha[:12]}…)")
        if self.feature not in orbit_model.available_outputs:
            raise ValueError(f"the model has no output {self.feature!r} needed by the readout")


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


def tradeoff_figure(table, path, target: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table[1:]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([r["holdout_rmse"] for r in rows], [r["holdout_rel_eps"] for r in rows], "o-")
    for r in rows:
        ax.annotate(f"λ={r['lambda']:g}", (r["holdout_rmse"], r["holdout_rel_eps"]),
                    fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.plot([table[0]["holdout_rmse"]], [table[0]["holdout_rel_eps"]], "k*", ms=12,
            label="model as is")
    ax.set_xlabel("held-out RMSE (per component)")
    ax.set_ylabel("held-out relative ε")
    ax.set_yscale("log")
    ax.set_title(f"readout purification: {target}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------
# command line and inference in the monitor
# --------------------------------------------------------------------------------------
DEFAULT_LAMBDAS = (0.0, 0.1, 1.0, 10.0, 100.0, 1000.0)


def add_purify_arguments(parser) -> None:
    parser.add_argument("model", help="metatomic model (.pt) exported by metatrain")
    parser.add_argument("structures", help="structures (any ASE-readable file)")
    parser.add_argument("--target", required=True, choices=sorted(TARGETS))
    parser.add_argument("--lambda", dest="lambdas", type=float, action="append",
                        help=f"penalty weight(s) to scan (default {list(DEFAULT_LAMBDAS)})")
    parser.add_argument("--labels", default=None, metavar="KEY",
                        help="atoms.info/arrays key of reference labels (default: the "
                        "model's own orbit-averaged predictions)")
    parser.add_argument("--degree", type=int, default=6, help="O(3) quadrature degree")
    parser.add_argument("--holdout", type=float, default=0.25)
    parser.add_argument("--ridge", type=float, default=1e-10)
    parser.add_argument("--max-rmse-increase", type=float, default=0.01,
                        help="pick the lambda with the lowest held-out eps whose RMSE "
                        "rose by at most this fraction (default 0.01)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("-o", "--output", default="readout.h5")


def run_purify(args) -> int:
    import ase.io

    from ..adapters import MetatomicOrbitModel
    from ..core.grids import quadrature_grid

    if not os.path.exists(args.structures):
        raise FileNotFoundError(f"structures file {args.structures!r} does not exist")
    orbit_model = MetatomicOrbitModel(args.model, device=args.device)
    structures = ase.io.read(args.structures, ":")
    result = sweep_structures(orbit_model, structures, args.target,
                              quadrature_grid(args.degree), args.labels, args.holdout,
                              args.seed)
    table = result.scan(args.lambdas or DEFAULT_LAMBDAS, args.ridge)
    chosen = choose_lambda(table, args.max_rmse_increase)
    print(format_table(table, result))
    if chosen["matrix"] is None:
        print("no lambda lowers the held-out eps within the RMSE budget: the readout is the "
              "model's own (zero correction); try more structures or a larger "
              "--max-rmse-increase")
        chosen = dict(chosen, matrix=np.zeros((result.train.m, result.train.d)))
    readout = Readout(args.target, result.feature, chosen["matrix"], chosen["lambda"],
                      result.train.intercept, file_sha256(args.model), table)
    readout.save(args.output)
    figure = os.path.splitext(args.output)[0] + "_tradeoff.png"
    tradeoff_figure(table, figure, args.target)
    print(f"chose lambda={chosen['lambda']:g}: held-out eps reduced "
          f"{chosen['eps_reduction']:.2f}x, RMSE change {100 * chosen['rmse_change']:+.2f}%")
    print(f"readout written to {args.output}; trade-off curve in {figure}")
    return 0


def format_table(table, sweep: PurificationSweep) -> str:
    lines = [f"target {sweep.target}: {sweep.n_train} fit / {sweep.n_holdout} held-out "
             f"structures, data term: {sweep.labels}, grid: {len(sweep.grid)} O(3) elements",
             f"{'lambda':>10} {'train RMSE':>11} {'held-out RMSE':>14} {'held-out eps':>13} "
             f"{'rel eps':>9} {'eps /':>7} {'RMSE':>8}"]
    for row in table:
        lam = "model" if np.isnan(row["lambda"]) else f"{row['lambda']:g}"
        lines.append(f"{lam:>10} {row['train_rmse']:11.4g} {row['holdout_rmse']:14.4g} "
                     f"{row['holdout_eps']:13.4g} {row['holdout_rel_eps']:9.3g} "
                     f"{row['eps_reduction']:7.2f} {100 * row['rmse_change']:+7.2f}%")
    return "\n".join(lines)


def load_readout(path, orbit_model) -> Readout:
    """Load a readout for the monitor's purified mode, checking it fits the model."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"readout file {os.fspath(path)!r} does not exist")
    readout = Readout.load(path)
    readout.check_model(orbit_model)
    return readout
