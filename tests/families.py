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


#: output scale of the tiny Orb's heads: its random forces are ~0.004 eV/Å, far below a
#: trained model's and below the thresholds' 0.5 eV/Å floor; x100 gives |F| ~ 0.4 eV/Å
ORB_OUTPUT_SCALE = 100.0


def tiny_orb(kind: str = "direct", dtype=torch.float32, seed: int = 0, max_neighbors=20,
             radius: float = 6.0, scale: float = ORB_OUTPUT_SCALE):
    """A random-weight Orb v3 regressor (``kind``: ``"direct"`` or ``"conservative"``),
    its heads' output standard deviations multiplied by ``scale`` (energy, direct forces
    and stress: the normalisers a trained model sets from its data)."""
    from orb_models.forcefield import pretrained
    from orb_models.forcefield.atomic_system import SystemConfig

    torch.manual_seed(seed)
    build = {"direct": pretrained.orb_v3_direct_architecture,
             "conservative": pretrained.orb_v3_conservative_architecture}[kind]
    model = build(**ORB_TINY, device="cpu",
                  system_config=SystemConfig(radius=radius, max_num_neighbors=max_neighbors))
    for head in model.heads.values():
        normalizer = getattr(head, "normalizer", None)
        if normalizer is not None:
            normalizer.bn.running_var *= scale ** 2
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


#: small MACE hypers: ~24 k parameters, 3 species, two interactions, l <= 2
MACE_TINY = dict(r_max=4.0, num_bessel=4, num_polynomial_cutoff=5, max_ell=2,
                 num_interactions=2, correlation=2, avg_num_neighbors=10.0)


def tiny_mace(dtype=torch.float64, seed: int = 0):
    """A random-weight ``ScaleShiftMACE`` for H, C, O, Cu (exactly equivariant)."""
    from symmon.adapters.mace import import_mace

    import_mace()
    from e3nn import o3
    from mace import modules

    torch.manual_seed(seed)
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    model = modules.ScaleShiftMACE(
        **MACE_TINY, interaction_cls=block, interaction_cls_first=block,
        num_elements=4, hidden_irreps=o3.Irreps("8x0e+8x1o"), MLP_irreps=o3.Irreps("8x0e"),
        atomic_energies=np.array([-1.0, -2.0, -3.0, -4.0]), atomic_numbers=[1, 6, 8, 29],
        gate=torch.nn.functional.silu, atomic_inter_scale=1.0, atomic_inter_shift=0.0)
    return model.to(dtype).eval()


def tiny_mace_calculator(dtype=torch.float64):
    from symmon.adapters.mace import mace_calculator

    return mace_calculator(tiny_mace(dtype))


if __name__ == "__main__":  # python tests/families.py: writes tests/data/tiny_mace.model
    import os

    path = os.path.join(os.path.dirname(__file__), "data", "tiny_mace.model")
    torch.save(tiny_mace(), path)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")
