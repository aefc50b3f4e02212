"""Symmetry content of PET's layers along training (paper §III.2 and §III.4).

  python run.py tiny-pet [--epochs 40]          # EMT Cu/Ni tiny PET, Fig. 3/4-like
  python run.py pseudoscalar [--epochs 300]     # CHBrClF triple-product target, Fig. 6-like
  python run.py pseudoscalar --epochs 2 --n-structures 60   # smoke run (~2 min on CPU)

Each experiment trains a PET with ``mtt train`` and ``checkpoint_interval: 1`` (one
``model_<epoch>.ckpt`` per epoch, under ``runs/<name>/outputs/<date>/<time>/``), then
runs ``symmon checkpoints`` on the run (epoch weights, float64, resumable) and writes
``runs/<name>/training.h5`` and the figures ``runs/<name>/training_figures/*.png``.

**The long runs need a GPU** (``--device cuda`` is picked automatically by metatrain
and by symmon when available): the pseudoscalar channel of PET switches on only
after a few hundred epochs in the paper (1000 conformers), and the orbit analysis
of every checkpoint at l_max = 4 costs 684 forward passes per structure. On 2 CPU
cores only the smoke runs are practical.

Pseudoscalar target (paper Eq. 6). For a CHBrClF-like molecule with bond vectors
``r_i`` from the central carbon to its four substituents (in a fixed order H, F,
Cl, Br), ``t = sum_{i<j<k} r_i . (r_j x r_k)``. It changes sign under inversion
and mirror images, so it is declared to metatrain as a *spherical* per-structure
target with ``o3_lambda: 0, o3_sigma: -1``: metatrain's random O(3) augmentation
then flips its sign for improper transformations. (Declared as a plain scalar, an
inverted copy would carry the same label as the original: contradictory data that
no model can fit.) The conformers include both enantiomers (random mirror images),
so the target takes both signs.
"""

import argparse
import os
import shutil
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))

PSEUDOSCALAR_OPTIONS = """
seed: 0
base_precision: 32
architecture:
  name: pet
  model:
    cutoff: 4.0
    cutoff_width: 0.5
    d_pet: {d_pet}
    d_head: {d_pet}
    d_node: {d_pet}
    d_feedforward: {d_ff}
    num_heads: 2
    num_attention_layers: 2
    num_gnn_layers: 2
  training:
    batch_size: 16
    num_epochs: {epochs}
    learning_rate: 1.0e-3
    warmup_fraction: 0.01
    checkpoint_interval: 1
    num_workers: 0
    log_interval: 10
training_set:
  systems: {{read_from: {data}/train.xyz, length_unit: angstrom}}
  targets: &targets
    mtt::pseudoscalar:
      quantity: ""
      key: pseudoscalar
      unit: ""
      sample_kind: system
      type:
        spherical:
          irreps:
            - {{o3_lambda: 0, o3_sigma: -1}}
validation_set:
  systems: {{read_from: {data}/val.xyz, length_unit: angstrom}}
  targets: *targets
test_set:
  systems: {{read_from: {data}/test.xyz, length_unit: angstrom}}
  targets: *targets
"""

# tetrahedral directions and C-X bond lengths (angstrom)
_DIRECTIONS = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)
_SUBSTITUENTS = [("H", 1.09), ("F", 1.35), ("Cl", 1.77), ("Br", 1.94)]


def triple_product_target(positions: np.ndarray) -> float:
    """Eq. 6: sum over triplets of C-X bonds of ``r_i . (r_j x r_k)`` (atom 0 is C,
    atoms 1-4 the substituents in the order H, F, Cl, Br)."""
    bonds = positions[1:5] - positions[0]
    total = 0.0
    for i in range(4):
        for j in range(i + 1, 4):
            for k in range(j + 1, 4):
                total += float(np.dot(bonds[i], np.cross(bonds[j], bonds[k])))
    return total


def chbrclf_conformers(n: int, seed: int = 0, rattle: float = 0.1):
    """Rattled, randomly oriented CHBrClF molecules (both enantiomers) in a 20 Å box."""
    import ase
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    frames = []
    for index in range(n):
        positions = [np.zeros(3)] + [length * d for (_, length), d in
                                     zip(_SUBSTITUENTS, _DIRECTIONS)]
        positions = np.array(positions)
        if rng.random() < 0.5:  # mirror image: the other enantiomer
            positions[:, 0] *= -1
        positions += rattle * rng.standard_normal(positions.shape)
        positions = positions @ Rotation.random(random_state=rng).as_matrix().T
        atoms = ase.Atoms("C" + "".join(s for s, _ in _SUBSTITUENTS),
                          positions=positions + 10.0, cell=np.eye(3) * 20.0, pbc=False)
        atoms.info["pseudoscalar"] = triple_product_target(atoms.positions)
        frames.append(atoms)
    return frames


