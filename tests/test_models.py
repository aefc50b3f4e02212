"""Tests of the model adapters (:mod:`symmon.adapters`).

References are computed independently of the adapters: every transformed copy is built
as a fresh ``ase.Atoms`` (positions ``x Q^T``, cell ``C Q^T``) and evaluated with
``metatomic_ase.MetatomicCalculator`` (neighbour lists recomputed from scratch by
vesin) or with the ASE calculator directly.
"""

import pathlib
import sys

import numpy as np
import pytest
import torch

import ase
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.stress import voigt_6_to_full_3x3_stress

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from analytic import cluster  # noqa: E402
from analytic_models import make_analytic_model  # noqa: E402
import structures  # noqa: E402

import symmon  # noqa: E402
from symmon import quadrature_grid, random_grid  # noqa: E402
from symmon.adapters import (ASEOrbitModel, MetatomicOrbitModel, OrbitModel,  # noqa: E402
                           orbit_model_for, output_kind)

pytestmark = pytest.mark.filterwarnings("ignore")

TINY_PET = pathlib.Path(__file__).resolve().parents[1] / "symmon" / "data" / "tiny_pet.pt"
BREAK = 0.3  # lab-frame terms make every output frame dependent: wrong frames are caught


# --------------------------------------------------------------------------------------
# structures, models, references
# --------------------------------------------------------------------------------------
def periodic_cu():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 1, 1)
    atoms.rattle(0.08, seed=3)
    atoms.set_cell(atoms.cell.array + np.array([[0, 0.1, 0], [0.05, 0, 0], [0, 0, 0.0]]),
                   scale_atoms=True)  # not a cube: a generic triclinic cell
    return atoms


def molecule():
    positions = 1.7 * cluster(6, seed=2)
    return ase.Atoms("CCHOHN", positions=positions)


def transformed(atoms, matrix):
    copy = atoms.copy()
    copy.set_cell(atoms.cell.array @ matrix.T, scale_atoms=False)
    copy.set_positions(atoms.get_positions() @ matrix.T)
    return copy


def some_elements():
    """A few proper rotations followed by their improper partners (grid convention)."""
    grid = random_grid(3, seed=11)
    matrices = grid.matrices
    assert np.all(np.linalg.det(matrices[3:]) < 0)  # the second half is improper
    return matrices


@pytest.fixture(scope="module")
def model64():
    return make_analytic_model(break_symmetry=BREAK, cutoff=3.5)


@pytest.fixture(scope="module")
def model32():
    return make_analytic_model(break_symmetry=BREAK, cutoff=3.5, dtype=torch.float32)


def reference(model, atoms, matrices, outputs):
    """Single ``MetatomicCalculator`` calls on freshly transformed copies."""
    from metatomic.torch import ModelOutput
    from metatomic_ase import MetatomicCalculator

    calculator = MetatomicCalculator(model, neighbor_skin=0.0, check_consistency=True)
    declared = model.capabilities().outputs
    results = {name: [] for name in outputs}
    for matrix in matrices:
        copy = transformed(atoms, matrix)
        for name in outputs:
            if name == "energy":
                value = calculator.get_potential_energy(copy)
            elif name == "forces":
                value = calculator.get_forces(copy)
            elif name == "stress":
                value = voigt_6_to_full_3x3_stress(calculator.get_stress(copy))
            else:
                key = {"non_conservative_forces": "non_conservative_force",
                       "features": "feature", "energies": "energy"}.get(name, name)
                if key not in declared:  # older spellings
                    key = name
                # per-atom rows for per-atom quantities, one row per system for stress
                kind = "system" if name == "non_conservative_stress" else "atom"
                block = calculator.run_model(copy, {key: ModelOutput(sample_kind=kind)})[key]
                block = block.block()
                assert block.samples.values[:, 0].tolist() == [0] * len(block.samples)
                if "atom" in block.samples.names:
                    assert block.samples.column("atom").tolist() == list(range(len(atoms)))
                value = block.values.detach().numpy()
                if name in ("energies", "non_conservative_forces", "non_conservative_stress"):
                    value = value[..., 0]
                if name == "non_conservative_stress":
                    value = value[0]
            results[name].append(np.array(value, dtype=np.float64))
    return {name: np.stack(values) for name, values in results.items()}


