"""Tiny random-weight models of the families symmon evaluates (seconds to build).

Orb v3 through orb-models' own architecture constructors (``orb_v3_direct_architecture``,
``orb_v3_conservative_architecture``) with small widths; MACE through mace-torch's
``ScaleShiftMACE`` with small hypers. No weights are downloaded.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from ase.build import bulk, molecule

#: small widths: ~12 k parameters, a 32-atom orbit of 9 copies in ~0.1 s on one CPU core
ORB_TINY = dict(latent_dim=16, base_mlp_hidden_dim=16, base_mlp_depth=1,
                head_mlp_hidden_dim=16, head_mlp_depth=1, num_message_passing_steps=2)


@contextlib.contextmanager
def default_dtype(dtype):
    """Orb builds its graphs in torch's default dtype: float64 models need it set."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def tiny_orb(kind: str = "direct", dtype=torch.float32, seed: int = 0, max_neighbors=20,
             radius: float = 6.0):
    """A random-weight Orb v3 regressor (``kind``: ``"direct"`` or ``"conservative"``)."""
    from orb_models.forcefield import pretrained
    from orb_models.forcefield.atomic_system import SystemConfig

    torch.manual_seed(seed)
    build = {"direct": pretrained.orb_v3_direct_architecture,
             "conservative": pretrained.orb_v3_conservative_architecture}[kind]
    model = build(**ORB_TINY, device="cpu",
                  system_config=SystemConfig(radius=radius, max_num_neighbors=max_neighbors))
    return model.to(dtype).eval()


def tiny_orb_calculator(kind: str = "direct", dtype=torch.float32, **kwargs):
    from orb_models.forcefield.calculator import ORBCalculator

    return ORBCalculator(tiny_orb(kind, dtype, **kwargs), device="cpu")


def copper(seed: int = 1, repeat=(2, 2, 2)):
    """Rattled fcc Cu (32 atoms by default), periodic."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * repeat
    atoms.rattle(0.05, seed=seed)
    return atoms


def water_dimer_like():
    """A small molecule (no cell), rattled."""
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.02, seed=3)
    return atoms


def elements(seed: int = 7):
    """Two proper and two improper group elements."""
    from scipy.spatial.transform import Rotation

    rotations = Rotation.random(2, random_state=seed).as_matrix()
    return np.concatenate([rotations, -rotations[::-1]])
