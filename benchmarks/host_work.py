"""Host work of a monitored step, part by part, with wall-clock timers (no profiler).

cProfile inflates Python-heavy parts several times over; here a handful of functions
are wrapped in ``perf_counter`` timers and a monitored step (every step, 3 rotations,
log written) is run ``--steps`` times. Reported per step: the model forward
(``AtomisticModel.forward``, synchronised on GPUs), building the System and the copies,
unpacking outputs, the metrics (``diagnose``), the verdict, the log (``Recorder.write``,
flushes included), and their sum as a fraction of the model time -- the issue's target
is metrics + log <= 3 % of the model time on CPU.

``--unmonitored``: the wrapper's own cost on unmonitored steps (``every=10**9``, log
written, attached to velocity Verlet): per step, the time inside
``SymmetryMonitor.calculate`` outside the base ``calculate``, plus the driver observer,
as a fraction of the median base calculation -- measured inside the same steps, so a
loaded machine slows both alike (a floor ratio of two separate runs cannot resolve 1 %
there).

With ``--before PATH`` (a symmon package directory, e.g. from ``git archive``) the same
for that version, interleaved.

    python -m benchmarks.host_work --atoms 32 --steps 40
    python -m benchmarks.host_work --unmonitored --before /tmp/before/symmon
"""

from __future__ import annotations

import importlib
import os
import tempfile
import time
import warnings
from collections import defaultdict

import numpy as np

from . import _common as C
from .floor import PROPERTIES, load_symmon

#: part -> (module, class or None, attribute) of the timed function
PARTS = {
    "orbit call (MetatomicOrbitModel.evaluate)": ("adapters.metatomic",
                                                  "MetatomicOrbitModel", "evaluate"),
    "system + neighbour list": ("adapters.orbit_systems", "OrbitSystems", "system"),
    "copies": ("adapters.orbit_systems", "OrbitSystems", "copies"),
    "unpack outputs": ("adapters.batched", "BatchedEvaluator", "unpack"),
    "metrics (diagnose)": ("monitoring.monitor", None, "diagnose"),
    "verdict (Policy.judge)": ("monitoring.policy", "Policy", "judge"),
    "log (Recorder.write)": ("monitoring.recorder", "Recorder", "write"),
    "source (ModelSource.evaluate)": ("monitoring.source", "ModelSource", "evaluate"),
    "plan (Schedule.plan)": ("monitoring.schedule", "Schedule", "plan"),
    "net force (net_signals)": ("monitoring.monitor", None, "net_signals"),
    "validate (Monitor._validate)": ("monitoring.monitor", "Monitor", "_validate"),
    "monitor (Monitor.calculate)": ("monitoring.monitor", "Monitor", "calculate"),
}


class Timers:
    """Accumulated seconds per part of one symmon package (functions patched in place)."""

    def __init__(self, root: str, device: str):
        self.seconds, self.device = defaultdict(float), device
        for part, (module_name, owner, attribute) in PARTS.items():
            try:  # parts an older version does not have are left out
                module = importlib.import_module(f"{root}.{module_name}")
                target = module if owner is None else getattr(module, owner)
                function = getattr(target, attribute)
            except (ImportError, AttributeError):
                continue
            setattr(target, attribute, self._timed(function, part))

    def _timed(self, function, part, sync=False):
        seconds, device = self.seconds, self.device

        def timed(*args, **kwargs):
            if sync:
                C.sync(device)
            start = time.perf_counter()
            result = function(*args, **kwargs)
            if sync:
                C.sync(device)
            seconds[part] += time.perf_counter() - start
            return result
        return timed

    def time_forward(self, calculator) -> None:
        """Time the monitor's batched forward calls (``AtomisticModel.forward``)."""
        evaluator = calculator.monitor.source.orbit_model.evaluator
        evaluator.run = self._timed(evaluator.run, "model forward", sync=True)


def monitor(root, model, device, log):
    from metatomic_ase import MetatomicCalculator

    frontend = importlib.import_module(f"{root}.frontends.calculator")
    base = MetatomicCalculator(model, non_conservative=True, neighbor_skin=0.0,
                               device=device)
    return frontend.SymmetryMonitor(base, log=log, every=1, device=device)


