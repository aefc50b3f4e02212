"""The cells of docs/compatibility.md for the metatomic model variants users bring.

Every metatrain variant of tests/model_variants.py (random weights, tiny PET) through
every way symmon hands predictions back: ``SymmetryMonitor`` in monitor, average and
purified mode, ``symmon purify``, the i-PI evaluator (and one real i-PI server run with
the plural-name variant), and ASE drivers. The references are plain metatomic-ase
``MetatomicCalculator`` calls on freshly transformed ``ase.Atoms`` (outputs asked under
the names the model was trained with), never symmon's adapters; returned values equal
them to 1e-10 (float64) / 1e-5 (float32) of the value's scale.
"""

import functools
import pathlib
import sys
import uuid

import ase.io
import numpy as np
import pytest
import torch
from ase import units
from ase.calculators.calculator import PropertyNotImplementedError
from ase.stress import voigt_6_to_full_3x3_stress

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from model_variants import save_variant, shared_variants  # noqa: E402
from test_compat_models import molecule, periodic, transformed  # noqa: E402
from test_drivers import DRIVERS, run_logged  # noqa: E402
from test_ipi import (_cleanup_socket, _env, _forcefield_socket, _kill, _properties,  # noqa: E402
                      _start_server, _wait, _write_input, _write_structure)

from symmon import SymmetryMonitor, orbit_average, quadrature_grid  # noqa: E402
from symmon.adapters import MetatomicOrbitModel  # noqa: E402
from symmon.core.quantities import QUANTITY  # noqa: E402
from symmon.frontends.cli import main  # noqa: E402
from symmon.frontends.ipi import MonitoredEvaluator  # noqa: E402
from symmon.frontends.purify import sweep_structures  # noqa: E402
from symmon.io.files import file_sha256  # noqa: E402
from symmon.io.log import read_log  # noqa: E402
from symmon.io.readout import Readout  # noqa: E402
from symmon.monitoring.policy import SymmetryViolationWarning  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.slow]

#: how each variant's direct outputs are asked of ``MetatomicCalculator`` (``False``:
#: forces and stress by autograd; ``"forces"``: the variant has no stress head)
NON_CONSERVATIVE = {"nc_plural": True, "nc_plural_f32": True, "nc_singular": "forces",
                    "energy_only": False, "nanometer": "forces", "extra_inputs": "forces",
                    "system_energy": False}
DIRECT_FORCES = [name for name, direct in NON_CONSERVATIVE.items() if direct]
STRUCTURES = {"periodic": periodic, "molecule": molecule}
AVERAGE_GRID = quadrature_grid(1)  # 24 elements


@pytest.fixture(scope="session")
def variants():
    return shared_variants()


def calculator(variants, name, model=None):
    from metatomic_ase import MetatomicCalculator

    return MetatomicCalculator(variants[name].model if model is None else model,
                               non_conservative=NON_CONSERVATIVE[name], neighbor_skin=0.0)


def quantities(atoms):
    return ["energy", "forces"] + (["stress"] if all(atoms.pbc) else [])


def full_stress(stress):
    """3x3 from ASE's Voigt 6 (``SymmetrizedCalculator`` already returns 3x3)."""
    stress = np.asarray(stress)
    return stress if stress.shape == (3, 3) else voigt_6_to_full_3x3_stress(stress)


def per_copy(calc, atoms, matrices, names):
    """``{name: (K, ...)}`` of one fresh ``calc`` call per copy ``x Q^T`` (stress 3x3)."""
    getters = {"energy": calc.get_potential_energy, "forces": calc.get_forces,
               "stress": lambda a: full_stress(calc.get_stress(a))}
    values = {name: [] for name in names}
    for matrix in matrices:
        copy = transformed(atoms, matrix)
        for name in names:
            values[name].append(np.array(getters[name](copy), dtype=np.float64))
    return {name: np.stack(v) for name, v in values.items()}


def returned(atoms):
    """What the attached calculator returns (stress as 3x3)."""
    values = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if all(atoms.pbc):
        values["stress"] = atoms.get_stress(voigt=False)
    return values


