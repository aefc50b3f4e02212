"""Cost of the orbit evaluation vs atoms and vs O(3) elements, and where a monitored step goes.

1. ``MetatomicOrbitModel.evaluate`` (energy + non-conservative forces + stress, tiny PET
   float32, chunk 64) on 8 elements for 32/108/256 atoms, next to one plain
   ``MetatomicCalculator`` call (the unmonitored MD cost);
2. the same on 32 atoms for 1, 2, 8, 32, 128, 684 elements (684 = degree-8 quadrature);
3. the parts of a monitored step, timed separately by calling the monitor's pieces
   directly (base calculator, grid construction, orbit evaluation = copies + forward,
   metrics = eps (+ spectra on full steps), log write) for a default random step
   (4 rotations = 8 elements) and a full step (684 elements, spectra to l=4).

All variants of a table are measured interleaved; medians over ``--repeats``.

    python -m benchmarks.scaling [--quick] [--repeats 3]
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings

import numpy as np

from . import _common as C

NAMES = ["energy", "non_conservative_forces", "non_conservative_stress"]


def matrices_for(k: int, seed: int = 0) -> np.ndarray:
    import symmon

    if k == 684:
        return symmon.quadrature_grid(8).matrices
    if k == 1:
        return symmon.random_grid(1, seed).rotations
    return symmon.random_grid(k // 2, seed).matrices


def base_call(calc, atoms):
    atoms = atoms.copy()

    def call():
        atoms.positions[0, 0] += 1e-6  # a new configuration every time
        calc.calculate(atoms, ["energy", "forces"], ["positions"])
    return call


def step_parts(monitor, atoms, full, repeats):
    """Median seconds of each part of a monitored step (the monitor's pieces called
    directly: symmon.monitoring source, schedule, diagnose, policy, recorder)."""
    from symmon.monitoring.diagnose import diagnose
    from symmon.monitoring.recorder import StepRecord

    m = monitor.monitor  # the plain Monitor behind the ASE calculator
    quantities = m.source.quantities(atoms)
    parts = {"base calculator": [], "grid": [], "orbit (copies + forward)": [],
             "metrics": [], "log write": []}
    every = m.schedule.full_every if full else m.schedule.every
    for k in range(repeats + 1):
        step = k * every
        atoms.positions[0, 0] += 1e-6
        t0 = time.perf_counter()
        base = m.source.predictions(atoms, quantities)
        t1 = time.perf_counter()
        plan = m.schedule.plan(step, averaging=False)
        t2 = time.perf_counter()
        orbit = m.source.orbit(atoms, plan.grid.matrices, quantities)
        t3 = time.perf_counter()
        values = diagnose(orbit, plan, len(atoms), m.options.l_max)
        values.update(m.policy.judge(values, quantities).values(), **base)
        t4 = time.perf_counter()
        record = StepRecord(step, 0.002 * step, atoms.get_positions(), atoms.cell.array,
                            True, values)
        m.recorder.write(record, atoms, lambda: m.observable_specs(atoms), m.metadata)
        t5 = time.perf_counter()
        if k == 0:
            continue  # warm-up (writer creation, TorchScript)
        for name, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            parts[name].append(dt)
    # means, so that the periodic log flush (every flush_every steps) is amortised
    return {name: float(np.mean(v)) for name, v in parts.items()}, len(plan.grid)


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--chunk", type=int, default=64)
    args = p.parse_args(argv)
    C.setup_torch(args.threads)
    warnings.filterwarnings("ignore")
    from metatomic_ase import MetatomicCalculator

    from symmon import SymmetryMonitor
    from symmon.adapters.metatomic import MetatomicOrbitModel

    print(C.machine_info(args.device))
    path = C.model_path("tiny_pet_f32.pt")
    repeats = args.repeats or (1 if args.quick else 2)
    print(f"model {path}; chunk {args.chunk}; repeats {repeats} (+1 warm-up)\n")
    orbit_model = MetatomicOrbitModel(path, device=args.device, chunk_size=args.chunk)
    calc = MetatomicCalculator(path, non_conservative=True, neighbor_skin=0.0,
                               device=args.device)

    # 1. vs number of atoms
    sizes = [32, 108] if args.quick else [32, 108, 256]
    variants = {}
    for n in sizes:
        atoms = C.cell_with(n)
        m8 = matrices_for(8)
        variants[(n, "base")] = base_call(calc, atoms)
        variants[(n, "orbit8")] = (lambda a=atoms, m=m8:
                                   orbit_model.evaluate(a, m, NAMES))
    times = C.interleaved(variants, repeats, args.device)
    rows = []
    for n in sizes:
        base = C.median(times[(n, "base")])
        orbit = C.median(times[(n, "orbit8")])
        rows.append([n, 1000 * base, 1000 * orbit, 1000 * orbit / 8, orbit / base,
                     1000 * orbit / 8 / n])
    print("## Orbit evaluation (8 elements) vs number of atoms\n")
    print(C.table(["atoms", "base call ms", "orbit(8) ms", "ms / copy",
                   "orbit(8) / base call", "ms / copy / atom"], rows))

    # 2. vs number of elements
    ks = [1, 2, 8, 32] if args.quick else [1, 2, 8, 32, 128, 684]
    atoms = C.cell_with(32)
    variants = {k: (lambda m=matrices_for(k): orbit_model.evaluate(atoms, m, NAMES))
                for k in ks}
    variants["base"] = base_call(calc, atoms)
    times = C.interleaved(variants, repeats, args.device)
    base = C.median(times["base"])
    rows = [[k, 1000 * C.median(times[k]), 1000 * C.median(times[k]) / k,
             C.median(times[k]) / base] for k in ks]
    print(f"\n## Orbit evaluation vs number of O(3) elements (32 atoms; base call "
          f"{1000 * base:.3g} ms)\n")
    print(C.table(["elements", "ms / call", "ms / element", "x base call"], rows))

    # 2b. copies per forward call (the chunk size), 128 elements
    chunks = [8, 32, 128]
    models = {c: MetatomicOrbitModel(path, device=args.device, chunk_size=c) for c in chunks}
    m128 = matrices_for(128)
    times = C.interleaved({c: (lambda m=models[c]: m.evaluate(atoms, m128, NAMES))
                           for c in chunks}, repeats, args.device)
    ref = C.median(times[args.chunk]) if args.chunk in times else C.median(times[chunks[-1]])
    rows = [[c, 1000 * C.median(times[c]), 1000 * C.median(times[c]) / 128,
             C.median(times[c]) / ref] for c in chunks]
    print("\n## Chunk size (copies per forward call), 128 elements, 32 atoms\n")
    print(C.table(["chunk", "ms / call", "ms / element", "x chunk 128"], rows))

    # 3. parts of a monitored step
    print("\n## Parts of a monitored step (32 atoms; monitor pieces called directly; "
          "mean ms, log flush every 10 steps amortised)\n")
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for label, full, n_rep in (("random (4 rotations)", False, 10 if args.quick else 30),
                                   ("full (degree 8)", True, 1 if args.quick else 2)):
            monitor = SymmetryMonitor(calc, log=os.path.join(workdir, f"{full}.h5"),
                                      chunk_size=args.chunk, full_every=1 if full else 0,
                                      device=args.device)
            parts, k = step_parts(monitor, C.cell_with(32), full, n_rep)
            monitor.close()
            model_time = parts["orbit (copies + forward)"]
            total = sum(parts.values())
            for name, t in parts.items():
                rows.append([label, k, name, 1000 * t, 100 * t / total,
                             100 * t / model_time])
            overhead = parts["metrics"] + parts["log write"]
            rows.append([label, k, "metrics + log", 1000 * overhead, 100 * overhead / total,
                         100 * overhead / model_time])
    print(C.table(["step", "elements", "part", "ms", "% of step", "% of orbit time"],
                  rows))
    print("\ntarget: metrics + log <= 5 % of the orbit (model) time")


if __name__ == "__main__":
    main()
