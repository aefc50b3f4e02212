"""Logs as the field reads them (issue 16): MDAnalysis's H5MDReader opens and iterates every
kind of symmon log whole, with the model's forces; h5py, MDAnalysis and symmon's reader
agree on every value."""

import os
import pathlib
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
from ase import units
from ase.calculators.emt import EMT
from ase.md.verlet import VelocityVerlet
from MDAnalysis.coordinates.H5MD import H5MDReader

import structures
from symmon.frontends.calculator import SymmetryMonitor
from symmon.frontends.ipi import MonitoredEvaluator, shard_log_path
from symmon.io.log import read_log, recover_log

HERE = pathlib.Path(__file__).resolve().parent


def cu_ni():
    return structures.cu_ni(repeat=(1, 1, 1), nickel=(1,), seed=3)


def run_md(path, steps, **options):
    atoms = cu_ni()
    options = {"every": 1, "random_rotations": 2, **options}
    monitor = SymmetryMonitor(EMT(), log=str(path), **options)
    atoms.calc = monitor
    dynamics = VelocityVerlet(atoms, 2 * units.fs)
    monitor.attach(dynamics)
    dynamics.run(steps)
    monitor.close()


def default_log(tmp_path):
    path = tmp_path / "default.h5"
    run_md(path, 5)  # no full-orbit step: no spectra at all
    return path, 6


def full_orbit_log(tmp_path):
    path = tmp_path / "full.h5"
    run_md(path, 6, full_every=3, l_max=2)  # spectra on steps 0, 3, 6 only (like the demo)
    return path, 7


def every_third_step_log(tmp_path):
    """Monitored every 3rd step, logged as a whole trajectory (frames and signals every
    step, diagnostics NaN between monitored steps)."""
    path = tmp_path / "every3.h5"
    run_md(path, 6, every=3, trajectory=True)
    return path, 7


def appended_log(tmp_path):
    path = tmp_path / "appended.h5"
    run_md(path, 3)
    run_md(path, 2, log_mode="append")
    return path, 7


def shard_log(tmp_path):
    path = shard_log_path(str(tmp_path / "run.h5"), "a")
    evaluator = MonitoredEvaluator(cu_ni(), EMT(), log=path, every=1, random_rotations=2)
    rng = np.random.default_rng(0)
    atoms = cu_ni()
    for request in range(4):
        evaluator.evaluate(atoms.positions + 0.01 * rng.standard_normal((4, 3)),
                           atoms.cell.array, request_id=request % 2)
    evaluator.close()
    return pathlib.Path(path), 4


