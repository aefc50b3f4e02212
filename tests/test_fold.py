"""The monitored step at the floor: the base evaluation folded into the batched orbit,
random frames, the averaging degree, warm-up.

References are metatomic's own ``MetatomicCalculator`` (``calculate`` and
``run_model``) on the bundled tiny PET, never symmon's adapter.
"""

import functools
import os

import ase.io
import numpy as np
import pytest
import torch
from ase.calculators.emt import EMT
from metatomic.torch import ModelOutput
from metatomic_ase import MetatomicCalculator

from symmon.adapters import ASEOrbitModel
from symmon.core.grids import quadrature_grid
from symmon.core.metrics import orbit_average
from symmon.core.outputs import matrix_to_voigt, voigt_to_matrix
from symmon.frontends.calculator import SymmetryMonitor
from symmon.io.readout import Readout
from symmon.monitoring.schedule import AVERAGE_BAND, average_degree, random_frame

from broken import LabFrameEMT

DATA = os.path.join(os.path.dirname(__file__), "..", "symmon", "data")
MODELS = {"f32": os.path.join(DATA, "tiny_pet_f32.pt"), "f64": os.path.join(DATA, "tiny_pet.pt")}
#: float precision of a batched forward vs a single-structure one, relative to max|value|
PRECISION = {"f32": 1e-5, "f64": 1e-10}


class CountingCalculator(MetatomicCalculator):
    """A MetatomicCalculator that counts its calculations."""

    calls = 0

    def calculate(self, atoms, properties, system_changes):
        self.calls += 1
        super().calculate(atoms, properties, system_changes)


class ShiftedCalculator(MetatomicCalculator):
    """A MetatomicCalculator whose energy is 1 eV higher than its model's."""

    def calculate(self, atoms, properties, system_changes):
        super().calculate(atoms, properties, system_changes)
        self.results["energy"] += 1.0


@pytest.fixture(scope="module")
def slab():
    return ase.io.read(os.path.join(DATA, "tiny_structures.xyz"), "6")  # 16 atoms, periodic


def positions_of(atoms, n, seed=0):
    rng = np.random.default_rng(seed)
    return [atoms.positions + rng.normal(scale=0.02, size=atoms.positions.shape)
            for _ in range(n)]


@functools.lru_cache(maxsize=None)
def reference_calculator(model, non_conservative):
    return MetatomicCalculator(model, non_conservative=non_conservative, neighbor_skin=0.0)


def plain(model, atoms, non_conservative):
    """A plain MetatomicCalculator's results (stress in Voigt order)."""
    reference = reference_calculator(model, non_conservative)
    properties = ["energy", "forces"] + (["stress"] if all(atoms.pbc) else [])
    reference.calculate(atoms, properties, ["positions"])
    return reference.results


def assert_close(value, expected, precision):
    scale = max(float(np.max(np.abs(expected))), 1e-12)
    assert np.max(np.abs(np.asarray(value) - expected)) <= precision * scale


def count_evaluations(monitor):
    orbit_model = monitor.monitor.source.orbit_model
    evaluate, counts = orbit_model.evaluate, []

    def counted(atoms, matrices, outputs, **options):
        counts.append(len(matrices))
        return evaluate(atoms, matrices, outputs, **options)

    orbit_model.evaluate = counted
    return counts


def assert_identical(returned, expected):
    """The same values, bit for bit, of the same type, dtype and shape."""
    assert type(returned) is type(expected)
    assert np.asarray(returned).dtype == np.asarray(expected).dtype
    assert np.shape(returned) == np.shape(expected)
    assert np.array_equal(returned, expected)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("non_conservative", [False, True])
def test_returned_values_are_the_plain_calculators(slab, dtype, non_conservative):
    """On every step, monitored or not, the very values of the base MetatomicCalculator's
    own call (a batched forward rounds the unrotated copy otherwise: 4e-7 eV/Å in
    float32)."""
    model = MODELS[dtype]
    base = CountingCalculator(model, non_conservative=non_conservative, neighbor_skin=0.0)
    monitor = SymmetryMonitor(base, every=2, random_rotations=2, warm_up=False)
    evaluations = count_evaluations(monitor)
    atoms = slab.copy()
    base_calls = []
    for step, positions in enumerate(positions_of(slab, 4)):
        atoms.positions[:] = positions
        before = base.calls
        monitor.calculate(atoms, ["energy", "forces", "stress"], ["positions"])
        base_calls.append(base.calls - before)
        expected = plain(model, atoms, non_conservative)
        for name in ("energy", "forces", "stress"):
            # the base's own values of this step, untouched (a fresh calculator's
            # agree to float precision only: TorchScript optimises after a few calls)
            assert_identical(monitor.results[name], base.results[name])
            assert_close(monitor.results[name], expected[name], PRECISION[dtype])
        assert np.isfinite(monitor.results["forces_eps"]) == (step % 2 == 0)
    # monitored steps: one batched call of 2P copies, the unrotated one too on the first
    # (the check that the batched path reproduces the base) and for direct forces (their
    # raw net force); step 0 an ordinary step (2 pairs: the calibration comes later)
    assert evaluations == [1 + 2 * 2, int(non_conservative) + 2 * 2]
    assert base_calls == [1, 1, 1, 1]


