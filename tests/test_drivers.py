"""SymmetryMonitor under every kind of ASE driver and calculator (issue 13).

Drivers: MD integrators (VelocityVerlet, Langevin, NPT with stress every step) and
optimizers (BFGS, FIRE, BFGS under FrechetCellFilter); continued runs; calls outside
any driver. Calculators: energy+forces only, periodic without stress, SumCalculator,
a calculator wrapping a MetatomicCalculator (bundled tiny PET).
"""

import numpy as np
import pytest
from ase import units
from ase.build import molecule
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.calculators.emt import EMT
from ase.calculators.mixing import SumCalculator
from ase.filters import FrechetCellFilter
from ase.md.langevin import Langevin
from ase.md.melchionna import MelchionnaNPT
from ase.md.nose_hoover_chain import IsotropicMTKNPT
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS, FIRE

from symmon.frontends.calculator import SymmetryMonitor
from symmon.frontends.demo import bundled_model_path, demo_structure
from symmon.io.log import read_log

from broken import LabFrameEMT
from structures import cu_ni

STEPS = 3


DRIVERS = {
    "VelocityVerlet": lambda a: VelocityVerlet(a, 2 * units.fs),
    "Langevin": lambda a: Langevin(a, 2 * units.fs, temperature_K=300, friction=0.02,
                                   rng=np.random.default_rng(0)),
    "MelchionnaNPT": lambda a: MelchionnaNPT(a, 2 * units.fs, temperature_K=300,
                                             externalstress=0.0, ttime=25 * units.fs,
                                             pfactor=75 * units.fs ** 2 * 100 * units.GPa),
    "IsotropicMTKNPT": lambda a: IsotropicMTKNPT(a, 2 * units.fs, temperature_K=300,
                                                 pressure_au=0.0, tdamp=50 * units.fs,
                                                 pdamp=500 * units.fs),
    "BFGS": lambda a: BFGS(a, logfile=None),
    "FIRE": lambda a: FIRE(a, logfile=None),
    "BFGS+FrechetCellFilter": lambda a: BFGS(FrechetCellFilter(a), logfile=None),
}


def run_logged(monitor, atoms, make_driver, steps=STEPS):
    """Run a driver; return the driver, and its (step, positions) at each observer call."""
    atoms.calc = monitor
    driver = make_driver(atoms)
    monitor.attach(driver)
    seen = []
    driver.attach(lambda: seen.append((driver.nsteps, atoms.get_positions().copy())))
    driver.run(steps=steps) if not hasattr(driver, "fmax") else driver.run(fmax=1e-6,
                                                                           steps=steps)
    monitor.close()
    return driver, seen


@pytest.mark.parametrize("name", list(DRIVERS))
def test_every_driver_step_is_logged_once_with_its_positions(tmp_path, name):
    atoms = cu_ni()
    log = str(tmp_path / "run.h5")
    driver, seen = run_logged(SymmetryMonitor(EMT(), log=log, every=1, random_rotations=2),
                              atoms, DRIVERS[name])
    with read_log(log) as reader:
        steps, times, _ = reader.observable("forces_eps")
        frames = reader.frames()
        assert steps.tolist() == [s for s, _ in seen] == list(range(STEPS + 1))
        for (step, positions), logged in zip(seen, frames.positions):
            np.testing.assert_array_equal(logged, positions)  # the real atoms, not a filter's
        assert np.all(reader.observable("call_kind")[2] == 0)
        if hasattr(driver, "get_time"):
            np.testing.assert_allclose(times, np.arange(STEPS + 1) * driver.dt / (1000 * units.fs))
        else:
            assert np.all(np.isnan(times))  # optimizers have no time
        assert reader.metadata["driver"] == type(driver).__name__
        if name.endswith("NPT") or "Frechet" in name:  # stress every step, monitored
            assert reader.count("stress_eps") == STEPS + 1
            assert np.all(reader.observable("stress_rel_eps")[2] < 1e-10)


