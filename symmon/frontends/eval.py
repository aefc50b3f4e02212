"""``symmon eval``: is a model's symmetry error small next to its own error? (paper Fig. 2)

For every structure of a labelled set and every quantity the model predicts, the
model is evaluated on the orbit of an exact O(3) quadrature (plus the identity) and

* ``eps``: the equivariance error (:func:`symmon.core.metrics.equivariance_error`);
* ``error``: the distance of the lab-frame prediction from the label;
* ``error_averaged``: the same for the O(3)-averaged prediction
  (:func:`symmon.core.metrics.orbit_average`);

all in one convention per quantity, so that ``eps / error`` compares like with like:

========== ============================================ =========================
quantity   per structure (``eps`` and ``error``)        over the set (RMS)
========== ============================================ =========================
energy     ``|E - E_ref| / N``, ``eps_E / N`` (eV/atom)  over structures
forces     ``sqrt(sum_i |F_i - F_ref,i|^2 / N)``,       over all atoms
           ``sqrt(eps_F^2 / N)``: per-atom RMS (eV/Å)
stress     ``||sigma - sigma_ref||_F``, ``eps_sigma``    over structures
           (Frobenius, eV/Å^3; also GPa)
========== ============================================ =========================

Forces and stress are the model's direct (non-conservative) outputs when it has them,
else the conservative ones; direct forces have their net force removed per copy, as
``metatomic_ase.MetatomicCalculator`` and the monitor return them. Norms are summed over components (per-component RMSEs, as
metatrain prints them, are these divided by sqrt(3) for forces and 3 for stress).
The ratio of a structure is ``eps / max(error, 0.01 RMSE)``: a structure predicted
almost exactly by chance does not produce an unbounded ratio. Results are kept per
structure and as sums that add (:class:`QuantityTotals`), so sets evaluated apart can
be combined. Without labels only ``eps`` is reported. Docs: docs/eval.md.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..core.outputs import output, pretty_unit, without_net_force
from ..core.quantities import QUANTITIES, QUANTITY, QUANTITY_NAMES
from ..io.files import jsonable

#: a structure's error is floored at this fraction of the set's RMSE in its ratio
RATIO_FLOOR = 0.01
DEFAULT_LABEL_KEYS = {"energy": "energy", "forces": "forces", "stress": "stress"}


def choose_outputs(orbit_model, periodic: bool = True) -> Dict[str, str]:
    """quantity -> output to evaluate: direct forces/stress if the model has them."""
    available = set(orbit_model.available_outputs)
    chosen = {}
    for q in QUANTITIES:
        if q.kind == "symmetric_tensor" and not periodic:
            continue
        for name in (q.direct_output, q.name):
            if name in available:
                chosen[q.name] = name
                break
    return chosen


def _per_structure(quantity: str, distance: float, n_atoms: int) -> float:
    """A distance (summed over components and atoms) in the quantity's convention."""
    return distance * QUANTITY[quantity].per_atom_factor(n_atoms)


@dataclass
class QuantityResult:
    """One quantity on one structure (the quantity's ``eps_unit``; NaN errors: no label)."""

    eps: float
    error: float = math.nan
    error_averaged: float = math.nan
    weight: int = 1  # atoms for forces, 1 otherwise: how it counts in the set's RMS


@dataclass
class StructureResult:
    index: int
    n_atoms: int
    formula: str
    quantities: Dict[str, QuantityResult] = field(default_factory=dict)
    #: the community's numbers from the same orbit (:mod:`symmon.core.community`)
    community: Dict[str, Dict] = field(default_factory=dict)