def assert_close(actual, expected, tolerance, what=""):
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=0,
                               atol=tolerance * scale, err_msg=what)


def rattled_cells(count):
    structures = []
    for seed in range(count):
        atoms = periodic()
        atoms.rattle(0.15, seed=10 + seed)
        structures.append(atoms)
    return structures


# ---------------------------------------------------------------------------- monitor
@pytest.mark.parametrize("structure", sorted(STRUCTURES))
@pytest.mark.parametrize("name", list(NON_CONSERVATIVE))
def test_monitor_returns_the_calculator_predictions(variants, name, structure):
    variant, atoms = variants[name], STRUCTURES[structure]()
    monitor = SymmetryMonitor(calculator(variants, name), every=1, random_rotations=2, l_max=1)
    atoms.calc = monitor
    got = returned(atoms)
    expected = per_copy(calculator(variants, name), atoms, np.eye(3)[None], list(got))
    for key, value in expected.items():
        assert_close(got[key], value[0], variant.tolerance, key)
    # an untrained PET is far from equivariant: eps is measured, not rounding noise
    assert monitor.results["forces_eps"] > 1e3 * variant.tolerance
    source = "non_conservative" if NON_CONSERVATIVE[name] else "conservative"
    assert monitor.metadata()["forces_source"] == source
    if structure == "molecule":
        with pytest.raises(PropertyNotImplementedError, match="not periodic"):
            atoms.get_stress()


@pytest.mark.parametrize("structure", sorted(STRUCTURES))
@pytest.mark.parametrize("name", list(NON_CONSERVATIVE))
def test_average_mode_is_the_orbit_average_of_per_copy_calls(variants, name, structure):
    variant, atoms = variants[name], STRUCTURES[structure]()
    atoms.calc = SymmetryMonitor(calculator(variants, name), every=1, random_rotations=2,
                                 l_max=1, mode="average", average_degree=1)
    got = returned(atoms)
    copies = per_copy(calculator(variants, name), atoms, AVERAGE_GRID.matrices, list(got))
    for key, value in copies.items():
        expected = orbit_average(torch.as_tensor(value), AVERAGE_GRID, QUANTITY[key].kind)
        assert_close(got[key], expected.numpy(), variant.tolerance, key)
    # averaging changed the forces (a copy mix-up would show as the base's forces)
    assert np.abs(got["forces"] - copies["forces"][0]).max() > 1e3 * variant.tolerance


def test_model_without_energy_is_refused_with_one_sentence(variants):
    from metatomic_ase import MetatomicCalculator

    model = variants["forces_only"].model
    for front_end in ("calculator", "ipi"):
        atoms = periodic()
        base = MetatomicCalculator(model, non_conservative="forces", neighbor_skin=0.0)
        with pytest.raises((ValueError, PropertyNotImplementedError),
                           match="energy output") as error:
            if front_end == "ipi":
                MonitoredEvaluator(atoms, base, every=1).evaluate(atoms.positions,
                                                                 atoms.cell.array)
            else:
                atoms.calc = SymmetryMonitor(base, every=1)
                atoms.get_forces()
        assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------- other bases
@functools.lru_cache(maxsize=None)
def bundled(name):
    """A bundled model, loaded once (TorchScript warms up once per loaded model)."""
    from metatomic.torch import load_atomistic_model

    return load_atomistic_model(str(pathlib.Path(__file__).parents[1] / "symmon" / "data" / name))


