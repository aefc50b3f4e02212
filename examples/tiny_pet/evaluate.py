"""Test-set RMSEs and a rough O(3)-equivariance check of the bundled models.

  python evaluate.py [model.pt ...]   (default: symmon/data/tiny_pet*.pt)

For every model: RMSE on data/test.xyz of energy/atom, direct
(non-conservative) forces and stress, and conservative (autograd) forces and
stress; then, for one test structure, forces for N_ROT random O(3)
transformations Q (proper and improper), rotated back (F_back = F(QR) Q), and
their spread: RMS over atoms/components of (F_back - mean over Q), and the
max |F_back - F(R)|.
"""

import glob
import os
import sys
import warnings

import ase.io
import numpy as np
import torch

warnings.filterwarnings("ignore")
torch.set_num_threads(2)

from metatomic_ase import MetatomicCalculator  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
N_ROT = 20


def random_o3(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if rng.uniform() < 0.5:
        q = -q  # improper
    return q


def predict(calc, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    return (atoms.get_potential_energy(), atoms.get_forces().copy(),
            atoms.get_stress(voigt=False).copy())


def transformed(atoms, q):
    new = atoms.copy()
    new.set_cell(atoms.cell[:] @ q.T, scale_atoms=False)
    new.positions = atoms.positions @ q.T
    return new


def evaluate(path, frames):
    calcs = {
        "conservative": MetatomicCalculator(path, non_conservative=False),
        "direct": MetatomicCalculator(path, non_conservative=True),
    }
    print(f"== {os.path.relpath(path, ROOT)}")
    for kind, calc in calcs.items():
        de, df, ds = [], [], []
        for at in frames:
            e, f, s = predict(calc, at)
            de.append((e - at.info["emt_energy"]) / len(at))
            df.append(f - at.arrays["emt_forces"])
            ds.append(s - at.info["emt_stress"])
        rmse = lambda x: float(np.sqrt(np.mean(np.concatenate([np.ravel(v) for v in x]) ** 2)))  # noqa
        print(f"  test RMSE [{kind:12s}]  E/atom {1000 * rmse(de):7.2f} meV  "
              f"F {1000 * rmse(df):7.1f} meV/A  S {1000 * rmse(ds):6.2f} meV/A^3")

    rng = np.random.default_rng(0)
    atoms = frames[0]
    for kind, calc in calcs.items():
        e0, f0, s0 = predict(calc, atoms)
        es, fs, ss = [], [], []
        for _ in range(N_ROT):
            q = random_o3(rng)
            e, f, s = predict(calc, transformed(atoms, q))
            es.append(e)
            fs.append(f @ q)          # rotate back: F_back = F(QR) Q
            ss.append(q.T @ s @ q)
        fs, ss, es = np.array(fs), np.array(ss), np.array(es)
        f_spread = np.sqrt(np.mean((fs - fs.mean(0)) ** 2))
        s_spread = np.sqrt(np.mean((ss - ss.mean(0)) ** 2))
        print(f"  O(3) spread [{kind:12s}] ({N_ROT} random O(3), {len(atoms)} atoms): "
              f"E std {1000 * es.std():.3f} meV | F RMS {1000 * f_spread:.2f} meV/A "
              f"(max |dF| {1000 * np.abs(fs - f0).max():.1f}, |F| rms "
              f"{1000 * np.sqrt(np.mean(f0**2)):.0f}) | S RMS {1000 * s_spread:.4f} meV/A^3")


def main():
    paths = sys.argv[1:] or sorted(glob.glob(os.path.join(ROOT, "symmon", "data", "tiny_pet*.pt")))
    frames = ase.io.read(os.path.join(HERE, "data", "test.xyz"), ":")
    for path in paths:
        evaluate(path, frames)


if __name__ == "__main__":
    main()
