"""Train the augmented / unaugmented pair of tiny PETs used to check symmon's verdicts.

  python train_pair.py --epochs 80 --out pair/      # both trainings in parallel

Same options, seed and data as ``train.py``; ``normal`` uses PET's random O(3)
augmentation, ``broken`` replaces metatrain's O3Augmenter by the identity. Both are
exported as float32 AtomisticModels (``tiny_pet_aug.pt``, ``tiny_pet_noaug.pt``) next
to their training logs. The pair shipped in ``symmon/data/`` came from
``python train_pair.py --epochs 300 --batch-size 32 --learning-rate 3e-3 --threads 8
--export-epoch 200`` on a 16-core H200 machine (both runs' epoch-200 checkpoints; validation
force RMSE 99.8 / 102.1 meV/Å, energy 9.8 / 11.1 meV/atom). (see README.md).
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from train import HERE, export, run_training


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per training")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--export-epoch", type=int, default=None,
                        help="export this epoch's checkpoint instead of the best weights")
    parser.add_argument("--out", default=os.path.join(HERE, "runs", "pair"))
    args = parser.parse_args()
    if not os.path.exists(os.path.join(HERE, "data", "train.xyz")):
        subprocess.run([sys.executable, "make_dataset.py", "data"], cwd=HERE, check=True)
    import torch

    os.makedirs(args.out, exist_ok=True)
    runs = {"aug": ("pair_normal", True), "noaug": ("pair_broken", False)}
    with ThreadPoolExecutor(2) as pool:
        rundirs = dict(zip(runs, pool.map(
            lambda item: run_training(item[0], item[1], args.epochs, args.threads,
                                      args.batch_size, args.learning_rate),
            runs.values())))
    for tag, rundir in rundirs.items():
        checkpoint = None
        if args.export_epoch is not None:
            (checkpoint,) = glob.glob(os.path.join(rundir, "outputs", "*", "*",
                                                   f"model_{args.export_epoch}.ckpt"))
        export(rundir, [(os.path.join(args.out, f"tiny_pet_{tag}.pt"), torch.float32)],
               checkpoint)
        shutil.copy(os.path.join(rundir, "outputs_train.log") if os.path.exists(
            os.path.join(rundir, "outputs_train.log")) else os.path.join(rundir, "mtt_stdout.log"),
            os.path.join(args.out, f"train_{tag}.log"))


if __name__ == "__main__":
    main()