def make_base(kind, variants):
    """A fresh base calculator of ``kind`` and a structure it takes."""
    from ase.calculators.emt import EMT
    from ase.calculators.mixing import SumCalculator
    from metatomic_ase import MetatomicCalculator, SymmetrizedCalculator

    from analytic_models import make_analytic_model
    from broken import LabFrameEMT
    from test_drivers import WrappedMetatomic

    makers = {
        "tiny_pet": lambda: (MetatomicCalculator(bundled("tiny_pet.pt"),
                                                 non_conservative=True, neighbor_skin=0.0),
                             periodic()),
        "tiny_pet_f32": lambda: (MetatomicCalculator(bundled("tiny_pet_f32.pt"),
                                                     non_conservative=True, neighbor_skin=0.0),
                                 periodic()),
        "analytic": lambda: (MetatomicCalculator(make_analytic_model(0.1), neighbor_skin=0.0),
                             periodic()),
        "analytic_f32": lambda: (MetatomicCalculator(make_analytic_model(0.1, dtype=torch.float32),
                                                     non_conservative=True, neighbor_skin=0.0),
                                 molecule()),
        "wrapped_metatomic": lambda: (WrappedMetatomic(calculator(variants, "nc_plural")),
                                      periodic()),
        "sum": lambda: (SumCalculator([EMT(), LabFrameEMT()]), periodic()),
        "symmetrized": lambda: (SymmetrizedCalculator(calculator(variants, "energy_only"),
                                                      l_max=0), molecule()),
    }
    return makers[kind]()


BASES = ["tiny_pet", "tiny_pet_f32", "analytic", "analytic_f32", "wrapped_metatomic", "sum",
         "symmetrized"]


@pytest.mark.parametrize("kind", BASES)
def test_other_bases_in_monitor_average_and_ipi(variants, kind):
    """Monitor mode and the i-PI evaluator return the base's own predictions; average
    mode the orbit average of per-copy calls of a fresh base."""
    base, atoms = make_base(kind, variants)
    tolerance = 1e-5 if "f32" in kind else 1e-10
    names = quantities(atoms)
    plain = per_copy(make_base(kind, variants)[0], atoms, np.eye(3)[None], names)
    orbit = per_copy(make_base(kind, variants)[0], atoms, AVERAGE_GRID.matrices, names)
    for mode in ("monitor", "average"):
        copy = atoms.copy()
        copy.calc = SymmetryMonitor(base if mode == "monitor" else make_base(kind, variants)[0],
                                    every=1, random_rotations=2, l_max=1, mode=mode,
                                    average_degree=1)
        got = returned(copy)
        assert np.isfinite(copy.calc.results["forces_eps"])
        for key in names:
            value = plain[key][0] if mode == "monitor" else orbit_average(
                torch.as_tensor(orbit[key]), AVERAGE_GRID, QUANTITY[key].kind).numpy()
            assert_close(got[key], value, tolerance, f"{mode} {key}")
    assert np.abs(got["forces"] - plain["forces"][0]).max() > 1e3 * tolerance
    evaluator = MonitoredEvaluator(atoms, make_base(kind, variants)[0], every=1,
                                   random_rotations=2)
    energy, forces, _, extras = evaluator.evaluate(atoms.positions, atoms.cell.array)
    evaluator.close()
    assert_close(energy, plain["energy"][0], tolerance, "i-PI energy")
    assert_close(forces, plain["forces"][0], tolerance, "i-PI forces")
    assert np.isfinite(extras["forces_eps"])


# ---------------------------------------------------------------------------- purified
def fit_readout(variant, structures, path, model_path=None) -> Readout:
    """A readout of the direct forces fitted on ``structures`` (large lambda: it removes
    most of the forces' orbit variance on them)."""
    orbit_model = MetatomicOrbitModel(variant.model)
    sweep = sweep_structures(orbit_model, structures, "non_conservative_forces",
                             AVERAGE_GRID, holdout=0.34, progress=False)
    row = sweep.scan([1e3])[-1]
    readout = Readout("non_conservative_forces", sweep.feature, row["matrix"], row["lambda"],
                      sweep.train.intercept, file_sha256(model_path))
    readout.save(path)
    return readout


def purified_reference(calc, variant, readout, atoms):
    """The readout applied to one MetatomicCalculator call's direct forces and features."""
    from metatomic.torch import ModelOutput

    key = variant.trained["non_conservative_forces"]
    outputs = calc.run_model(atoms, {
        key: ModelOutput(unit="eV/angstrom", sample_kind="atom"),
        readout.feature: ModelOutput(sample_kind="atom")})
    forces = outputs[key].block().values.detach().numpy()[..., 0].astype(np.float64)
    features = outputs[readout.feature].block().values.detach().numpy().astype(np.float64)
    corrected = readout.correct(forces, features)
    return corrected - corrected.mean(0)  # direct forces: net force removed, as metatomic-ase


