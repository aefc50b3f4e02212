"""Tests of symmon.io.log on real HDF5 files (SWMR, crash safety, shards)."""

import os
import pathlib
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

import _log_writer_child as child
from symmon.io.log import (
    SCHEMA_VERSION,
    LogFormatError,
    LogReader,
    LogWriter,
    ObservableSpec,
    read_log,
    recover_log,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
CHILD = pathlib.Path(__file__).with_name("_log_writer_child.py")
V1_LOG = pathlib.Path(__file__).with_name("data") / "log_v1.h5"


def write_log(path, steps, mode="create", **kw):
    kw.setdefault("metadata", {"seed": 7})
    with LogWriter(path, child.specs(), child.SPECIES, mode=mode, **kw) as log:
        for s in steps:
            child.write_step(log, s)


def expected(name, steps):
    return np.array([child.data(s)[name] for s in steps])


def assert_log_holds(reader, steps):
    """Reader content equals child.data() of `steps` (spectrum every 5th step)."""
    steps = np.asarray(steps)
    for name in ("energy_eps", "forces_eps_per_atom"):
        st, t, v = reader.observable(name)
        np.testing.assert_array_equal(st, steps)
        np.testing.assert_allclose(t, 0.0005 * steps)
        np.testing.assert_allclose(v, expected(name, steps))
    spec_steps = steps[steps % child.SPECTRUM_EVERY == 0]
    st, _, v = reader.observable("forces_spectrum")
    np.testing.assert_array_equal(st, spec_steps)
    np.testing.assert_allclose(v, np.sqrt(spec_steps)[:, None] * np.ones(10))
    fr = reader.frames()
    np.testing.assert_array_equal(fr.step, steps)
    np.testing.assert_allclose(fr.positions, expected("positions", steps))
    np.testing.assert_allclose(fr.cell, expected("cell", steps))


# ------------------------------------------------------------------ roundtrip


def test_roundtrip_and_h5md_layout(tmp_path):
    path = tmp_path / "run.h5"
    write_log(path, range(23), flush_every=4, metadata={"model": "m.pt", "grid": [2, 3], "seed": 7})
    with read_log(path) as r:
        assert_log_holds(r, range(23))
        assert r.metadata == {"model": "m.pt", "grid": [2, 3], "seed": 7}
        assert r.schema_version == SCHEMA_VERSION
        np.testing.assert_array_equal(r.species, child.SPECIES)
        assert r.observable_names == sorted(child.specs())
        assert r.unit("forces_eps_per_atom") == "eV/angstrom"
        assert r.description("energy_eps") == "energy error"
        np.testing.assert_array_equal(r.labels("forces_spectrum"), child.LABELS)
        assert r.labels("energy_eps") is None
        assert r.count("forces_spectrum") == 5
        # lazy slicing of the step-sorted series
        st, t, v = r.observable("forces_eps_per_atom", 3, 20, 4)
        np.testing.assert_array_equal(st, np.arange(3, 20, 4))
        np.testing.assert_allclose(v, expected("forces_eps_per_atom", range(3, 20, 4)))
        np.testing.assert_array_equal(r.frames(stop=2).step, [0, 1])
        with pytest.raises(KeyError, match="nope"):
            r.observable("nope")

    # A cleanly closed log opens with plain h5py and follows H5MD 1.1.
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["h5md"].attrs["version"], [1, 1])
        assert f["h5md/creator"].attrs["name"] == "symmon"
        assert "name" in f["h5md/author"].attrs
        box = f["particles/all/box"]
        assert box.attrs["dimension"] == 3
        assert [b.decode() for b in box.attrs["boundary"]] == ["periodic"] * 3
        pos = f["particles/all/position"]
        assert pos["value"].shape == (23, 4, 3) and pos["value"].attrs["unit"] == "angstrom"
        assert pos["step"].dtype == np.int64 and pos["time"].attrs["unit"] == "ps"
        assert box["edges/value"].shape == (23, 3, 3)
        assert pos["value"].maxshape[0] is None and pos["value"].chunks is not None
        # Schema 2 (issue 16): one step axis; a sparse series is NaN where not given.
        obs = f["observables/forces_spectrum"]
        assert obs["value"].shape == (23, 10) and obs["step"] == box["edges/step"]
        given = np.arange(23) % child.SPECTRUM_EVERY == 0
        assert np.isnan(obs["value"][~given]).all() and np.isfinite(obs["value"][given]).all()
        present = f["parameters/symmon/present"]
        column = list(present.attrs["columns"]).index("forces_spectrum")
        np.testing.assert_array_equal(present[:, column], given)
        assert f["parameters/symmon"].attrs["schema_version"] == SCHEMA_VERSION


