"""Large systems: plain step, one K-copy call and the monitor at 10^3-10^5 atoms, with memory.

For each size (a rattled fcc Cu/Ni cell of exactly that many atoms) and each variant:

* ``plain``: one ``MetatomicCalculator.calculate`` (energy, direct forces and stress);
* ``K=7 call``: one orbit call of the 7 copies a monitored step evaluates (1 + 2 x 3
  rotations), ``MetatomicOrbitModel.evaluate`` with the planned chunks
  (:mod:`symmon.adapters.memory`; one forward call where they fit);
* ``every step``: ``SymmetryMonitor(every=1)`` (3 rotations; its first step, a
  calibration step of ``--calibration-rotations`` pairs, is a warm-up step);
* ``default``: ``SymmetryMonitor()`` (``every="auto"``, 5 % overhead budget), the mean
  over the measured steps, and how many of them were monitored;
* ``plain (last)``: the plain step again, in a process started after the others (the
  drift of the machine over the run: clocks, temperature);
* after the monitored variants, ``plain`` calls of their own base calculator in the
  same process (``plain after``): does the monitor leave memory behind that slows the
  user's calls?

**Each (size, variant) runs in its own Python process**, one after the other, so that
no variant's allocator state or warm caches can slow or speed another. Per step the
atoms move by 1e-3 A (normal noise); ``--warmup`` steps are not timed; ms per step are
medians (the default monitor: means); the peak is ``torch.cuda.max_memory_allocated``
over the timed steps (reset after the warm-up), "chunk" the copies per forward call
the planner chose for the last step, "largest chunk" the largest over the timed steps
(the monitors' calibration steps evaluate 65 copies) and "one chunk" the memory it
measured for the largest.

    python -m benchmarks.large_systems --device cuda --big --sizes 1000 10000 100000
    python -m benchmarks.large_systems --sizes 32 108 --steps 6     # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

from . import _common as C

PROPERTIES = ["energy", "forces", "stress"]
VARIANTS = ("plain", "K=7 call", "every step", "default", "plain (last)")
K = 7
MARK = "RESULT "


def cell_of(n_atoms: int, seed: int = 0):
    """A rattled Cu/Ni fcc cell of exactly ``n_atoms`` (a multiple of 4: repeats of the
    4-atom cubic cell as close to a cube as the factors allow)."""
    cells, best = n_atoms // 4, None
    if n_atoms % 4:
        raise ValueError(f"--sizes must be multiples of 4 (fcc cubic cells), got {n_atoms}")
    for a in range(1, cells + 1):
        for b in range(a, cells // a + 1):
            if cells % (a * b) == 0 and cells // (a * b) >= b:
                c = cells // (a * b)
                if best is None or c / a < best[2] / best[0]:
                    best = (a, b, c)
    return C.cu_ni_cell(best, seed=seed)


def steps_for(n_atoms: int, requested) -> int:
    """Timed steps: ``--steps`` or about 3e5 atom-steps (4 to 300)."""
    return requested or int(min(300, max(4, 3e5 // n_atoms)))


def _peak(device):
    import torch

    if device != "cuda":
        return float("nan")
    return torch.cuda.max_memory_allocated() / 2 ** 30


def _reset(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def child(args) -> dict:
    """One variant at one size, in this process; returns its row."""
    import torch
    from metatomic_ase import MetatomicCalculator

    from symmon.adapters.metatomic import MetatomicOrbitModel
    from symmon.core.grids import random_grid

    C.setup_torch(args.threads)
    warnings.filterwarnings("ignore")
    model = C.timing_model(args.big)
    atoms = cell_of(args.size)
    rng = np.random.default_rng(0)
    args.variant = args.child
    steps = steps_for(args.size, args.steps)
    if args.variant != "default":
        steps = min(steps, 20)
    row = {"atoms": len(atoms), "variant": args.variant, "steps": steps}

    def base():
        return MetatomicCalculator(model, non_conservative=True, neighbor_skin=0.0,
                                   device=args.device)

    planner, monitor = None, None
    if args.variant.startswith("plain"):
        calculator = base()

        def step():
            calculator.calculate(atoms, PROPERTIES, ["positions"])
    elif args.variant == "K=7 call":
        orbit = MetatomicOrbitModel(base(), device=args.device, chunk_size=args.chunk)
        planner = orbit.planner
        matrices = random_grid(K // 2 + 1, 0).matrices[:K]
        names = ["energy", "non_conservative_forces", "non_conservative_stress"]

        def step():
            orbit.evaluate(atoms, matrices, names, checked=True)
    else:
        from symmon import SymmetryMonitor

        options = {"every": 1} if args.variant == "every step" else {}
        log = os.path.join(args.workdir, f"{args.variant.replace(' ', '_')}_{args.size}.h5")
        monitor = SymmetryMonitor(base(), log=log, log_mode="overwrite", device=args.device,
                                  chunk_size=args.chunk,
                                  calibration_rotations=args.calibration_rotations,
                                  **options)
        planner = monitor.monitor.source.orbit_model.planner
        calculator = monitor

        def step():
            calculator.calculate(atoms, PROPERTIES, ["positions"])

    def timed(fn, n):
        times, monitored = [], 0
        for _ in range(n):
            atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)
            C.sync(args.device)
            start = time.perf_counter()
            fn()
            C.sync(args.device)
            times.append(1000 * (time.perf_counter() - start))
            if monitor is not None:
                monitored += int(np.isfinite(monitor.results.get("energy_eps_per_atom",
                                                                 np.nan)))
        return times, monitored

    start = time.perf_counter()
    timed(step, args.warmup)
    row["warm-up s"] = time.perf_counter() - start
    _reset(args.device)
    if planner is not None:
        planner.largest = 0
    times, monitored = timed(step, steps)
    row["peak GiB"] = _peak(args.device)
    row["ms"] = float(np.mean(times)) if args.variant == "default" else C.median(times)
    row["min ms"] = min(times)
    if monitor is not None:
        row["monitored"] = monitored
        row["not monitored (memory)"] = monitor.monitor.n_not_monitored
        user = monitor.base  # the user's own calculator, after the monitor's calls

        def plain_after():
            user.calculate(atoms, PROPERTIES, ["positions"])
        row["plain after ms"] = C.median(timed(plain_after, min(steps, 10))[0])
        monitor.close()
    if planner is not None:
        per_copy = planner.per_copy.get(len(atoms))
        row["chunk"] = planner.last_chunk
        row["largest chunk"] = planner.largest  # calibration steps: more copies
        row["one chunk GiB"] = (per_copy * planner.largest / 2 ** 30
                                if per_copy and planner.largest else float("nan"))
        row["retries"] = planner.retries
    if args.device == "cuda":
        row["reserved GiB"] = torch.cuda.memory_reserved() / 2 ** 30
    return row


def run_child(args, size, variant, workdir) -> dict:
    command = [sys.executable, "-m", "benchmarks.large_systems", "--child", variant,
               "--size", str(size), "--device", args.device, "--threads", str(args.threads),
               "--warmup", str(args.warmup), "--workdir", workdir,
               "--calibration-rotations", str(args.calibration_rotations)]
    for flag, value in (("--steps", args.steps), ("--chunk", args.chunk)):
        if value:
            command += [flag, str(value)]
    if args.big:
        command.append("--big")
    done = subprocess.run(command, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return {"atoms": size, "variant": variant, "error": " | ".join(tail)}


def derived(rows):
    """Ratios: every step / K=7 call, default / plain, peaks / (plain + one chunk)."""
    by = {(r["atoms"], r["variant"]): r for r in rows}
    for row in rows:
        plain = by.get((row["atoms"], "plain"), {})
        k7 = by.get((row["atoms"], "K=7 call"), {})
        if "ms" not in row or "ms" not in plain:
            continue
        row["x plain"] = row["ms"] / plain["ms"]
        if row["variant"] == "every step" and "ms" in k7:
            row["x K=7 call"] = row["ms"] / k7["ms"]
        if "one chunk GiB" in row and "peak GiB" in plain:
            row["peak / (plain + chunk)"] = row["peak GiB"] / (plain["peak GiB"] +
                                                               row["one chunk GiB"])
        if "plain after ms" in row:
            row["plain after / plain"] = row["plain after ms"] / plain["ms"]
    return rows


COLUMNS = ["atoms", "variant", "steps", "ms", "x plain", "x K=7 call", "peak GiB", "chunk",
           "largest chunk", "one chunk GiB", "peak / (plain + chunk)", "monitored", "plain after / plain",
           "retries"]


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--big", action="store_true", help="PET-MAD-sized random-weight PET")
    p.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000])
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps of the default monitor (others: at most 20; default "
                   "about 3e5 atom-steps, 4 to 300)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--chunk", type=int, default=None, help="explicit chunk_size")
    p.add_argument("--calibration-rotations", type=int, default=32,
                   help="pairs of the monitors' calibration steps")
    p.add_argument("--out", default=None, help="write the table to OUT (.md and .json)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(MARK + json.dumps(child(args)), flush=True)
        return
    info = C.machine_info(args.device)
    print(info, flush=True)
    if args.big:  # built once, before the children need it
        C.timing_model(True)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for size in args.sizes:
            for variant in args.variants:
                row = run_child(args, size, variant, workdir)
                rows.append(row)
                print(json.dumps(row), flush=True)
    derived(rows)
    header = (f"model {'big PET (PET-MAD-sized, random weights)' if args.big else 'tiny PET f32'}"
              f", direct forces/stress, device {args.device}; each (size, variant) in its "
              f"own process; chunk {args.chunk or 'planned'}; calibration step of "
              f"{args.calibration_rotations} pairs every 10th monitored step; "
              f"PYTORCH_CUDA_ALLOC_CONF={os.environ.get('PYTORCH_CUDA_ALLOC_CONF', '(unset)')}")
    text = header + "\n\n" + C.table(COLUMNS, [[row.get(c, "") for c in COLUMNS]
                                               for row in rows])
    errors = [f"{r['atoms']} {r['variant']}: {r['error']}" for r in rows if "error" in r]
    if errors:
        text += "\n\nfailed:\n" + "\n".join(errors)
    print("\n" + text)
    if args.out:
        stem = os.path.splitext(args.out)[0]
        with open(stem + ".md", "w") as f:
            f.write(text + "\n\n" + "\n".join("    " + line for line in info.splitlines())
                    + "\n")
        with open(stem + ".json", "w") as f:
            json.dump({"machine": info, "rows": rows}, f, indent=1)
        print(f"wrote {stem}.md and {stem}.json")


if __name__ == "__main__":
    main()