@pytest.mark.parametrize("name", DIRECT_FORCES)
def test_purified_mode_returns_the_readout_forces(variants, name, tmp_path):
    """SymmetryMonitor and the i-PI evaluator in purified mode, either naming of the
    direct forces (the readout's feature is the model's own name)."""
    variant = variants[name]
    structures = rattled_cells(3)
    path = tmp_path / "readout.h5"
    readout = fit_readout(variant, structures, path)
    trained = variant.trained["non_conservative_forces"]
    assert readout.feature == f"mtt::aux::{trained}_last_layer_features"
    atoms = structures[0]
    expected = purified_reference(calculator(variants, name), variant, readout, atoms)
    eps = {}
    for mode in ("monitor", "purified"):
        monitor = SymmetryMonitor(calculator(variants, name), every=1, random_rotations=3,
                                  mode=mode, readout=str(path), seed=1)
        copy = atoms.copy()
        copy.calc = monitor
        forces = copy.get_forces()
        eps[mode] = monitor.results["forces_eps"]
    assert_close(forces, expected, variant.tolerance, "purified forces")
    assert np.abs(expected - calculator(variants, name).get_forces(atoms)).max() > \
        1e3 * variant.tolerance  # the correction is not a no-op
    assert eps["purified"] < eps["monitor"]  # on a structure of the fit, lambda = 1e3
    evaluator = MonitoredEvaluator(atoms, calculator(variants, name), every=1,
                                   random_rotations=3, mode="purified", readout=str(path),
                                   seed=1)
    _, ipi_forces, _, extras = evaluator.evaluate(atoms.positions, atoms.cell.array)
    evaluator.close()
    assert_close(ipi_forces, expected, variant.tolerance, "i-PI purified forces")
    assert extras["forces_eps"] == pytest.approx(eps["purified"], rel=1e-6)  # same rotations


def test_purify_fit_of_a_model_without_energy(variants):
    """The direct forces of the forces-only variant can be purified (the fit needs no
    energy); monitoring it is refused (test_model_without_energy_is_refused_...)."""
    orbit_model = MetatomicOrbitModel(variants["forces_only"].model)
    sweep = sweep_structures(orbit_model, rattled_cells(3), "non_conservative_forces",
                             AVERAGE_GRID, holdout=0.34, progress=False)
    assert sweep.feature == "mtt::aux::non_conservative_force_last_layer_features"
    model_row, fitted = sweep.scan([1e3])
    assert fitted["holdout_eps"] < 0.1 * model_row["holdout_eps"]


def test_purified_mode_refuses_a_model_without_its_features(variants, tmp_path):
    path = tmp_path / "readout.h5"
    fit_readout(variants["nc_plural"], rattled_cells(3), path)
    from metatomic_ase import MetatomicCalculator

    from analytic_models import make_analytic_model

    bases = [calculator(variants, "energy_only"),  # no direct forces, no features
             MetatomicCalculator(make_analytic_model(0.1), non_conservative=True)]
    for base in bases:
        with pytest.raises(ValueError, match="has no output 'mtt::aux::non_conservative_"
                                             "forces_last_layer_features'") as error:
            SymmetryMonitor(base, mode="purified", readout=str(path))
        assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------- symmon purify
def purify_command(model, structures, output, target="non_conservative_forces"):
    return main(["purify", model, structures, "--target", target, "--degree", "2",
                 "--holdout", "0.34", "--lambda", "0", "--lambda", "1000",
                 "--max-rmse-increase", "100", "-o", str(output)])


