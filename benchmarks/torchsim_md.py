"""Batched TorchSim MD: plain model vs TorchSimMonitor (default, every step).

Langevin MD (TorchSim's ``nvt_langevin``, 2 fs, 300 K) of S = 1, 8, 64 Cu/Ni cells
(8 atoms each, distinct rattles) in one batched state, with the tiny PET through
TorchSim's metatomic wrapper (``--model pet``, default) or TorchSim's Lennard-Jones
(``--model lj``). Variants, each with its own state and integrator, run interleaved in
blocks of ``--block`` steps (round robin, ``--rounds`` times, after a warm-up):

* ``plain``: the wrapped model;
* ``default``: ``TorchSimMonitor(model, log=...)`` with every option at its default
  (``every="auto"``: the 5 % overhead budget);
* ``every step``: ``every=1`` (K = 6 transformed copies per system and step) without
  calibration steps (``calibration_rotations=0``: a calibration step evaluates 64
  copies per system, once in ``calibrate_every`` monitored steps after the early,
  geometrically spaced ones of symmon.monitoring.calibration, which a short window
  would otherwise be made of);
* ``forward (K+1)S``: one plain forward call of a state of 7 S systems (the batch
  repeated), per step: what the every-step goal is measured against.

ms/step is the median over rounds of block time / block steps (``default``: the mean
over all rounds, as its monitored steps are not aligned with the blocks); ratios are
of the plain variant's (and ``every step`` also of ``forward (K+1)S``).

    python -m benchmarks.torchsim_md [--quick] [--device cuda] [--model lj]
    python -m benchmarks.torchsim_md --unmonitored --model lj --block 30 --rounds 7
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import warnings

from . import _common as C

SIZES = (1, 8, 64)
K = 6  # 2 * random_rotations (3, the default)


def structures(n_systems: int):
    atoms = [C.cu_ni_cell((2, 1, 1), seed=i) for i in range(n_systems)]
    return atoms


def make_model(name: str, device: str):
    import torch

    if name == "lj":
        from torch_sim.models.lennard_jones import LennardJonesModel

        return LennardJonesModel(sigma=2.3, epsilon=0.4, cutoff=5.0, dtype=torch.float64,
                                 device=torch.device(device), compute_stress=True)
    from torch_sim.models.metatomic import MetatomicModel

    path = os.path.join(C.HERE, "..", "symmon", "data", "tiny_pet.pt")
    return MetatomicModel(path, device=device, compute_stress=False)


class Variant:
    def __init__(self, name, model, atoms, device, workdir, options=None, repeat=1):
        import torch
        import torch_sim as ts

        from symmon import TorchSimMonitor

        self.name = name
        self.monitor = None
        if options is not None:
            model = self.monitor = TorchSimMonitor(
                model, log=os.path.join(workdir, f"{name.replace(' ', '_')}-{len(atoms)}"),
                **options)
        state = ts.io.atoms_to_state(atoms * repeat, device, model.dtype)
        kT = torch.tensor(300 * ts.units.MetalUnits.temperature, dtype=model.dtype,
                          device=device)
        dt = torch.tensor(0.002 * ts.units.MetalUnits.time, dtype=model.dtype, device=device)
        init, self.update = ts.nvt_langevin(model=model, kT=kT, dt=dt, seed=1)
        self.state = init(state)
        self.kT = kT
        self.device = device

    def block(self, steps: int) -> float:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            self.state = self.update(self.state, kT=self.kT)
        if self.device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / steps


def run_size(n_systems, args, model, workdir):
    atoms = structures(n_systems)
    variants = [Variant("plain", model, atoms, args.device, workdir),
                Variant("default", model, atoms, args.device, workdir, {}),
                Variant("every step", model, atoms, args.device, workdir,
                        {"every": 1, "calibration_rotations": 0}),
                Variant("forward (K+1)S", model, atoms, args.device, workdir,
                        repeat=K + 1)]
    for variant in variants:  # warm-up: TorchScript, first neighbour lists, calibration
        variant.block(args.warmup)
    times = {v.name: [] for v in variants}
    for _ in range(args.rounds):
        for variant in variants:
            times[variant.name].append(variant.block(args.block))
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    ms["default"] = 1e3 * statistics.fmean(times["default"])
    plain_mean = 1e3 * statistics.fmean(times["plain"])
    default = variants[1].monitor
    monitored = [s for s in default.systems.values()]
    strides = default.schedule._last_monitored
    for variant in variants:
        if variant.monitor is not None:
            variant.monitor.close()
    return {"S": n_systems, "atoms": sum(len(a) for a in atoms), **ms,
            "plain_mean": plain_mean, "default_ratio": ms["default"] / plain_mean,
            "every_ratio": ms["every step"] / ms["plain"],
            "every_vs_forward": ms["every step"] / ms["forward (K+1)S"],
            "default_last_monitored": strides, "systems": len(monitored)}


def unmonitored_cost(args, model) -> None:
    """The wrapper's cost on an unmonitored step: one state called again and again,
    plain vs a monitor whose only monitored step is the first."""
    import torch_sim as ts

    from symmon import TorchSimMonitor

    print("unmonitored steps: plain vs TorchSimMonitor(every=10**6), ms/call")
    for n in args.sizes or SIZES:
        state = ts.io.atoms_to_state(structures(n), args.device, model.dtype)
        monitored = TorchSimMonitor(model, every=10**6)
        monitored(state)
        times = {"plain": [], "monitored": []}
        for _ in range(args.rounds):
            for name, call in (("plain", model), ("monitored", monitored)):
                start = time.perf_counter()
                for _ in range(args.block):
                    call(state)
                if args.device == "cuda":
                    import torch

                    torch.cuda.synchronize()
                times[name].append((time.perf_counter() - start) / args.block * 1e3)
        plain, mon = (statistics.median(times[k]) for k in ("plain", "monitored"))
        print(f"S={n:>3}: plain {plain:.3f}, monitored {mon:.3f}, extra {mon - plain:.3f} ms "
              f"({100 * (mon / plain - 1):.1f} %)", flush=True)


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--model", choices=("pet", "lj"), default="pet")
    p.add_argument("--sizes", type=int, nargs="+", default=None)
    p.add_argument("--block", type=int, default=20)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--unmonitored", action="store_true",
                   help="only the wrapper's cost on unmonitored steps")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes = args.sizes or [1, 8]
        args.block, args.rounds, args.warmup = 5, 3, 5
    C.setup_torch(args.threads)
    warnings.simplefilter("ignore")
    print(C.machine_info(args.device))
    from importlib.metadata import version

    print(f"torch-sim-atomistic {version('torch-sim-atomistic')}, model {args.model}, "
          f"block {args.block} steps x {args.rounds} rounds, warm-up {args.warmup}")
    model = make_model(args.model, args.device)
    if args.unmonitored:
        return unmonitored_cost(args, model)
    header = (f"{'S':>3} {'atoms':>5} {'plain':>9} {'default':>9} {'every':>9} "
              f"{'fwd 7S':>9} | {'default/plain':>13} {'every/plain':>11} {'every/fwd7S':>11}")
    print("ms/step\n" + header)
    with tempfile.TemporaryDirectory() as workdir:
        for n in args.sizes or SIZES:
            r = run_size(n, args, model, workdir)
            print(f"{r['S']:>3} {r['atoms']:>5} {r['plain']:>9.2f} {r['default']:>9.2f} "
                  f"{r['every step']:>9.2f} {r['forward (K+1)S']:>9.2f} | "
                  f"{r['default_ratio']:>13.3f} {r['every_ratio']:>11.2f} "
                  f"{r['every_vs_forward']:>11.2f}", flush=True)


if __name__ == "__main__":
    main()