def train(rundir: str, options: str) -> None:
    os.makedirs(rundir, exist_ok=True)
    with open(os.path.join(rundir, "options.yaml"), "w") as f:
        f.write(options)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    print(f"[train] mtt train options.yaml (cwd={rundir})", flush=True)
    with open(os.path.join(rundir, "mtt_stdout.log"), "w") as log:
        subprocess.run(["mtt", "train", "options.yaml", "-o", "model.pt"], cwd=rundir,
                       env=env, check=True, stdout=log, stderr=subprocess.STDOUT)


def analyse(rundir: str, structures: str, modules, l_max: int, extra) -> None:
    from symmon.frontends.cli import main

    args = ["checkpoints", os.path.join(rundir, "outputs"), structures, "--l-max",
            str(l_max), "-o", os.path.join(rundir, "training.h5")] + list(extra)
    if modules:
        args += ["--modules", *modules]
    print("[analyse] symmon " + " ".join(args), flush=True)
    code = main(args)
    if code:
        raise SystemExit(code)


def pseudoscalar(args) -> None:
    import ase.io

    rundir = os.path.join(HERE, "runs", "pseudoscalar")
    data = os.path.join(rundir, "data")
    if args.fresh:
        shutil.rmtree(rundir, ignore_errors=True)
    os.makedirs(data, exist_ok=True)
    frames = chbrclf_conformers(args.n_structures, seed=args.seed)
    n_train, n_val = int(0.8 * len(frames)), int(0.1 * len(frames))
    ase.io.write(os.path.join(data, "train.xyz"), frames[:n_train])
    ase.io.write(os.path.join(data, "val.xyz"), frames[n_train:n_train + n_val])
    ase.io.write(os.path.join(data, "test.xyz"), frames[n_train + n_val:])
    ase.io.write(os.path.join(data, "analyse.xyz"), frames[n_train + n_val:][:args.n_analyse])
    if not args.skip_training:
        train(rundir, PSEUDOSCALAR_OPTIONS.format(d_pet=args.d_pet, d_ff=2 * args.d_pet,
                                                  epochs=args.epochs, data=data))
    # EE (edge embeddings: compress MLP of the first GNN layer), GNN edge tokens, BBF,
    # LLF and the prediction: the paper's Fig. 6 panels
    modules = ["backend.gnn_layers.0.compress", "backend.gnn_layers.*:edge",
               "backend.node_backbone.0", "backend.edge_backbone.0",
               "backend.node_heads.mtt::pseudoscalar.0",
               "backend.edge_heads.mtt::pseudoscalar.0", "output:*"]
    analyse(rundir, os.path.join(data, "analyse.xyz"), modules, args.l_max,
            ["--every", str(args.every)] + (["--no-progress"] if args.no_progress else []))
    _print_pseudoscalar_channel(os.path.join(rundir, "training.h5"))


def _print_pseudoscalar_channel(path: str) -> None:
    from symmon.frontends.analyze.drivers import read_training

    result = read_training(path)
    column = result["columns"].index("(0,-1)")
    print("epoch  " + "  ".join(f"{n.replace('backend.', '')[:28]:>28}"
                                for n in result["spectra"]))
    for row, epoch in enumerate(result["epochs"]):
        print(f"{epoch:5d}  " + "  ".join(f"{s[row, column]:28.3e}"
                                          for s in result["spectra"].values()))
    print("(0,-1) fraction of each module's power per epoch; the prediction's "
          "switch-on marks the end of the plateau (paper Fig. 6).")


def tiny_pet(args) -> None:
    source = os.path.join(ROOT, "examples", "tiny_pet")
    rundir = os.path.join(HERE, "runs", "tiny_pet")
    if args.fresh:
        shutil.rmtree(rundir, ignore_errors=True)
    options = open(os.path.join(source, "options.yaml")).read()
    options = options.replace("read_from: data/", f"read_from: {source}/data/")
    options = options.replace("checkpoint_interval: 5", "checkpoint_interval: 1")
    options = options.replace("num_epochs: 40", f"num_epochs: {args.epochs}")
    if not args.skip_training:
        train(rundir, options)
    analyse(rundir, os.path.join(source, "data", "test.xyz"), None, args.l_max,
            ["--index", f":{args.n_analyse}", "--every", str(args.every)]
            + (["--no-progress"] if args.no_progress else []))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=("tiny-pet", "pseudoscalar"))
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs (default 40 for tiny-pet, 300 for pseudoscalar)")
    parser.add_argument("--n-structures", type=int, default=1000,
                        help="pseudoscalar: conformers (80:10:10 split; default 1000)")
    parser.add_argument("--n-analyse", type=int, default=4,
                        help="structures analysed per checkpoint (default 4)")
    parser.add_argument("--d-pet", type=int, default=64, help="pseudoscalar: PET width")
    parser.add_argument("--l-max", type=int, default=4)
    parser.add_argument("--every", type=int, default=1, help="analyse every n-th epoch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-training", action="store_true",
                        help="only (re)run the analysis of an existing run (resumes)")
    parser.add_argument("--fresh", action="store_true", help="delete the previous run first")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    if args.epochs is None:
        args.epochs = 40 if args.experiment == "tiny-pet" else 300
    (tiny_pet if args.experiment == "tiny-pet" else pseudoscalar)(args)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()
