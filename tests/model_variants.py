"""The metatomic model variants users bring, built with metatrain (random weights, tiny PET).

Each variant is a metatrain PET (``d_pet = 8``, one GNN layer) with untrained
weights, exported through metatrain's public ``export()`` to an ``AtomisticModel``,
so its names, units and sample kinds are exactly those of a model trained with
``mtt train`` on the same targets. Building one takes a fraction of a second.

=================== ======================================================== =======
variant             targets / options                                        dtype
=================== ======================================================== =======
``nc_plural``       energy, ``non_conservative_forces`` (metatrain's plural), float64
                    ``non_conservative_stress``
``nc_plural_f32``   the same                                                 float32
``nc_singular``     energy, ``non_conservative_force`` (no stress head)      float32
``energy_only``     energy (forces and stress by autograd only)              float64
``nanometer``       energy, ``non_conservative_forces`` in eV/nm, length nm   float64
``extra_inputs``    energy, ``non_conservative_forces``; charge and spin      float64
                    conditioning: the model requests the inputs ``charge``
                    and ``spin_multiplicity``
``system_energy``   ``energy_only`` re-exported declaring a per-structure    float64
                    energy only (no per-atom energies)
``forces_only``     ``non_conservative_force`` only (no energy)              float64
=================== ======================================================== =======

``Variant.trained`` maps symmon's output names to the names the model was trained
with, so that references ask the model under its own names, independently of the
adapters' name resolution.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, Tuple

import torch

ATOMIC_TYPES = [1, 6, 7, 8, 28, 29]
CUTOFF_ANGSTROM = 3.5


@dataclass
class Variant:
    name: str
    model: object  # metatomic.torch.AtomisticModel
    trained: Dict[str, str] = field(default_factory=dict)  # symmon name -> model name
    has_energy: bool = True
    per_atom_energy: bool = True

    @property
    def dtype(self) -> str:
        return self.model.capabilities().dtype

    @property
    def tolerance(self) -> float:
        return 1e-5 if self.dtype == "float32" else 1e-10


def _hypers(cutoff: float, **options):
    from metatrain.utils.architectures import get_default_hypers

    hypers = copy.deepcopy(get_default_hypers("pet")["model"])
    hypers.update(d_pet=8, d_head=8, d_node=8, d_feedforward=8, num_heads=1,
                  num_attention_layers=1, num_gnn_layers=1, cutoff=cutoff,
                  cutoff_width=cutoff / 7)
    hypers.update(options)
    return hypers


def _targets(names: Tuple[str, ...], length: str):
    from metatrain.utils.data.target_info import (get_energy_target_info,
                                                  get_generic_target_info)

    targets = {}
    for name in names:
        if name == "energy":
            targets[name] = get_energy_target_info(name, {"quantity": "energy", "unit": "eV"})
            continue
        rank, sample_kind = (2, "system") if "stress" in name else (1, "atom")
        unit = f"eV/{length}^3" if rank == 2 else f"eV/{length}"
        targets[name] = get_generic_target_info(name, {
            "quantity": "stress" if rank == 2 else "force", "unit": unit,
            "type": {"cartesian": {"rank": rank}}, "num_subtargets": 1,
            "sample_kind": sample_kind})
    return targets


def build_pet(targets: Tuple[str, ...], dtype=torch.float64, length_unit="angstrom",
              seed: int = 0, **options):
    """An untrained tiny PET on ``targets``, exported to an ``AtomisticModel``."""
    from metatrain.pet import PET
    from metatrain.utils.data import DatasetInfo

    nanometer = length_unit == "nanometer"
    info = DatasetInfo(length_unit=length_unit, atomic_types=ATOMIC_TYPES,
                       targets=_targets(targets, "nm" if nanometer else "A"))
    cutoff = CUTOFF_ANGSTROM / 10 if nanometer else CUTOFF_ANGSTROM
    torch.manual_seed(seed)
    model = PET(_hypers(cutoff, **options), info)
    if model.system_conditioning is not None:  # its output gate starts at zero (a no-op)
        torch.nn.init.normal_(model.system_conditioning.project[-1].weight, std=0.5)
    return model.to(dtype).export()


def with_system_energy(atomistic_model):
    """The same module, re-exported declaring its energy per structure only."""
    from metatomic.torch import AtomisticModel, ModelCapabilities, ModelMetadata, ModelOutput

    capabilities = atomistic_model.capabilities()
    outputs = {"energy": ModelOutput(unit="eV", sample_kind="system")}
    return AtomisticModel(atomistic_model.module, ModelMetadata(name="system-energy PET"),
                          ModelCapabilities(outputs=outputs,
                                            atomic_types=capabilities.atomic_types,
                                            interaction_range=capabilities.interaction_range,
                                            length_unit=capabilities.length_unit,
                                            supported_devices=["cpu"],
                                            dtype=capabilities.dtype))


def build_variants() -> Dict[str, Variant]:
    plural = ("energy", "non_conservative_forces", "non_conservative_stress")
    nc_plural = {"non_conservative_forces": "non_conservative_forces",
                 "non_conservative_stress": "non_conservative_stress"}
    energy_only = build_pet(("energy",), seed=3)
    variants = [
        Variant("nc_plural", build_pet(plural, seed=1), nc_plural),
        Variant("nc_plural_f32", build_pet(plural, torch.float32, seed=1), nc_plural),
        Variant("nc_singular", build_pet(("energy", "non_conservative_force"), torch.float32,
                                         seed=2),
                {"non_conservative_forces": "non_conservative_force"}),
        Variant("energy_only", energy_only),
        Variant("nanometer", build_pet(("energy", "non_conservative_forces"),
                                       length_unit="nanometer", seed=4),
                {"non_conservative_forces": "non_conservative_forces"}),
        Variant("extra_inputs", build_pet(("energy", "non_conservative_forces"), seed=5,
                                          system_conditioning=True),
                {"non_conservative_forces": "non_conservative_forces"}),
        Variant("system_energy", with_system_energy(energy_only), per_atom_energy=False),
        Variant("forces_only", build_pet(("non_conservative_force",), seed=6),
                {"non_conservative_forces": "non_conservative_force"}, has_energy=False,
                per_atom_energy=False),
    ]
    return {variant.name: variant for variant in variants}


_SHARED: Dict[str, Variant] = {}


def shared_variants() -> Dict[str, Variant]:
    """:func:`build_variants`, built once per test session (warnings silenced)."""
    if not _SHARED:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _SHARED.update(build_variants())
    return _SHARED


def save_variant(variant: Variant, path) -> str:
    """Write the variant's ``AtomisticModel`` to a ``.pt`` file (as ``mtt export`` does)."""
    variant.model.save(str(path))
    return str(path)
