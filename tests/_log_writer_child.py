"""Subprocess writer for the crash / live-read tests of symmon.io.log.

Usage: python _log_writer_child.py PATH FLUSH_EVERY BATCHES END

BATCHES: comma-separated step counts, e.g. "10,~5".  After a plain batch the
child calls flush() and prints "flushed <total>"; after a "~" batch it only
prints "wrote <total>" (data stays in the writer's buffer unless the
flush_every cadence flushed it).  Between batches it waits for a stdin line.
END: "close" closes cleanly and prints "closed"; "hang" prints "hanging" and
sleeps (to be killed).
"""

import sys
import time

import numpy as np

N_ATOMS = 4
SPECIES = np.array([8, 1, 1, 6])
SPECTRUM_EVERY = 5
LABELS = np.array([[l, s] for l in range(5) for s in (1, -1)])


def specs():
    from symmon.io.log import ObservableSpec

    return {
        "energy_eps": ObservableSpec(shape=(), unit="eV", description="energy error"),
        "forces_eps_per_atom": ObservableSpec(shape=(N_ATOMS,), unit="eV/angstrom"),
        "forces_spectrum": ObservableSpec(shape=(10,), unit="1", labels=LABELS),
    }


def data(step):
    """Deterministic test data of one MD step (the tests' expected values)."""
    return {
        "time": 0.0005 * step,
        "energy_eps": 0.25 * step - 1.0,
        "forces_eps_per_atom": step + np.arange(N_ATOMS) / 10.0,
        "forces_spectrum": np.full(10, float(step)) ** 0.5,
        "positions": step + np.arange(N_ATOMS * 3, dtype=float).reshape(N_ATOMS, 3),
        "cell": (10.0 + step) * np.eye(3),
    }


def write_step(log, step):
    d = data(step)
    log.append_frame(step, d["time"], d["positions"], d["cell"])
    log.append_many(step, d["time"], {k: d[k] for k in ("energy_eps", "forces_eps_per_atom")})
    if step % SPECTRUM_EVERY == 0:
        log.append("forces_spectrum", step, d["time"], d["forces_spectrum"])


def main(path, flush_every, batches, end):
    from symmon.io.log import LogWriter

    log = LogWriter(path, specs(), SPECIES, metadata={"seed": 7}, flush_every=int(flush_every))
    step = 0
    items = batches.split(",")
    for i, item in enumerate(items):
        for _ in range(int(item.lstrip("~"))):
            write_step(log, step)
            step += 1
        if item.startswith("~"):
            print(f"wrote {step}", flush=True)
        else:
            log.flush()
            print(f"flushed {step}", flush=True)
        if i < len(items) - 1:
            sys.stdin.readline()
    if end == "close":
        log.close()
        print("closed", flush=True)
    else:
        print("hanging", flush=True)
        time.sleep(120)


if __name__ == "__main__":
    main(*sys.argv[1:])