@pytest.mark.parametrize("name", ["nc_plural", "nc_singular"])
def test_purify_command_on_direct_forces(variants, name, tmp_path, capsys):
    variant = variants[name]
    model = save_variant(variant, tmp_path / "model.pt")
    structures = str(tmp_path / "structures.xyz")
    ase.io.write(structures, rattled_cells(3))
    output = tmp_path / "readout.h5"
    assert purify_command(model, structures, output) == 0, capsys.readouterr().err
    assert "chose lambda=1000" in capsys.readouterr().out
    readout = Readout.load(output)
    trained = variant.trained["non_conservative_forces"]
    assert readout.feature == f"mtt::aux::{trained}_last_layer_features"
    assert readout.model_sha256 == file_sha256(model)
    atoms = rattled_cells(1)[0]
    from metatomic_ase import MetatomicCalculator

    base = MetatomicCalculator(model, non_conservative=NON_CONSERVATIVE[name],
                               neighbor_skin=0.0)
    atoms.calc = SymmetryMonitor(base, every=1, random_rotations=2, mode="purified",
                                 readout=str(output))
    expected = purified_reference(base, variant, readout, atoms)
    assert_close(atoms.get_forces(), expected, variant.tolerance, "purified forces")


def test_purify_command_refuses_an_energy_only_model(variants, tmp_path, capsys):
    model = save_variant(variants["energy_only"], tmp_path / "energy.pt")
    structures = str(tmp_path / "structures.xyz")
    ase.io.write(structures, rattled_cells(2))
    output = tmp_path / "readout.h5"
    assert purify_command(model, structures, output) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "Traceback" not in message
    assert "has no last-layer features for 'non_conservative_forces'" in message
    assert not output.exists()


# ---------------------------------------------------------------------------- i-PI
@pytest.mark.parametrize("name", list(NON_CONSERVATIVE))
def test_ipi_evaluator_returns_the_calculator_forces(variants, name, tmp_path):
    """i-PI's energy, forces and virial are the plain calculator's; a tight threshold
    grades every monitored call a problem (extras and log)."""
    variant, template = variants[name], periodic()
    log = tmp_path / "ipi.h5"
    evaluator = MonitoredEvaluator(template, calculator(variants, name), log=str(log),
                                   every=1, random_rotations=2, flush_every=1,
                                   thresholds={"forces": 1e-6})
    reference = calculator(variants, name)
    with pytest.warns(SymmetryViolationWarning, match="forces"):
        for seed in range(2):
            atoms = template.copy()
            atoms.rattle(0.05, seed=seed)
            energy, forces, virial, extras = evaluator.evaluate(atoms.positions,
                                                                atoms.cell.array, seed)
            expected = per_copy(reference, atoms, np.eye(3)[None], quantities(atoms))
            assert_close(energy, expected["energy"][0], variant.tolerance, "energy")
            assert_close(forces, expected["forces"][0], variant.tolerance, "forces")
            assert_close(virial, -atoms.get_volume() * expected["stress"][0],
                         variant.tolerance, "virial")
            assert extras["violation"] == 1 and extras["forces_rel_eps"] > 1e-6
    evaluator.close()
    with read_log(log) as reader:
        assert reader.observable("violation")[2].tolist() == [1, 1]
        assert reader.observable("ipi_request_id")[2].tolist() == [0, 1]
        assert reader.metadata["thresholds"]["forces"] == 1e-6


def test_ipi_command_takes_direct_forces_of_a_model_without_stress_head(variants, tmp_path,
                                                                      capsys):
    """``symmon ipi --non-conservative`` on the singular-name variant (no stress head)
    gets as far as connecting (exit 3), as ``MetatomicCalculator(non_conservative=
    "forces")`` and SymmetryMonitor do."""
    model = save_variant(variants["nc_singular"], tmp_path / "singular.pt")
    _write_structure(tmp_path)
    code = main(["ipi", "--model", model, "--structure", str(tmp_path / "init.xyz"),
                 "--unix", f"symmon-absent-{uuid.uuid4().hex[:8]}", "--non-conservative",
                 "--connect-wait", "0"])
    message = capsys.readouterr().err
    assert code == 3 and "could not connect" in message, message


