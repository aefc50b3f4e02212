"""The offline analyses under torchrun: 2 gloo ranks on CPU equal one process; a killed
launch resumes from what was written."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from ports import free_port

pytestmark = pytest.mark.slow  # real components (trained models, ranks)

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = ROOT / "symmon" / "data" / "tiny_pet.pt"
STRUCTURES = ROOT / "symmon" / "data" / "tiny_structures.xyz"
EVAL = ["eval", str(MODEL), str(STRUCTURES), "--degree", "2", "--index", ":5",
        "--energy-key", "emt_energy", "--forces-key", "emt_forces", "--stress-key",
        "emt_stress", "--format", "json", "--no-progress"]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(ROOT)] + sys.path))


def _torchrun(n_ranks, args):
    port = free_port()
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n_ranks),
            "--master-port", str(port), "-m", "symmon.frontends.cli", *args]


def _run(command, cwd):
    result = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    folder = tmp_path_factory.mktemp("one")
    _run([sys.executable, "-m", "symmon.frontends.cli", *EVAL, "-o", "one.json"], folder)
    return json.loads((folder / "one.json").read_text())


def _same_results(a, b):
    assert a["n_structures"] == b["n_structures"] == 5
    for quantity, entry in a["quantities"].items():
        for key, value in entry.items():
            if isinstance(value, float):
                np.testing.assert_allclose(b["quantities"][quantity][key], value,
                                           rtol=1e-12, atol=0, err_msg=f"{quantity} {key}")
    assert [s["index"] for s in b["structures"]] == list(range(5))
    for x, y in zip(a["structures"], b["structures"]):
        for quantity in ("energy", "forces"):
            np.testing.assert_allclose(y[quantity]["eps"], x[quantity]["eps"], rtol=1e-12)


def test_eval_two_ranks_equal_one_process(tmp_path, one_process):
    _run(_torchrun(2, EVAL + ["-o", "two.json"]), tmp_path)
    _same_results(one_process, json.loads((tmp_path / "two.json").read_text()))
    assert not (tmp_path / "two.json.parts").exists()


def test_eval_killed_launch_resumes(tmp_path, one_process):
    launch = subprocess.Popen(_torchrun(2, EVAL + ["-o", "k.json"]), cwd=tmp_path,
                              env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    parts = tmp_path / "k.json.parts"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(parts.glob("item-*.pkl"))) < 1:
        time.sleep(0.05)
    os.killpg(launch.pid, signal.SIGKILL)
    launch.wait()
    finished = len(list(parts.glob("item-*.pkl")))
    assert 1 <= finished and not (tmp_path / "k.json").exists()
    _run(_torchrun(2, EVAL + ["-o", "k.json"]), tmp_path)
    _same_results(one_process, json.loads((tmp_path / "k.json").read_text()))


def test_purify_two_ranks_equal_one_process(tmp_path):
    """symmon purify's sweep under torchrun: the same readout as one process."""
    from symmon.io.readout import Readout

    args = ["purify", str(MODEL), str(STRUCTURES), "--target", "non_conservative_forces",
            "--degree", "2", "--holdout", "0.25", "--lambda", "0", "--lambda", "1000",
            "--max-rmse-increase", "100"]
    _run([sys.executable, "-m", "symmon.frontends.cli", *args, "-o", "one.h5"], tmp_path)
    _run(_torchrun(2, args + ["-o", "two.h5"]), tmp_path)
    one, two = Readout.load(tmp_path / "one.h5"), Readout.load(tmp_path / "two.h5")
    assert one.lam == two.lam
    np.testing.assert_allclose(two.matrix, one.matrix, rtol=1e-12, atol=1e-15)
    assert np.abs(one.matrix).max() > 0  # a real correction was fitted
    assert not (tmp_path / "two.h5.parts").exists()