def community_numbers(values: Dict[str, "object"], outputs: Dict[str, str], grid,
                      n_atoms: int) -> Dict[str, Dict]:
    """MLIP Arena's force test and ml-peg's orientation pairs on the proper rotations
    of the grid (lab frame: the last copy), forces as evaluated for ε."""
    from ..core.community import arena_force_test, mlpeg_pairs, proper

    rotations = proper(grid.matrices)
    forces = values.get("forces")
    result = {}
    if forces is not None:
        forces = forces.numpy()
        result["arena"] = arena_force_test(forces[rotations], forces[len(grid)],
                                           grid.matrices[rotations])
    if "energy" in values:
        result["mlpeg"] = mlpeg_pairs(values["energy"].numpy()[rotations],
                                      None if forces is None else forces[rotations],
                                      grid.matrices[rotations], n_atoms)
    return result


def evaluate_structure(orbit_model, atoms, grid, outputs: Dict[str, str],
                       label_keys: Dict[str, str], index: int = 0) -> StructureResult:
    """ε, error and error of the averaged prediction of every quantity on one structure."""
    from ..adapters.labels import read_label
    from ..core.accuracy import label_error
    from ..core.metrics import equivariance_error

    matrices = np.concatenate([grid.matrices, np.eye(3)[None]])  # last copy: lab frame
    values = orbit_model.evaluate(atoms, matrices, list(outputs.values()))
    result = StructureResult(index, len(atoms), atoms.get_chemical_formula())
    as_evaluated = {}
    for quantity, name in outputs.items():
        value = values[name]
        if name == "non_conservative_forces":  # net force removed, as MetatomicCalculator does
            value = without_net_force(value)
        as_evaluated[quantity] = value
        orbit, lab_frame = value[:len(grid)], value[len(grid)]
        kind = output(name).kind
        error = equivariance_error(orbit, grid, kind)
        item = QuantityResult(_per_structure(quantity, math.sqrt(max(error.eps_sq, 0.0)),
                                             len(atoms)),
                              weight=len(atoms) if QUANTITY[quantity].per_atom else 1)
        key = label_keys.get(quantity)
        label = read_label(atoms, key, quantity) if key else None
        if label is not None:
            deviation = label_error(lab_frame, error.mean, label)
            item.error = _per_structure(quantity, deviation.distance, len(atoms))
            item.error_averaged = _per_structure(quantity, deviation.distance_averaged,
                                                 len(atoms))
        result.quantities[quantity] = item
    result.community = community_numbers(as_evaluated, outputs, grid, len(atoms))
    return result


@dataclass
class QuantityTotals:
    """Sums over structures that add across disjoint sets (weights: atoms for forces)."""

    weight: float = 0.0
    eps_sq: float = 0.0               # sum weight * eps^2, all structures
    labelled_weight: float = 0.0
    labelled_eps_sq: float = 0.0      # the same over labelled structures
    error_sq: float = 0.0             # sum weight * error^2
    error_averaged_sq: float = 0.0

    @classmethod
    def of(cls, item: QuantityResult) -> "QuantityTotals":
        totals = cls(item.weight, item.weight * item.eps ** 2)
        if not math.isnan(item.error):
            totals.labelled_weight, totals.labelled_eps_sq = totals.weight, totals.eps_sq
            totals.error_sq = item.weight * item.error ** 2
            totals.error_averaged_sq = item.weight * item.error_averaged ** 2
        return totals

    def __add__(self, other: "QuantityTotals") -> "QuantityTotals":
        return QuantityTotals(*(getattr(self, f.name) + getattr(other, f.name)
                                for f in fields(self)))


def _rms(sum_sq: float, weight: float) -> float:
    return math.sqrt(sum_sq / weight) if weight > 0 else math.nan


def _ratio(eps: float, error: float) -> float:
    return eps / error if error > 0 else math.nan


