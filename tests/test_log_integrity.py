"""Nothing silently wrong in a damaged log: checksummed attributes, one sentence for a
damaged dataset or object header, the log-semantics version (issues 30 and 25)."""

import json
import os
import pathlib
import resource
import signal
import subprocess
import sys
import warnings

import h5py
import numpy as np
import pytest

import _log_writer_child as child
from symmon.io.h5md import ATTRIBUTE_RECORD, EDGES, PARAMS
from symmon.io.log import LogFormatError, LogWriter, ObservableSpec, read_log, recover_log
from symmon.io.reader import LogNote
from symmon.io.semantics import UNVERSIONED
from test_log import assert_log_holds, write_log

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def _record(path):
    with h5py.File(path, "r") as f:
        return json.loads(f[ATTRIBUTE_RECORD][()].tobytes().decode())


def _changed(value):
    """``value`` with one character / number changed (what a flipped byte does)."""
    if isinstance(value, np.ndarray):
        out = value.copy()
        flat = out.reshape(-1)
        flat[0] = _changed(flat[0])
        return out
    if isinstance(value, bytes):
        return value[:-1] + bytes([value[-1] ^ 0x01])
    if isinstance(value, str):
        return value[:-1] + chr(ord(value[-1]) ^ 0x01) if value else "x"
    return value + 1


def _symmon(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "symmon.frontends.cli", *map(str, args)],
                          capture_output=True, text=True, env=ENV, cwd=cwd, timeout=120)


def _one_line_error(proc, code=2):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def _flip(path, offset, mask=0x5A):
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------ attributes


def test_every_trusted_attribute_changed_is_refused_naming_it(tmp_path):
    path = tmp_path / "run.h5"
    write_log(path, range(6))
    keys = sorted(_record(path))
    # what the reader trusts: metadata, versions, names, units, descriptions, labels
    assert {f"/{PARAMS}@metadata_json", f"/{PARAMS}@semantics_version",
            f"/{PARAMS}/present@columns", "/observables/energy_eps@description",
            "/observables/energy_eps/value@unit",
            "/observables/forces_spectrum@labels"} <= set(keys)
    original = path.read_bytes()
    for key in keys:
        where, _, name = key.partition("@")
        path.write_bytes(original)
        with h5py.File(path, "r+") as f:
            f[where].attrs[name] = _changed(f[where].attrs[name])
        with pytest.raises(LogFormatError) as error:
            read_log(path)
        text = str(error.value)
        assert f"attribute {name!r} of {where} is damaged" in text, text
        assert "\n" not in text
    path.write_bytes(original)
    with read_log(path) as r:
        assert_log_holds(r, range(6))


def test_flipped_byte_in_metadata_is_refused(tmp_path):
    """A flipped digit in the stored metadata (a vlen string in HDF5's global heap, which
    HDF5 does not checksum) is refused; before, it was read as another setting."""
    path = tmp_path / "run.h5"
    write_log(path, range(3), metadata={"seed": 7, "model_errors": {"forces": 0.04}})
    data = path.read_bytes()
    at = data.index(b'"forces": 0.04') + len(b'"forces": 0.')
    _flip(path, at, ord("0") ^ ord("9"))  # 0.04 -> 0.94
    with pytest.raises(LogFormatError, match="attribute 'metadata_json' of /parameters/symmon "
                       "is damaged.*metadata"):
        read_log(path)
    with pytest.raises(LogFormatError, match="metadata_json"):
        recover_log(path)


def test_flipped_attribute_record_is_refused(tmp_path):
    path = tmp_path / "run.h5"
    write_log(path, range(3))
    with h5py.File(path, "r") as f:
        offset = f[ATTRIBUTE_RECORD].id.get_chunk_info(0).byte_offset
    _flip(path, offset + 5)
    with pytest.raises(LogFormatError, match="attribute checksums.*cannot be read"):
        read_log(path)


def test_log_without_attribute_record_opens_with_a_note(tmp_path):
    path = tmp_path / "old.h5"
    write_log(path, range(4))
    with h5py.File(path, "r+") as f:  # as written before symmon kept the record
        del f[ATTRIBUTE_RECORD]
    with pytest.warns(LogNote, match="before symmon checksummed its attributes"):
        reader = read_log(path)
    with reader:
        assert len(reader.notes) == 1
        assert_log_holds(reader, range(4))
    recover_log(path)  # stays marked unverified
    with pytest.warns(LogNote):
        read_log(path).close()
    write_log(path, range(4, 6), mode="append")
    with h5py.File(path, "r") as f:
        assert ATTRIBUTE_RECORD not in f


def test_append_and_recovery_keep_the_record_true(tmp_path):
    path = tmp_path / "run.h5"
    write_log(path, range(3))
    write_log(path, range(3, 5), mode="append")  # rewrites appended_runs_json
    with warnings.catch_warnings():
        warnings.simplefilter("error", LogNote)
        with read_log(path) as r:
            assert_log_holds(r, range(5))
            assert r.notes == []
        assert recover_log(path) == 5
        with read_log(path) as r:
            assert_log_holds(r, range(5))


# ------------------------------------------------------------------ datasets and headers


