"""The numbers the community's rotate-and-compare benchmarks compute, from one orbit.

Model cards quote these next to the rigorous ε; ``symmon eval`` computes them from the
same orbit values (no extra model call). Only the proper rotations of the orbit are
used, as both benchmarks rotate and never invert. Copies are ``x Q_k^T``; the unrotated
prediction is the lab-frame copy.

* **MLIP Arena** (force equivariance test): for each rotation ``R``, the unrotated
  forces rotated, ``F_0 R^T``, against the forces predicted on the rotated structure
  ``F_R``: ``MAE = mean |F_0 R^T - F_R|`` over atoms and components (eV/Å) and the
  cosine of each atom's two vectors (1 where both are below 1e-10 eV/Å, -1 where one
  is). A rotation passes when ``MAE < 1e-3`` eV/Å and every atom's cosine
  ``> 0.999``; the structure passes when every rotation does.
* **ml-peg** (rotational invariance): over all pairs of orientations ``(i, j)``, the
  energy difference per atom ``|E_i - E_j| / N`` (mean and max, eV/atom) and the MAE of
  the forces brought back to one frame, ``mean |F_i R_i - F_j R_j|`` (eV/Å).

>>> import numpy as np
>>> q = np.array([[[0., -1, 0], [1, 0, 0], [0, 0, 1]]])
>>> f0 = np.array([[1., 2, 3]])
>>> arena_force_test(f0[None] @ q.transpose(0, 2, 1), f0, q)["passed"]
True
"""

from __future__ import annotations

from typing import Dict

import numpy as np

#: MLIP Arena's thresholds: force MAE (eV/Å), and 1 - the per-atom cosine
ARENA_MAE = 1e-3
ARENA_COSINE = 0.999
#: forces below this (eV/Å) are zero in the cosine
ARENA_ZERO = 1e-10


def proper(matrices: np.ndarray) -> np.ndarray:
    """Indices of the proper rotations (det +1) among ``matrices``."""
    return np.nonzero(np.linalg.det(matrices) > 0)[0]


def arena_force_test(forces: np.ndarray, unrotated: np.ndarray,
                     matrices: np.ndarray) -> Dict[str, object]:
    """MLIP Arena's force-equivariance criterion over rotations ``matrices``.

    :param forces: ``(K, N, 3)`` forces predicted on the rotated copies
    :param unrotated: ``(N, 3)`` forces of the structure as given
    :param matrices: ``(K, 3, 3)`` proper rotations
    :return: ``mae`` (mean over rotations), ``max_mae``, ``cosine`` (mean over
        rotations and atoms), ``min_cosine``, ``pass_fraction`` (of rotations),
        ``passed`` (every rotation)
    """
    expected = np.einsum("nj,kij->kni", unrotated, matrices)  # F_0 R^T
    mae = np.abs(expected - forces).mean(axis=(1, 2))
    norm_e, norm_f = np.linalg.norm(expected, axis=2), np.linalg.norm(forces, axis=2)
    zero_e, zero_f = norm_e < ARENA_ZERO, norm_f < ARENA_ZERO
    valid = ~(zero_e | zero_f)
    cosine = np.where(zero_e & zero_f, 1.0, -1.0)
    cosine[valid] = (expected * forces).sum(axis=2)[valid] / (norm_e * norm_f)[valid]
    passed = (mae < ARENA_MAE) & (cosine > ARENA_COSINE).all(axis=1)
    return {"mae": float(mae.mean()), "max_mae": float(mae.max()),
            "cosine": float(cosine.mean()), "min_cosine": float(cosine.min()),
            "pass_fraction": float(passed.mean()), "passed": bool(passed.all())}


def mlpeg_pairs(energies: np.ndarray, forces, matrices: np.ndarray,
                n_atoms: int) -> Dict[str, float]:
    """ml-peg's orientation-pair numbers: mean and max ``|ΔE|`` per atom (eV/atom) and
    the force MAE over pairs of orientations (eV/Å; ``NaN`` without forces)."""
    energies = np.asarray(energies, dtype=np.float64).reshape(-1)
    i, j = np.triu_indices(len(energies), k=1)
    delta = np.abs(energies[i] - energies[j]) / n_atoms
    result = {"energy_mean": float(delta.mean()) if len(delta) else 0.0,
              "energy_max": float(delta.max()) if len(delta) else 0.0,
              "forces_mae": float("nan")}
    if forces is not None and len(i):
        back = np.einsum("kni,kij->knj", forces, matrices)  # F_k Q_k: the unrotated frame
        total = sum(np.abs(back[a] - back[a + 1:]).mean(axis=(1, 2)).sum()
                    for a in range(len(back) - 1))
        result["forces_mae"] = float(total / len(i))
    return result