def test_dtype_per_observable_and_nan_means_not_computed(tmp_path):
    path = tmp_path / "d.h5"
    spec = {"count": ObservableSpec(dtype="int32"),
            "x": ObservableSpec(shape=(2,), dtype="float32")}
    with LogWriter(path, spec, [1], pbc=(True, False, False), write_positions=False) as log:
        log.append_many(0, 0.0, {"count": 3, "x": [np.nan, 1.5]})
        log.append_frame(0, 0.0, None, [5.0, 6.0, 7.0])
        with pytest.raises(ValueError, match="count"):
            log.append("count", 1, 0.1, 2.5)  # float into int observable
    with read_log(path) as r:
        _, _, c = r.observable("count")
        _, _, x = r.observable("x")
        assert c.dtype == np.int32 and c.tolist() == [3]
        assert x.dtype == np.float32 and np.isnan(x[0, 0]) and x[0, 1] == 1.5
        assert r.pbc == (True, False, False)
        fr = r.frames()
        assert fr.positions is None
        np.testing.assert_array_equal(fr.cell[0], np.diag([5.0, 6.0, 7.0]))


# ------------------------------------------------------------- modes & paths


def test_create_refuses_existing_file(tmp_path):
    path = tmp_path / "run.h5"
    write_log(path, range(3))
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="mode='append'.*mode='overwrite'"):
        write_log(path, range(5))
    assert path.read_bytes() == before
    write_log(path, range(5, 7), mode="overwrite")
    with read_log(path) as r:
        assert_log_holds(r, [5, 6])


def test_append_mode_continues_and_checks_compatibility(tmp_path):
    path = tmp_path / "run.h5"
    write_log(path, range(7))
    write_log(path, range(7, 12), mode="append")
    with read_log(path) as r:
        assert_log_holds(r, range(12))

    before = path.read_bytes()
    bad_specs = dict(child.specs(), energy_eps=ObservableSpec(unit="kcal/mol"))
    with pytest.raises(ValueError, match="energy_eps"):
        LogWriter(path, bad_specs, child.SPECIES, mode="append")
    with pytest.raises(ValueError, match="species"):
        LogWriter(path, child.specs(), [1, 1, 1, 1], mode="append")
    with pytest.raises(ValueError, match="metadata"):
        LogWriter(path, child.specs(), child.SPECIES, metadata={"seed": 8}, mode="append")
    with pytest.raises(FileNotFoundError):
        LogWriter(tmp_path / "missing.h5", child.specs(), child.SPECIES, mode="append")
    assert path.read_bytes() == before