def test_flipped_step_chunk_names_the_step_dataset(tmp_path):
    path = tmp_path / "run.h5"
    write_log(path, range(20))
    with h5py.File(path, "r") as f:
        offset = f[EDGES]["step"].id.get_chunk_info(0).byte_offset
    _flip(path, offset + 3, 0x40)
    with pytest.raises(LogFormatError, match=f"/{EDGES}/step.*damaged") as error:
        with read_log(path) as r:
            r.observable("energy_eps")
    assert "\n" not in str(error.value)
    with pytest.raises(LogFormatError, match=f"/{EDGES}/step"):
        recover_log(path)


@pytest.fixture(scope="module")
def monitor_log(tmp_path_factory):
    """A short monitored EMT run with a stated model error (what `symmon report` reads)."""
    import ase.build
    from ase.calculators.emt import EMT

    from symmon.frontends.calculator import SymmetryMonitor

    path = tmp_path_factory.mktemp("monitor") / "run.h5"
    atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=1)
    with SymmetryMonitor(EMT(), log=str(path), every=1, calibration_rotations=0,
                         model_errors={"forces": 0.04}) as calc:
        for k in range(3):
            atoms.positions[0, 0] += 0.01 * k
            calc.calculate(atoms, ["energy", "forces"])
    return path


def test_report_on_damaged_metadata_exits_2_with_one_line(monitor_log, tmp_path):
    path = tmp_path / "run.h5"
    data = monitor_log.read_bytes()
    at = data.index(b'"forces": 0.04') + len(b'"forces": 0.')
    path.write_bytes(data)
    _flip(path, at, ord("0") ^ ord("9"))  # model error 0.04 -> 0.94: would grade ok
    line = _one_line_error(_symmon("report", path, "--format", "json", "-o", tmp_path / "r"))
    assert "metadata_json" in line and "damaged" in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("target", ["observables/forces_eps", "observables/energy_eps/value",
                                    "particles/all/force", EDGES + "/step", "observables"])
def test_corrupted_object_header_is_one_line_exit_2(monitor_log, tmp_path, target):
    path = tmp_path / "run.h5"
    path.write_bytes(monitor_log.read_bytes())
    with h5py.File(path, "r") as f:
        address = h5py.h5o.get_info(f[target].id).addr
    _flip(path, address + 20)
    for command in (("report", path, "--format", "json", "-o", tmp_path / "r.json"),
                    ("export", path, "-o", tmp_path / "x.xyz")):
        line = _one_line_error(_symmon(*command))
        assert "damaged" in line, line
    with pytest.raises(LogFormatError) as error:
        recover_log(path)
    assert "\n" not in str(error.value)


def test_recover_on_a_full_disk_is_one_line_and_keeps_the_log(tmp_path):
    """RLIMIT_FSIZE below the copy's size: the copy's write fails (EFBIG, as on a full
    disk); recover_log says so in one line, leaves the log as it was, exits cleanly."""
    path = tmp_path / "run.h5"
    write_log(path, range(200))
    before = path.read_bytes()
    script = (
        "import resource, signal, sys\n"
        "from symmon.io.log import recover_log\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({len(before) // 3}, "
        f"{resource.RLIM_INFINITY}))\n"
        "try:\n"
        f"    recover_log({str(path)!r})\n"
        "except OSError as e:\n"
        "    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=ENV, timeout=60)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and "File too large" in lines[0] and "unchanged" in lines[0], lines
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]


# ------------------------------------------------------------------ semantics


def _log_with_summed_forces_eps(path):
    specs = {"forces_eps": ObservableSpec((), "eV/angstrom", "forces eps of the orbit")}
    with LogWriter(path, specs, child.SPECIES) as log:
        log.append("forces_eps", 0, 0.0, 2.0)
    with h5py.File(path, "r+") as f:  # as written before the version and the record
        del f[PARAMS].attrs["semantics_version"]
        del f[ATTRIBUTE_RECORD]


def test_semantics_version_written_and_old_meaning_mapped(tmp_path):
    new = tmp_path / "new.h5"
    write_log(new, range(2))
    with read_log(new) as r:
        assert r.semantics.version == 2 and not r.semantics.forces_eps_summed
    old = tmp_path / "old.h5"
    _log_with_summed_forces_eps(old)
    with pytest.warns(LogNote):
        reader = read_log(old)
    with reader:
        assert reader.semantics.version == UNVERSIONED and reader.semantics.forces_eps_summed
    specs = {"forces_eps": ObservableSpec((), "eV/angstrom", "forces eps of the orbit")}
    with pytest.raises(ValueError, match="forces_eps summed over atoms"):
        LogWriter(old, specs, child.SPECIES, mode="append")


def test_newer_semantics_refused(tmp_path):
    path = tmp_path / "run.h5"
    write_log(path, range(2))
    with h5py.File(path, "r+") as f:
        f[PARAMS].attrs["semantics_version"] = np.int64(99)
        del f[ATTRIBUTE_RECORD]
    with pytest.raises(LogFormatError, match="semantics version 99 is newer"):
        read_log(path)


def test_report_of_a_log_without_attribute_record_says_so_in_one_note(monitor_log,
                                                                      tmp_path):
    path = tmp_path / "old.h5"
    path.write_bytes(monitor_log.read_bytes())
    with h5py.File(path, "r+") as f:
        del f[ATTRIBUTE_RECORD]
    proc = _symmon("report", path, "--format", "json", "-o", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "note:" in line]
    assert notes == [f"symmon report: note: {path}: log written before symmon checksummed "
                     "its attributes: its metadata, units and names are read unverified"]
    assert json.loads((tmp_path / "r.json").read_text())
