"""Reading long logs: time ``symmon report`` (HTML) and ``symmon export`` on a log of
10^4-10^6 monitored steps, and their peak RSS.

The log is built without a model: the monitor's own :class:`~symmon.monitoring.recorder.Recorder`
writes :class:`~symmon.monitoring.recorder.StepRecord` s with the monitor's observable
declarations (:func:`~symmon.monitoring.schema.observable_specs`) and synthetic values
that pass the schema: log-normal ε (a slow drift, occasional spikes), per-atom ε, a full
orbit every ``--full-every`` steps (spectra, residual, contamination only there), positions
of a jittered fcc crystal.  Each command runs in a fresh child process (peak RSS: that
child's ``VmHWM``)::

    python benchmarks/long_log.py --steps 20000 100000 --atoms 64
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
QUANTITIES = ("energy", "forces", "stress")


def synthetic_values(specs, step: int, n_atoms: int, rng, full: bool) -> dict:
    """One monitored step's values for every declared observable (sparse ones only on
    full-orbit steps), shaped and typed as the specs say."""
    drift = 1.0 + 0.5 * np.sin(step / 5000.0)
    spike = 30.0 if rng.random() < 1e-3 else 1.0
    values = {}
    for name, spec in specs.items():
        if name.endswith(("_spectrum", "_residual", "_contamination", "_exact",
                          "_quadrature_error")) and not full:
            continue
        if name in ("mode_switch",) or name.startswith("frame_noise_"):
            continue
        if spec.dtype == "int64" or np.dtype(spec.dtype).kind == "i":
            values[name] = np.zeros(spec.shape, np.int64)
        elif name.endswith("_spectrum"):
            p = rng.random(spec.shape) * 1e-6
            p[0] = 1.0
            values[name] = p / p.sum()
        else:
            values[name] = drift * spike * 1e-4 * rng.lognormal(0.0, 0.5, spec.shape)
    # forces ε (eV/Å) is the RMS over atoms of the per-atom ε, as the monitor logs it
    values["forces_eps"] = np.sqrt(np.mean(values["forces_eps_per_atom"] ** 2))
    values["full_orbit"] = np.int64(full)
    values["n_elements"] = np.int64(120 if full else 8)
    values["eps_of_returned"] = np.int64(1)
    values["calls"] = np.int64(1)
    values["monitor_stride"] = np.int64(0 if step == 0 else 1)
    values["calibration_step"] = np.int64(-1)
    return values


def build_log(path: str, n_steps: int, n_atoms: int, full_every: int, seed: int = 0) -> float:
    """Write ``n_steps`` monitored steps through the monitor's Recorder; returns seconds."""
    from ase.build import bulk
    from tqdm import tqdm

    from symmon.monitoring.recorder import Recorder, StepRecord
    from symmon.monitoring.schema import observable_specs

    reps = round((n_atoms / 4) ** (1 / 3))
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(reps)
    atoms.numbers[::4] = 28  # Ni
    n_atoms = len(atoms)
    specs = observable_specs(QUANTITIES, n_atoms, True, l_max=4)
    metadata = {"mode": "monitor", "every": 1, "full_every": full_every, "seed": seed,
                "base_calculator": "synthetic (benchmarks/long_log.py)", "l_max": 4}
    rng = np.random.default_rng(seed)
    recorder = Recorder(path, "overwrite", flush_every=1000)
    t0 = time.perf_counter()
    for step in tqdm(range(n_steps), desc=f"writing {n_steps} steps", mininterval=2):
        positions = atoms.positions + 0.05 * rng.standard_normal((n_atoms, 3))
        record = StepRecord(step, step * 1e-3, positions, atoms.cell.array, True,
                            synthetic_values(specs, step, n_atoms, rng, step % full_every == 0))
        recorder.write(record, atoms, lambda: specs, lambda: metadata)
    recorder.close()
    return time.perf_counter() - t0


# Peak RSS: the child's VmHWM (its own image; Linux carries ru_maxrss over exec from the
# forking parent, which holds the log writer's memory)
CHILD = r"""
import sys, time
from symmon.frontends.cli import main
t0 = time.perf_counter()
code = main(sys.argv[1:])
dt = time.perf_counter() - t0
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(f"@@ {dt:.3f} {int(hwm) / 1024:.1f} {code}")
"""


def timed(args: list[str]) -> tuple[float, float]:
    """(wall seconds of ``symmon <args>`` inside a fresh process, its peak RSS in MiB)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True,
                          text=True, env=env)
    line = [l for l in proc.stdout.splitlines() if l.startswith("@@ ")]
    if proc.returncode or not line:
        raise RuntimeError(f"symmon {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    _, dt, rss, _ = line[-1].split()
    return float(dt), float(rss)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[20000, 100000])
    p.add_argument("--atoms", type=int, default=64)
    p.add_argument("--full-every", type=int, default=50)
    p.add_argument("--dir", default=None, help="where the logs go (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the logs and reports")
    p.add_argument("--reuse", action="store_true",
                   help="read logs already in --dir (long_<steps>.h5) instead of writing them")
    args = p.parse_args(argv)
    directory = args.dir or tempfile.mkdtemp(prefix="symmon_long_log_")
    os.makedirs(directory, exist_ok=True)
    rows = []
    for n in args.steps:
        log = os.path.join(directory, f"long_{n}.h5")
        reuse = args.reuse and os.path.exists(log)
        build_s = float("nan") if reuse else build_log(log, n, args.atoms, args.full_every)
        size_mb = os.path.getsize(log) / 2 ** 20
        commands = {
            "report (html)": ["report", log, "-o", log[:-3] + ".html"],
            "export --worst 10": ["export", log, "-o", log[:-3] + "_worst.extxyz",
                                  "--worst", "10"],
        }
        for what, cmd in commands.items():
            dt, rss = timed(cmd)
            rows.append((n, size_mb, build_s, what, dt, rss))
            print(f"{n} steps: {what}: {dt:.2f} s, peak RSS {rss:.0f} MiB", flush=True)
        if not args.keep:
            for f in os.listdir(directory):
                if f.startswith(f"long_{n}") and not (reuse and f.endswith(".h5")):
                    os.remove(os.path.join(directory, f))
    print(f"\n{'steps':>7} {'log MB':>7} {'write s':>8}  {'command':<18} {'wall s':>7} "
          f"{'peak RSS MiB':>12}")
    for n, size_mb, build_s, what, dt, rss in rows:
        print(f"{n:>7} {size_mb:>7.0f} {build_s:>8.1f}  {what:<18} {dt:>7.2f} {rss:>12.0f}")
    if args.keep:
        print(f"logs and reports in {directory}")


if __name__ == "__main__":
    main()
