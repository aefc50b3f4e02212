"""Throughput of ``symmon eval``: one process vs ``torchrun`` with 1, 2, ... ranks.

    python -m benchmarks.eval_throughput --device cuda --ranks 1 2 4 [--n 24] [--out T.md]

Builds ``--n`` Cu/Ni structures of 64-256 atoms (fcc supercells, rattled, labelled
with EMT), then times the whole command (start-up, model load and warm-up included) of
``symmon eval MODEL STRUCTURES --degree 8`` as one process and under
``torchrun --nproc-per-node K`` for each K, on the PET-MAD-sized random-weight model of
``benchmarks/make_big_pet.py`` (``--model`` for another). Results must agree: the
per-structure ε of every run is compared with the one-process run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

SIZES = ((2, 2, 4), (2, 4, 4), (4, 4, 4))  # 64, 128, 256 atoms (fcc cubic cells x4)


def make_structures(n: int, path: str) -> None:
    import ase.build
    import ase.io
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(0)
    frames = []
    for i in range(n):
        atoms = ase.build.bulk("Cu", "fcc", a=3.58, cubic=True).repeat(SIZES[i % len(SIZES)])
        atoms.numbers[rng.random(len(atoms)) < 0.3] = 28
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        atoms.info["emt_energy"] = atoms.get_potential_energy()
        atoms.arrays["emt_forces"] = atoms.get_forces()
        atoms.calc = None
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")


def run(command, cwd) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="default: the PET-MAD-sized model")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--ranks", type=int, nargs="*", default=[1])
    parser.add_argument("--n", type=int, default=24, help="structures")
    parser.add_argument("--degree", type=int, default=8)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.model is None:
        from .make_big_pet import ensure_big_pet

        args.model = ensure_big_pet()
    folder = tempfile.mkdtemp(prefix="symmon-eval-bench-")
    structures = os.path.join(folder, "structures.xyz")
    make_structures(args.n, structures)
    base = ["-m", "symmon.frontends.cli", "eval", os.path.abspath(args.model), structures,
            "--degree", str(args.degree), "--device", args.device, "--no-progress",
            "--energy-key", "emt_energy", "--forces-key", "emt_forces", "--format", "json"]
    rows, reference = [], None
    runs = [("one process", [sys.executable, *base, "-o", "one.json"], "one.json")]
    for k in args.ranks:
        runs.append((f"torchrun {k} rank(s)",
                     [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                      str(k), *base, "-o", f"ranks{k}.json"], f"ranks{k}.json"))
    for label, command, output in runs:
        seconds = run(command, folder)
        with open(os.path.join(folder, output)) as handle:
            document = json.load(handle)
        eps = np.array([s["forces"]["eps"] for s in document["structures"]])
        reference = eps if reference is None else reference
        rows.append((label, seconds, args.n / seconds,
                     float(np.max(np.abs(eps - reference) / np.abs(reference)))))
    lines = [f"symmon eval, {args.n} structures of 64-256 atoms, degree {args.degree} "
             f"({document['n_grid']} elements), {args.device}, model {args.model}", "",
             "| run | wall s | structures/s | max rel. diff of forces eps vs one process |",
             "|---|---|---|---|"]
    lines += [f"| {label} | {s:.1f} | {rate:.3f} | {diff:.1e} |" for label, s, rate, diff in rows]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
