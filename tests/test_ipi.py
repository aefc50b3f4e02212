"""symmon under a real i-PI server: socket client, in-process PES, client crash.

The server runs as a subprocess (``i-pi input.xml``) on a unique unix socket; every
wait is bounded and every process started here is killed in ``finally``. ASE's EMT
(``--model emt``) keeps the runs short.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest

from symmon.frontends.ipi import (EXTRAS_KEYS, MonitoredEvaluator, StructureMismatch, encode_extras,
                        pes_path, shard_log_path)
from symmon.io.log import read_log

IPI = shutil.which("i-pi")
assert IPI is not None, "i-PI's `i-pi` command is missing: install symmon's dependencies (ipi)"
STEPS = 6
SCALAR_KEYS = [k for k in EXTRAS_KEYS if k != "forces_eps_per_atom"]
N_ATOMS = 4


def _template():
    import ase.build

    atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=1)
    return atoms


def _write_structure(folder: Path) -> Path:
    import ase.io

    path = folder / "init.xyz"
    ase.io.write(path, _template())
    return path


def _forcefield_socket(address: str, timeout: float = 30.0) -> str:
    # crash-safe settings: see docs/ipi.md
    return f"""<ffsocket name='symmon' mode='unix'>
    <address> {address} </address>
    <timeout> {timeout} </timeout>
    <exit_on_disconnect> true </exit_on_disconnect>
    <consolidate_messages> false </consolidate_messages>
  </ffsocket>"""


def _forcefield_direct(log: str) -> str:
    return f"""<ffdirect name='symmon'>
    <pes> custom </pes>
    <pes_path> {pes_path()} </pes_path>
    <parameters> {{template: init.xyz, model: emt, log: {log}, flush_every: 1, every: 1}} </parameters>
  </ffdirect>"""


def _write_input(folder: Path, forcefield: str, steps: int, nbeads: int = 1) -> Path:
    extra_type = ",".join(EXTRAS_KEYS)
    text = f"""<simulation verbosity='medium'>
  <output prefix='sim'>
    <properties stride='1' filename='out'> [ step, time{{picosecond}}, temperature{{kelvin}}, potential{{electronvolt}} ] </properties>
    <trajectory filename='extras' stride='1' extra_type='{extra_type}'> extras </trajectory>
  </output>
  <total_steps> {steps} </total_steps>
  <prng><seed> 31415 </seed></prng>
  {forcefield}
  <system>
    <initialize nbeads='{nbeads}'>
      <file mode='ase'> init.xyz </file>
      <velocities mode='thermal' units='kelvin'> 300 </velocities>
    </initialize>
    <forces><force forcefield='symmon'/></forces>
    <motion mode='dynamics'>
      <dynamics mode='nvt'>
        <timestep units='femtosecond'> 2 </timestep>
        <thermostat mode='langevin'><tau units='femtosecond'> 100 </tau></thermostat>
      </dynamics>
    </motion>
    <ensemble><temperature units='kelvin'> 300 </temperature></ensemble>
  </system>
</simulation>
"""
    path = folder / "input.xml"
    path.write_text(text)
    return path


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("PYTHONWARNINGS", None)
    return env


def _start_server(folder: Path):
    out = open(folder / "ipi.log", "w")
    return subprocess.Popen([IPI, "input.xml"], cwd=folder, stdout=out,
                            stderr=subprocess.STDOUT, env=_env())


def _start_client(folder: Path, address: str, *extra: str):
    out = open(folder / "client.log", "w")
    cmd = [sys.executable, "-m", "symmon.frontends.cli", "ipi", "--model", "emt", "--structure",
           "init.xyz", "--unix", address, "--log", "run.h5", "--flush-every", "1",
           "--every", "1",
           "--connect-wait", "60", *extra]
    return subprocess.Popen(cmd, cwd=folder, stdout=out, stderr=subprocess.STDOUT,
                            env=_env())


def _kill(*procs):
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass


def _cleanup_socket(address: str):
    try:
        os.unlink(f"/tmp/ipi_{address}")
    except FileNotFoundError:
        pass


def _properties(folder: Path) -> np.ndarray:
    """(step, time, temperature, potential) rows of i-PI's sim.out."""
    path = folder / "sim.out"
    if not path.exists():
        return np.zeros((0, 4))
    rows = [line.split() for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    return np.array([[float(x) for x in row] for row in rows if len(row) == 4]).reshape(-1, 4)


def _extras(folder: Path):
    """List of dicts from i-PI's extras trajectory (sim.extras_0)."""
    frames, lines = [], (folder / "sim.extras_0").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("#EXTRAS("):
            header = line[line.index("(") + 1: line.index(")")]
            assert header == ",".join(EXTRAS_KEYS)
            values = [float(x) for x in lines[i + 1].split()]
            assert len(values) == len(SCALAR_KEYS) + N_ATOMS
            frame = dict(zip(SCALAR_KEYS, values))
            frame["forces_eps_per_atom"] = values[len(SCALAR_KEYS):]
            frames.append(frame)
    return frames


def _wait(proc, seconds: float, what: str) -> int:
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} did not finish within {seconds} s")


