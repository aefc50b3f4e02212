"""The physical floor of a monitored step: plain step vs one batched call of K copies.

For each cell, measured interleaved in one process (round robin over ``--repeats``,
ms per calculation; medians, and minima, which on a shared machine are the closest to
the uncontended time and give the steadier ratios):

* the floor: one plain ``MetatomicCalculator`` calculation, and one batched orbit call
  (``MetatomicOrbitModel.evaluate``) of K = 1, 3, 7, 13, 65 copies;
* the monitor: an unmonitored step, a monitored step (every step, 3 rotations: 1 + 6
  copies), every 10th step (blocks of 10 steps), the default overhead budget
  (``every="auto"``, 5 %; blocks of :data:`AUTO_BLOCK` steps), a random-frame step, a
  purified monitored step (random readout, when the model has last-layer features),
  a calibration step (32 pairs, as the monitor's first random step and every 100th),
  each with its ratio to its floor (plain step, K=7, ``(9 plain + K7)/10``, plain,
  K=1, the monitored step, K=65), and the monitored step with its calibration
  steps' share amortised (``monitored + (calibration - monitored) / 100``, ratio to
  the same amortised floor, and in the JSON also to K=7);
* with ``--before PATH`` (a symmon package directory of another version, e.g. from
  ``git archive``), the same monitor variants of that version side by side.

Calculations are ``calculate(atoms, [energy, forces, stress], ["positions"])`` on both
sides (no ASE cache check on either); direct forces and stress (``non_conservative``)
unless ``--conservative``.

    python -m benchmarks.floor                                  # tiny PET, CPU
    python -m benchmarks.floor --device cuda --big --out benchmarks/results/floor_h200.md   # PET-MAD-sized
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
import time
import warnings

import numpy as np

from . import _common as C

COPIES = (1, 3, 7, 13, 65)  # 65: a calibration step (32 pairs + the unrotated copy)
#: calculations per timed block of the overhead budget (~2 of its strides on a CPU)
AUTO_BLOCK = 240
PROPERTIES = ["energy", "forces", "stress"]
#: monitor variant -> (SymmetryMonitor options, calculations per timed block, floor)
MONITOR_VARIANTS = {
    "unmonitored step": ({"every": 10 ** 9}, 1, "plain"),
    "monitored step (every 1, 3 rot)": ({"every": 1}, 1, "K=7"),
    "every 10, 3 rot": ({"every": 10}, 10, "plain + K=7 / 10"),
    "default (auto, 5 %)": ({}, AUTO_BLOCK, "plain"),
    "random frame step": ({"mode": "random_frame", "every": 10 ** 9}, 1, "K=1"),
    "purified monitored step (every 1)": ({"every": 1, "mode": "purified"}, 1,
                                          "monitored step (every 1, 3 rot)"),
    "calibration step (32 pairs)": ({"every": 1, "calibrate_every": 1}, 1, "K=65"),
}
#: the derived row: a monitored step with one calibration step per ``calibrate_every``
AMORTISED = "every 1, calibration amortised (1 in 100)"
CALIBRATE_EVERY = 100


def load_symmon(path: str, name: str = "symmon_before"):
    """Import the symmon package at ``path`` under another name (its relative imports
    resolve inside it)."""
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(path, "__init__.py"), submodule_search_locations=[path])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def random_readout(base, directory: str):
    """A readout file with a random correction of the direct forces (or None)."""
    from metatomic.torch import ModelOutput

    from symmon.frontends.purify import Readout

    outputs = base.model().capabilities().outputs
    feature = next((name for name in outputs if name.startswith("mtt::aux::non_conservative_force")
                    and name.endswith("_last_layer_features")), None)
    if feature is None:
        return None
    atoms = C.cell_with(32)
    values = base.run_model(atoms, {feature: ModelOutput(sample_kind="atom")})[feature]
    matrix = np.random.default_rng(0).normal(scale=1e-3,
                                             size=(3, values.block().values.shape[-1]))
    path = os.path.join(directory, "readout.h5")
    Readout("non_conservative_forces", feature, matrix, 1.0, False).save(path)
    return path


class Cell:
    """One structure and every calculator timed on it."""

    def __init__(self, model, n_atoms, args, workdir, readout, before):
        from metatomic_ase import MetatomicCalculator

        from symmon.adapters.metatomic import MetatomicOrbitModel
        from symmon.core.grids import random_grid

        self.atoms = C.cell_with(n_atoms)
        self.rng = np.random.default_rng(0)
        nc = not args.conservative

        def base():
            return MetatomicCalculator(model, non_conservative=nc, neighbor_skin=0.0,
                                       device=args.device)

        self.plain = base()
        orbit = MetatomicOrbitModel(self.plain, device=args.device, chunk_size=args.chunk)
        names = ["energy", "non_conservative_forces" if nc else "forces",
                 "non_conservative_stress" if nc else "stress"]
        matrices = random_grid(max(COPIES) // 2 + 1, 0).matrices
        self.variants = {"plain": (lambda: self.plain.calculate(self.atoms, PROPERTIES,
                                                                 ["positions"]), 1)}
        for k in COPIES:
            self.variants[f"K={k}"] = (
                lambda k=k: orbit.evaluate(self.atoms, matrices[:k], names), 1)
        self.monitors = []
        for label, package in (("", None), ("before: ", before)):
            if label and package is None:
                continue
            for name, (options, block, _) in MONITOR_VARIANTS.items():
                if options.get("mode") == "purified" and readout is None:
                    continue
                if label and (options.get("mode") == "random_frame" or not options
                              or "calibrate_every" in options):
                    continue  # not in older versions (their default is every 10)
                monitor = self._monitor(package, base(), options, readout, workdir,
                                        label + name, args)
                self.variants[label + name] = (
                    lambda m=monitor: m.calculate(self.atoms, PROPERTIES, ["positions"]),
                    block)

    def _monitor(self, package, base, options, readout, workdir, name, args):
        root = package.__name__ if package else "symmon"
        try:
            module = importlib.import_module(f"{root}.frontends.calculator")
        except ModuleNotFoundError:  # symmon 0.1's layout
            module = importlib.import_module(f"{root}.monitor")
        log = os.path.join(workdir, f"{abs(hash(name))}_{len(self.atoms)}.h5")
        extra = {"readout": readout} if options.get("mode") == "purified" else {}
        monitor = module.SymmetryMonitor(base, log=log, log_mode="overwrite",
                                         device=args.device, chunk_size=args.chunk,
                                         **options, **extra)
        self.monitors.append(monitor)
        return monitor

    def move(self):
        self.atoms.positions += self.rng.normal(scale=1e-3, size=self.atoms.positions.shape)

    def measure(self, repeats, device, warmup=2):
        """ms per calculation of every variant, round robin (a fresh position each call)."""
        times = {name: [] for name in self.variants}
        for repeat in range(warmup + repeats):
            for name, (calculate, block) in self.variants.items():
                C.sync(device)
                start = time.perf_counter()
                for _ in range(block):
                    self.move()
                    calculate()
                C.sync(device)
                if repeat >= warmup:
                    times[name].append(1000 * (time.perf_counter() - start) / block)
        for monitor in self.monitors:
            monitor.close()
        return times


def floor_of(name: str, typical) -> float:
    """The floor of a monitor variant, from the typical (median or min) times."""
    name = name[len("before: "):] if name.startswith("before: ") else name
    if name not in MONITOR_VARIANTS:
        return float("nan")
    floor = MONITOR_VARIANTS[name][2]
    if floor == "plain + K=7 / 10":
        return (9 * typical["plain"] + typical["K=7"]) / 10
    return typical.get(floor, float("nan"))


def rows_of(n_atoms, times):
    """Medians (the convention) and minima (the uncontended time on a shared machine)."""
    medians = {name: C.median(t) for name, t in times.items()}
    minima = {name: min(t) for name, t in times.items()}
    rows = []
    for name, t in times.items():
        floor = MONITOR_VARIANTS.get(name.replace("before: ", ""), (None, None, "-"))[2]
        rows.append({"atoms": n_atoms, "variant": name, "median ms": medians[name],
                     "min ms": minima[name], "x plain": medians[name] / medians["plain"],
                     "floor": floor,
                     "x floor (median)": medians[name] / floor_of(name, medians),
                     "x floor (min)": minima[name] / floor_of(name, minima)})
    monitored, calibration = "monitored step (every 1, 3 rot)", "calibration step (32 pairs)"
    if calibration in times:  # steady state plus the calibration steps' share
        amortised = {name: t[monitored] + (t[calibration] - t[monitored]) / CALIBRATE_EVERY
                     for name, t in (("median", medians), ("min", minima))}
        floors = {name: t["K=7"] + (t["K=65"] - t["K=7"]) / CALIBRATE_EVERY
                  for name, t in (("median", medians), ("min", minima))}
        rows.append({"atoms": n_atoms, "variant": AMORTISED, "median ms": amortised["median"],
                     "min ms": amortised["min"], "x plain": amortised["median"] / medians["plain"],
                     "floor": "K=7 + (K=65 - K=7) / 100",
                     "x floor (median)": amortised["median"] / floors["median"],
                     "x floor (min)": amortised["min"] / floors["min"],
                     "x K=7 (median)": amortised["median"] / medians["K=7"]})
    return rows


def write(out: str, text: str, rows, info: str) -> None:
    stem = out[:-5] if out.endswith(".json") else os.path.splitext(out)[0]
    with open(stem + ".md", "w") as f:
        f.write(text + "\n")
    with open(stem + ".json", "w") as f:
        json.dump({"machine": info, "rows": rows}, f, indent=1)
    print(f"wrote {stem}.md and {stem}.json")


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--big", action="store_true", help="PET-MAD-sized random-weight PET")
    p.add_argument("--sizes", type=int, nargs="*", default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--chunk", type=int, default=None, help="copies per forward call")
    p.add_argument("--conservative", action="store_true", help="gradient forces/stress")
    p.add_argument("--before", default=None, metavar="PATH",
                   help="symmon package directory of another version, timed side by side")
    p.add_argument("--out", default=None, help="write the table to OUT (.md and .json)")
    args = p.parse_args(argv)
    C.setup_torch(args.threads)
    warnings.filterwarnings("ignore")
    info = C.machine_info(args.device)
    print(info)
    model = C.timing_model(args.big)
    if args.big:
        sizes = args.sizes or ([64] if args.quick else [64, 256, 500])
    else:
        sizes = args.sizes or ([32] if args.quick else [32, 108])
    repeats = args.repeats or (2 if args.quick else 15)
    before = load_symmon(args.before) if args.before else None
    header = (f"model {os.path.basename(model)}, {'conservative' if args.conservative else 'direct'}"
              f" forces/stress, device {args.device}, {repeats} interleaved repeats, "
              f"medians; chunk {args.chunk or 'default'}")
    print(header + "\n")
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        from metatomic_ase import MetatomicCalculator

        readout = random_readout(MetatomicCalculator(model, device=args.device), workdir)
        for n_atoms in sizes:
            cell = Cell(model, n_atoms, args, workdir, readout, before)
            rows += rows_of(n_atoms, cell.measure(repeats, args.device))
    columns = ["atoms", "variant", "median ms", "min ms", "x plain", "floor",
               "x floor (median)", "x floor (min)"]
    text = header + "\n\n" + C.table(columns, [[row[c] for c in columns] for row in rows])
    print(text)
    if args.out:
        write(args.out, text + "\n\n" + "\n".join("    " + line for line in info.splitlines()),
              rows, info)


if __name__ == "__main__":
    main()
