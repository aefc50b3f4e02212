"""A log that survives everything (issue 17): kills at any moment (creation included),
signals, a second writer, an incompatible append, a full file system, corrupted bytes."""

import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

import _log_writer_child as child
from symmon.io import signals as log_signals
from symmon.io.log import (
    LogFormatError,
    LogLockedError,
    LogWriteError,
    LogWriter,
    check_log_path,
    read_log,
    recover_log,
)
from test_log import assert_log_holds, kill9, start_child, wait_for, write_log

REPO = pathlib.Path(__file__).resolve().parents[1]
CHILD = pathlib.Path(__file__).with_name("_log_writer_child.py")
ENV = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def spawn(path, *args):
    return subprocess.Popen([sys.executable, str(CHILD), str(path), *map(str, args)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV)


def assert_nothing_or_valid(path, n_flushed):
    """The path holds no file, or a log with at least every flushed step, bit for bit."""
    if not path.exists():
        assert n_flushed == 0, f"{n_flushed} steps were flushed, but no file"
        return 0
    with read_log(path) as r:
        n = r.count("energy_eps")
        assert n >= n_flushed
        if n:
            assert_log_holds(r, range(n))
        else:
            assert len(r.frames().step) == r.count("forces_spectrum") == 0
    return n


# ------------------------------------------------------------------ kills


def test_sigkill_at_random_moments_including_creation(tmp_path):
    """24 kills at random moments 0-60 ms after the child is ready to create the log
    (creation takes ~10 ms, then flushes every 3 steps): the path holds either nothing
    or a readable log with every flushed step."""
    rng = random.Random(17)
    outcomes = {"no file": 0, "empty log": 0, "steps": 0}
    t0 = time.monotonic()
    for seed in range(24):
        path = tmp_path / f"kill{seed}.h5"
        proc = spawn(path, 3, "--stream")
        try:
            wait_for(proc, "ready")
            time.sleep(rng.uniform(0, 0.06))
        finally:
            kill9(proc)
        said = proc.stdout.read().split()
        flushed = max([int(w) for w in said if w.isdigit()], default=0)
        n = assert_nothing_or_valid(path, flushed)
        outcomes["no file" if not path.exists() else "empty log" if n == 0 else "steps"] += 1
        if path.exists():
            assert recover_log(path) == n
            with h5py.File(path, "r"):  # clean for every HDF5 tool after recovery
                pass
        write_log(path, range(2), mode="overwrite" if path.exists() else "create")
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f".{path.name}")) == []
    assert time.monotonic() - t0 < 60
    assert outcomes["no file"] + outcomes["empty log"] > 0 and outcomes["steps"] > 0, outcomes


def test_kill_inside_creation_leaves_no_file(tmp_path):
    path = tmp_path / "run.h5"
    proc = spawn(path, 1, "--slow-create")
    try:
        wait_for(proc, "creating")  # layout built in the temp file, not yet renamed
        assert not path.exists()
    finally:
        kill9(proc)
    assert not path.exists()
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".creating"]  # the litter ...
    write_log(path, range(3))  # ... does not block a new run, which removes it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_flushes_every_buffered_step(tmp_path, sig):
    """25 steps only buffered (flush_every=1000); the signal closes the log, then the
    process ends as the signal says (SIGINT: by KeyboardInterrupt, which Python's exit
    turns into the same status)."""
    path = tmp_path / "run.h5"
    proc = start_child(path, 1000, "~25", "hang")
    try:
        wait_for(proc, "wrote 25")
        wait_for(proc, "hanging")
        proc.send_signal(sig)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            kill9(proc)
    assert proc.returncode == -sig
    with h5py.File(path, "r") as f:  # closed cleanly: plain HDF5 opens it
        assert f["particles/all/box/edges/step"].shape == (25,)
    with read_log(path) as r:
        assert_log_holds(r, range(25))