# ---------------------------------------------------------------------------- in-process
def test_extras_fixed_keys_nan_when_not_monitored(tmp_path):
    from ase.calculators.emt import EMT

    atoms = _template()
    evaluator = MonitoredEvaluator(atoms, EMT(), log=str(tmp_path / "x.h5"), every=2,
                                   flush_every=1)
    try:
        results = [evaluator.evaluate(atoms.positions + 0.01 * k, atoms.cell.array)
                   for k in range(3)]
    finally:
        evaluator.close()
    for k, (_, forces, virial, extras) in enumerate(results):
        assert list(extras) == list(EXTRAS_KEYS)
        assert extras["symmon_step"] == k
        assert json.loads(encode_extras(extras)).keys() == extras.keys()
        assert forces.shape == (N_ATOMS, 3) and virial.shape == (3, 3)
        finite = np.isfinite(extras["forces_eps"])
        assert finite == (k % 2 == 0) == bool(extras["monitored"])
        assert len(extras["forces_eps_per_atom"]) == N_ATOMS
    with read_log(tmp_path / "x.h5") as log:
        assert log.observable("forces_eps")[0].tolist() == [0, 2]


def test_structure_checks():
    from ase.calculators.emt import EMT

    atoms = _template()
    evaluator = MonitoredEvaluator(atoms, EMT(), log=None)
    with pytest.raises(StructureMismatch, match="3 atoms but the template"):
        evaluator.evaluate(atoms.positions[:3], atoms.cell.array)
    # i-PI rotates non-standard cells: compared in fractional coordinates, no warning
    rotated = atoms.copy()
    rotated.rotate(30, "z", rotate_cell=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluator.evaluate(rotated.positions, rotated.cell.array)
    other = MonitoredEvaluator(atoms, EMT(), log=None)
    swapped = atoms.positions.copy()
    swapped[0] += [1.2, 0.0, 0.0]
    with pytest.warns(RuntimeWarning, match="atoms in i-PI's order"):
        other.evaluate(swapped, atoms.cell.array)


def test_shard_names():
    assert shard_log_path("run.h5", None) == "run.h5"
    assert shard_log_path("out/run.h5", 3) == os.path.join("out", "run.client-3.h5")
    assert shard_log_path("run", "a") == "run.client-a.h5"


# ---------------------------------------------------------------------------- real server
@pytest.fixture(scope="module")
def socket_run(tmp_path_factory):
    """A short NVT run served by ``symmon ipi`` (shared by the tests below)."""
    folder = tmp_path_factory.mktemp("ipi_socket")
    address = f"symmon-{uuid.uuid4().hex[:12]}"
    _write_structure(folder)
    _write_input(folder, _forcefield_socket(address), STEPS)
    server = client = None
    try:
        server = _start_server(folder)
        client = _start_client(folder, address)
        client_rc = _wait(client, 90, "symmon ipi")
        server_rc = _wait(server, 30, "i-PI")
    finally:
        _kill(client, server)
        _cleanup_socket(address)
    return folder, client_rc, server_rc


def test_socket_run(socket_run):
    folder, client_rc, server_rc = socket_run
    log_text = (folder / "client.log").read_text()
    assert client_rc == 0, log_text
    assert server_rc == 0, (folder / "ipi.log").read_text()[-3000:]
    props = _properties(folder)
    assert props[-1, 0] == STEPS  # i-PI reached the last step
    with read_log(folder / "run.h5") as log:
        step, _, energy = log.observable("energy")
        # one entry per force call: i-PI evaluates step 0 and then once per step
        assert step.tolist() == list(range(STEPS + 1))
        np.testing.assert_allclose(energy, props[:, 3], rtol=1e-6, atol=1e-9)
        assert log.observable("ipi_request_id")[2].tolist() == [0] * (STEPS + 1)
        forces_eps = log.observable("forces_eps")[2]
        assert log.metadata["ipi_route"] == "socket"
    frames = _extras(folder)
    assert len(frames) == STEPS + 1
    for k, frame in enumerate(frames):
        assert frame["symmon_step"] == k and frame["monitored"] == 1
        for key in SCALAR_KEYS:
            assert math.isfinite(frame[key]), (k, key)
        assert np.all(np.isfinite(frame["forces_eps_per_atom"]))
        # EMT is exactly equivariant: eps is rounding noise
        assert frame["forces_rel_eps"] < 1e-10
    np.testing.assert_allclose([f["forces_eps"] for f in frames], forces_eps,
                               rtol=1e-6, atol=1e-20)


def test_ffdirect_matches_socket(socket_run, tmp_path):
    socket_folder = socket_run[0]
    _write_structure(tmp_path)
    _write_input(tmp_path, _forcefield_direct("direct.h5"), STEPS)
    server = None
    try:
        server = _start_server(tmp_path)
        rc = _wait(server, 90, "i-PI with <ffdirect>")
    finally:
        _kill(server)
    assert rc == 0, (tmp_path / "ipi.log").read_text()[-3000:]
    direct, sock = _properties(tmp_path), _properties(socket_folder)
    assert direct.shape == sock.shape
    # same first-step potential energy (and the same trajectory: same seeds)
    assert direct[0, 3] == pytest.approx(sock[0, 3], rel=1e-7)
    np.testing.assert_allclose(direct[:, 3], sock[:, 3], rtol=1e-6, atol=1e-9)
    for a, b in zip(_extras(tmp_path), _extras(socket_folder)):
        for key in SCALAR_KEYS:
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-12), key
    with read_log(tmp_path / "direct.h5") as log, \
            read_log(socket_folder / "run.h5") as other:
        np.testing.assert_allclose(log.observable("forces")[2], other.observable("forces")[2],
                                   rtol=1e-9, atol=1e-12)
        assert log.observable("ipi_request_id")[2].tolist() == [-1] * (STEPS + 1)
        assert log.metadata["ipi_route"] == "pes"


