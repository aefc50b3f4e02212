"""``symmon purify``: sweep a model over structures, fit the purified readout, save it.

The fit itself (normal equations, exact held-out scores, the choice of lambda) is
engine math in :mod:`symmon.core.purification`; the readout file is
:mod:`symmon.io.readout`. This module evaluates the model (outputs and last-layer
features on the orbit of every structure), prints the lambda scan, writes the file and
the trade-off figure. Background: docs/purification.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..core.grids import O3Grid
from ..adapters import feature_output
from ..core.outputs import OUTPUTS, canonical_name, output, pretty_unit, without_net_force
from ..core.purification import NormalEquations, choose_lambda, scan_lambdas
from ..io.files import file_sha256
from ..io.readout import Readout

#: outputs a linear readout produces directly: the energy and the non-conservative ones
PURIFIABLE = tuple(name for name, row in OUTPUTS.items()
                   if name == "energy" or not row.conservative)
DEFAULT_LAMBDAS = (0.0, 0.1, 1.0, 10.0, 100.0, 1000.0)
_EPS_PER = {True: "(RMS per atom)", False: "(RMS per structure)"}


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
        return scan_lambdas(self.train, self.holdout, lambdas, ridge)


def _holdout_mask(n_structures: int, holdout: float, seed: int) -> np.ndarray:
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be a fraction between 0 and 1, got {holdout}")
    if n_structures < 2:
        raise ValueError("purification needs at least 2 structures (fit + held-out)")
    order = np.random.default_rng(seed).permutation(n_structures)
    mask = np.zeros(n_structures, bool)
    mask[order[:max(1, int(round(holdout * n_structures)))]] = True
    return mask


def sweep_structures(orbit_model, structures, target: str, grid: O3Grid,
                     labels_key: Optional[str] = None, holdout: float = 0.25, seed: int = 0,
                     parts=None,
                     intercept: Optional[bool] = None, progress: bool = True) -> PurificationSweep:
    """One pass over ``structures``: LLF and outputs on the orbit, normal equations.

    :param orbit_model: an adapter with last-layer features (``has_features``)
    :param target: ``energy``, ``non_conservative_forces`` or ``non_conservative_stress``
    :param labels_key: key of reference labels (eV, eV/Å, eV/Å^3; stress as 3x3 or 6
        Voigt values; see :mod:`symmon.adapters.labels`); ``None``: the model's own
        orbit average
    :param holdout: fraction of structures kept out of the fit to score it
    :param parts: a :class:`~symmon.frontends.ranks.PartialResults`: each rank of a
        torchrun launch sweeps its share and keeps each structure's normal equations;
        rank 0 adds them in structure order and gets the sweep (the others ``None``)
    """
    from ..adapters.labels import label_quantity, read_label
    from .ranks import evaluate_items

    target = canonical_name(target)
    if target not in PURIFIABLE:
        raise ValueError(f"cannot purify {target!r}; choose one of {sorted(PURIFIABLE)}")
    row = output(target)
    feature = feature_output(orbit_model, target)
    structures = list(structures)
    is_holdout = _holdout_mask(len(structures), holdout, seed)
    intercept = (row.kind == "scalar") if intercept is None else intercept
    def one_structure(index):
        atoms = structures[index]
        out = orbit_model.evaluate(atoms, grid.matrices, [target, feature])
        outputs, features = out[target].numpy(), out[feature].numpy()
        if target == "non_conservative_forces":  # net force removed, as MetatomicCalculator,
            outputs = without_net_force(outputs)  # the monitor and eval do; A phi likewise
            features = without_net_force(features)
        labels = None if not labels_key else read_label(
            atoms, labels_key, label_quantity(target), required=True)
        equations = NormalEquations(row.kind, row.per_atom, features.shape[-1], intercept)
        equations.add(grid, outputs, features, labels)
        return equations

    per_structure = evaluate_items(range(len(structures)), one_structure, parts,
                                   progress=progress, desc=f"purify {target}")
    if per_structure is None:  # a rank other than 0
        return None
    d = next(iter(per_structure.values())).d
    accumulators = [NormalEquations(row.kind, row.per_atom, d, intercept) for _ in range(2)]
    for index in sorted(per_structure):  # in structure order: one process or many ranks
        accumulators[int(is_holdout[index])] += per_structure[index]
    return PurificationSweep(target, feature, accumulators[0], accumulators[1], grid,
                             int((~is_holdout).sum()), int(is_holdout.sum()),
                             labels_key or "model orbit average")


def tradeoff_figure(table, path, target: str, chosen: Optional[Dict] = None) -> None:
    """Held-out RMSE (per component, in the target's unit) against held-out relative eps,
    one point per lambda; the model as is and the chosen lambda are marked (a detached
    figure: pyplot's state and the session's backend are left alone)."""
    from .figure_file import new_figure, save_figure

    rows = table[1:]
    fig = new_figure(5.5, 4)
    ax = fig.subplots()
    ax.plot([r["holdout_rmse"] for r in rows], [r["holdout_rel_eps"] for r in rows], "o-",
            label="fitted readout")
    for r in rows:
        ax.annotate(f"λ={r['lambda']:g}", (r["holdout_rmse"], r["holdout_rel_eps"]),
                    fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.plot([table[0]["holdout_rmse"]], [table[0]["holdout_rel_eps"]], "k*", ms=12,
            label="model as is")
    if chosen is not None and chosen.get("matrix") is not None:
        ax.plot([chosen["holdout_rmse"]], [chosen["holdout_rel_eps"]], "o", ms=13, mfc="none",
                mec="tab:red", mew=2, label=f"chosen λ={chosen['lambda']:g}")
    ax.set_xlabel(f"held-out RMSE per component ({pretty_unit(output(target).unit)})")
    ax.set_ylabel("held-out relative ε (ε / orbit RMS)")
    ax.set_yscale("log")
    ax.set_title(f"readout purification: {target}")
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=120)


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------
def add_purify_arguments(parser) -> None:
    parser.add_argument("model", help="metatomic model (.pt) exported by metatrain")
    parser.add_argument("structures", help="structures (any ASE-readable file)")
    parser.add_argument("--target", required=True, type=canonical_name,
                        choices=sorted(PURIFIABLE),
                        help="output to purify (metatomic's singular spellings accepted)")
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
    from ..adapters.registry import orbit_model_for
    from ..adapters.labels import read_structures
    from ..core.grids import quadrature_grid

    from .ranks import PartialResults, Ranks, rank_device

    structures = read_structures(args.structures)
    with Ranks.from_environment(rank_device(args.device)) as ranks:
        orbit_model = orbit_model_for(args.model, device=ranks.device if
                                      ranks.distributed else args.device,
                                      needs=("features",))
        settings = {"model_sha256": file_sha256(args.model), "target": args.target,
                    "structures_sha256": file_sha256(args.structures),
                    "degree": args.degree, "labels": args.labels,
                    "holdout": args.holdout, "seed": args.seed}
        parts = PartialResults(args.output, ranks, settings) if ranks.distributed else None
        result = sweep_structures(orbit_model, structures, args.target,
                                  quadrature_grid(args.degree), args.labels, args.holdout,
                                  args.seed, parts)
        if ranks.is_main:
            _fit_and_save(args, result)
        if parts is not None:
            parts.clear()
    return 0


def _fit_and_save(args, result) -> None:
    """Scan the lambdas, choose one, write the readout file and the trade-off figure."""
    table = result.scan(args.lambdas or DEFAULT_LAMBDAS, args.ridge)
    chosen = choose_lambda(table, args.max_rmse_increase)
    print(format_table(table, result))
    matrix = chosen["matrix"]
    if matrix is None:
        print("no lambda lowers the held-out eps within the RMSE budget: the readout is the "
              "model's own (zero correction); try more structures or a larger "
              "--max-rmse-increase")
        matrix = np.zeros((result.train.m, result.train.d))
    readout = Readout(args.target, result.feature, matrix, chosen["lambda"],
                      result.train.intercept, file_sha256(args.model), table)
    readout.save(args.output)
    figure = os.path.splitext(args.output)[0] + "_tradeoff.png"
    tradeoff_figure(table, figure, args.target, chosen)
    print(f"chose lambda={chosen['lambda']:g}: held-out eps reduced "
          f"{chosen['eps_reduction']:.2f}x, RMSE change {100 * chosen['rmse_change']:+.2f}%")
    print(f"readout written to {args.output}; trade-off curve in {figure}")


def format_table(table, sweep: PurificationSweep) -> str:
    unit = pretty_unit(output(sweep.target).unit)
    lines = [f"target {sweep.target}: {sweep.n_train} fit / {sweep.n_holdout} held-out "
             f"structures, data term: {sweep.labels}, grid: {len(sweep.grid)} O(3) elements; "
             f"RMSE per component and eps {_EPS_PER[sweep.train.per_atom]} in {unit}",
             "(forces with their net force removed, as the monitor and symmon eval measure "
             "them); eps reduction = model's held-out eps / purified held-out eps",
             f"{'lambda':>10} {'train RMSE':>11} {'held-out RMSE':>14} {'held-out eps':>13} "
             f"{'rel eps':>9} {'eps redn':>9} {'RMSE chg':>8}"]
    for row in table:
        lam = "model" if np.isnan(row["lambda"]) else f"{row['lambda']:g}"
        lines.append(f"{lam:>10} {row['train_rmse']:11.4g} {row['holdout_rmse']:14.4g} "
                     f"{row['holdout_eps']:13.4g} {row['holdout_rel_eps']:9.3g} "
                     f"{row['eps_reduction']:9.2f} {100 * row['rmse_change']:+7.2f}%")
    return "\n".join(lines)
