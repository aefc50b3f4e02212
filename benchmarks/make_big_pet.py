"""Build a PET-MAD-sized PET with random weights (no training) and export it to a .pt.

The architecture follows PET-MAD (metatrain's PET, ``d_pet 256``, 2 GNN layers of 2
attention layers, cutoff 4.5 A) for two species (Ni 28, Cu 29) and the three heads the
monitor uses: ``energy``, ``non_conservative_force`` (per atom, Cartesian rank 1) and
``non_conservative_stress`` (per system, Cartesian rank 2). The weights are metatrain's
random initialisation (seeded): predictions are meaningless, but the cost of a forward
call is that of a real model of this size.

    python -m benchmarks.make_big_pet [-o benchmarks/_models/big_pet.pt] [--f64]
"""

from __future__ import annotations

import argparse
import os

from ._common import HERE

DEFAULT_PATH = os.path.join(HERE, "_models", "big_pet.pt")

HYPERS = {
    "cutoff": 4.5, "cutoff_width": 0.5, "d_pet": 256, "d_head": 256, "d_node": 256,
    "d_feedforward": 512, "num_heads": 8, "num_attention_layers": 2, "num_gnn_layers": 2,
}


def dataset_info():
    from metatrain.utils.data import DatasetInfo
    from metatrain.utils.data.target_info import (get_energy_target_info,
                                                  get_generic_target_info)

    return DatasetInfo(
        length_unit="angstrom",
        atomic_types=[28, 29],
        targets={
            "energy": get_energy_target_info("energy", {"quantity": "energy", "unit": "eV"}),
            "non_conservative_force": get_generic_target_info(
                "non_conservative_force",
                {"quantity": "force", "unit": "eV/A", "type": {"cartesian": {"rank": 1}},
                 "num_subtargets": 1, "sample_kind": "atom"}),
            "non_conservative_stress": get_generic_target_info(
                "non_conservative_stress",
                {"quantity": "pressure", "unit": "eV/A^3",
                 "type": {"cartesian": {"rank": 2}}, "num_subtargets": 1,
                 "sample_kind": "system"}),
        },
    )


def make_big_pet(path: str = DEFAULT_PATH, dtype: str = "float32", seed: int = 0,
                 hypers=None) -> str:
    """Create (or overwrite) ``path``; returns it."""
    import torch
    from metatrain.pet import PET
    from metatrain.utils.architectures import get_default_hypers

    torch.manual_seed(seed)
    model_hypers = dict(get_default_hypers("pet")["model"])
    model_hypers.update(HYPERS if hypers is None else hypers)
    model = PET(model_hypers, dataset_info())
    model = model.to({"float32": torch.float32, "float64": torch.float64}[dtype])
    model = model.eval()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    model.export().save(path)
    n_parameters = sum(p.numel() for p in model.parameters())
    print(f"exported {path}: PET {HYPERS}, {n_parameters} parameters, {dtype}")
    return path


def ensure_big_pet(path: str = DEFAULT_PATH) -> str:
    if not os.path.exists(path):
        make_big_pet(path)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", default=DEFAULT_PATH)
    p.add_argument("--f64", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    make_big_pet(args.output, "float64" if args.f64 else "float32", args.seed)


if __name__ == "__main__":
    main()