class Float32EMT(EMT):
    """EMT returning float32 arrays and energy, as Orb's calculator does."""

    def calculate(self, *args, **kwargs):
        super().calculate(*args, **kwargs)
        self.results = {name: np.asarray(value, dtype=np.float32)
                        for name, value in self.results.items()}


@pytest.mark.parametrize("calculator", [EMT, Float32EMT])
def test_per_copy_path_returns_the_base_calculators_values_dtype_included(calculator):
    """The per-copy ASE path (EMT, and a base returning float32 as Orb's does): the
    monitor's energy, forces and stress are the base's own, bit for bit and dtype
    included, on monitored and unmonitored steps (float64 copies of float32 forces make
    ASE's integrators round differently: an MD drifts from an unmonitored one)."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=2)
    monitor = SymmetryMonitor(calculator(), every=2, random_rotations=2, warm_up=False)
    reference = calculator()
    for step in range(3):
        atoms.positions[0, 0] += 0.01
        monitor.calculate(atoms, ["energy", "forces", "stress"], ["positions"])
        reference.calculate(atoms.copy(), ["energy", "forces", "stress"])
        for name in ("energy", "forces", "stress", "free_energy"):
            assert_identical(monitor.results[name], reference.results[name])


@pytest.mark.parametrize("non_conservative", [False, True])
def test_unmonitored_steps_return_the_base_calculators_arrays_bit_for_bit(
        slab, non_conservative, tmp_path):
    """Through ASE's get_* (the state check, the snapshot the monitor keeps) and through
    calculate itself: the very arrays of a plain MetatomicCalculator, one base call each."""
    model = MODELS["f32"]
    base = CountingCalculator(model, non_conservative=non_conservative, neighbor_skin=0.0)
    monitor = SymmetryMonitor(base, log=str(tmp_path / "log.h5"), every=10 ** 9,
                              warm_up=False)
    atoms = slab.copy()
    atoms.calc = monitor
    atoms.get_forces()  # step 0 is monitored
    for step, positions in enumerate(positions_of(slab, 4, seed=3)):
        atoms.positions[:] = positions
        before = base.calls
        if step % 2:
            monitor.calculate(atoms, ["energy", "forces", "stress"], ["positions"])
            forces, stress = monitor.results["forces"], monitor.results["stress"]
            energy = monitor.results["energy"]
        else:
            forces, stress = atoms.get_forces(), atoms.get_stress()
            energy = atoms.get_potential_energy()
        assert base.calls - before == 1 and np.isnan(monitor.results["forces_eps"])
        expected = base.results  # this step's own call (a fresh calculator's: float
        assert_identical(forces, expected["forces"])  # precision, TorchScript optimises)
        assert_identical(stress, expected["stress"])
        assert_identical(energy, expected["energy"])
        assert_close(forces, plain(model, atoms, non_conservative)["forces"], PRECISION["f32"])
        assert atoms.calc.get_property("energy", atoms) == energy  # cached: no new call
        assert base.calls - before == 1
    monitor.close()


def test_direct_forces_net_force_is_the_raw_unrotated_one():
    atoms = ase.io.read(os.path.join(DATA, "tiny_structures.xyz"), "6")
    atoms.pbc = False  # a cluster: net torque too
    base = MetatomicCalculator(MODELS["f32"], non_conservative=True, neighbor_skin=0.0)
    monitor = SymmetryMonitor(base, every=2, warm_up=False)
    key = monitor.monitor.source.orbit_model.model_key("non_conservative_forces")
    for step, positions in enumerate(positions_of(atoms, 2)):
        atoms.positions[:] = positions
        monitor.calculate(atoms, ["energy", "forces"], ["positions"])
        if step == 1:  # unmonitored: the base returns mean-free forces, nothing to say
            assert np.isnan(monitor.results["net_force_per_atom"])
            continue
        output = ModelOutput(unit="eV/Angstrom", sample_kind="atom")
        raw = base.run_model(atoms, {key: output})[key].block().values.detach()
        raw = raw.reshape(-1, 3).double().numpy()
        assert raw.sum(0).any()
        expected = np.linalg.norm(raw.sum(0)) / len(atoms)
        assert abs(monitor.results["net_force_per_atom"] - expected) <= 1e-5 * expected
        assert np.allclose(monitor.results["forces"].sum(0), 0, atol=1e-5)


def test_a_base_that_differs_from_its_model_is_evaluated_separately(slab):
    base = ShiftedCalculator(MODELS["f64"], neighbor_skin=0.0)
    monitor = SymmetryMonitor(base, every=1, random_rotations=2, warm_up=False)
    atoms = slab.copy()
    with pytest.warns(UserWarning, match="own predictions are returned"):
        for positions in positions_of(slab, 2):
            atoms.positions[:] = positions
            monitor.calculate(atoms, ["energy"], ["positions"])
            expected = plain(MODELS["f64"], atoms, False)["energy"] + 1.0
            assert abs(monitor.results["energy"] - expected) < 1e-10


def test_purified_mode_reads_features_from_the_same_forward(slab, tmp_path):
    model = MODELS["f64"]
    base = CountingCalculator(model, non_conservative=True, neighbor_skin=0.0)
    forces_key = "non_conservative_force"  # the tiny PET's names
    feature = "mtt::aux::non_conservative_force_last_layer_features"
    outputs = {forces_key: ModelOutput(unit="eV/Angstrom", sample_kind="atom"),
               feature: ModelOutput(sample_kind="atom")}
    n_features = base.run_model(slab, outputs)[feature].block().values.shape[-1]
    matrix = np.random.default_rng(0).normal(scale=0.05, size=(3, n_features))
    path = tmp_path / "readout.h5"
    Readout("non_conservative_forces", feature, matrix, 1.0, False).save(path)
    monitor = SymmetryMonitor(base, every=2, mode="purified", readout=str(path),
                              random_rotations=2, warm_up=False)
    evaluations = count_evaluations(monitor)
    atoms = slab.copy()
    for positions in positions_of(slab, 3):
        atoms.positions[:] = positions
        monitor.calculate(atoms, ["energy", "forces"], ["positions"])
        raw = base.run_model(atoms, outputs)
        forces, features = (raw[name].block().values.detach().double().numpy()
                            for name in (forces_key, feature))
        expected = forces.reshape(-1, 3) + features @ matrix.T
        assert_close(monitor.results["forces"], expected - expected.mean(0), 1e-10)
    # one forward per step, features included; step 0 an ordinary step (2 pairs)
    assert evaluations == [1 + 2 * 2, 1, 5]


def test_random_frame_returns_the_prediction_in_that_frame(slab, tmp_path):
    model = MODELS["f64"]
    base = MetatomicCalculator(model, neighbor_skin=0.0)
    log = str(tmp_path / "frames.h5")
    monitor = SymmetryMonitor(base, log=log, every=2, mode="random_frame", warm_up=False)
    evaluations = count_evaluations(monitor)
    atoms = slab.copy()
    determinants = []
    for step in range(4):
        monitor.calculate(atoms, ["energy", "forces", "stress"], ["positions"])
        frame = random_frame(0, step)[0]
        determinants.append(np.linalg.det(frame))
        copy = atoms.copy()
        copy.set_cell(atoms.cell.array @ frame.T)
        copy.positions = atoms.positions @ frame.T
        expected = plain(model, copy, False)
        assert_close(monitor.results["energy"], expected["energy"], 1e-10)
        assert_close(monitor.results["forces"], expected["forces"] @ frame, 1e-10)
        stress = frame.T @ voigt_to_matrix(expected["stress"]) @ frame
        assert_close(monitor.results["stress"], matrix_to_voigt(stress), 1e-10)
        if step % 2 == 0:
            unrotated = plain(model, atoms, False)["forces"]
            noise = np.sqrt(((expected["forces"] @ frame - unrotated) ** 2).sum() / len(atoms))
            assert abs(monitor.results["frame_noise_forces"] - noise) <= 1e-8 * noise
    monitor.close()
    # identity (the first step's check) + frame + grid (3 pairs); frame only
    assert evaluations == [1 + 1 + 6, 1, 1 + 6, 1]
    assert min(determinants) < 0 < max(determinants)


def test_random_frames_average_to_the_o3_average():
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=1)
    broken = LabFrameEMT()
    monitor = SymmetryMonitor(broken, every=10 ** 6, mode="random_frame")
    samples = []
    for step in range(400):
        returned, _ = monitor.monitor.calculate(atoms)  # single points: a fresh frame each
        samples.append(returned["forces"])
    samples = np.array(samples)
    grid = quadrature_grid(6)
    orbit = ASEOrbitModel(broken).evaluate(atoms, grid.matrices, ["forces"])["forces"]
    average = orbit_average(orbit, grid, "vector").numpy()
    error = samples.std(0) / np.sqrt(len(samples))
    assert np.all(np.abs(samples.mean(0) - average) <= 5 * error + 1e-12)
    assert np.abs(samples[0] - average).max() > 10 * error.max()  # one frame is noisy


def lab_frame_function(kind, band, matrices, positions, a, b, c):
    """``sum_i (Q x_i . a)^band`` times a lab-frame ``1``, ``b`` or ``b c^T + c b^T``:
    an orbit with components up to ``l = band``."""
    values = [((positions @ q.T @ a) ** band).sum() for q in matrices]
    lab = {"scalar": 1.0, "vector": b, "symmetric_tensor": np.outer(b, c) + np.outer(c, b)}
    return torch.tensor(np.array([v * lab[kind] for v in values]))


@pytest.mark.parametrize("kind,rank,band", [("scalar", 0, 4), ("vector", 1, 3),
                                            ("symmetric_tensor", 2, 4)])
def test_averaging_degree_band_plus_rank_is_exact(kind, rank, band):
    rng = np.random.default_rng(0)
    positions, a, b, c = rng.normal(size=(5, 3)), *rng.normal(size=(3, 3))

    def average(degree):
        grid = quadrature_grid(degree)
        values = lab_frame_function(kind, band, grid.matrices, positions, a, b, c)
        return orbit_average(values, grid, kind).numpy()

    reference = average(band + rank + 6)
    assert np.abs(reference).max() > 0.1
    assert np.allclose(average(band + rank), reference, rtol=0, atol=1e-12)
    assert np.abs(average(band + rank - 1) - reference).max() > 1e-3


def test_default_averaging_degree_follows_the_returned_ranks():
    from ase.build import bulk, molecule
    from ase.calculators.emt import EMT

    assert average_degree(["energy"]) == AVERAGE_BAND
    assert average_degree(["energy", "forces"]) == AVERAGE_BAND + 1
    assert average_degree(["energy", "forces", "stress"]) == AVERAGE_BAND + 2
    for atoms, rank in ((molecule("H2O"), 1), (bulk("Cu", cubic=True), 2)):
        atoms.calc = SymmetryMonitor(EMT(), mode="average")
        atoms.get_forces()
        grid = atoms.calc.metadata()["average_grid"]
        assert grid["degree"] == AVERAGE_BAND + rank
        assert grid["n_elements"] == len(quadrature_grid(AVERAGE_BAND + rank))


def test_warm_up_happens_at_construction():
    base = MetatomicCalculator(MODELS["f32"], non_conservative=True, neighbor_skin=0.0)
    monitor = SymmetryMonitor(base)
    assert monitor.monitor.warm_up_s > 0
    assert monitor.metadata()["warm_up_s"] == monitor.monitor.warm_up_s
    assert base.atoms is None and base.results == {}  # the dimer left nothing behind
    assert monitor.metadata()["first_step_s"] is None
    monitor.get_potential_energy(ase.io.read(os.path.join(DATA, "tiny_structures.xyz"), "6"))
    assert monitor.metadata()["first_step_s"] > 0
    assert SymmetryMonitor(LabFrameEMT()).monitor.warm_up_s == 0


@pytest.mark.parametrize("kind", ["direct", "conservative"])
def test_orb_path_returns_the_base_calculators_values_dtype_included(kind):
    """Orb's calculator returns float32 arrays: the monitor hands on its very values,
    dtype and shape included, on monitored (batched orbit) and unmonitored steps."""
    from families import copper, tiny_orb_calculator

    atoms = copper(repeat=(1, 1, 2))
    base = tiny_orb_calculator(kind)
    monitor = SymmetryMonitor(base, every=2, random_rotations=2, l_max=1, warm_up=False)
    assert monitor.monitor.source.path.startswith("batched")
    for step in range(3):
        atoms.positions[0, 0] += 0.01
        monitor.calculate(atoms, ["energy", "forces", "stress"], ["positions"])
        assert np.isfinite(monitor.results["forces_eps"]) == (step % 2 == 0)
        for name in ("energy", "forces", "stress"):
            assert_identical(monitor.results[name], base.results[name])
        assert monitor.results["forces"].dtype == np.float32
