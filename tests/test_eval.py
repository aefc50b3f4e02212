"""``symmon eval``: closed-form cases, sums that add, and the tiny PET against brute force."""

import json
import math
import os

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk

from symmon.adapters.base import OrbitModel
from symmon.core.grids import quadrature_grid
from symmon.frontends.eval import (QuantityTotals, evaluate_set, structure_ratios, summarize,
                                   summarize_quantity, to_json)

DATA = os.path.join(os.path.dirname(__file__), "..", "symmon", "data")
TINY_PET = os.path.join(DATA, "tiny_pet.pt")
KEYS = {"energy": "E", "forces": "F", "stress": "S"}


class LabFrameModel(OrbitModel):
    """Outputs that ignore the rotation: forces ``G`` and stress ``S`` fixed in the lab
    frame, energy ``e0 + a det(Q)`` (a pseudoscalar part). Over O(3): ``<G Q> = 0`` so
    ``eps_F^2 = |G|^2``; ``<Q^T S Q> = tr(S)/3 I`` so ``eps_S^2 = |S|^2 - tr(S)^2/3``;
    ``eps_E = |a|``."""

    available_outputs = ("energy", "forces", "stress")

    def __init__(self, forces, stress, e0, a):
        self.forces, self.stress, self.e0, self.a = forces, stress, e0, a

    def evaluate(self, atoms, matrices, outputs):
        k = len(matrices)
        det = torch.as_tensor(np.linalg.det(matrices))
        return {"energy": self.e0 + self.a * det,
                "forces": torch.as_tensor(self.forces[atoms.info["i"]]).expand(k, -1, -1),
                "stress": torch.as_tensor(self.stress).expand(k, 3, 3)}


def labelled_cells():
    rng = np.random.default_rng(0)
    cells, forces = [], []
    for i, repeat in enumerate((1, 2)):
        atoms = bulk("Cu", cubic=True).repeat(repeat)
        atoms.info.update(i=i, E=1.5 * i, S=np.diag([0.1, 0.2, 0.3]))
        forces.append(rng.normal(size=(len(atoms), 3)))
        atoms.arrays["F"] = rng.normal(size=(len(atoms), 3))
        cells.append(atoms)
    return cells, forces