def test_continued_driver_uses_each_steps_own_schedule(tmp_path):
    """run(2) + run(3) logs what run(5) logs: same steps, same random grids, same eps
    (no calibration steps: a continued run calibrates on its own schedule, counted from
    its first calculation)."""
    def monitored(log):
        return SymmetryMonitor(LabFrameEMT(), log=str(tmp_path / log), every=2, seed=3,
                               random_rotations=3, trajectory=True, calibration_rotations=0)

    whole = cu_ni()
    run_logged(monitored("whole.h5"), whole, DRIVERS["VelocityVerlet"], steps=5)

    atoms = cu_ni()
    driver = VelocityVerlet(atoms, 2 * units.fs)
    atoms.calc = EMT()  # the first two steps without the monitor: a restarted run
    atoms.calc = LabFrameEMT()
    driver.run(2)
    monitor = monitored("continued.h5")
    atoms.calc = monitor
    monitor.attach(driver)
    driver.run(3)
    monitor.close()
    with read_log(str(tmp_path / "whole.h5")) as a, \
            read_log(str(tmp_path / "continued.h5")) as b:
        assert a.observable("forces_eps")[0].tolist() == [0, 2, 4]
        assert b.observable("forces_eps")[0].tolist() == [2, 4]
        assert b.observable("net_force_per_atom")[0].tolist() == [2, 3, 4, 5]
        np.testing.assert_allclose(b.observable("forces_eps")[2], a.observable("forces_eps")[2][1:],
                                   rtol=1e-12)
        np.testing.assert_allclose(b.observable("stress_eps")[2], a.observable("stress_eps")[2][1:],
                                   rtol=1e-12)
        # the grids differ from step to step: the even lab stress's ε depends on the grid
        # (the constant lab force's does not: on +-R pairs it is |f_lab| exactly)
        assert np.ptp(a.observable("stress_eps")[2]) > 1e-3 * a.observable("stress_eps")[2].max()


def test_single_points_outside_a_driver_are_logged_as_such(tmp_path):
    """Phonon-like displacements: each call is one single point, numbered in call order."""
    log = str(tmp_path / "sp.h5")
    monitor = SymmetryMonitor(EMT(), log=log, every=1, random_rotations=2)
    atoms = cu_ni()
    atoms.calc = monitor
    for axis in range(3):
        displaced = atoms.copy()
        displaced.positions[0, axis] += 0.01
        displaced.calc = monitor
        displaced.get_forces()
    monitor.close()
    with read_log(log) as reader:
        steps, times, kinds = reader.observable("call_kind")
        assert steps.tolist() == [0, 1, 2] and np.all(kinds == 1) and np.all(np.isnan(times))
        assert reader.metadata["driver"] is None


def test_reevaluations_inside_a_run_are_counted_not_lost(tmp_path):
    log = str(tmp_path / "probe.h5")
    monitor = SymmetryMonitor(EMT(), log=log, every=1, random_rotations=2)
    atoms = cu_ni()
    atoms.calc = monitor
    driver = VelocityVerlet(atoms, 2 * units.fs)
    monitor.attach(driver)
    driver.run(1)
    probe = atoms.copy()
    probe.positions[0] += 0.02
    monitor.get_property("forces", probe)  # not a step of the driver
    driver.run(1)
    monitor.close()
    with read_log(log) as reader:
        steps, _, calls = reader.observable("calls")
        assert steps.tolist() == [0, 1, 2]
        # step 2: the probe, the driver's re-evaluation of step 1, step 2 itself
        assert calls.tolist() == [1, 1, 3]


class EnergyForcesOnly(Calculator):
    """EMT without stress (as many calculators for molecules and some MLIPs)."""

    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        emt = EMT()
        self.results = {"energy": emt.get_potential_energy(self.atoms),
                        "forces": emt.get_forces(self.atoms)}


def test_periodic_base_without_stress_monitors_what_exists(tmp_path):
    log = str(tmp_path / "nostress.h5")
    monitor = SymmetryMonitor(EnergyForcesOnly(), log=log, every=1, random_rotations=2)
    assert "stress" not in monitor.implemented_properties
    with pytest.warns(UserWarning, match="does not provide stress: not monitored") as record:
        run_logged(monitor, cu_ni(), DRIVERS["VelocityVerlet"])
    assert sum("not monitored" in str(w.message) for w in record) == 1  # said once
    atoms = cu_ni()
    atoms.calc = SymmetryMonitor(EnergyForcesOnly(), every=1, random_rotations=2)
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()
    with read_log(log) as reader:
        assert "stress_eps" not in reader.observable_names
        assert reader.count("forces_eps") == STEPS + 1


def test_stress_of_a_molecule_is_not_implemented():
    atoms = molecule("CH4")
    atoms.calc = SymmetryMonitor(EMT(), every=1, random_rotations=2)
    with pytest.raises(PropertyNotImplementedError, match="not periodic"):
        atoms.get_stress()
    assert np.isfinite(atoms.get_forces()).all()
    assert atoms.calc.results["net_torque"] < 1e-10  # EMT: no net torque