def test_bad_paths_create_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_log(tmp_path / "no" / "such" / "dir.h5", range(2))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OSError):
        write_log(tmp_path / "afile" / "run.h5", range(2))
    with pytest.raises(ValueError, match="mode"):
        write_log(tmp_path / "x.h5", range(2), mode="replace")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_unwritable_directory(tmp_path, monkeypatch):
    d = tmp_path / "ro"
    d.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root may write anyway: emulate the permission check
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, m: real_access(p, m) and str(p) != str(d))
    with pytest.raises(PermissionError, match="not writable"):
        write_log(d / "run.h5", range(2))
    assert list(d.iterdir()) == []


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda log: log.append("energy_eps", 0, 0.0, [1.0]), r"energy_eps.*\(\).*\(1,\)"),
        (lambda log: log.append("forces_eps_per_atom", 0, 0.0, np.ones(3)), r"\(4,\).*\(3,\)"),
        (lambda log: log.append("unknown", 0, 0.0, 1.0), "unknown observable 'unknown'"),
        (lambda log: log.append("energy_eps", 0, 0.0, "1.0"), "real numeric"),
        (lambda log: log.append("energy_eps", -1, 0.0, 1.0), "step"),
        (lambda log: log.append("energy_eps", 0.5, 0.0, 1.0), "step"),
        (lambda log: log.append_many(0, 0.0, {"energy_eps": 1.0, "forces_eps_per_atom": 1.0}),
         "forces_eps_per_atom"),
        (lambda log: log.append_frame(0, 0.0, np.zeros((3, 3)), np.eye(3)), "positions"),
        (lambda log: log.append_frame(0, 0.0, np.zeros((4, 3)), np.eye(2)), "cell"),
    ],
)
def test_bad_values_rejected_before_writing(tmp_path, call, match):
    path = tmp_path / "run.h5"
    with LogWriter(path, child.specs(), child.SPECIES, flush_every=1) as log:
        child.write_step(log, 0)
        with pytest.raises(ValueError, match=match):
            call(log)
        child.write_step(log, 1)
    with read_log(path) as r:
        assert_log_holds(r, [0, 1])  # nothing of the rejected call leaked in


def test_bad_constructor_arguments_create_no_file(tmp_path):
    path = tmp_path / "run.h5"
    with pytest.raises(ValueError, match="species"):
        LogWriter(path, child.specs(), [[1, 2]])
    with pytest.raises(ValueError, match="JSON"):
        LogWriter(path, child.specs(), child.SPECIES, metadata={"f": object()})
    with pytest.raises(ValueError, match="labels"):
        ObservableSpec(shape=(3,), labels=np.zeros((2, 2)))
    assert not path.exists()


# -------------------------------------------------------- crash & live read


def start_child(path, flush_every, batches, end):
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(path), str(flush_every), batches, end],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def wait_for(proc, text):
    line = proc.stdout.readline().strip()
    assert line == text, f"child said {line!r}, expected {text!r}"


def kill9(proc):
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("flush_every, batches, n_flushed", [
    (1000, "20,~5", 20),  # explicit flush after 20 steps, 5 more only buffered
    (10, "~25", 20),      # cadence: steps 0-9 flushed when step 10 began, 10-19 at 20
])
def test_sigkill_keeps_flushed_steps(tmp_path, flush_every, batches, n_flushed):
    path = tmp_path / "crash.h5"
    proc = start_child(path, flush_every, batches, "hang")
    try:
        for item in batches.split(",")[:-1]:
            wait_for(proc, f"flushed {int(item)}")
            proc.stdin.write("\n")
            proc.stdin.flush()
        wait_for(proc, f"wrote {sum(int(b.lstrip('~')) for b in batches.split(','))}")
        wait_for(proc, "hanging")
    finally:
        kill9(proc)

    # Finding: the killed SWMR writer leaves the consistency flag set, so
    # plain h5py opening fails; SWMR-read opening works.
    with pytest.raises(OSError, match="h5clear"):
        h5py.File(path, "r")
    with read_log(path) as r:
        assert_log_holds(r, range(n_flushed))

    # Appending needs an explicit recovery first.
    with pytest.raises(LogFormatError, match="recover_log"):
        write_log(path, [n_flushed], mode="append")
    recover_log(path)
    with h5py.File(path, "r"):
        pass  # clean again
    write_log(path, range(n_flushed, n_flushed + 3), mode="append")
    with read_log(path) as r:
        assert_log_holds(r, range(n_flushed + 3))


def test_live_reader_sees_flushed_steps(tmp_path):
    path = tmp_path / "live.h5"
    proc = start_child(path, 1000, "10,10", "close")
    try:
        wait_for(proc, "flushed 10")
        with read_log(path) as r:
            assert_log_holds(r, range(10))
            proc.stdin.write("\n")
            proc.stdin.flush()
            wait_for(proc, "flushed 20")
            assert r.count("energy_eps") == 10  # snapshot until refreshed
            r.refresh()
            assert_log_holds(r, range(20))
        wait_for(proc, "closed")
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            kill9(proc)
    with h5py.File(path, "r") as f:  # clean close clears the SWMR flag
        assert f["observables/energy_eps/step"].shape == (20,)