class UnmonitoredRun:
    """MD through a monitor that never monitors, with its parts timed per step."""

    def __init__(self, root, model, atoms, log, device):
        from ase import units
        from ase.md.verlet import VelocityVerlet
        from metatomic_ase import MetatomicCalculator

        frontend = importlib.import_module(f"{root}.frontends.calculator")
        base = MetatomicCalculator(model, non_conservative=True, neighbor_skin=0.0,
                                   device=device)
        self.base_s, self.inside_s, self.observer_s = [], [], []
        base.calculate = _recorded(base.calculate, self.base_s)
        self.monitor = frontend.SymmetryMonitor(base, log=log, every=10 ** 9, device=device)
        self.monitor.calculate = _recorded(self.monitor.calculate, self.inside_s)
        self.atoms = atoms.copy()
        self.atoms.calc = self.monitor
        self.dynamics = VelocityVerlet(self.atoms, 1 * units.fs)
        self.monitor.attach(self.dynamics)
        observer = self.dynamics.observers[-1]
        self.dynamics.observers[-1] = (_recorded(observer[0], self.observer_s),) + \
            tuple(observer[1:])

    def per_step(self):
        """(base ms, inside calculate outside base us, observer us): medians."""
        inside = np.array(self.inside_s) - np.array(self.base_s)
        return (1000 * C.median(self.base_s), 1e6 * C.median(inside),
                1e6 * C.median(self.observer_s))


def _recorded(function, seconds):
    def timed(*args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
        return result
    return timed


def unmonitored(roots, model, sizes, rounds, workdir, device):
    rows = []
    for n_atoms in sizes:
        atoms = C.cell_with(n_atoms)
        runs = {name: UnmonitoredRun(root, model, atoms, os.path.join(
            workdir, f"u{name}{n_atoms}.h5"), device) for name, root in roots.items()}
        for round_ in range(rounds + 1):
            for run in runs.values():
                if round_ == 1:  # the first round warms up
                    for times in (run.base_s, run.inside_s, run.observer_s):
                        times.clear()
                run.dynamics.run(20)
        for name, run in runs.items():
            base_ms, inside_us, observer_us = run.per_step()
            rows.append([n_atoms, name, base_ms, inside_us, observer_us,
                         0.1 * (inside_us + observer_us) / base_ms])
            run.monitor.close()
    print("\nunmonitored steps: the wrapper's own cost per step (medians)\n")
    print(C.table(["atoms", "version", "base calculate ms", "in calculate, outside base us",
                   "driver observer us", "wrapper % of base"], rows))


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--big", action="store_true")
    p.add_argument("--atoms", type=int, default=32)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--before", default=None, metavar="PATH")
    p.add_argument("--unmonitored", action="store_true")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--sizes", type=int, nargs="*", default=None, help="--unmonitored")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.rounds, args.sizes = 5, 1, args.sizes or [32]
    C.setup_torch(args.threads)
    warnings.filterwarnings("ignore")
    print(C.machine_info(args.device))
    model = C.timing_model(args.big)
    roots = {"now": "symmon"}
    if args.before:
        load_symmon(args.before)
        roots["before"] = "symmon_before"
    if args.unmonitored:
        with tempfile.TemporaryDirectory() as workdir:
            unmonitored(roots, model, args.sizes or [32, 108], args.rounds, workdir,
                        args.device)
        return
    atoms, rng = C.cell_with(args.atoms), np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as workdir:
        timers = {name: Timers(root, args.device) for name, root in roots.items()}
        monitors = {name: monitor(root, model, args.device, os.path.join(workdir, name + ".h5"))
                    for name, root in roots.items()}
        for name, calculator in monitors.items():
            timers[name].time_forward(calculator)
        totals = defaultdict(float)
        for step in range(args.steps + 3):
            if step == 3:  # warm-up done
                for name in roots:
                    timers[name].seconds.clear()
                    totals[name] = 0.0
            for name, calculator in monitors.items():
                atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)
                C.sync(args.device)
                start = time.perf_counter()
                calculator.calculate(atoms, PROPERTIES, ["positions"])
                C.sync(args.device)
                totals[name] += time.perf_counter() - start
        for calculator in monitors.values():
            calculator.close()
    rows = []
    for part in ["model forward"] + list(PARTS) + ["metrics + log", "step total"]:
        row = [part]
        for name in roots:
            seconds = timers[name].seconds
            value = {"metrics + log": seconds["metrics (diagnose)"]
                     + seconds["log (Recorder.write)"],
                     "step total": totals[name]}.get(part, seconds.get(part, 0.0))
            row += [1000 * value / args.steps,
                    100 * value / max(seconds["model forward"], 1e-12)]
        rows.append(row)
    for name in roots:
        orbit_s = timers[name].seconds["orbit call (MetatomicOrbitModel.evaluate)"]
        print(f"{name}: step total / orbit call (the K=7 floor) = "
              f"{totals[name] / max(orbit_s, 1e-12):.3f}")
    header = ["part"] + [f"{name} {unit}" for name in roots for unit in ("ms", "% of model")]
    print(f"\nmonitored step (every 1, 3 rotations, log), {args.atoms} atoms, "
          f"{args.steps} steps, {args.device}\n")
    print(C.table(header, rows))


if __name__ == "__main__":
    main()
