"""Batched adapter for metatomic models: the whole orbit in a few forward calls.

The structure's :class:`~metatomic.torch.System` and its neighbour lists are built
once; ``K`` copies are made by rotating positions, cell *and* neighbour-list vectors
in one batched product (neighbour lists are never recomputed per copy; this is what
``metatomic.torch.o3.O3Transformations.transform_systems`` does, without its per-copy
Python loop of small matrix products), and the copies go through the model in chunks
of ``chunk_size``. Direct outputs run under ``torch.no_grad()``; conservative
forces/stress use autograd with one leaf per copy, so one backward pass gives every
copy's gradient.
"""

from __future__ import annotations

import os
import pathlib
from typing import Dict, List, Optional, Sequence

import torch

from .base import OrbitModel, output_kind, validate_atoms, validate_matrices

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_DIRECT_UNITS = {"energy": "eV", "energies": "eV", "non_conservative_forces": "eV/Angstrom",
                 "non_conservative_stress": "eV/Angstrom^3"}
_GRADIENT_OUTPUTS = ("forces", "stress")
#: symmon name -> model output names that provide it, preferred first (metatomic's
#: standard spelling changed from plural to singular in 0.1.19)
#: standard outputs are requested per atom / per structure whatever the model declares
#: (metatrain declares "atom" to mean "can also give per-atom contributions")
_SAMPLE_KINDS = {"non_conservative_forces": "atom", "non_conservative_force": "atom",
                 "non_conservative_stress": "system"}
_ALIASES = {"non_conservative_forces": ("non_conservative_force", "non_conservative_forces"),
            "features": ("feature", "features")}


def load_metatomic_model(model, extensions_directory=None):
    """An :class:`~metatomic.torch.AtomisticModel` from a path, a model or a calculator."""
    from metatomic.torch import load_atomistic_model

    if isinstance(model, (str, bytes, os.PathLike)):
        path = pathlib.Path(os.fsdecode(model))
        if not path.exists():
            raise FileNotFoundError(f"model file {str(path)!r} does not exist")
        return load_atomistic_model(str(path), extensions_directory=extensions_directory)
    if hasattr(model, "capabilities") and hasattr(model, "requested_neighbor_lists"):
        return model
    calculator_model = getattr(model, "_model", None)  # a metatomic_ase.MetatomicCalculator
    if calculator_model is not None and hasattr(calculator_model, "capabilities"):
        return calculator_model
    raise TypeError(f"cannot use {type(model).__name__} as a metatomic model; pass a .pt "
                    "path, an AtomisticModel or a MetatomicCalculator")


def _model_file(model) -> Optional[str]:
    """The file a model came from (a path, or a MetatomicCalculator's ``model`` parameter)."""
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    parameters = getattr(model, "parameters", None)
    return parameters.get("model") if isinstance(parameters, dict) else None


def per_copy_values(block, n_copies: int, n_atoms: int, name: str = "output") -> torch.Tensor:
    """Block values ordered by copy: ``(K, N, ...)`` for per-atom, ``(K, ...)`` otherwise."""
    values, samples = block.values, block.samples
    if "atom" not in samples.names:
        return values[torch.argsort(samples.column("system"))]
    order = samples.column("system") * n_atoms + samples.column("atom")
    if len(order) != n_copies * n_atoms:
        raise RuntimeError(f"{name!r} has {len(order)} atom rows, expected "
                           f"{n_copies * n_atoms}")
    return values[torch.argsort(order)].reshape((n_copies, n_atoms) + tuple(values.shape[1:]))