def test_closed_form_eps_errors_and_set_rms():
    cells, forces = labelled_cells()
    stress = np.array([[1.0, 0.2, 0.0], [0.2, -0.5, 0.1], [0.0, 0.1, 0.4]])
    model = LabFrameModel(forces, stress, e0=2.0, a=0.3)
    results = evaluate_set(model, cells, quadrature_grid(4), KEYS, progress=False)
    for atoms, g, result in zip(cells, forces, results):
        n, label = len(atoms), atoms.arrays["F"]
        f = result.quantities["forces"]
        assert f.eps == pytest.approx(np.sqrt((g ** 2).sum() / n), rel=1e-12)
        assert f.error == pytest.approx(np.sqrt(((g - label) ** 2).sum() / n), rel=1e-12)
        assert f.error_averaged == pytest.approx(np.sqrt((label ** 2).sum() / n), rel=1e-12)
        e = result.quantities["energy"]
        assert e.eps == pytest.approx(0.3 / n, rel=1e-12)
        assert e.error == pytest.approx(abs(2.3 - atoms.info["E"]) / n, rel=1e-12)
        assert e.error_averaged == pytest.approx(abs(2.0 - atoms.info["E"]) / n, rel=1e-12)
        traceless = stress - np.trace(stress) / 3 * np.eye(3)
        assert result.quantities["stress"].eps == pytest.approx(np.linalg.norm(traceless),
                                                                rel=1e-10)
    document = json.loads(to_json(summarize(results, "lab-frame", quadrature_grid(4), {})),
                          parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    q = document["quantities"]["forces"]
    n_atoms = sum(len(a) for a in cells)  # forces: RMS over all atoms of the set
    assert q["eps"] == pytest.approx(np.sqrt(sum((g ** 2).sum() for g in forces) / n_atoms))
    ratios = [r.quantities["forces"].eps / r.quantities["forces"].error for r in results]
    assert q["ratio_median"] == pytest.approx(np.mean(ratios))
    assert min(ratios) < q["ratio_p95"] < max(ratios)
    assert document["quantities"]["stress"]["unit"] == "eV/angstrom^3"
    assert document["quantities"]["stress"]["GPa"]["eps"] == pytest.approx(
        160.21766208 * document["quantities"]["stress"]["eps"])
    assert [s["n_atoms"] for s in document["structures"]] == [4, 32]


def test_totals_of_parts_add_up_and_unlabelled_sets_report_eps_only():
    cells, forces = labelled_cells()
    model = LabFrameModel(forces, np.eye(3), e0=0.0, a=0.1)
    results = evaluate_set(model, cells, quadrature_grid(4), KEYS, progress=False)
    items = [r.quantities["forces"] for r in results]
    whole = sum((QuantityTotals.of(i) for i in items), QuantityTotals())
    assert QuantityTotals.of(items[0]) + QuantityTotals.of(items[1]) == whole
    unlabelled = evaluate_set(model, cells, quadrature_grid(4), {}, progress=False)
    summary = summarize_quantity("forces", [r.quantities["forces"] for r in unlabelled])
    assert summary["n_labelled"] == 0 and math.isnan(summary["rmse"])
    assert math.isnan(summary["ratio_median"])
    assert summary["eps"] == pytest.approx(summarize_quantity("forces", items)["eps"])


def test_an_exact_prediction_does_not_give_an_unbounded_ratio():
    cells, forces = labelled_cells()
    cells[0].arrays["F"] = forces[0]  # the lab-frame prediction is exactly the label
    model = LabFrameModel(forces, np.eye(3), e0=0.0, a=0.1)
    results = evaluate_set(model, cells, quadrature_grid(4), KEYS, progress=False)
    items = [r.quantities["forces"] for r in results]
    assert items[0].error == 0.0
    summary = summarize_quantity("forces", items)
    ratios = structure_ratios(items, summary["rmse"])
    assert ratios[0] == pytest.approx(items[0].eps / (0.01 * summary["rmse"]), rel=1e-12)
    assert ratios[1] == pytest.approx(items[1].eps / items[1].error, rel=1e-12)
    assert np.isfinite(summary["ratio_p95"])


def _brute_force_eps_sq(atoms, n_rotations, seed):
    """Sample variance (summed over components) of back-transformed outputs over Haar
    O(3) elements through a plain MetatomicCalculator, with its jackknife error."""
    from metatomic_ase import MetatomicCalculator
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    rotations = Rotation.random(n_rotations, random_state=rng).as_matrix()
    elements = rotations * rng.choice([-1.0, 1.0], size=n_rotations)[:, None, None]
    calculator = MetatomicCalculator(TINY_PET, non_conservative=True)
    samples = {"energy": [], "forces": [], "stress": []}
    for q in elements:
        copy = atoms.copy()
        copy.set_cell(atoms.cell.array @ q.T, scale_atoms=False)
        copy.set_positions(atoms.get_positions() @ q.T)
        copy.calc = calculator
        samples["energy"].append([copy.get_potential_energy()])
        samples["forces"].append((copy.get_forces() @ q).ravel())     # row vectors: f Q
        samples["stress"].append((q.T @ copy.get_stress(voigt=False) @ q).ravel())

    def variance(y):
        return ((y - y.mean(0)) ** 2).sum() / (len(y) - 1)

    estimates = {}
    for name, y in samples.items():
        y = np.array(y)
        leave_one_out = np.array([variance(np.delete(y, i, 0)) for i in range(len(y))])
        stderr = np.sqrt((len(y) - 1) / len(y)
                         * ((leave_one_out - leave_one_out.mean()) ** 2).sum())
        estimates[name] = (variance(y), stderr)
    return estimates


def test_tiny_pet_eval_agrees_with_brute_force_haar_rotations(tmp_path, capsys):
    """The interval: |eps^2(quadrature) - eps^2(MC)| <= 4 jackknife standard errors of
    the 40-rotation estimate, per quantity and structure. It fails if the quadrature is
    too coarse for the model's angular content (degree 6, 8, 12 agree to < 0.1 % here)
    or if eval's conventions are wrong (leaving the net force in gives 10 errors); by
    chance only in the tails of the estimate (< 1e-4 per check for a normal estimate;
    the seed is fixed)."""
    from symmon.frontends.cli import main

    structures = ase.io.read(os.path.join(DATA, "tiny_structures.xyz"), "6:8")
    path = tmp_path / "slabs.xyz"
    ase.io.write(path, structures)
    out = tmp_path / "eval.json"
    assert main(["eval", TINY_PET, str(path), "--energy-key", "emt_energy", "--forces-key",
                 "emt_forces", "--stress-key", "emt_stress", "--degree", "6", "-o", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    document = json.loads(out.read_text())
    for quantity, unit in (("energy", "eV/atom"), ("forces", "eV/angstrom"),
                           ("stress", "eV/angstrom^3")):
        q = document["quantities"][quantity]
        assert q["unit"] == unit and q["n_labelled"] == 2
        assert 0 < q["ratio"] < 10 and 0 < q["ratio_median"] < 10
        assert f"{q['ratio']:10.3g}" in printed
    assert document["quantities"]["forces"]["output"] == "non_conservative_forces"
    for entry, atoms in zip(document["structures"], structures):
        n = len(atoms)
        to_eps_sq = {"energy": n ** 2, "forces": n, "stress": 1}
        for name, (mc, stderr) in _brute_force_eps_sq(atoms, 40, seed=7).items():
            quadrature = entry[name]["eps"] ** 2 * to_eps_sq[name]
            assert abs(quadrature - mc) <= 4 * stderr, (name, quadrature, mc, stderr)


def test_missing_label_key_is_one_clear_sentence(tmp_path, capsys):
    from symmon.frontends.cli import main

    path = tmp_path / "one.xyz"
    ase.io.write(path, ase.io.read(os.path.join(DATA, "tiny_structures.xyz"), "0"))
    assert main(["eval", TINY_PET, str(path), "--forces-key", "dft_forces"]) == 2
    error = capsys.readouterr().err
    assert "no label 'dft_forces'" in error and "emt_forces" in error
