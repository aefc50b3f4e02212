"""Train the two tiny PET models bundled with symmon and export them.

  python train.py            # dataset (if missing) + both trainings + export
  python train.py --only normal|broken

Runs (each ~4-5 min on 2 CPU cores):
  * ``normal``: plain ``mtt train options.yaml`` (PET always applies random
    O(3) augmentation during training);
  * ``broken``: identical options and seed, but metatrain's O3Augmenter is
    monkeypatched to the identity, i.e. the PET only ever sees the
    lab-frame orientation of the (axis-aligned) training cells.  metatrain
    has no hyperparameter to switch the augmentation off.

Outputs (relative to the repository root):
  symmon/data/tiny_pet.pt            float64 AtomisticModel (best weights)
  symmon/data/tiny_pet_f32.pt        float32 AtomisticModel, as trained
  runs/broken/tiny_pet_broken.pt     float64 AtomisticModel, no augmentation (not shipped)
  symmon/data/tiny_pet.ckpt
                                     slim float64 checkpoints (best weights,
                                     no optimizer state) for eager use
  symmon/data/tiny_structures.xyz    6 bulk + 2 slab labelled test structures
  examples/tiny_pet/runs/<run>/      mtt outputs: model.ckpt, model.pt,
                                     outputs/*/*/model_<epoch>.ckpt, train.log
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
DATA_OUT = os.path.join(ROOT, "symmon", "data")

NO_AUGMENTATION_WRAPPER = """
import sys
import metatrain.pet.trainer as pet_trainer

class NoAugmentation(pet_trainer.O3Augmenter):
    # identity instead of a random O(3) transformation of each training batch
    def apply_random_augmentations(self, systems, targets, extra_data=None):
        return systems, targets, ({} if extra_data is None else extra_data)

pet_trainer.O3Augmenter = NoAugmentation
from metatrain.__main__ import main
sys.argv = ["mtt"] + sys.argv[1:]
sys.exit(main())
"""


def run_training(name, augment, epochs=None, threads=2, batch_size=None, learning_rate=None):
    rundir = os.path.join(HERE, "runs", name)
    shutil.rmtree(rundir, ignore_errors=True)
    os.makedirs(rundir)
    # absolute data paths, so that mtt can run inside the run directory
    options = open(os.path.join(HERE, "options.yaml")).read()
    options = options.replace("read_from: data/", f"read_from: {HERE}/data/")
    if epochs is not None:
        options = options.replace("num_epochs: 40", f"num_epochs: {int(epochs)}")
    if batch_size is not None:
        options = options.replace("batch_size: 8", f"batch_size: {int(batch_size)}")
    if learning_rate is not None:
        options = options.replace("learning_rate: 1.0e-3", f"learning_rate: {learning_rate}")
    with open(os.path.join(rundir, "options.yaml"), "w") as f:
        f.write(options)

    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if augment:  # `mtt`, without relying on its script being on PATH
        cmd = [sys.executable, "-c", "import sys; from metatrain.__main__ import main; "
               "sys.argv = ['mtt'] + sys.argv[1:]; sys.exit(main())"]
    else:
        wrapper = os.path.join(rundir, "mtt_no_augmentation.py")
        with open(wrapper, "w") as f:
            f.write(NO_AUGMENTATION_WRAPPER)
        cmd = [sys.executable, wrapper]
    cmd += ["train", "options.yaml", "-o", "model.pt"]
    print(f"[{name}] {' '.join(cmd)}  (cwd={rundir})", flush=True)
    start = time.time()
    with open(os.path.join(rundir, "mtt_stdout.log"), "w") as log:
        subprocess.run(cmd, cwd=rundir, env=env, check=True, stdout=log,
                       stderr=subprocess.STDOUT)
    print(f"[{name}] done in {time.time() - start:.0f} s", flush=True)
    return rundir


def export(rundir, targets, checkpoint=None):
    """Export the best weights of ``rundir/model.ckpt`` (or of ``checkpoint``)."""
    from metatrain.utils.io import load_model

    for path, dtype in targets:
        model = load_model(checkpoint or os.path.join(rundir, "model.ckpt"))
        model = model.to(dtype)
        model.export().save(path)
        size = os.path.getsize(path) / 1024
        print(f"exported {path} ({dtype}, {size:.0f} KiB)", flush=True)


def slim_checkpoint(src, dst):
    """Float64 checkpoint with only the best weights (no optimizer state), for
    eager (non-TorchScript) use, e.g. forward hooks on PET sub-modules."""
    import metatomic.torch  # noqa: F401  (registers classes needed to unpickle)
    import torch

    ckpt = torch.load(src, weights_only=False, map_location="cpu")
    best = {
        k: (v.to(torch.float64)
            if isinstance(v, torch.Tensor) and torch.is_floating_point(v) else v)
        for k, v in ckpt["best_model_state_dict"].items()
    }
    keep = ["architecture_name", "model_ckpt_version", "metadata", "model_data"]
    slim = {k: ckpt[k] for k in keep}
    slim["epoch"] = slim["best_epoch"] = ckpt["best_epoch"]
    slim["model_state_dict"] = best
    slim["best_model_state_dict"] = best
    torch.save(slim, dst)
    size = os.path.getsize(dst) / 1024
    print(f"wrote {dst} (best epoch {ckpt['best_epoch']}, {size:.0f} KiB)", flush=True)


def bundle_structures(n_bulk=6, n_slab=2):
    """A few labelled test structures for symmon's tests/demo."""
    import ase.io

    frames = ase.io.read(os.path.join(HERE, "data", "test.xyz"), ":")
    bulk = [a for a in frames if a.info["kind"] == "bulk"][:n_bulk]
    slab = [a for a in frames if a.info["kind"] != "bulk"][:n_slab]
    path = os.path.join(DATA_OUT, "tiny_structures.xyz")
    ase.io.write(path, bulk + slab, format="extxyz")
    print(f"wrote {path} ({len(bulk + slab)} structures)", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["normal", "broken"])
    args = parser.parse_args()

    if not os.path.exists(os.path.join(HERE, "data", "train.xyz")):
        subprocess.run([sys.executable, "make_dataset.py", "data"], cwd=HERE,
                       check=True)

    import torch

    torch.set_num_threads(2)
    os.makedirs(DATA_OUT, exist_ok=True)
    bundle_structures()
    if args.only in (None, "normal"):
        rundir = run_training("normal", augment=True)
        export(rundir, [
            (os.path.join(DATA_OUT, "tiny_pet.pt"), torch.float64),
            (os.path.join(DATA_OUT, "tiny_pet_f32.pt"), torch.float32),
        ])
        slim_checkpoint(os.path.join(rundir, "model.ckpt"),
                        os.path.join(DATA_OUT, "tiny_pet.ckpt"))
    if args.only in (None, "broken"):
        rundir = run_training("broken", augment=False)
        export(rundir, [
            (os.path.join(rundir, "tiny_pet_broken.pt"), torch.float64),
        ])  # not shipped in symmon/data (see README.md)
        slim_checkpoint(os.path.join(rundir, "model.ckpt"),
                        os.path.join(rundir, "tiny_pet_broken.ckpt"))


if __name__ == "__main__":
    main()
