"""Readout purification: closed-form fit, exact scores, files, purified MD."""

import os
import sys

import ase.io
import numpy as np
import pytest
import torch

from symmon import equivariance_error, quadrature_grid
from symmon.core.purification import NormalEquations, apply_correction, choose_lambda
from symmon.frontends.purify import sweep_structures
from symmon.io.readout import Readout

sys.path.insert(0, os.path.dirname(__file__))

DATA = os.path.join(os.path.dirname(__file__), "..", "symmon", "data")
TINY_PET = os.path.join(DATA, "tiny_pet.pt")
GRID = quadrature_grid(4)


def synthetic(seed, contamination=(0.2, 0.1)):
    """Per-atom 'features' in each copy's frame: 3 covariant + 6 lab-frame columns, and a
    'model' force that leaks two lab-frame columns into its output."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(5, 3))
    rotated = np.einsum("kij,nj->kni", GRID.matrices, x)
    v = rotated - rotated.mean(1, keepdims=True)
    lab = np.stack([v[..., 2] ** 2, v[..., 0] * v[..., 1], np.ones_like(v[..., 0])], -1)
    phi = np.concatenate([v, lab, v * lab[..., :1]], -1)
    readout = np.zeros((3, phi.shape[-1]))
    readout[:, :3] = 1.3 * np.eye(3)
    readout[0, 3], readout[2, 4] = contamination
    return phi, np.einsum("md,knd->knm", readout, phi), 1.3 * (x - x.mean(0))


def test_representable_contamination_is_removed():
    data = [synthetic(seed) for seed in range(7)]
    equations = NormalEquations("vector", True, 9)
    for phi, forces, _ in data[:6]:
        equations.add(GRID, forces, phi)
    phi, forces, _ = data[6]
    before = equivariance_error(forces, GRID, "vector").relative
    assert before > 0.05
    for lam in (0.0, 10.0, 1e6):
        corrected = apply_correction(forces, phi, equations.solve(lam), "vector", True)
        assert equivariance_error(corrected, GRID, "vector").relative < 1e-8 * before / 0.05


def test_scores_equal_direct_recomputation():
    phi, forces, labels = synthetic(3)
    equations = NormalEquations("vector", True, 9)
    equations.add(GRID, forces, phi, target=labels)
    matrix = np.random.default_rng(1).normal(scale=0.1, size=(3, 9))
    corrected = apply_correction(forces, phi, matrix, "vector", True)
    error = equivariance_error(corrected, GRID, "vector")
    from symmon.core.metrics import back_transform

    back = back_transform(torch.tensor(corrected), GRID, "vector").numpy()
    mse = np.einsum("k,knm->", GRID.weights, (back - labels) ** 2)
    assert equations.losses(matrix) == pytest.approx((mse, error.eps_sq), rel=1e-10)


def test_lambda_zero_on_model_average_only_removes_non_equivariant_part():
    data = [synthetic(seed, contamination=(0.5, 0.3)) for seed in range(5)]
    equations = NormalEquations("vector", True, 9)
    for phi, forces, _ in data:
        equations.add(GRID, forces, phi)
    matrix = equations.solve(0.0)
    for phi, forces, _ in data:
        correction = apply_correction(forces, phi, matrix, "vector", True) - forces
        eps = equivariance_error(forces, GRID, "vector").eps
        rms = np.sqrt(np.einsum("k,knm->", GRID.weights, correction ** 2))
        assert rms <= 2 * eps + 1e-12
    # a larger lambda trades data fit for equivariance monotonically
    rows = [equations.scores(equations.solve(lam)) for lam in (0.0, 1.0, 100.0)]
    assert rows[0]["eps"] >= rows[1]["eps"] >= rows[2]["eps"]


def test_bad_inputs():
    phi, forces, labels = synthetic(0)
    equations = NormalEquations("vector", True, 9)
    with pytest.raises(ValueError, match="no structures"):
        equations.solve(1.0)
    with pytest.raises(ValueError, match="do not match"):
        equations.add(GRID, forces, phi[..., :5])
    with pytest.raises(ValueError, match="labels of shape"):
        equations.add(GRID, forces, phi, target=labels[:3])
    with pytest.raises(ValueError, match="non-negative"):
        NormalEquations("vector", True, 9).solve(-1.0)


@pytest.fixture(scope="module")
def tiny_pet():
    from symmon.adapters import MetatomicOrbitModel

    return MetatomicOrbitModel(TINY_PET)


@pytest.fixture(scope="module")
def structures():
    return ase.io.read(os.path.join(DATA, "tiny_structures.xyz"), ":")


@pytest.mark.slow
def test_tiny_pet_purification_and_purified_md(tiny_pet, structures, tmp_path):
    from metatomic_ase import MetatomicCalculator

    from symmon.frontends.calculator import SymmetryMonitor

    periodic = [a for a in structures if all(a.pbc)]
    sweep = sweep_structures(tiny_pet, periodic, "non_conservative_forces", quadrature_grid(2),
                             holdout=0.3, progress=False)
    table = sweep.scan([0.0, 10.0, 1000.0])
    assert table[-1]["holdout_eps"] < table[0]["holdout_eps"]  # big lambda: more symmetric
    chosen = choose_lambda(table, max_rmse_increase=10.0)
    path = tmp_path / "readout.h5"
    from symmon.io.files import file_sha256

    Readout("non_conservative_forces", sweep.feature, chosen["matrix"], chosen["lambda"],
            False, file_sha256(TINY_PET), table).save(path)
    loaded = Readout.load(path)
    assert np.array_equal(loaded.matrix, chosen["matrix"])

    atoms = periodic[0].copy()
    base = MetatomicCalculator(TINY_PET, non_conservative=True, neighbor_skin=0.0)
    monitor = SymmetryMonitor(base, every=1, mode="purified", readout=str(path), random_rotations=3)
    atoms.calc = monitor
    forces = atoms.get_forces()
    raw = tiny_pet.evaluate(atoms, np.eye(3)[None], ["non_conservative_forces", sweep.feature])
    expected = loaded.correct(raw["non_conservative_forces"][0].numpy(),
                              raw[sweep.feature][0].numpy())
    assert np.allclose(forces, expected - expected.mean(0), atol=1e-8)
    assert not np.allclose(forces, base.get_forces(atoms), atol=1e-6)
    assert np.isfinite(monitor.results["forces_eps"])

    with pytest.raises(ValueError, match="non-conservative"):
        SymmetryMonitor(MetatomicCalculator(TINY_PET, neighbor_skin=0.0), every=1, mode="purified",
                        readout=str(path))
    with pytest.raises(ValueError, match="different model"):
        SymmetryMonitor(MetatomicCalculator(os.path.join(DATA, "tiny_pet_f32.pt"),
                                            non_conservative=True), every=1, mode="purified",
                        readout=str(path))


def test_model_without_last_layer_features_is_refused(structures):
    from analytic_models import make_analytic_model

    from symmon.adapters import MetatomicOrbitModel

    model = MetatomicOrbitModel(make_analytic_model(break_symmetry=0.1))
    with pytest.raises(ValueError, match="no last-layer features"):
        sweep_structures(model, structures[:3], "non_conservative_forces", GRID,
                         progress=False)
    with pytest.raises(ValueError, match="cannot purify"):
        sweep_structures(model, structures[:3], "dipole", GRID, progress=False)


def test_choose_lambda_keeps_the_model_when_nothing_helps():
    base = {"lambda": float("nan"), "holdout_eps": 1.0, "rmse_change": 0.0, "matrix": None}
    worse = {"lambda": 1.0, "holdout_eps": 2.0, "rmse_change": 0.0, "matrix": np.ones(1)}
    costly = {"lambda": 9.0, "holdout_eps": 0.1, "rmse_change": 0.5, "matrix": np.ones(1)}
    good = {"lambda": 3.0, "holdout_eps": 0.5, "rmse_change": 0.005, "matrix": np.ones(1)}
    assert choose_lambda([base, worse, costly]) is base
    assert choose_lambda([base, worse, costly, good]) is good
    assert choose_lambda([base, worse, costly, good], max_rmse_increase=1.0) is costly


def test_accumulators_of_two_halves_add_up_to_the_whole():
    data = [synthetic(seed) for seed in range(4)]
    whole, first, second = (NormalEquations("vector", True, 9) for _ in range(3))
    for index, (phi, forces, labels) in enumerate(data):
        whole.add(GRID, forces, phi, target=labels)
        (first if index < 2 else second).add(GRID, forces, phi, target=labels)
    first += second
    assert first.n_samples == whole.n_samples == 20
    assert np.allclose(first.solve(3.0), whole.solve(3.0), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="different targets"):
        first += NormalEquations("scalar", False, 9)


def test_one_label_reader_for_purification_and_analysis(structures):
    from symmon.adapters.labels import read_label, read_labels

    atoms = structures[0].copy()
    labels = read_labels(atoms, {"energy": "emt_energy", "forces": "emt_forces",
                                 "stress": "emt_stress"})
    assert labels["energy"].shape == () and labels["forces"].shape == (len(atoms), 3)
    stress = labels["stress"]
    voigt = [stress[0, 0], stress[1, 1], stress[2, 2], stress[1, 2], stress[0, 2], stress[0, 1]]
    atoms.info["voigt"] = np.array(voigt)
    assert np.array_equal(read_label(atoms, "voigt", "non_conservative_stress"), stress)
    assert read_label(atoms, "missing", "forces") is None
    with pytest.raises(ValueError, match="no label 'missing'.*emt_forces"):
        read_label(atoms, "missing", "forces", required=True)
    with pytest.raises(ValueError, match="expected"):
        read_label(atoms, "emt_energy", "forces")


@pytest.mark.slow
def test_purification_engine_imports_no_ase_h5py_or_matplotlib():
    import subprocess

    code = ("import sys, symmon.core.purification; "
            "print(sorted(m for m in ('ase', 'h5py', 'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_tradeoff_figure_marks_the_chosen_lambda(tmp_path):
    from symmon.frontends.purify import tradeoff_figure

    data = [synthetic(seed) for seed in range(5)]
    train, holdout = NormalEquations("vector", True, 9), NormalEquations("vector", True, 9)
    for index, (phi, forces, labels) in enumerate(data):
        (holdout if index == 4 else train).add(GRID, forces, phi, target=labels)
    from symmon.core.purification import scan_lambdas

    table = scan_lambdas(train, holdout, [0.0, 1.0, 100.0])
    chosen = choose_lambda(table, max_rmse_increase=10.0)
    assert chosen["matrix"] is not None
    path = tmp_path / "tradeoff.png"
    tradeoff_figure(table, path, "non_conservative_forces", chosen)
    assert path.stat().st_size > 10_000


@pytest.mark.parametrize("target, shape, intercept", [
    ("non_conservative_forces", (5, 7, 3), True),   # per atom, with intercept
    ("non_conservative_stress", (5, 3, 3), False),  # per structure: features summed
])
def test_correction_in_torch_equals_the_numpy_readout(target, shape, intercept):
    rng = np.random.default_rng(3)
    n_features = 16
    components = 3 if target.endswith("forces") else 9
    matrix = rng.normal(size=(components, n_features + int(intercept)))
    readout = Readout(target, "features", matrix, 1.0, intercept)
    outputs = rng.normal(size=shape)
    features = torch.as_tensor(rng.normal(size=(5, 7, n_features)), dtype=torch.float32)
    expected = readout.correct(outputs, features.numpy())
    corrected = readout.correct_torch(torch.as_tensor(outputs), features)
    assert corrected.dtype == torch.float64 and corrected.shape == shape
    np.testing.assert_allclose(corrected.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert np.abs(expected - outputs).max() > 0.1  # the correction is not a no-op


def test_inverse_representation_is_built_once_per_grid_and_kind_and_sums_are_unchanged():
    from symmon.core import purification
    from symmon.core.grids import quadrature_grid
    from symmon.core.purification import inverse_representation

    vector, tensor = (inverse_representation(GRID, kind) for kind in ("vector", "tensor"))
    assert inverse_representation(GRID, "vector") is vector and not vector.flags.writeable
    # rho(Q)^-1 (acting on the flattened output, y = rho^-1 v) of a vector is v -> v Q
    # (matrix Q^T), of a tensor T -> Q^T T Q (entries Q_ac Q_bd at ((c, d), (a, b)))
    q = GRID.matrices
    assert np.allclose(vector, q.transpose(0, 2, 1), rtol=0, atol=1e-14)
    assert np.allclose(tensor, np.einsum("kac,kbd->kcdab", q, q).reshape(len(q), 9, 9),
                       rtol=0, atol=1e-14)
    other = quadrature_grid(2)  # another grid: its own matrices
    assert inverse_representation(other, "vector").shape == (len(other), 3, 3) != vector.shape
    data = [synthetic(seed) for seed in range(4)]

    def accumulate(rebuild):
        total = NormalEquations("vector", True, 9)
        for phi, forces, labels in data:
            if rebuild:  # as every structure's fresh accumulator did before
                purification._INVERSE_REPRESENTATIONS.clear()
            one = NormalEquations("vector", True, 9)
            one.add(GRID, forces, phi, target=labels)
            assert not any(isinstance(v, type(GRID)) for v in vars(one).values())
            total += one
        return total

    rebuilt, shared = accumulate(True), accumulate(False)
    for name in NormalEquations._SUMS:
        assert np.allclose(getattr(rebuilt, name), getattr(shared, name), rtol=0, atol=1e-12)
