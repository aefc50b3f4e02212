"""torchrun ranks (gloo on CPU): the split, the all-reduce and resuming a killed run."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from ports import free_port

CHILD = pathlib.Path(__file__).with_name("_ranks_child.py")


def _launch(tmp_path, n_ranks, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(CHILD.parents[1])] + sys.path))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
               str(n_ranks), "--master-port", str(free_port()), str(CHILD),
               str(tmp_path / "out.json"), *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def _expected():
    return {str(i): np.sin(np.arange(4) * (i + 1)).tolist() for i in range(11)}


@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path):
    result = _launch(tmp_path, 2)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["world_size"] == 2 and out["values"] == _expected()
    total = np.sum(list(_expected().values()), axis=0)
    np.testing.assert_allclose(out["total"], total, rtol=0, atol=1e-12)
    assert not (tmp_path / "out.json.parts").exists()


@pytest.mark.slow
def test_killed_rank_is_resumed(tmp_path):
    killed = _launch(tmp_path, 2, 2)  # rank 1 dies after 2 of its items
    assert killed.returncode != 0 and not (tmp_path / "out.json").exists()
    finished = len(list((tmp_path / "out.json.parts").glob("item-*.pkl")))
    assert 2 <= finished < 11
    resumed = _launch(tmp_path, 2)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["values"] == _expected()
    assert out["new"] == 11 - finished  # finished items were not redone


def test_evaluate_items_resumes_and_returns_every_item_in_key_order(tmp_path):
    from symmon.frontends.ranks import PartialResults, Ranks, evaluate_items

    evaluated = []

    def square(key):
        evaluated.append(key)
        return key * key

    assert evaluate_items(range(4), square, progress=False) == {0: 0, 1: 1, 2: 4, 3: 9}
    parts = PartialResults(tmp_path / "out.json", Ranks(), {"n": 5})
    parts.add(3, -1)  # finished by an earlier attempt: kept, not evaluated again
    evaluated.clear()
    resumed = PartialResults(tmp_path / "out.json", Ranks(), {"n": 5})
    values = evaluate_items(range(5), square, resumed, progress=False)
    assert evaluated == [0, 1, 2, 4]
    assert list(values.items()) == [(0, 0), (1, 1), (2, 4), (3, -1), (4, 16)]