def test_signal_handlers_restored_and_previous_handler_called(tmp_path):
    calls = []
    previous = signal.signal(signal.SIGHUP, lambda s, f: calls.append(s))
    try:
        mine = signal.getsignal(signal.SIGHUP)
        log = LogWriter(tmp_path / "a.h5", child.specs(), child.SPECIES, handle_signals=True)
        assert signal.getsignal(signal.SIGHUP) is not mine
        log.close()
        assert signal.getsignal(signal.SIGHUP) is mine  # restored on close

        log = LogWriter(tmp_path / "b.h5", child.specs(), child.SPECIES, handle_signals=True,
                        flush_every=100)
        for s in range(4):
            child.write_step(log, s)
        os.kill(os.getpid(), signal.SIGHUP)
        assert calls == [signal.SIGHUP]  # the program's own handler still runs ...
        assert signal.getsignal(signal.SIGHUP) is mine
        with pytest.raises(ValueError, match="closed by SIGHUP"):
            child.write_step(log, 4)     # ... after the log was closed with every step
        with read_log(tmp_path / "b.h5") as r:
            assert_log_holds(r, range(4))
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_signal_during_flush_waits_for_the_flush(tmp_path, monkeypatch):
    log = LogWriter(tmp_path / "a.h5", child.specs(), child.SPECIES, handle_signals=True,
                    flush_every=100)
    for s in range(6):
        child.write_step(log, s)
    original = LogWriter._write_rows

    def signal_midway(self, rows):
        os.kill(os.getpid(), signal.SIGINT)  # arrives while the flush is half done
        original(self, rows)

    monkeypatch.setattr(LogWriter, "_write_rows", signal_midway)
    with pytest.raises(KeyboardInterrupt):
        log.flush()
    assert not log_signals._writers
    with h5py.File(tmp_path / "a.h5", "r"), read_log(tmp_path / "a.h5") as r:
        assert_log_holds(r, range(6))


# ------------------------------------------------------------ one writer


def test_second_writer_refused_in_every_mode(tmp_path):
    path = tmp_path / "run.h5"
    proc = start_child(path, 5, "10,10", "close")
    try:
        wait_for(proc, "flushed 10")
        for mode in ("overwrite", "append"):
            with pytest.raises(LogLockedError, match=f"process {proc.pid}"):
                LogWriter(path, child.specs(), child.SPECIES, mode=mode)
            with pytest.raises(LogLockedError):
                check_log_path(str(path), mode)  # the monitor's early check sees it too
        with pytest.raises(FileExistsError):
            LogWriter(path, child.specs(), child.SPECIES, mode="create")
        with pytest.raises(LogLockedError, match="cannot recover"):
            recover_log(path)
        with read_log(path) as r:  # readers are welcome
            assert_log_holds(r, range(10))
        proc.stdin.write("\n")
        proc.stdin.flush()
        wait_for(proc, "flushed 20")
        wait_for(proc, "closed")
    finally:
        if proc.poll() is None:
            kill9(proc)
    with read_log(path) as r:
        assert_log_holds(r, range(20))  # nothing of the refused writers leaked in
    write_log(path, range(20, 22), mode="append")  # lock released: next writer welcome


def test_second_writer_in_the_same_process_refused(tmp_path):
    path = tmp_path / "run.h5"
    with LogWriter(path, child.specs(), child.SPECIES):
        with pytest.raises(LogLockedError, match=f"process {os.getpid()}"):
            LogWriter(path, child.specs(), child.SPECIES, mode="overwrite")
    LogWriter(path, child.specs(), child.SPECIES, mode="overwrite").close()


# ---------------------------------------------------------------- append


def test_append_checks_model_seed_species_and_continues_steps(tmp_path):
    path = tmp_path / "run.h5"
    meta = {"model_sha256": "a" * 64, "seed": 7, "thresholds": 0.1}
    write_log(path, range(5), metadata=meta)
    before = path.read_bytes()
    for change, reason in [({"model_sha256": "b" * 64}, "model_sha256"), ({"seed": 8}, "seed")]:
        with pytest.raises(ValueError, match=f"cannot append.*{reason}"):
            LogWriter(path, child.specs(), child.SPECIES, metadata={**meta, **change},
                      mode="append")
    with pytest.raises(ValueError, match="species"):
        LogWriter(path, child.specs(), [1, 1, 1, 1], metadata=meta, mode="append")
    assert path.read_bytes() == before

    # a restarted run (steps from 0 again) continues the stored steps and times
    with LogWriter(path, child.specs(), child.SPECIES, mode="append",
                   metadata={**meta, "thresholds": 0.2}) as log:
        for s in range(3):
            child.write_step(log, s)
    with read_log(path) as r:
        step, t, _ = r.observable("energy_eps")
        assert step.tolist() == list(range(8))
        np.testing.assert_allclose(t, 0.0005 * np.arange(8))
        assert r.metadata == meta  # the first run's settings; the appended run's are kept too
    with h5py.File(path, "r") as f:
        runs = f["parameters/symmon"].attrs["appended_runs_json"]
        assert '"first_row": 5' in runs and '"thresholds": 0.2' in runs