def summarize_quantity(quantity: str, items: Sequence[QuantityResult]) -> Dict:
    """Set-level numbers of one quantity (the ``quantities.<q>`` entry of the JSON)."""
    totals = sum((QuantityTotals.of(item) for item in items), QuantityTotals())
    rmse = _rms(totals.error_sq, totals.labelled_weight)
    summary = {"unit": QUANTITY[quantity].eps_unit, "n_structures": len(items),
               "n_labelled": sum(not math.isnan(item.error) for item in items),
               "eps": _rms(totals.eps_sq, totals.weight), "rmse": rmse,
               "rmse_averaged": _rms(totals.error_averaged_sq, totals.labelled_weight),
               "rmse_per_component": rmse / math.sqrt(QUANTITY[quantity].components),
               "ratio": _ratio(_rms(totals.labelled_eps_sq, totals.labelled_weight), rmse)}
    ratios = structure_ratios(items, rmse)
    finite = ratios[np.isfinite(ratios)]
    summary["ratio_median"] = float(np.median(finite)) if len(finite) else math.nan
    summary["ratio_p95"] = float(np.percentile(finite, 95)) if len(finite) else math.nan
    alt_unit = QUANTITY[quantity].alt_unit
    if alt_unit is not None:
        summary[alt_unit[0]] = {key: summary[key] * alt_unit[1]
                                for key in ("eps", "rmse", "rmse_averaged")}
    return summary


def structure_ratios(items: Sequence[QuantityResult], rmse: float) -> np.ndarray:
    """``eps / max(error, RATIO_FLOOR * rmse)`` per structure (NaN without a label)."""
    floor = RATIO_FLOOR * rmse if np.isfinite(rmse) else 0.0
    return np.array([_ratio(item.eps, max(item.error, floor)) if not math.isnan(item.error)
                     else math.nan for item in items])


def evaluate_set(orbit_model, structures, grid, label_keys: Dict[str, str],
                 progress: bool = True, parts=None) -> Optional[List[StructureResult]]:
    """:func:`evaluate_structure` over ``structures`` with a progress bar.

    With ``parts`` (a :class:`~symmon.frontends.ranks.PartialResults`) each rank of a
    torchrun launch evaluates its share of the structures not finished by an earlier
    attempt, keeps every result as it finishes, and rank 0 returns them all in order
    (``None`` on the other ranks).
    """
    from .ranks import evaluate_items

    def one_structure(index: int) -> StructureResult:
        atoms = structures[index]
        outputs = choose_outputs(orbit_model, periodic=bool(all(atoms.pbc)))
        return evaluate_structure(orbit_model, atoms, grid, outputs, label_keys, index)

    results = evaluate_items(range(len(structures)), one_structure, parts,
                             progress=progress, desc="symmon eval")
    return None if results is None else list(results.values())


def summarize(results: Sequence[StructureResult], model: str, grid, outputs) -> Dict:
    """The JSON document of ``symmon eval`` (schema: docs/eval.md)."""
    quantities = {}
    for quantity in QUANTITY_NAMES:
        items = [r.quantities[quantity] for r in results if quantity in r.quantities]
        if items:
            quantities[quantity] = summarize_quantity(quantity, items)
            quantities[quantity]["output"] = outputs.get(quantity)
    structures = []
    for result in results:
        entry = {"index": result.index, "n_atoms": result.n_atoms, "formula": result.formula}
        for quantity, item in result.quantities.items():
            ratio = structure_ratios([item], quantities[quantity]["rmse"])[0]
            entry[quantity] = {"eps": item.eps, "error": item.error,
                               "error_averaged": item.error_averaged, "ratio": ratio}
        if result.community:
            entry["community"] = result.community
        structures.append(entry)
    return {"model": model, "degree": int(grid.degree), "n_grid": len(grid),
            "n_structures": len(results), "ratio_floor": RATIO_FLOOR,
            "quantities": quantities, "community": summarize_community(results, grid),
            "structures": structures}


