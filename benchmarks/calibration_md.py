"""Coverage of the monitor's calibrated intervals along MD of a real model (issues 15, 28).

Two parts, for each bundled tiny PET (trained with and without O(3) augmentation),
Langevin MD at 600 K of a rattled 32-atom Cu/Ni cell:

**From the start of a run** (default; issue 28): the monitor's own schedule and
intervals (``Schedule`` with ``every=--every``, ``diagnose`` with the pooled law of its
calibration steps, as ``Monitor.calculate`` computes them) for ``--seeds`` monitor
seeds along ``--trajectories`` trajectories of ``--start-steps`` steps from the
starting structure, scored on every ``--score-every``-th step (the monitor's own orbit
and ``--orbits-per-step - 1`` more of its size, against the same references) and on
each calibration step, against the truth of that frame: the unbiased estimate from
``--truth-pairs`` Haar pairs (quadratures up to degree 12 do not converge for the
unaugmented model's energy: 0.081 / 0.116 / 0.105 at degrees 8 / 10 / 12, 0.128 from
1000 pairs). Prints, per model and quantity, the percentage of steps
whose 68 % / 95 % interval contains the truth: all scored steps from step 0, and apart
the steps before the first calibration (data-only Student-t) and after; and the number
of infinite upper bounds. Only the frames that are scored or calibrated are evaluated.

**Along a run** (``--along``; issue 15): on each of ``--frames`` frames ``--stride``
steps apart, ``--orbits`` independent random orbits of P = 2, 3, 5, 10 pairs, with
intervals (a) calibrated by the pooled law of the last 4 calibration frames' references
(32-pair random orbits, on the first frame and every ``--calibrate-every`` frames)
and (b) data-only (Student-t on log ε²), against a degree-``--degree`` truth.

    python -m benchmarks.calibration_md                   # start of a run: 2 x 7.5 min
                                                          # on one loaded CPU thread
    python -m benchmarks.calibration_md --along --device cuda   # ~3 min on an H200
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from . import _common as C

KINDS = {"energy": "scalar", "forces": "vector_per_atom", "stress": "symmetric_tensor"}
OUTPUTS = {"energy": "energy", "forces": "non_conservative_forces",
           "stress": "non_conservative_stress"}
ROTATIONS = (2, 3, 5, 10)


def trajectory(path, device, frames, stride, seed=0):
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from metatomic_ase import MetatomicCalculator

    atoms = C.cell_with(32, seed=seed)
    atoms.calc = MetatomicCalculator(path, non_conservative=True, device=device)
    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(seed))
    dynamics = Langevin(atoms, 2 * units.fs, temperature_K=600, friction=0.02,
                        rng=np.random.default_rng(seed))
    for _ in range(frames):
        dynamics.run(stride)
        yield atoms.copy()


def frame_orbits(model, atoms, n_orbits, seed):
    """Values on one random grid holding every P's orbits, cut per P: {P: (plus, minus)}."""
    from symmon import back_transform, random_grid

    total = n_orbits * sum(ROTATIONS)
    grid = random_grid(total, seed=seed)
    values = model.evaluate(atoms, grid.matrices, list(OUTPUTS.values()))
    cut = {}
    for quantity, output in OUTPUTS.items():
        back = back_transform(values[output], grid, KINDS[quantity])
        plus, minus, start = back[:total], back[total:], 0
        for p in ROTATIONS:
            shape = (n_orbits, p) + back.shape[1:]
            cut[quantity, p] = (plus[start:start + n_orbits * p].reshape(shape),
                                minus[start:start + n_orbits * p].reshape(shape))
            start += n_orbits * p
    return cut