class MetatomicOrbitModel(OrbitModel):
    """Evaluate a metatomic model on O(3)-transformed copies in batched calls.

    :param model: ``.pt`` path, :class:`~metatomic.torch.AtomisticModel` or
        ``metatomic_ase.MetatomicCalculator``
    :param device: torch device (default: the first of the model's supported devices
        that is available, CUDA first when the model lists it)
    :param chunk_size: copies per forward call (default 32 on CPU, 256 on GPUs)
    """

    def __init__(self, model, *, device: Optional[str] = None,
                 chunk_size: Optional[int] = None, extensions_directory=None):
        from metatomic.torch import pick_device

        self.model = load_metatomic_model(model, extensions_directory)
        self.model_path = _model_file(model)
        capabilities = self.model.capabilities()
        self.capabilities = capabilities
        self.dtype = _DTYPES[capabilities.dtype]
        self.device = torch.device(pick_device(capabilities.supported_devices, device))
        self.model.to(self.device)
        if chunk_size is None:  # small batches are fastest on CPU, large ones on GPUs
            chunk_size = 32 if self.device.type == "cpu" else 256
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.chunk_size = chunk_size
        self.atomic_types = sorted(int(t) for t in capabilities.atomic_types)
        self._neighbor_calculators = self._make_neighbor_calculators()
        self._outputs = dict(capabilities.outputs.items())
        self._direct = (capabilities.length_unit.lower() in ("angstrom", "a")
                        and not self.model.requested_inputs(use_new_names=True)
                        and hasattr(self.model, "module"))

    # -- capabilities --------------------------------------------------------------
    @property
    def available_outputs(self) -> Sequence[str]:
        names = [name for name in self._outputs if not name.startswith("o3::")]
        names += [name for name, keys in _ALIASES.items() if any(k in self._outputs for k in keys)]
        if "energy" in self._outputs:
            names += ["energies", "forces", "stress"]
        return tuple(dict.fromkeys(names))

    def model_key(self, name: str) -> str:
        """The model's own output name for symmon's ``name``."""
        for key in _ALIASES.get(name, (name,)):
            if key in self._outputs:
                return key
        return name

    @property
    def cutoff(self) -> float:
        return float(self.capabilities.interaction_range)

    def _make_neighbor_calculators(self):
        from vesin.metatomic import neighbor_lists_for_model

        return neighbor_lists_for_model("angstrom", self.model, skin=0.0)

    # -- systems -------------------------------------------------------------------
    def _check_species(self, atoms) -> None:
        unknown = sorted(set(atoms.numbers.tolist()) - set(self.atomic_types))
        if unknown:
            raise ValueError(f"the model does not know atomic numbers {unknown}; it was "
                             f"trained on {self.atomic_types}")

    def system(self, atoms):
        """The structure's System with every neighbour list the model requests."""
        from metatomic.torch import System

        system = System(
            types=torch.as_tensor(atoms.numbers, dtype=torch.int32, device=self.device),
            positions=torch.as_tensor(atoms.positions, dtype=self.dtype, device=self.device),
            cell=torch.as_tensor(atoms.cell.array * atoms.pbc[:, None], dtype=self.dtype,
                                 device=self.device),
            pbc=torch.as_tensor(atoms.pbc, device=self.device),
        )
        for calculator in self._neighbor_calculators:
            system.add_neighbor_list(calculator.options, calculator.compute(system))
        return system

    def _copies(self, system, matrices: torch.Tensor, positions=None, cell=None):
        """Copies with positions ``x Q^T``, cell ``C Q^T`` and neighbour vectors ``r Q^T``.

        The neighbour lists are transported, not recomputed: pairs and cell shifts are
        invariant, only the vectors rotate (the same operation as metatomic's
        ``O3Transformations.transform_systems``, done here as one batched product for
        all copies instead of a Python loop of small ones). With ``positions``/``cell``
        (one tensor per copy, e.g. autograd leaves) the neighbour vectors are
        registered for autograd against each copy.
        """
        from metatensor.torch import TensorBlock
        from metatomic.torch import System, register_autograd_neighbors

        def rotate(vectors):  # (..., n, 3) with or without a leading copy axis
            pattern = "kni,kji->knj" if vectors.dim() == 3 else "ni,kji->knj"
            return torch.einsum(pattern, vectors, matrices)

        rotated_positions = rotate(system.positions if positions is None else positions)
        rotated_cells = rotate(system.cell if cell is None else cell)
        neighbors = [(options, system.get_neighbor_list(options))
                     for options in system.known_neighbor_lists()]
        rotated_vectors = [rotate(block.values.detach()[..., 0]).unsqueeze(-1)
                           for _, block in neighbors]
        track_gradients = positions is not None
        copies = []
        for k in range(matrices.shape[0]):
            copy = System(types=system.types, positions=rotated_positions[k],
                          cell=rotated_cells[k], pbc=system.pbc)
            for (options, block), vectors in zip(neighbors, rotated_vectors):
                rotated = TensorBlock(vectors[k], block.samples, block.components,
                                      block.properties)
                if track_gradients:
                    register_autograd_neighbors(copy, rotated)
                copy.add_neighbor_list(options, rotated)
            copies.append(copy)
        return copies

    # -- evaluation ----------------------------------------------------------------
    def _requests(self, outputs: Sequence[str]):
        from metatomic.torch import ModelOutput

        requests = {}
        for name in outputs:
            if name in _GRADIENT_OUTPUTS or name in ("energy", "energies"):
                # one 'energy' request; per atom when 'energies' is wanted (summed for totals)
                per_atom = "energies" in outputs
                requests["energy"] = ModelOutput(unit="eV",
                                                 sample_kind="atom" if per_atom else "system")
            else:
                key = self.model_key(name)
                declared = self._outputs[key]
                unit = _DIRECT_UNITS.get(name, _DIRECT_UNITS.get(name + "s", declared.unit))
                requests[key] = ModelOutput(unit=unit,
                                            sample_kind=_SAMPLE_KINDS.get(
                                                name, declared.sample_kind))
        return requests

    def _run(self, systems: List, requests) -> Dict:
        """The model on ``systems``, outputs in the requested units.

        When the model works in Å and needs no extra inputs, its inner module is called
        directly (``AtomisticModel.module``): the wrapper would otherwise copy every
        System for a unit conversion that is the identity; output units are then
        converted here.
        """
        if self._direct:
            import metatensor.torch as mts
            from metatomic.torch import unit_conversion_factor

            raw = self.model.module(systems=systems, outputs=requests, selected_atoms=None)
            for name, tensor in raw.items():
                declared, wanted = self._outputs[name].unit, requests[name].unit
                factor = unit_conversion_factor(declared, wanted) if declared and wanted \
                    else 1.0
                if factor != 1.0:
                    raw[name] = mts.multiply(tensor, factor)
            return raw
        from metatomic.torch import ModelEvaluationOptions

        options = ModelEvaluationOptions(length_unit="angstrom", outputs=requests)
        return self.model(systems, options, check_consistency=False)

    def evaluate(self, atoms, matrices, outputs: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Outputs on the copies ``x Q_k^T`` (transformed frame), float64 ``(K, ...)``."""
        self.check_outputs(outputs)
        validate_atoms(atoms, outputs)
        self._check_species(atoms)
        matrices = validate_matrices(matrices)
        system = self.system(atoms)
        n_atoms = len(atoms)
        chunks: Dict[str, List[torch.Tensor]] = {name: [] for name in outputs}
        for start in range(0, len(matrices), self.chunk_size):
            block = torch.as_tensor(matrices[start:start + self.chunk_size], dtype=self.dtype,
                                    device=self.device)
            for name, value in self._evaluate_chunk(system, block, outputs, n_atoms,
                                                    abs(atoms.cell.volume)).items():
                chunks[name].append(value.detach().to("cpu", torch.float64))
        return {name: torch.cat(values) for name, values in chunks.items()}

    def _evaluate_chunk(self, system, matrices, outputs, n_atoms, volume):
        direct = [name for name in outputs if name not in _GRADIENT_OUTPUTS]
        gradient = [name for name in outputs if name in _GRADIENT_OUTPUTS]
        results = {}
        if gradient:
            results.update(self._gradient_chunk(system, matrices, gradient, direct, n_atoms,
                                                volume))
        else:
            with torch.no_grad():
                copies = self._copies(system, matrices)
                raw = self._run(copies, self._requests(direct))
            results.update(self._unpack(raw, direct, len(copies), n_atoms))
        return results

    def _gradient_chunk(self, system, matrices, gradient, direct, n_atoms, volume):
        k = matrices.shape[0]
        positions = system.positions.detach().expand(k, -1, -1).clone().requires_grad_(True)
        strain = torch.eye(3, dtype=self.dtype, device=self.device).expand(k, 3, 3) \
            .clone().requires_grad_("stress" in gradient)
        copies = self._copies(system, matrices, positions=positions @ strain,
                              cell=system.cell.expand(k, 3, 3) @ strain)
        raw = self._run(copies, self._requests(["energy"] + direct))
        results = self._unpack(raw, direct, k, n_atoms)
        energy = raw["energy"].block().values.reshape(-1)
        wrt = [positions] + ([strain] if "stress" in gradient else [])
        grads = torch.autograd.grad(energy.sum(), wrt)
        if "forces" in gradient:  # -dE/dx in the input frame, rotated to the copy's frame
            results["forces"] = torch.einsum("kni,kji->knj", -grads[0], matrices)
        if "stress" in gradient:
            stress_input_frame = grads[1] / volume
            results["stress"] = matrices @ stress_input_frame @ matrices.transpose(1, 2)
        return results

    def _unpack(self, raw, names, n_copies, n_atoms) -> Dict[str, torch.Tensor]:
        results = {}
        for name in names:
            key = "energy" if name == "energies" else self.model_key(name)
            values = per_copy_values(raw[key].block(), n_copies, n_atoms, name)
            if output_kind(name) != "feature" and values.shape[-1] == 1:
                values = values[..., 0]
            if name == "energy" and values.dim() > 1:  # per-atom energies summed
                values = values.reshape(n_copies, -1).sum(dim=1)
            results[name] = values
        return results