def assert_matches(actual, expected, tol):
    for name, value in expected.items():
        got = actual[name].numpy()
        assert got.dtype == np.float64
        assert got.shape == value.shape, (name, got.shape, value.shape)
        scale = max(1.0, float(np.abs(value).max()))
        np.testing.assert_allclose(got, value, rtol=0, atol=tol * scale, err_msg=name)


# --------------------------------------------------------------------------------------
# 1. batched orbit == single MetatomicCalculator calls
# --------------------------------------------------------------------------------------
DIRECT_PERIODIC = ["energy", "energies", "non_conservative_forces",
                   "non_conservative_stress"]
DIRECT_MOLECULE = ["energy", "energies", "non_conservative_forces"]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("structure", ["periodic", "molecule"])
def test_direct_outputs_match_single_calls(model64, model32, dtype, structure):
    model = model64 if dtype == "float64" else model32
    tol = 1e-10 if dtype == "float64" else 1e-5
    atoms = periodic_cu() if structure == "periodic" else molecule()
    outputs = DIRECT_PERIODIC if structure == "periodic" else DIRECT_MOLECULE
    matrices = some_elements()
    orbit = MetatomicOrbitModel(model, chunk_size=4)
    expected = reference(model, atoms, matrices, outputs)
    # each output on its own (the per-atom/per-system energy handling differs)
    actual = {}
    for name in outputs:
        actual.update(orbit.evaluate(atoms, matrices, [name]))
    assert_matches(actual, expected, tol)
    # outputs really change across the orbit (a = 0.3): otherwise the test is vacuous
    assert np.ptp(expected["energy"]) > 1e-3
    features = orbit.evaluate(atoms, matrices, ["features"])["features"]
    assert tuple(features.shape) == (len(matrices), len(atoms), 7)
    assert_matches({"features": features}, reference(model, atoms, matrices, ["features"]),
                   tol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("structure", ["periodic", "molecule"])
def test_conservative_outputs_match_single_calls(model64, model32, dtype, structure):
    model = model64 if dtype == "float64" else model32
    tol = 1e-10 if dtype == "float64" else 1e-5
    atoms = periodic_cu() if structure == "periodic" else molecule()
    outputs = ["energy", "forces"] + (["stress"] if structure == "periodic" else [])
    matrices = some_elements()
    orbit = MetatomicOrbitModel(model, chunk_size=4)
    expected = reference(model, atoms, matrices, outputs)
    actual = orbit.evaluate(atoms, matrices, outputs)
    if "stress" in actual:
        # ASE's Voigt stress keeps only the symmetric part of dE/d(strain) / V; with
        # lab-frame energy terms the adapter's full tensor has an antisymmetric part
        # too (checked by finite differences in test_conservative_stress_full_tensor)
        full = actual["stress"]
        actual = dict(actual, stress=(full + full.transpose(1, 2)) / 2)
    assert_matches(actual, expected, tol)


def test_conservative_stress_full_tensor(model64):
    """The full (non-symmetric) stress is (1/V) dE/d(strain), strain acting as y (1 + h)."""
    from metatomic_ase import MetatomicCalculator

    atoms = periodic_cu()
    matrices = some_elements()[[1, 4]]  # one proper, one improper element
    stress = MetatomicOrbitModel(model64).evaluate(atoms, matrices, ["stress"])["stress"]
    calculator = MetatomicCalculator(model64, neighbor_skin=0.0)
    h = 1e-5
    for matrix, value in zip(matrices, stress.numpy()):
        copy = transformed(atoms, matrix)
        volume = abs(copy.cell.volume)
        numeric = np.zeros((3, 3))
        for a in range(3):
            for b in range(3):
                energies = []
                for sign in (1, -1):
                    strain = np.eye(3)
                    strain[a, b] += sign * h
                    strained = copy.copy()
                    strained.set_cell(copy.cell.array @ strain, scale_atoms=False)
                    strained.set_positions(copy.positions @ strain)
                    energies.append(calculator.get_potential_energy(strained))
                numeric[a, b] = (energies[0] - energies[1]) / (2 * h * volume)
        assert np.abs(numeric - numeric.T).max() > 1e-3  # the check sees the asymmetry
        np.testing.assert_allclose(value, numeric, rtol=0, atol=1e-7)


def test_energy_and_energies_together(model64):
    """Asking for total and per-atom energies in one call gives both, consistently."""
    atoms = periodic_cu()
    matrices = some_elements()
    orbit = MetatomicOrbitModel(model64)
    alone = orbit.evaluate(atoms, matrices, ["energies"])["energies"]
    assert tuple(alone.shape) == (len(matrices), len(atoms))
    torch.testing.assert_close(alone.sum(dim=1),
                               orbit.evaluate(atoms, matrices, ["energy"])["energy"],
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("outputs", [["energy", "energies"], ["forces", "energies"]])
def test_energies_requested_with_energy_or_gradients(model64, outputs):
    atoms = periodic_cu()
    matrices = some_elements()
    orbit = MetatomicOrbitModel(model64)
    alone = orbit.evaluate(atoms, matrices, ["energies"])["energies"]
    together = orbit.evaluate(atoms, matrices, outputs)["energies"]
    assert together.shape == alone.shape
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-10)


def test_current_nc_force_name_is_a_vector(model64):
    atoms = molecule()
    matrices = some_elements()
    orbit = MetatomicOrbitModel(model64)
    assert "non_conservative_force" in orbit.available_outputs
    value = orbit.evaluate(atoms, matrices, ["non_conservative_force"])
    assert tuple(value["non_conservative_force"].shape) == (len(matrices), len(atoms), 3)
    assert output_kind("non_conservative_force") == "vector"


# --------------------------------------------------------------------------------------
# 2. reused (rotated) neighbour lists == recomputed ones
# --------------------------------------------------------------------------------------
def _sorted_pairs(neighbors):
    samples = neighbors.samples.values.to(torch.int64).numpy()  # i, j, sa, sb, sc
    vectors = neighbors.values.reshape(-1, 3).detach().to(torch.float64).numpy()
    order = np.lexsort(samples.T[::-1])
    return samples[order], vectors[order]


@pytest.mark.parametrize("full_list", [False, True])
@pytest.mark.parametrize("structure", ["periodic", "molecule"])
def test_rotated_neighbor_lists_equal_recomputed(structure, full_list):
    from metatomic.torch import System
    from vesin.metatomic import neighbor_lists_for_model

    model = make_analytic_model(break_symmetry=BREAK, cutoff=3.5, full_list=full_list)
    atoms = periodic_cu() if structure == "periodic" else molecule()
    orbit = MetatomicOrbitModel(model)
    matrices = some_elements()[[0, 1, 4]]
    system = orbit.system(atoms)
    copies = orbit.systems.copies(system, torch.as_tensor(matrices))
    calculators = neighbor_lists_for_model("angstrom", model, skin=0.0)
    assert len(calculators) >= 1
    for matrix, copy in zip(matrices, copies):
        np.testing.assert_allclose(copy.positions.numpy(), atoms.positions @ matrix.T,
                                   atol=1e-12)
        fresh = System(types=torch.as_tensor(atoms.numbers, dtype=torch.int32),
                       positions=torch.as_tensor(atoms.positions @ matrix.T),
                       cell=torch.as_tensor((atoms.cell.array * atoms.pbc[:, None])
                                            @ matrix.T),
                       pbc=torch.as_tensor(atoms.pbc))
        for calculator in calculators:
            expected_samples, expected_vectors = _sorted_pairs(calculator.compute(fresh))
            got_samples, got_vectors = _sorted_pairs(
                copy.get_neighbor_list(calculator.options))
            assert len(expected_samples) > 0
            np.testing.assert_array_equal(got_samples, expected_samples)
            np.testing.assert_allclose(got_vectors, expected_vectors, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------
# 3. chunking
# --------------------------------------------------------------------------------------
def test_chunking_does_not_change_results(model64):
    atoms = periodic_cu()
    matrices = random_grid(8, seed=5).matrices  # 16 elements: 16 = 2*7 + 2
    outputs = ["energy", "forces", "stress", "non_conservative_forces"]
    results = [MetatomicOrbitModel(model64, chunk_size=size).evaluate(atoms, matrices, outputs)
               for size in (1, 7, 1000)]
    for other in results[1:]:
        for name in outputs:
            assert other[name].shape[0] == len(matrices)
            torch.testing.assert_close(other[name], results[0][name], rtol=0, atol=1e-12)
    assert results[0]["energy"].std() > 1e-3  # elements differ: a mix-up would show


# --------------------------------------------------------------------------------------
# 4. the ASE adapter
# --------------------------------------------------------------------------------------
def cu_ni():
    return structures.cu_ni(nickel=(1, 6), rattle=0.1, seed=4)


class LabFrameEMT(EMT):
    """EMT plus a constant lab-frame force (not equivariant)."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        super().calculate(atoms, properties, system_changes)
        self.results["forces"] = self.results["forces"] + np.array([0.3, -0.1, 0.2])


def test_ase_adapter_emt_equivariance():
    grid = quadrature_grid(4)
    atoms = cu_ni()
    orbit = ASEOrbitModel(EMT())
    assert set(orbit.available_outputs) >= {"energy", "energies", "forces", "stress"}
    values = orbit.evaluate(atoms, grid.matrices, ["energy", "forces", "stress"])
    assert tuple(values["forces"].shape) == (len(grid), len(atoms), 3)
    assert tuple(values["stress"].shape) == (len(grid), 3, 3)
    # the copies really are transformed: forces differ across the orbit
    assert float(values["forces"].std(dim=0).max()) > 1e-3
    for name, kind in [("energy", "scalar"), ("forces", "vector"),
                       ("stress", "symmetric_tensor")]:
        error = symmon.equivariance_error(values[name], grid, kind)
        assert error.rms > 0
        assert error.relative < 1e-12, (name, error.relative)

    broken = ASEOrbitModel(LabFrameEMT()).evaluate(atoms, grid.matrices, ["forces"])
    error = symmon.equivariance_error(broken["forces"], grid, "vector")
    # per atom, the constant vector's full norm is orbit variance: eps^2 = N |c|^2
    assert error.eps == pytest.approx(np.sqrt(len(atoms) * 0.14), rel=1e-6)
    assert error.relative > 1e-2


def test_ase_adapter_matches_direct_calls():
    atoms = cu_ni()
    matrices = some_elements()
    values = ASEOrbitModel(EMT()).evaluate(atoms, matrices, ["energies", "forces", "stress"])
    for k, matrix in enumerate(matrices):
        copy = transformed(atoms, matrix)
        copy.calc = EMT()
        np.testing.assert_allclose(values["energies"][k].numpy(),
                                   copy.get_potential_energies(), atol=1e-12)
        np.testing.assert_allclose(values["forces"][k].numpy(), copy.get_forces(), atol=1e-12)
        np.testing.assert_allclose(values["stress"][k].numpy(),
                                   copy.get_stress(voigt=False), atol=1e-12)


# --------------------------------------------------------------------------------------
# 5. orbit_model_for dispatch
# --------------------------------------------------------------------------------------
def test_orbit_model_for_dispatch(model64, tmp_path):
    from metatomic_ase import MetatomicCalculator

    atoms = molecule()
    matrices = some_elements()
    direct = orbit_model_for(model64)
    assert isinstance(direct, MetatomicOrbitModel)
    expected = direct.evaluate(atoms, matrices, ["energy", "non_conservative_forces"])

    path = tmp_path / "analytic.pt"
    model64.save(str(path))
    for source in (path, str(path), MetatomicCalculator(model64, neighbor_skin=0.0)):
        orbit = orbit_model_for(source)
        assert isinstance(orbit, MetatomicOrbitModel)
        got = orbit.evaluate(atoms, matrices, ["energy", "non_conservative_forces"])
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-12)

    assert orbit_model_for(direct) is direct
    emt = orbit_model_for(EMT())
    assert isinstance(emt, ASEOrbitModel) and isinstance(emt, OrbitModel)
    with pytest.raises(TypeError, match="cannot evaluate"):
        orbit_model_for(object())
    with pytest.raises(TypeError, match="cannot evaluate"):
        orbit_model_for(42)


# --------------------------------------------------------------------------------------
# 6. bad input
# --------------------------------------------------------------------------------------
def test_bad_inputs(model64, tmp_path):
    orbit = MetatomicOrbitModel(model64)
    atoms = periodic_cu()
    matrices = some_elements()
    with pytest.raises(ValueError, match=r"cannot compute \['dipole'\]"):
        orbit.evaluate(atoms, matrices, ["energy", "dipole"])
    with pytest.raises(ValueError, match="cannot compute"):
        ASEOrbitModel(EMT()).evaluate(atoms, matrices, ["non_conservative_forces"])
    for name in ("stress", "non_conservative_stress"):
        with pytest.raises(ValueError, match=f"'{name}'.*not periodic"):
            orbit.evaluate(molecule(), matrices, [name])
    with pytest.raises(ValueError, match="not periodic"):
        ASEOrbitModel(EMT()).evaluate(molecule(), matrices, ["stress"])

    # the analytic model knows Z = 1..118; the dummy element X (Z = 0) is unknown
    assert 0 not in orbit.atomic_types
    unknown = molecule()
    unknown.numbers[2] = 0
    with pytest.raises(ValueError, match=r"does not know atomic numbers \[0\]"):
        orbit.evaluate(unknown, matrices, ["energy"])

    nan = periodic_cu()
    nan.positions[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"positions of atoms \[3\] are NaN"):
        orbit.evaluate(nan, matrices, ["energy"])
    with pytest.raises(ValueError, match="NaN"):
        ASEOrbitModel(EMT()).evaluate(nan, matrices, ["energy"])
    with pytest.raises(ValueError, match="empty"):
        orbit.evaluate(ase.Atoms(), matrices, ["energy"])

    skew = matrices.copy()
    skew[2, 0, 1] += 0.1
    with pytest.raises(ValueError, match="orthogonal"):
        orbit.evaluate(atoms, skew, ["energy"])
    with pytest.raises(ValueError, match="orthogonal"):
        ASEOrbitModel(EMT()).evaluate(atoms, 2 * matrices, ["energy"])
    with pytest.raises(ValueError, match=r"shape \(K, 3, 3\)"):
        orbit.evaluate(atoms, matrices[0], ["energy"])

    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MetatomicOrbitModel(missing)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        orbit_model_for(str(missing))
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
            MetatomicOrbitModel(model64, chunk_size=bad)


# --------------------------------------------------------------------------------------
# 7. the bundled tiny PET models (trained by another helper; skipped while absent)
# --------------------------------------------------------------------------------------
PET_FILES = {"float64": TINY_PET, "float32": TINY_PET.with_name("tiny_pet_f32.pt")}


def _load_pet(path):
    assert path.exists(), f"bundled model {path} is missing"
    from metatomic.torch import load_atomistic_model

    return load_atomistic_model(str(path))


@pytest.fixture(scope="module", params=sorted(PET_FILES))
def tiny_pet(request):
    model = _load_pet(PET_FILES[request.param])
    assert model.capabilities().dtype == request.param
    return model


def _pet_structure(model):
    types = sorted(int(t) for t in model.capabilities().atomic_types)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
    atoms.numbers[:] = [types[i % len(types)] for i in range(len(atoms))]
    atoms.rattle(0.05, seed=8)
    return atoms


def _pet_matrices():
    matrices = quadrature_grid(2).matrices
    half = len(matrices) // 2
    return matrices[[0, 5, half, half + 5]]  # two proper, two improper


def _pet_tol(model):
    return 1e-5 if model.capabilities().dtype == "float32" else 1e-10


@pytest.mark.slow
def test_tiny_pet_batched_matches_single_calls(tiny_pet):
    atoms = _pet_structure(tiny_pet)
    orbit = MetatomicOrbitModel(tiny_pet, chunk_size=3)
    outputs = ["energy", "forces", "non_conservative_forces"]
    assert set(outputs) <= set(orbit.available_outputs)
    matrices = _pet_matrices()
    actual = {}
    for name in outputs:
        actual.update(orbit.evaluate(atoms, matrices, [name]))
    expected = reference(tiny_pet, atoms, matrices, outputs)
    assert_matches(actual, expected, _pet_tol(tiny_pet))


def test_tiny_pet_non_conservative_stress(tiny_pet):
    atoms = _pet_structure(tiny_pet)
    matrices = _pet_matrices()
    actual = MetatomicOrbitModel(tiny_pet).evaluate(atoms, matrices,
                                                    ["non_conservative_stress"])
    expected = reference(tiny_pet, atoms, matrices, ["non_conservative_stress"])
    assert_matches(actual, expected, _pet_tol(tiny_pet))


def test_tiny_pet_orbit_eps_is_sane(tiny_pet):
    atoms = _pet_structure(tiny_pet)
    grid = quadrature_grid(2)
    orbit = MetatomicOrbitModel(tiny_pet, chunk_size=64)
    names = ["energy", "non_conservative_forces"]
    values = orbit.evaluate(atoms, grid.matrices, names)
    for name in names:
        error = symmon.equivariance_error(values[name], grid, output_kind(name))
        assert np.isfinite(error.eps) and error.rms > 0
        assert error.relative < 0.5, (name, error.relative)