def start_trajectory(path, device, steps, seed):
    """The starting structure and the frames after each of ``steps`` MD steps."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from metatomic_ase import MetatomicCalculator

    atoms = C.cell_with(32, seed=seed)
    atoms.calc = MetatomicCalculator(path, non_conservative=True, device=device)
    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(seed))
    dynamics = Langevin(atoms, 2 * units.fs, temperature_K=600, friction=0.02,
                        rng=np.random.default_rng(seed))
    frames = [atoms.copy()]
    for _ in range(steps):
        dynamics.run(1)
        frames.append(atoms.copy())
    return frames


def orbit_of(model, atoms, matrices):
    """quantity -> ``(K, ...)`` values on ``matrices`` as the monitor sees them (direct
    forces without their mean, as MetatomicCalculator returns them)."""
    from symmon.core.outputs import without_net_force

    values = model.evaluate(atoms, matrices, list(OUTPUTS.values()))
    orbit = {q: values[o] for q, o in OUTPUTS.items()}
    orbit["forces"] = without_net_force(orbit["forces"])
    return orbit


def start_of_run(args, model, path):
    """Coverage of the monitor's intervals from its first monitored step:
    {(quantity, phase): [n, hits68, hits95, infinite95]}, and the largest relative
    standard error of a truth."""
    from dataclasses import replace

    import torch

    from symmon import equivariance_error, random_grid
    from symmon.core.intervals import INTERVAL_METHODS
    from symmon.core.quantities import QUANTITY
    from symmon.monitoring.diagnose import diagnose
    from symmon.monitoring.schema import NAMES
    from symmon.monitoring.options import MonitorOptions
    from symmon.monitoring.schedule import Schedule

    counts, truth_se = {}, 0.0
    for trajectory_seed in range(args.trajectories):
        frames = start_trajectory(path, args.device, args.start_steps, trajectory_seed)
        n_atoms = len(frames[0])
        schedules = [Schedule(MonitorOptions(every=args.every, seed=1000 * trajectory_seed + s))
                     for s in range(args.seeds)]
        plans = [[schedule.plan(step, False) for step in range(len(frames))]
                 for schedule in schedules]
        needed = sorted({plan.step for seed_plans in plans for plan in seed_plans
                         if plan.scheduled and (plan.calibrating
                                                or plan.step % args.score_every == 0)})
        for step in needed:
            atoms = frames[step]
            # the truth: an unbiased estimate from many Haar pairs (its own seeds)
            grid = random_grid(args.truth_pairs, seed=10 ** 6 + 1000 * trajectory_seed + step)
            truth_orbit = orbit_of(model, atoms, grid.matrices)
            truth = {}
            for q in OUTPUTS:
                error = equivariance_error(truth_orbit[q], grid, KINDS[q])
                low, high = error.interval_68
                truth_se = max(truth_se, (high ** 2 - low ** 2) / 2 / error.eps_sq)
                truth[q] = error.eps * QUANTITY[q].per_atom_factor(n_atoms)
            # the monitor's plan of this step for each seed, and on random steps more
            # orbits of the same size scored against the same references (the law of
            # the step's own orbit, sampled more often)
            jobs = []
            for s, (schedule, seed_plans) in enumerate(zip(schedules, plans)):
                plan = seed_plans[step]
                if not plan.scheduled:
                    continue
                jobs.append((schedule, plan, True))
                if not plan.calibrating and step % args.score_every == 0:
                    for k in range(1, args.orbits_per_step):
                        other = random_grid(plan.grid.n_rotations,
                                            seed=hash((trajectory_seed, s, step, k)) % 2 ** 32)
                        jobs.append((schedule, replace(plan, grid=other), False))
            matrices = np.concatenate([plan.grid.matrices for _, plan, _ in jobs])
            orbit = orbit_of(model, atoms, matrices)
            start = 0
            for schedule, plan, own in jobs:
                size = len(plan.grid)
                values_k = {q: torch.as_tensor(v[start:start + size]) for q, v in orbit.items()}
                start += size
                calibrations = schedule.calibrations
                collected = {} if own and calibrations.wanted(plan) else None
                values = diagnose(values_k, plan, n_atoms, 0, model.dtype,
                                  calibrations.laws(), collected)
                if collected:
                    calibrations.update(plan, collected)
                if step % args.score_every and not plan.calibrating:
                    continue
                for q in OUTPUTS:
                    name = NAMES[q].eps
                    method = INTERVAL_METHODS[values[f"{q}_interval_method"]]
                    phase = ("data only (before the first calibration)"
                             if method == "student_t_log_pairs" else "calibrated")
                    for key in ((q, "all from step 0"), (q, phase)):
                        row = counts.setdefault(key, [0, 0, 0, 0])
                        row[0] += 1
                        for i, level in enumerate((68, 95)):
                            low, high = values[f"{name}_ci{level}"]
                            row[1 + i] += int(low <= truth[q] <= high)
                        row[3] += int(not np.isfinite(values[f"{name}_ci95"][1]))
    return counts, truth_se


def print_start_of_run(tag, args, counts, truth_se, seconds):
    print(f"\ntiny_pet_{tag}: {args.trajectories} trajectories x {args.seeds} monitor seeds "
          f"x {args.orbits_per_step} orbits per scored random step, every={args.every}, "
          f"steps 0-{args.start_steps} scored every {args.score_every} and on calibration "
          f"steps; truth from {args.truth_pairs} Haar pairs (relative standard error of "
          f"eps^2 <= {100 * truth_se:.0f} %); {seconds:.0f} s")
    print("| quantity | steps | n | 68 % | 95 % | infinite upper bounds |")
    print("|---|---|---|---|---|---|")
    for (quantity, phase), (n, h68, h95, infinite) in sorted(counts.items()):
        print(f"| {quantity} | {phase} | {n} | {100 * h68 / n:.1f} | {100 * h95 / n:.1f} | "
              f"{infinite} |")


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--along", action="store_true",
                   help="the per-P table along a run (issue 15) instead of the start")
    p.add_argument("--models", default="aug,noaug")
    p.add_argument("--start-steps", type=int, default=60)
    p.add_argument("--every", type=int, default=1)
    p.add_argument("--score-every", type=int, default=5)
    p.add_argument("--seeds", type=int, default=12)
    p.add_argument("--orbits-per-step", type=int, default=4)
    p.add_argument("--trajectories", type=int, default=1)
    p.add_argument("--truth-pairs", type=int, default=200)
    p.add_argument("--first-calibration", type=int, default=None,
                   help="steps into the run of the first calibration (default: the "
                        "monitor's FIRST_CALIBRATION_STEPS)")
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--stride", type=int, default=5)
    p.add_argument("--orbits", type=int, default=25)
    p.add_argument("--degree", type=int, default=16)
    p.add_argument("--calibrate-every", type=int, default=10)
    args = p.parse_args(argv)
    C.setup_torch(args.threads)
    warnings.filterwarnings("ignore")
    print(C.machine_info(args.device))
    if args.along:
        return along_a_run(args)
    from symmon.monitoring import calibration

    if args.first_calibration is not None:
        calibration.FIRST_CALIBRATION_STEPS = args.first_calibration
    print(f"first calibration {calibration.FIRST_CALIBRATION_STEPS} steps into the run")
    from symmon.adapters.metatomic import MetatomicOrbitModel
    from symmon.frontends.demo import bundled_model_path

    for tag in args.models.split(","):
        path = bundled_model_path(f"tiny_pet_{tag}.pt")
        model = MetatomicOrbitModel(path, device=args.device)
        start = time.perf_counter()
        counts, truth_se = start_of_run(args, model, path)
        print_start_of_run(tag, args, counts, truth_se, time.perf_counter() - start)


def along_a_run(args):
    from symmon import equivariance_error, quadrature_grid, random_grid
    from symmon.adapters.metatomic import MetatomicOrbitModel
    from symmon.core.calibration import POOL, pooled
    from symmon.core.intervals import batched_pair_estimate
    from symmon.frontends.demo import bundled_model_path

    truth_grid = quadrature_grid(args.degree)
    for tag in ("aug", "noaug"):
        path = bundled_model_path(f"tiny_pet_{tag}.pt")
        model = MetatomicOrbitModel(path, device=args.device)
        hits = {}  # (quantity, P, method) -> [n, hits68, hits95]
        history, references, inexact, start = [], {}, 0, time.perf_counter()
        for frame, atoms in enumerate(trajectory(path, args.device, args.frames, args.stride)):
            truth_values = model.evaluate(atoms, truth_grid.matrices, list(OUTPUTS.values()))
            truth = {q: equivariance_error(truth_values[o], truth_grid, KINDS[q])
                     for q, o in OUTPUTS.items()}
            inexact += sum(not t.exact for t in truth.values())
            if frame % args.calibrate_every == 0:
                grid = random_grid(32, seed=1000 + frame)
                values = model.evaluate(atoms, grid.matrices, list(OUTPUTS.values()))
                history = (history + [{q: equivariance_error(values[o], grid, KINDS[q],
                                                             calibrate=True).calibration
                                       for q, o in OUTPUTS.items()}])[-POOL:]
                references = {q: pooled(*(h[q] for h in history)) for q in OUTPUTS}
            for (quantity, n_pairs), (plus, minus) in frame_orbits(
                    model, atoms, args.orbits, seed=frame).items():
                estimate = batched_pair_estimate(plus, minus)
                eps_sq = truth[quantity].eps_sq
                for method in ("calibrated", "data only"):
                    row = hits.setdefault((quantity, n_pairs, method), [0, 0, 0])
                    row[0] += len(estimate.eps_sq)
                    for i, level in enumerate((0.68, 0.95)):
                        low, high = (references[quantity].interval(estimate.eps_sq, n_pairs,
                                                                   level)
                                     if method == "calibrated" else
                                     estimate.eps_sq_interval(level))
                        row[1 + i] += int(np.sum((low <= eps_sq) & (eps_sq <= high)))
        print(f"\ntiny_pet_{tag}: {args.frames} frames, {args.orbits} orbits per P per frame, "
              f"truth at degree {args.degree} ({inexact} flagged inexact), "
              f"{time.perf_counter() - start:.0f} s")
        print("| quantity | method | " + " | ".join(f"P = {n}" for n in ROTATIONS) + " |")
        print("|---|---|" + "---|" * len(ROTATIONS))
        for quantity in OUTPUTS:
            for method in ("calibrated", "data only"):
                cells = []
                for n_pairs in ROTATIONS:
                    n, h68, h95 = hits[quantity, n_pairs, method]
                    cells.append(f"{100 * h68 / n:.0f} / {100 * h95 / n:.0f}")
                print(f"| {quantity} | {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