def test_ipi_server_run_with_the_plural_variant(variants, tmp_path):
    """A real i-PI NVT run served by ``symmon ipi --non-conservative`` with the plural
    variant: the logged forces are MetatomicCalculator's at the positions i-PI sent."""
    import subprocess

    from metatomic_ase import MetatomicCalculator

    steps, address = 3, f"symmon-{uuid.uuid4().hex[:12]}"
    model = save_variant(variants["nc_plural"], tmp_path / "plural.pt")
    _write_structure(tmp_path)
    _write_input(tmp_path, _forcefield_socket(address), steps)
    command = [sys.executable, "-m", "symmon.frontends.cli", "ipi", "--model", model,
               "--structure", "init.xyz", "--unix", address, "--log", "run.h5",
               "--flush-every", "1", "--every", "1", "--random-rotations", "2",
               "--non-conservative", "--threshold", "forces=1e-6", "--connect-wait", "60"]
    server = client = None
    try:
        server = _start_server(tmp_path)
        with open(tmp_path / "client.log", "w") as out:
            client = subprocess.Popen(command, cwd=tmp_path, stdout=out,
                                      stderr=subprocess.STDOUT, env=_env())
        client_rc = _wait(client, 90, "symmon ipi")
        server_rc = _wait(server, 30, "i-PI")
    finally:
        _kill(client, server)
        _cleanup_socket(address)
    assert client_rc == 0, (tmp_path / "client.log").read_text()[-3000:]
    assert server_rc == 0, (tmp_path / "ipi.log").read_text()[-3000:]
    potentials = _properties(tmp_path)[:, 3]
    reference = MetatomicCalculator(model, non_conservative=True, neighbor_skin=0.0)
    template = ase.io.read(tmp_path / "init.xyz")
    with read_log(tmp_path / "run.h5") as reader:
        step, _, energy = reader.observable("energy")
        assert step.tolist() == list(range(steps + 1))
        np.testing.assert_allclose(energy, potentials, rtol=1e-6, atol=1e-9)
        frames, forces = reader.frames(), reader.observable("forces")[2]
        assert reader.observable("violation")[2].tolist() == [1] * (steps + 1)
        assert reader.metadata["forces_source"] == "non_conservative"
    for positions, cell, logged in zip(frames.positions, frames.cell, forces):
        atoms = template.copy()
        atoms.set_cell(cell)
        atoms.set_positions(positions)
        assert_close(logged, reference.get_forces(atoms), 1e-10, "forces")


# ---------------------------------------------------------------------------- drivers
@pytest.mark.parametrize("driver", ["Langevin", "BFGS+FrechetCellFilter"])
def test_driver_runs_with_the_plural_variant(variants, driver, tmp_path):
    """MD and a cell relaxation under SymmetryMonitor(plural variant); the log re-read:
    every step once, at the driver's positions, with MetatomicCalculator's forces."""
    log = str(tmp_path / "run.h5")
    monitor = SymmetryMonitor(calculator(variants, "nc_plural"), log=log, every=1,
                              random_rotations=2)
    atoms = periodic()
    dynamics, seen = run_logged(monitor, atoms, DRIVERS[driver], steps=3)
    reference = calculator(variants, "nc_plural")
    with read_log(log) as reader:
        steps, times, eps = reader.observable("forces_eps")
        frames, forces = reader.frames(), reader.observable("forces")[2]
        stress = reader.observable("stress")[2]
        assert reader.metadata["forces_source"] == reader.metadata["stress_source"] == \
            "non_conservative"
    assert steps.tolist() == [s for s, _ in seen] == list(range(4))
    assert np.all(eps > 0)
    if driver == "Langevin":
        np.testing.assert_allclose(times, steps * dynamics.dt / (1000 * units.fs),
                                   rtol=1e-12)
    for (_, positions), logged_positions, cell, logged_forces, logged_stress in zip(
            seen, frames.positions, frames.cell, forces, stress):
        np.testing.assert_array_equal(logged_positions, positions)
        copy = atoms.copy()
        copy.set_cell(cell)
        copy.set_positions(positions)
        expected = per_copy(reference, copy, np.eye(3)[None], ["forces", "stress"])
        assert_close(logged_forces, expected["forces"][0], 1e-10, "forces")
        assert_close(logged_stress, expected["stress"][0], 1e-10, "stress")
