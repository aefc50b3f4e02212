"""SymmetryMonitor: the drop-in ASE calculator and its HDF5 log."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.md.langevin import Langevin
from ase.md.verlet import VelocityVerlet

from symmon import orbit_average, quadrature_grid
from symmon.io.log import read_log
from symmon.adapters import ASEOrbitModel
from symmon.frontends.calculator import SymmetryMonitor, SymmetryViolation, SymmetryViolationWarning

from broken import LabFrameEMT
from structures import cu_ni

HERE = os.path.dirname(__file__)


def run_md(monitor, atoms, steps=6, seed=0):
    atoms.calc = monitor
    dynamics = Langevin(atoms, 2 * units.fs, temperature_K=300, friction=0.02,
                        rng=np.random.default_rng(seed))
    monitor.attach(dynamics)
    dynamics.run(steps)
    monitor.close()
    return dynamics


@pytest.mark.slow
def test_emt_is_equivariant_at_every_step(tmp_path):
    log = tmp_path / "emt.h5"
    run_md(SymmetryMonitor(EMT(), every=1, log=str(log), full_every=3, l_max=2, random_rotations=3),
           cu_ni(), steps=6)
    with read_log(str(log)) as reader:
        steps, _, _ = reader.observable("forces_rel_eps")
        assert steps.tolist() == list(range(7))
        for name in ("energy_rel_eps", "forces_rel_eps", "stress_rel_eps"):
            assert np.all(reader.observable(name)[2] < 1e-12), name
        full_steps, _, contamination = reader.observable("forces_contamination")
        assert full_steps.tolist() == [0, 3, 6]
        assert np.all(np.abs(contamination) < 1e-12)
        _, _, spectrum = reader.observable("stress_spectrum")
        labels = reader.labels("stress_spectrum").tolist()
        proper = [labels.index([0, 1]), labels.index([2, 1])]
        assert np.allclose(spectrum[:, proper].sum(1), 1, atol=1e-12)
        _, times, _ = reader.observable("energy_eps")
        assert np.allclose(np.diff(times), 0.002)  # ps
        meta = reader.metadata
        assert meta["base_calculator"] == "EMT" and meta["seed"] == 0
        assert meta["units"]["forces"] == "eV/angstrom"


def test_broken_control_exceeds_threshold_and_warns(tmp_path):
    monitor = SymmetryMonitor(LabFrameEMT(), every=1, log=str(tmp_path / "b.h5"),
                              thresholds={"forces": 0.01}, on_violation="warn")
    with pytest.warns(SymmetryViolationWarning, match=r"forces: ε .*relative ε \S+ is above 0.01"):
        run_md(monitor, cu_ni(), steps=2)
    assert monitor.n_violations == 3
    with read_log(str(tmp_path / "b.h5")) as reader:
        assert np.all(reader.observable("violation")[2] == 1)
        assert np.all(reader.observable("forces_rel_eps")[2] > 0.01)
        assert np.all(reader.observable("energy_rel_eps")[2] < 1e-12)


def test_raise_stops_cleanly_with_log_flushed(tmp_path):
    log = str(tmp_path / "r.h5")
    monitor = SymmetryMonitor(LabFrameEMT(), log=log, every=1, thresholds=0.01,
                              on_violation="raise", flush_every=100)
    atoms = cu_ni()
    atoms.calc = monitor
    dynamics = VelocityVerlet(atoms, 2 * units.fs)
    monitor.attach(dynamics)
    with pytest.raises(SymmetryViolation, match="step 0"):
        dynamics.run(3)
    with read_log(log) as reader:
        assert reader.observable("violation")[0].tolist() == [0]


def test_average_switch_returns_the_orbit_average(tmp_path):
    atoms = cu_ni()
    monitor = SymmetryMonitor(LabFrameEMT(), every=1, thresholds={"forces": 0.01},
                              on_violation="average", average_degree=3)
    atoms.calc = monitor
    with pytest.warns(SymmetryViolationWarning, match="switching to O\\(3\\) averaging"):
        forces = atoms.get_forces()
    assert monitor.mode == "average"
    # the constant lab force averages out exactly: the averaged forces are EMT's
    reference = atoms.copy()
    reference.calc = EMT()
    assert np.allclose(forces, reference.get_forces(), atol=1e-10)
    assert np.allclose(LabFrameEMT().get_forces(atoms) - reference.get_forces(), 0.05 * np.eye(3)[2])


@pytest.mark.slow
def test_monitor_mode_is_bit_identical_and_average_matches_engine():
    atoms = cu_ni(2)
    base = LabFrameEMT()
    direct = atoms.copy()
    direct.calc = LabFrameEMT()
    atoms.calc = SymmetryMonitor(base, every=1, random_rotations=2)
    assert np.array_equal(atoms.get_forces(), direct.get_forces())
    assert atoms.get_potential_energy() == direct.get_potential_energy()
    assert np.array_equal(atoms.get_stress(), direct.get_stress())
    assert np.isfinite(atoms.calc.get_property("forces_eps"))
    assert atoms.calc.get_property("forces_eps_per_atom").shape == (len(atoms),)

    averaged = atoms.copy()
    averaged.calc = SymmetryMonitor(LabFrameEMT(), every=1, mode="average", average_degree=4)
    grid = quadrature_grid(4)
    orbit = ASEOrbitModel(LabFrameEMT()).evaluate(atoms, grid.matrices, ["forces", "stress"])
    assert np.allclose(averaged.get_forces(), orbit_average(orbit["forces"], grid, "vector"),
                       atol=1e-12)
    stress = orbit_average(orbit["stress"], grid, "symmetric_tensor").numpy()
    assert np.allclose(averaged.get_stress(voigt=False), stress, atol=1e-12)


def test_same_seed_gives_identical_log(tmp_path):
    contents = []
    for name in ("a.h5", "b.h5"):
        run_md(SymmetryMonitor(LabFrameEMT(), every=1, log=str(tmp_path / name), seed=7,
                               random_rotations=3), cu_ni(), steps=3)
        with read_log(str(tmp_path / name)) as reader:
            contents.append({n: reader.observable(n)[2] for n in reader.observable_names})
    assert contents[0].keys() == contents[1].keys()
    for name in contents[0]:
        assert np.array_equal(contents[0][name], contents[1][name], equal_nan=True), name
    run_md(SymmetryMonitor(LabFrameEMT(), every=1, log=str(tmp_path / "c.h5"), seed=8,
                           random_rotations=3), cu_ni(), steps=3)
    with read_log(str(tmp_path / "c.h5")) as reader:
        assert not np.array_equal(reader.observable("forces_eps")[2], contents[0]["forces_eps"])


def test_reevaluations_do_not_corrupt_the_step_count(tmp_path):
    log = str(tmp_path / "s.h5")
    monitor = SymmetryMonitor(EMT(), log=log, every=2, random_rotations=2)
    atoms = cu_ni()
    atoms.calc = monitor
    dynamics = VelocityVerlet(atoms, 2 * units.fs)
    monitor.attach(dynamics)
    for _ in range(3):
        dynamics.run(2)
        probe = atoms.copy()  # an extra evaluation at other positions, not an MD step
        probe.positions[0] += 0.01
        monitor.get_property("forces", probe)
    monitor.close()
    with read_log(log) as reader:
        assert reader.observable("forces_eps")[0].tolist() == [0, 2, 4, 6]
        steps, _, positions, _ = reader.frames()  # a frame per logged (monitored) step
        assert steps.tolist() == [0, 2, 4, 6] and len(positions) == 4


@pytest.mark.slow
def test_sigkill_leaves_a_readable_log(tmp_path):
    log = str(tmp_path / "killed.h5")
    child = subprocess.Popen([sys.executable, os.path.join(HERE, "_monitor_child.py"), log, "6"],
                             stdout=subprocess.PIPE, text=True, cwd=HERE)
    try:
        line = child.stdout.readline()
        assert line.startswith("flushed"), line
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    with read_log(log) as reader:
        steps, _, eps = reader.observable("forces_eps")
        assert steps.tolist() == list(range(7))
        assert np.all(np.isfinite(eps))


@pytest.mark.parametrize("problem", ["nan", "empty", "stress_molecule"])
def test_bad_structures_leave_no_log(tmp_path, problem):
    log = tmp_path / "bad.h5"
    monitor = SymmetryMonitor(EMT(), every=1, log=str(log))
    if problem == "nan":
        atoms = cu_ni()
        atoms.positions[2, 1] = np.nan
        expected, prop = "NaN", "forces"
    elif problem == "empty":
        atoms, expected, prop = Atoms(), "empty", "energy"
    else:
        atoms, expected, prop = molecule("CH4"), "not periodic", "stress"
        atoms.calc = None
    with pytest.raises(ValueError, match=expected):
        monitor.get_property(prop, atoms)
    monitor.close()
    assert not log.exists()


def test_bad_options_and_paths(tmp_path):
    existing = tmp_path / "old.h5"
    run_md(SymmetryMonitor(EMT(), every=1, log=str(existing), random_rotations=2), cu_ni(), steps=1)
    before = existing.read_bytes()
    with pytest.raises(FileExistsError, match="append"):
        SymmetryMonitor(EMT(), every=1, log=str(existing))
    assert existing.read_bytes() == before
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SymmetryMonitor(EMT(), every=1, log=str(tmp_path / "missing" / "x.h5"))
    for options, message in [({"mode": "symmetrize"}, "mode must be"),
                             ({"on_violation": "ignore"}, "on_violation"),
                             ({"every": 0}, "every"),
                             ({"random_rotations": 1}, "random_rotations"),
                             ({"l_max": 4, "degree": 6}, "degree"),
                             ({"thresholds": {"dipole": 0.1}}, "unknown quantities"),
                             ({"log_mode": "replace"}, "mode must be")]:
        with pytest.raises(ValueError, match=message):
            SymmetryMonitor(EMT(), log=str(tmp_path / "new.h5"), **options)
    with pytest.raises(TypeError, match="ASE calculator"):
        SymmetryMonitor(object())

    # append continues the same log
    run_md(SymmetryMonitor(EMT(), every=1, log=str(existing), log_mode="append", random_rotations=2),
           cu_ni(), steps=1)
    with read_log(str(existing)) as reader:
        assert reader.count("forces_eps") == 4


def test_force_eps_is_per_atom_and_the_same_for_a_supercell():
    """Exact quadrature, constant lab force f: every atom's eps is |f|, for any N."""
    results = {}
    for repeat in (1, 2):
        atoms = cu_ni().repeat(repeat)
        atoms.calc = SymmetryMonitor(LabFrameEMT(), every=1, full_every=1, degree=2, l_max=1,
                                     on_violation="raise", thresholds=10.0,
                                     model_errors={"forces": 1.0, "stress": 1.0})
        atoms.get_forces()
        results[repeat] = dict(atoms.calc.results, n=len(atoms))
    for r in results.values():
        np.testing.assert_allclose(r["forces_eps"], 0.05, rtol=1e-10)
        np.testing.assert_allclose(r["forces_eps_total"], 0.05 * np.sqrt(r["n"]), rtol=1e-10)
        np.testing.assert_allclose(r["net_force_per_atom"], 0.05, rtol=1e-10)
        assert r["energy_eps_per_atom"] < 1e-12 and r["violation"] == 0  # vs the model error
    # the lab stress is the same per cell: same eps in eV/A^3 and GPa
    np.testing.assert_allclose(results[1]["stress_eps"], results[2]["stress_eps"], rtol=1e-8)
    np.testing.assert_allclose(results[1]["stress_eps_gpa"], results[1]["stress_eps"] * 160.21766208)