def test_reader_trusts_only_rows_in_every_element(tmp_path):
    """Simulate a crash inside a flush: datasets of different lengths, step not yet written.
    (Schema 2, issue 17: a row is trusted only when present in every element.)"""
    path = tmp_path / "run.h5"
    write_log(path, range(10))
    with h5py.File(path, "r+") as f:
        f["observables/energy_eps/value"].resize(13, axis=0)  # value written for 3 more steps...
        f["parameters/symmon/present"].resize(12, axis=0)
        f["particles/all/box/edges/time"].resize(12, axis=0)
        f["particles/all/box/edges/step"].resize(12, axis=0)  # ...step grown, never written
    with read_log(path) as r:
        assert_log_holds(r, range(10))
    with h5py.File(path, "r+") as f:
        f["particles/all/position/value"].resize(8, axis=0)  # positions behind: 8 rows whole
    with read_log(path) as r:
        assert_log_holds(r, range(8))
    write_log(path, [8], mode="append")  # append trims, then continues
    with read_log(path) as r:
        assert_log_holds(r, range(9))


def test_v1_log_still_reads_and_trims(tmp_path):
    """The schema-1 fixture (tests/data/make_log_v1.py), whole and after a simulated crash."""
    path = tmp_path / "v1.h5"
    path.write_bytes(V1_LOG.read_bytes())
    with read_log(path) as r:
        assert r.schema_version == 1 and r.metadata == {"seed": 7}
        assert_log_holds(r, range(12))
    with h5py.File(path, "r+") as f:
        g = f["observables/energy_eps"]
        g["value"].resize(15, axis=0)
        g["step"].resize(14, axis=0)  # step rows allocated, never written (fill -1)
        f["particles/all/position/value"].resize(8, axis=0)
    with read_log(path) as r:
        assert r.observable("energy_eps")[0].tolist() == list(range(12))
        assert r.frames().step.tolist() == list(range(8))
    with pytest.raises(ValueError, match="schema version 1"):
        write_log(path, [12], mode="append")
    assert recover_log(path) == 8
    with h5py.File(path, "r") as f:
        assert f["observables/energy_eps/value"].shape == (12,)


# ------------------------------------------------------------ shards, errors


def test_shards_merge_sorted_by_step(tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    write_log(a, [0, 2, 4, 6, 8, 10])
    write_log(b, [1, 3, 5, 7, 9, 10])
    with LogReader([b, a]) as r:
        st, _, v = r.observable("energy_eps")
        assert st.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10]
        np.testing.assert_allclose(v, expected("energy_eps", st))
        st, _, v = r.observable("forces_eps_per_atom", start=1, stride=3)
        assert st.tolist() == [1, 4, 7, 10]
        np.testing.assert_allclose(v, expected("forces_eps_per_atom", st))
        assert r.observable("forces_spectrum")[0].tolist() == [0, 5, 10, 10]
        fr = r.frames(stop=4)
        np.testing.assert_allclose(fr.positions, expected("positions", [0, 1, 2, 3]))

    c = tmp_path / "c.h5"
    with LogWriter(c, {"energy_eps": ObservableSpec()}, child.SPECIES) as log:
        log.append("energy_eps", 0, 0.0, 1.0)
    with pytest.raises(LogFormatError, match="c.h5"):
        read_log([a, c])


def test_not_a_log_errors(tmp_path):
    txt = tmp_path / "notes.h5"
    txt.write_text("not hdf5 at all")
    with pytest.raises(LogFormatError, match="not an HDF5 file"):
        read_log(txt)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(LogFormatError, match="not a symmon log"):
        read_log(other)
    with pytest.raises(FileNotFoundError):
        read_log(tmp_path / "missing.h5")

    newer = tmp_path / "newer.h5"
    write_log(newer, range(2))
    with h5py.File(newer, "r+") as f:
        f["parameters/symmon"].attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(LogFormatError, match="newer"):
        read_log(newer)

    truncated = tmp_path / "trunc.h5"
    write_log(truncated, range(30))
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(LogFormatError):
        read_log(truncated)
    assert issubclass(LogFormatError, ValueError)