def test_client_killed_server_exits(tmp_path):
    address = f"symmon-{uuid.uuid4().hex[:12]}"
    _write_structure(tmp_path)
    _write_input(tmp_path, _forcefield_socket(address, timeout=20), 100000)
    server = client = None
    try:
        server = _start_server(tmp_path)
        client = _start_client(tmp_path, address)
        deadline = time.monotonic() + 90
        while len(_properties(tmp_path)) < 5:
            assert client.poll() is None, (tmp_path / "client.log").read_text()
            assert time.monotonic() < deadline, "i-PI made no progress"
            time.sleep(0.2)
        done_before_kill = len(_properties(tmp_path))
        client.send_signal(signal.SIGKILL)
        client.wait(timeout=10)
        t0 = time.monotonic()
        _wait(server, 45, "i-PI after its client was killed")
        assert time.monotonic() - t0 < 45
    finally:
        _kill(client, server)
        _cleanup_socket(address)
    props = _properties(tmp_path)
    with read_log(tmp_path / "run.h5") as log:  # crashed SWMR file
        step, _, energy = log.observable("energy")
    n = len(step)
    assert step.tolist() == list(range(n))
    assert done_before_kill - 1 <= n <= len(props) + 1
    np.testing.assert_allclose(energy, props[:n, 3], rtol=1e-6, atol=1e-9)


def test_two_clients_serve_a_ring_polymer_and_shards_merge(tmp_path):
    """4 beads, 2 symmon clients with their own log shards; the reader merges them."""
    steps, nbeads = 3, 4
    address = f"symmon-{uuid.uuid4().hex[:12]}"
    _write_structure(tmp_path)
    _write_input(tmp_path, _forcefield_socket(address), steps, nbeads=nbeads)
    server = clients = None
    try:
        server = _start_server(tmp_path)
        clients = [_start_client(tmp_path, address, "--shard", name) for name in ("a", "b")]
        for client in clients:
            _wait(client, 120, "symmon ipi client")
        _wait(server, 60, "i-PI server")
    finally:
        _kill(server, *(clients or []))
        _cleanup_socket(address)
    assert _properties(tmp_path)[-1, 0] == steps
    shards = sorted(str(p) for p in tmp_path.glob("run.client-*.h5"))
    assert len(shards) == 2
    counts = []
    for shard in shards:
        with read_log(shard) as reader:
            counts.append(reader.count("forces_eps"))
    assert min(counts) > 0  # both clients did work
    with read_log(shards) as reader:
        assert reader.count("forces_eps") == sum(counts) == nbeads * (steps + 1)
        _, _, beads = reader.observable("ipi_request_id")
        assert sorted(set(beads.tolist())) == list(range(nbeads))
        assert np.all(np.isfinite(reader.observable("forces_rel_eps")[2]))
