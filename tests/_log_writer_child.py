"""Subprocess writer for the crash / live-read / fault tests of symmon.io.log.

Usage: python _log_writer_child.py PATH FLUSH_EVERY BATCHES END
       python _log_writer_child.py PATH FLUSH_EVERY --stream [FSIZE_LIMIT_BYTES]
       python _log_writer_child.py PATH FLUSH_EVERY --slow-create

BATCHES: comma-separated step counts, e.g. "10,~5".  After a plain batch the
child calls flush() and prints "flushed <total>"; after a "~" batch it only
prints "wrote <total>" (data stays in the writer's buffer unless the
flush_every cadence flushed it).  Between batches it waits for a stdin line.
END: "close" closes cleanly and prints "closed"; "hang" prints "hanging" and
sleeps (to be killed or signalled: the writer handles SIGTERM/SIGHUP/SIGINT).
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


def stream(path, flush_every, fsize_limit=None):
    """Print "ready", then log steps without end, flushing every FLUSH_EVERY steps and
    printing "flushed <n>" after each flush.  With FSIZE_LIMIT_BYTES (RLIMIT_FSIZE: the
    file system is "full" there) it stops at the first write error, prints it and
    "safe <n>", and exits normally (the test checks for a clean exit: no crash)."""
    from symmon.io.log import LogWriteError, LogWriter

    if fsize_limit is not None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (int(fsize_limit), int(fsize_limit)))
    print("ready", flush=True)
    log = None
    try:
        log = LogWriter(path, specs(), SPECIES, metadata={"seed": 7}, flush_every=10**9)
        step = 0
        while True:
            write_step(log, step)
            step += 1
            if step % int(flush_every) == 0:
                log.flush()
                print(f"flushed {step}", flush=True)
    except (LogWriteError, OSError) as e:
        print(f"error {e}", flush=True)
        print(f"safe {log.rows_on_disk if log is not None else 0}", flush=True)


def slow_create(path):
    """Print "creating" from inside LogWriter's creation (layout built, not yet in
    place), then hang: the test kills the child there."""
    import symmon.io.writer as writer
    from symmon.io.log import LogWriter

    original = writer.build_layout

    def build_then_hang(*args, **kwargs):
        original(*args, **kwargs)
        print("creating", flush=True)
        time.sleep(120)

    writer.build_layout = build_then_hang
    LogWriter(path, specs(), SPECIES)


def main(path, flush_every, batches, end):
    from symmon.io.log import LogWriter

    log = LogWriter(path, specs(), SPECIES, metadata={"seed": 7}, flush_every=int(flush_every),
                    handle_signals=True)
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
    if sys.argv[3] == "--stream":
        stream(sys.argv[1], sys.argv[2], *sys.argv[4:])
    elif sys.argv[3] == "--slow-create":
        slow_create(sys.argv[1])
    else:
        main(*sys.argv[1:])