def summarize_community(results: Sequence[StructureResult], grid) -> Dict:
    """Set-level community numbers: MLIP Arena's (passed = every structure and rotation
    passes) and ml-peg's (means over structures; max of the max)."""
    from ..core.community import ARENA_COSINE, ARENA_MAE, proper

    document = {"n_rotations": int(len(proper(grid.matrices)))}
    arena = [r.community["arena"] for r in results if "arena" in r.community]
    if arena:
        document["arena"] = {
            "criterion": f"force MAE < {ARENA_MAE:g} eV/angstrom and every atom's cosine "
                         f"> {ARENA_COSINE:g} (MLIP Arena)",
            "passed": all(a["passed"] for a in arena),
            "structures_passed": sum(a["passed"] for a in arena),
            "pass_fraction": float(np.mean([a["pass_fraction"] for a in arena])),
            "mae": float(np.mean([a["mae"] for a in arena])),
            "max_mae": max(a["max_mae"] for a in arena),
            "cosine": float(np.mean([a["cosine"] for a in arena])),
            "min_cosine": min(a["min_cosine"] for a in arena)}
    peg = [r.community["mlpeg"] for r in results if "mlpeg" in r.community]
    if peg:
        document["mlpeg"] = {
            "energy_mean": float(np.mean([p["energy_mean"] for p in peg])),
            "energy_max": max(p["energy_max"] for p in peg),
            "forces_mae": float(np.mean([p["forces_mae"] for p in peg]))}
    return document


# --------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------
def to_json(document: Dict) -> str:
    """Strict JSON (missing numbers are ``null``)."""
    return json.dumps(jsonable(document), indent=1)


def _number(value: float) -> str:
    return f"{value:10.3g}" if math.isfinite(value) else f"{'-':>10}"