def test_switch_to_averaging_is_a_logged_event(tmp_path):
    log = str(tmp_path / "switch.h5")
    monitor = SymmetryMonitor(LabFrameEMT(), every=2, log=log, thresholds={"forces": 0.01},
                              on_violation="average", average_degree=3)
    with pytest.warns(SymmetryViolationWarning, match="switching"):
        run_md(monitor, cu_ni(), steps=3)
    with read_log(log) as reader:
        assert reader.observable("mode_switch")[0].tolist() == [0]
        assert reader.observable("averaged")[2].tolist() == [1, 1]  # the logged steps 0, 2
        # eps measured on the base model once the returned values are averages
        assert reader.observable("eps_of_returned")[2].tolist() == [0, 0]
        # the averaged forces have no net lab force
        assert np.all(reader.observable("net_force_per_atom")[2] < 1e-10)
        assert reader.metadata["eps_measured_on"] == "returned predictions"


def test_append_of_another_ase_calculator_is_refused(tmp_path):
    """Found by an independent fault campaign: ASE calculators have no model file, so the
    model hash alone let an EMT log take a Lennard-Jones append."""
    from ase.calculators.lj import LennardJones

    log = str(tmp_path / "a.h5")
    for calculator, mode in ((EMT(), "create"), (EMT(), "append")):
        atoms = cu_ni()
        atoms.calc = SymmetryMonitor(calculator, log=log, log_mode=mode, every=1,
                                     random_rotations=2)
        atoms.get_forces()
        atoms.calc.close()
    atoms = cu_ni()
    atoms.calc = SymmetryMonitor(LennardJones(), log=log, log_mode="append", every=1,
                                 random_rotations=2)
    with pytest.raises(ValueError, match="base_calculator.*'EMT'.*'LennardJones'"):
        atoms.get_forces()
    atoms.calc.close()
    with read_log(log) as reader:
        assert len(reader.observable("forces_eps")[0]) == 2  # nothing of the refused run


