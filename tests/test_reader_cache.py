"""The reader's cached step plans and memoised series (reading long logs): a live log
that grows between two reads of one reader is seen whole after refresh(), chunked and
merged reads equal whole reads, and the report's numbers do not depend on what the
reader has already read."""

import h5py
import numpy as np

import _log_writer_child as child
from test_log import expected, kill9, start_child, wait_for, write_log

from benchmarks.long_log import build_log
from symmon.frontends.export import worst_steps
from symmon.frontends.report.series import quantity_series, read
from symmon.frontends.report.summary import summarize_reader
from symmon.io.log import read_log


def test_growing_log_is_seen_after_refresh_by_the_same_reader(tmp_path):
    path = tmp_path / "live.h5"
    proc = start_child(path, 1000, "10,10", "close")
    try:
        wait_for(proc, "flushed 10")
        with read_log(path) as r:
            assert r.observable("energy_eps")[0].tolist() == list(range(10))
            assert len(read(r, "energy_eps")[0]) == 10          # memoised whole read
            proc.stdin.write("\n")
            proc.stdin.flush()
            wait_for(proc, "flushed 20")
            r.refresh()
            steps, _, eps = r.observable("energy_eps")
            assert steps.tolist() == list(range(20))
            np.testing.assert_allclose(eps, expected("energy_eps", range(20)))
            assert read(r, "energy_eps")[0].tolist() == list(range(20))
            assert r.count("forces_spectrum") == 4 and r.frames().step.tolist() == list(range(20))
            tail = r.observable("forces_eps_per_atom", start=15)[2]
            np.testing.assert_allclose(tail, expected("forces_eps_per_atom", range(15, 20)))
        wait_for(proc, "closed")
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            kill9(proc)


def test_chunked_reads_of_merged_shards_equal_the_whole_read(tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    write_log(a, range(0, 40, 2))
    write_log(b, range(1, 40, 2))
    with read_log([a, b]) as r:
        whole = r.observable("forces_eps_per_atom")
        chunks = [r.observable("forces_eps_per_atom", start, start + 7) for start in range(0, 40, 7)]
        for part, full in zip(zip(*chunks), whole):
            np.testing.assert_array_equal(np.concatenate(part), full)
        assert whole[0].tolist() == list(range(40))
        np.testing.assert_allclose(whole[2], expected("forces_eps_per_atom", range(40)))
        strided = r.observable("forces_spectrum", stride=3)[0]
        assert strided.tolist() == list(range(0, 40, child.SPECTRUM_EVERY))[::3]


def test_report_numbers_do_not_depend_on_what_the_reader_read_before(tmp_path):
    path = str(tmp_path / "long.h5")
    build_log(path, 600, 32, full_every=50)
    with read_log(path) as cold:
        first = summarize_reader(cold).to_json()
    with read_log(path) as warm:
        for q in ("energy", "forces", "stress"):
            quantity_series(warm, q)
        warm.observable("forces_eps_per_atom", 100, 300)
        assert summarize_reader(warm).to_json() == first
        ranked = worst_steps(warm, None)
    with h5py.File(path, "r") as f:  # ranking straight from the file
        per_atom = f["observables/forces_eps_per_atom/value"][()]
        steps = f["observables/forces_eps_per_atom/step"][()]
    rms = np.sqrt(np.mean(per_atom ** 2, axis=1))
    assert [w.step for w in ranked] == steps[np.argsort(-rms, kind="stable")].tolist()
    np.testing.assert_allclose([w.eps for w in ranked], np.sort(rms)[::-1], rtol=1e-12)
    assert first["worst_steps"][0]["step"] == ranked[0].step