def format_text(document: Dict) -> str:
    lines = [f"symmon eval: {document['model']}, {document['n_structures']} structures, "
             f"O(3) quadrature of degree {document['degree']} ({document['n_grid']} elements)",
             f"{'quantity':<9}{'unit':>9}{'RMSE':>10}{'RMSE avg':>10}{'eps':>10}"
             f"{'eps/RMSE':>10}{'median':>10}{'p95':>10}  labelled"]
    for quantity, q in document["quantities"].items():
        lines.append(f"{quantity:<9}{pretty_unit(q['unit']):>9}" + "".join(
            _number(q[key]) for key in ("rmse", "rmse_averaged", "eps", "ratio",
                                        "ratio_median", "ratio_p95"))
            + f"  {q['n_labelled']}/{q['n_structures']}")
        if "GPa" in q:
            lines.append(f"{'':<9}{'GPa':>9}" + "".join(
                _number(q["GPa"][key]) for key in ("rmse", "rmse_averaged", "eps")))
    lines.append("eps/RMSE: set eps over set RMSE; median, p95: of the per-structure ratios "
                 "eps/error (paper Fig. 2). Forces: per-atom RMS of the vector norm; "
                 "energy per atom; stress: Frobenius norm.")
    community = document.get("community", {})
    if "arena" in community:
        a = community["arena"]
        lines.append(f"MLIP Arena force test ({community['n_rotations']} rotations): "
                     f"{'passed' if a['passed'] else 'FAILED'} ({a['structures_passed']}/"
                     f"{document['n_structures']} structures, {100 * a['pass_fraction']:.0f} "
                     f"% of rotations); MAE {a['mae']:.3g} eV/Å (max {a['max_mae']:.3g}), "
                     f"cosine {a['cosine']:.6f} (min {a['min_cosine']:.6f})")
    if "mlpeg" in community:
        p = community["mlpeg"]
        lines.append(f"ml-peg orientation pairs: |ΔE| {p['energy_mean']:.3g} eV/atom (max "
                     f"{p['energy_max']:.3g}), force MAE {p['forces_mae']:.3g} eV/Å")
    if not any(q["n_labelled"] for q in document["quantities"].values()):
        lines.append("no labels found: eps only (give --energy-key/--forces-key/--stress-key)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------
def add_eval_arguments(parser) -> None:
    parser.add_argument("model", help="metatomic model (.pt), metatrain checkpoint (.ckpt), a "
                        "torch.save'd model of a known family (.pt, .model), or a Python "
                        "entry point module:function returning a calculator or model")
    parser.add_argument("structures", help="labelled structures (extxyz or any ASE format)")
    for quantity in QUANTITY_NAMES:
        parser.add_argument(f"--{quantity}-key", default=None, metavar="KEY",
                            help=f"key of the {quantity} labels (atoms.info/arrays or "
                            f"calculator results; default {DEFAULT_LABEL_KEYS[quantity]!r} "
                            "where present)")
    parser.add_argument("--degree", type=int, default=8,
                        help="O(3) quadrature degree (default 8)")
    parser.add_argument("--format", choices=("text", "json"), default=None,
                        help="output format (default: json when -o ends in .json, else text)")
    parser.add_argument("-o", "--output", default=None, help="write the result to this file")
    parser.add_argument("--figure", default=None, metavar="PNG",
                        help="figure of eps against error per structure (paper Fig. 2)")
    parser.add_argument("--index", default=":", help="ASE index of the structures to use")
    parser.add_argument("--device", default=None, help="torch device (default: the model's)")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="transformed copies per forward call (default: planned "
                        "from the memory one copy takes)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def label_keys_for(args, structures) -> Dict[str, str]:
    """Keys given on the command line must exist somewhere; defaults where present."""
    from ..adapters.labels import read_label

    keys = {}
    for quantity, default in DEFAULT_LABEL_KEYS.items():
        given = getattr(args, f"{quantity}_key")
        key = given or default
        if any(read_label(atoms, key, quantity) is not None for atoms in structures):
            keys[quantity] = key
        elif given:
            read_label(structures[0], given, quantity, required=True)  # names what exists
    return keys


def run_eval(args) -> int:
    """``symmon eval``: one process, or every rank of ``torchrun ... symmon eval``."""
    from ..adapters.registry import orbit_model_for
    from ..adapters.labels import read_structures
    from ..core.grids import quadrature_grid
    from ..io.files import file_sha256
    from .ranks import PartialResults, Ranks, rank_device

    grid = quadrature_grid(args.degree)
    structures = read_structures(args.structures, args.index)
    keys = label_keys_for(args, structures)
    with Ranks.from_environment(rank_device(args.device)) as ranks:
        if ranks.distributed and not args.output:
            raise ValueError("under torchrun give -o OUTPUT: the ranks keep their results "
                             "in OUTPUT.parts/ and rank 0 writes OUTPUT")
        options = {"device": ranks.device if ranks.distributed else args.device}
        if args.chunk_size is not None:
            options["chunk_size"] = args.chunk_size
        orbit_model = orbit_model_for(args.model, **options)
        settings = {"model": os.fspath(args.model), "model_sha256": file_sha256(args.model),
                    "degree": args.degree,
                    "structures_sha256": file_sha256(args.structures),
                    "index": args.index, "label_keys": keys}
        parts = PartialResults(args.output, ranks, settings) if args.output else None
        results = evaluate_set(orbit_model, structures, grid, keys, not args.no_progress,
                               parts)
        if ranks.is_main:
            _report(args, results, grid, orbit_model, keys)
        if parts is not None:
            parts.clear()
    return 0


def _report(args, results, grid, orbit_model, keys) -> None:
    """Write (and print) the table / JSON and the figure of ``results``."""
    document = summarize(results, os.fspath(args.model), grid, choose_outputs(orbit_model))
    document["label_keys"] = keys
    json_format = args.format == "json" or (
        args.format is None and str(args.output or "").endswith(".json"))
    text = to_json(document) if json_format else format_text(document)
    if args.output:
        from ..io.files import write_atomically

        write_atomically(args.output, text + "\n")
        print(format_text(document))
        print(f"wrote {args.output}")
    else:
        print(text)
    if args.figure:
        from .eval_figure import eps_vs_error_figure

        eps_vs_error_figure(document, args.figure)
        print(f"figure in {args.figure}")