def test_a_molecule_has_no_stress_diagnostics_in_results():
    """ASE results of a non-periodic structure carry no stress keys (not NaN ones); a
    periodic cell carries them."""
    methanol = molecule("CH3OH")
    methanol.calc = SymmetryMonitor(EMT(), every=1, random_rotations=2)
    methanol.get_forces()
    assert np.isfinite(methanol.calc.results["forces_eps"])
    assert not [name for name in methanol.calc.results if "stress" in name]
    crystal = cu_ni()
    crystal.calc = SymmetryMonitor(EMT(), every=1, random_rotations=2)
    crystal.get_forces()
    assert np.isfinite(crystal.calc.results["stress_eps"])


def test_last_monitored_holds_the_last_monitored_steps_diagnostics(tmp_path):
    """``results`` carry NaN diagnostics on unmonitored steps; ``last_monitored`` keeps
    those of the last monitored step (what README's example prints), and equals the log."""
    atoms = bulk("Cu", cubic=True).repeat(2)
    atoms.rattle(0.05, seed=0)
    monitor = SymmetryMonitor(LabFrameEMT(), log=str(tmp_path / "m.h5"), every=3)
    atoms.calc = monitor
    assert monitor.last_monitored == {}
    dynamics = VelocityVerlet(atoms, 2 * units.fs)
    monitor.attach(dynamics)
    dynamics.run(4)  # steps 0..4: monitored 0 and 3
    assert np.isnan(monitor.results["forces_eps"])  # step 4 is not monitored
    last = monitor.last_monitored
    assert last["step"] == 3 and last["forces_eps"] > 0
    assert last["forces_eps_per_atom"].shape == (len(atoms),)
    monitor.close()
    with read_log(str(tmp_path / "m.h5")) as log:
        steps, _, eps = log.observable("forces_eps")
    assert steps[-1] == 3 and eps[-1] == last["forces_eps"]
