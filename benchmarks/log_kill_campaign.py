"""Kill campaign for the log (docs/reliability.md): SIGKILL writers at random moments.

Usage: python benchmarks/log_kill_campaign.py N_KILLS FLUSH_EVERY MAX_DELAY_S [SEED]

Each child (tests/_log_writer_child.py --stream) creates a log and streams steps,
flushing every FLUSH_EVERY steps and printing each flush; it is killed a random
0..MAX_DELAY_S after it starts creating the log.  Prints how many paths held no
file, a valid empty log, a log with every flushed step, a log missing flushed
steps (LOST) or an unreadable one (ERROR ...).
"""

import collections
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from symmon.io.log import LogFormatError, read_log  # noqa: E402


def one_kill(path: pathlib.Path, flush_every: str, delay: float) -> str:
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "_log_writer_child.py"),
                             str(path), flush_every, "--stream"],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    flushed = max([int(w) for w in proc.stdout.read().split() if w.isdigit()], default=0)
    if not path.exists():
        return "no file" if flushed == 0 else "LOST"
    try:
        with read_log(path) as r:
            n = r.count("energy_eps")
            r.frames(), r.observable("forces_eps_per_atom"), r.observable("forces_spectrum")
    except LogFormatError as e:
        return f"ERROR {e}"
    return "LOST" if n < flushed else "empty log" if n == 0 else "log with every flushed step"


def main(n_kills: str, flush_every: str, max_delay: str, seed: str = "0") -> None:
    rng = random.Random(int(seed))
    outcomes = collections.Counter()
    with tempfile.TemporaryDirectory() as folder:
        for i in range(int(n_kills)):
            outcomes[one_kill(pathlib.Path(folder) / f"k{i}.h5", flush_every,
                              rng.uniform(0, float(max_delay)))] += 1
    print(dict(outcomes))


if __name__ == "__main__":
    main(*sys.argv[1:])