def killed_log(tmp_path):
    """A monitor SIGKILLed after flushing 7 steps (7 more buffered), then recovered."""
    path = tmp_path / "killed.h5"
    env = dict(os.environ, PYTHONPATH=f"{HERE.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    child = subprocess.Popen([sys.executable, str(HERE / "_monitor_child.py"), str(path), "6"],
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "flushed 7"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    with read_log(path) as reader:  # symmon reads it as it is ...
        assert reader.frames().step.tolist() == list(range(7))
    assert recover_log(path) == 7   # ... plain HDF5 readers once it is recovered
    return path, 7


LOGS = [default_log, full_orbit_log, every_third_step_log, appended_log, shard_log, killed_log]


@pytest.mark.slow
@pytest.mark.parametrize("make_log", LOGS, ids=[f.__name__ for f in LOGS])
def test_mdanalysis_iterates_every_frame_and_readers_agree(tmp_path, make_log):
    path, n_steps = make_log(tmp_path)
    # MDAnalysis knows no eV-based force unit: it opens the file with convert_units=False
    # (positions and time are in its native angstrom and ps anyway).
    mda = H5MDReader(str(path), convert_units=False)
    try:
        assert mda.n_frames == n_steps and mda.has_positions and mda.has_forces
        frames = [(ts.data["step"], ts.time, ts.positions.copy(), ts.forces.copy(),
                   None if ts.dimensions is None else ts.dimensions.copy(), dict(ts.data))
                  for ts in mda]
    finally:
        mda.close()
    assert len(frames) == n_steps

    with h5py.File(path, "r") as f, read_log(path) as log:
        part = f["particles/all"]
        step, time = part["position/step"][()], part["position/time"][()]
        positions, forces = part["position/value"][()], part["force/value"][()]
        np.testing.assert_array_equal(step, range(n_steps))  # appended runs continue steps
        assert len(set(step)) == n_steps
        # MDAnalysis == h5py (MDAnalysis holds coordinates as float32; NaN == NaN here:
        # a step logged without a frame has NaN positions and forces, present = 0)
        for k, (s, t, pos, frc, dims, data) in enumerate(frames):
            np.testing.assert_array_equal([s, t], [step[k], time[k]])  # NaN == NaN here
            np.testing.assert_array_equal(pos, positions[k].astype(np.float32))
            np.testing.assert_array_equal(frc, forces[k].astype(np.float32))
            edges = part["box/edges/value"][k]
            if np.isfinite(edges).all():
                np.testing.assert_allclose(dims[:3], np.linalg.norm(edges, axis=1), rtol=1e-6)
            for name in f["observables"]:
                np.testing.assert_array_equal(data[name], f[f"observables/{name}/value"][k])
        # symmon == h5py, value by value, on the rows where each series was given
        columns = list(f["parameters/symmon/present"].attrs["columns"])
        present = f["parameters/symmon/present"][()].astype(bool)
        framed = present[:, columns.index("particles/all")]
        assert framed.sum() > 0 and np.isfinite(positions[framed]).all()
        assert np.isnan(positions[~framed]).all()
        fr = log.frames()
        np.testing.assert_array_equal(fr.step, step[framed])
        np.testing.assert_array_equal(fr.positions, positions[framed])
        np.testing.assert_array_equal(fr.cell, part["box/edges/value"][()][framed])
        for name in log.observable_names:
            where = "particles/all/force" if name == "forces" else f"observables/{name}"
            stored = f[f"{where}/value"][()]
            given = present[:, columns.index(name)]
            s, t, v = log.observable(name)
            np.testing.assert_array_equal(s, step[given])
            np.testing.assert_array_equal(t, time[given])
            np.testing.assert_array_equal(v, stored[given])
            if stored.dtype.kind == "f":
                assert np.isnan(stored[~given]).all()  # NaN where not given
        assert log.unit("forces") == "eV/angstrom"
        given = present[:, columns.index("forces")]
        np.testing.assert_array_equal(log.observable("forces")[2], forces[given])


@pytest.mark.slow
def test_sparse_spectra_share_the_step_axis(tmp_path):
    """The demo-like log: spectra only on full-orbit steps, NaN elsewhere, every frame read."""
    path, n_steps = full_orbit_log(tmp_path)
    with read_log(path) as log:
        steps, _, spectrum = log.observable("forces_spectrum")
        assert steps.tolist() == [0, 3, 6] and np.isfinite(spectrum).all()
    mda = H5MDReader(str(path), convert_units=False)
    try:
        given = [bool(np.isfinite(ts.data["forces_spectrum"]).all()) for ts in mda]
    finally:
        mda.close()
    assert given == [s in (0, 3, 6) for s in range(n_steps)]


@pytest.mark.slow
@pytest.mark.parametrize("make_log", [full_orbit_log, killed_log],
                         ids=["full_orbit_log", "killed_log"])
def test_a_second_h5md_reader_agrees(tmp_path, make_log):
    """pyh5md (the H5MD reference library, independent of MDAnalysis) reads the particle
    data and every observable of symmon's log as symmon's reader does."""
    import pyh5md

    path, n_steps = make_log(tmp_path)
    with read_log(path) as log:
        frames = log.frames()
        expected = {name: log.observable(name) for name in log.observable_names}
    with pyh5md.File(str(path), "r") as f:
        particles = f.particles_group("all")
        position = pyh5md.element(particles, "position")
        force = pyh5md.element(particles, "force")
        assert position.value.shape[0] == n_steps
        np.testing.assert_array_equal(position.step[()], frames.step)
        np.testing.assert_array_equal(position.value[()], frames.positions)
        np.testing.assert_array_equal(force.value[()], expected["forces"][2])
        observables = f["observables"]
        for name, (steps, times, values) in expected.items():
            if name == "forces":
                continue
            element = pyh5md.element(observables, name)
            stored = element.value[()]
            given = np.isin(element.step[()], steps)
            np.testing.assert_array_equal(stored[given], values, err_msg=name)