def test_unchanged_positions_are_still_logged(tmp_path):
    path = tmp_path / "run.h5"
    positions = np.ones((4, 3))
    with LogWriter(path, child.specs(), child.SPECIES) as log:
        for s in (0, 1, 1):  # same positions every step; step 1 logged twice
            log.append_frame(s, 0.1 * s, positions, np.eye(3))
            log.append("energy_eps", s, 0.1 * s, float(s))
    with read_log(path) as r:
        assert r.frames().step.tolist() == [0, 1, 1]
        assert r.observable("energy_eps")[0].tolist() == [0, 1, 1]


# ------------------------------------------------------------ write errors


@pytest.mark.parametrize("limit", [10_000, 30_000, 120_000, 400_000])
def test_full_file_system_keeps_a_readable_prefix(tmp_path, limit):
    """RLIMIT_FSIZE makes every write past `limit` bytes fail with EFBIG, as a full disk
    would: the writer stops, says how many steps are safe, and the process exits cleanly."""
    path = tmp_path / "run.h5"
    proc = spawn(path, 5, "--stream", limit)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out  # no segfault at exit (the HDF5 close-after-error crash)
    lines = out.splitlines()
    error = next(line for line in lines if line.startswith("error "))
    safe = int(lines[-1].split()[1])
    flushed = max([int(x.split()[1]) for x in lines if x.startswith("flushed")], default=0)
    assert safe == flushed
    assert "File too large" in error
    if "cannot create" in error:  # the limit was hit while creating: no file at all
        assert safe == 0 and not path.exists()
        return
    assert (f"first {safe} steps" if safe else "no step is on disk") in error
    assert_nothing_or_valid(path, safe)
    with read_log(path) as r:
        assert r.count("energy_eps") == safe
    assert recover_log(path) == safe
    write_log(path, range(safe, safe + 2), mode="append")
    with read_log(path) as r:
        assert_log_holds(r, range(safe + 2))


def test_write_error_in_process_stops_writing(tmp_path, monkeypatch):
    path = tmp_path / "run.h5"
    log = LogWriter(path, child.specs(), child.SPECIES, flush_every=4)
    for s in range(8):
        child.write_step(log, s)  # steps 0-3 flushed when step 4 began
    real_extend = __import__("symmon.io.writer", fromlist=["_extend"])._extend

    def failing(ds, n, block):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("symmon.io.writer._extend", failing)
    with pytest.raises(LogWriteError, match=r"first 4 steps \(up to step 3\).*recover_log"):
        log.flush()
    monkeypatch.setattr("symmon.io.writer._extend", real_extend)
    with pytest.raises(LogWriteError, match="first 4 steps"):
        child.write_step(log, 8)  # stopped: every later call says so
    log.close()  # no error, nothing written
    with read_log(path) as r:
        assert_log_holds(r, range(4))


# ------------------------------------------------------------ corruption


def test_flipped_data_byte_is_an_error_not_a_number(tmp_path):
    path = tmp_path / "run.h5"
    write_log(path, range(20))
    with h5py.File(path, "r") as f:
        info = f["observables/energy_eps/value"].id.get_chunk_info(0)
    data = bytearray(path.read_bytes())
    data[info.byte_offset + 3] ^= 0x40
    path.write_bytes(bytes(data))
    with read_log(path) as r:
        assert r.count("forces_eps_per_atom") == 20  # other datasets read fine
        with pytest.raises(LogFormatError, match="energy_eps/value.*corrupted"):
            r.observable("energy_eps")


def test_recover_refuses_non_logs_and_keeps_original_on_error(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    before = other.read_bytes()
    with pytest.raises(LogFormatError, match="not a symmon log"):
        recover_log(other)
    assert other.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.h5"]