def test_sum_calculator(tmp_path):
    base = SumCalculator([EMT(), LabFrameEMT()])
    monitor = SymmetryMonitor(base, every=1, random_rotations=3)
    assert set(monitor.implemented_properties) >= set(base.implemented_properties)
    atoms = cu_ni()
    atoms.calc = monitor
    reference = cu_ni()
    reference.calc = EMT()
    np.testing.assert_allclose(atoms.get_forces(), 2 * reference.get_forces() + [0, 0, 0.05],
                               atol=1e-12)
    # the lab-frame force is the only non-equivariant part: 0.05 eV/Å on every atom
    np.testing.assert_allclose(monitor.results["net_force_per_atom"], 0.05, atol=1e-12)
    assert 0.01 < monitor.results["forces_eps"] < 0.2


class WrappedMetatomic(Calculator):
    """A calculator holding a MetatomicCalculator (as upet's does), optionally adding
    an energy offset (then it is not the inner model)."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, inner, offset=0.0):
        super().__init__()
        self.inner, self.offset = inner, offset

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        results = {name: self.inner.get_property(name, self.atoms)
                   for name in ("energy", "forces", "stress")}
        self.results = {name: np.array(results[name]) for name in ("forces", "stress")}
        self.results["energy"] = self.results["free_energy"] = results["energy"] + self.offset


@pytest.fixture(scope="module")
def tiny_pet_calculator():
    from symmon.frontends.calculator import metatomic_calculator

    return metatomic_calculator(bundled_model_path(), non_conservative=True)


@pytest.mark.slow
def test_wrapped_metatomic_calculator_takes_the_batched_path(tiny_pet_calculator):
    from symmon.frontends.calculator import metatomic_calculator

    atoms = demo_structure(0)
    wrapped = SymmetryMonitor(WrappedMetatomic(tiny_pet_calculator), every=1,
                              random_rotations=3, full_every=1, degree=2, l_max=1)
    direct = SymmetryMonitor(metatomic_calculator(bundled_model_path(), non_conservative=True),
                             every=1, random_rotations=3, full_every=1, degree=2, l_max=1)
    results = []
    for monitor in (wrapped, direct):
        copy = atoms.copy()
        copy.calc = monitor
        copy.get_forces()
        results.append(monitor.results)
    assert wrapped.monitor.source.path.startswith("batched")
    # float32 model: the direct monitor's returned values come from the batched forward
    # (the unrotated copy folded into the orbit), equal to the plain call to float precision
    for name in ("energy", "forces", "stress", "forces_eps", "stress_eps", "energy_eps"):
        np.testing.assert_allclose(results[0][name], results[1][name], rtol=1e-5, atol=1e-7)

    offset = SymmetryMonitor(WrappedMetatomic(tiny_pet_calculator, offset=1.0), every=1,
                             random_rotations=2)
    copy = atoms.copy()
    copy.calc = offset
    with pytest.warns(UserWarning, match="predictions differ from those of the calculator"):
        copy.get_potential_energy()
    assert offset.monitor.source.path.startswith("per-copy")


def test_tiny_pet_md_and_cell_relaxation(tmp_path, tiny_pet_calculator):
    """The bundled tiny PET (direct forces) under Langevin MD and a cell relaxation."""
    for name in ("Langevin", "BFGS+FrechetCellFilter"):
        log = str(tmp_path / f"{name}.h5")
        monitor = SymmetryMonitor(tiny_pet_calculator, log=log, every=2, random_rotations=3)
        atoms = demo_structure(0)
        driver, seen = run_logged(monitor, atoms, DRIVERS[name], steps=2)
        with read_log(log) as reader:
            assert reader.observable("forces_eps")[0].tolist() == [0, 2]
            # direct forces are returned without their mean: the net force is that of
            # the unrotated copy's raw forces, known on the monitored steps
            assert reader.observable("net_force_per_atom")[0].tolist() == [0, 2]
            eps = reader.observable("forces_eps")[2]
            total = reader.observable("forces_eps_total")[2]
            np.testing.assert_allclose(eps, total / np.sqrt(len(atoms)), rtol=1e-12)
            assert np.all(eps > 0) and reader.metadata["forces_source"] == "non_conservative"
