"""The whole orbit in a few forward calls: chunks of rotated copies through one model.

Direct outputs run under ``torch.no_grad()``. Conservative forces and stress use
autograd with one leaf per copy (positions ``x`` and a strain ``h`` acting as
``x (1 + h)``, cell ``C (1 + h)``), so one backward pass gives every copy's
gradient: ``F = -dE/dx`` and ``sigma = (1/V) dE/dh`` in the input frame, rotated to
the copy's frame (``F Q^T``, ``Q sigma Q^T``).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import torch

from .catalogue import GRADIENT_OUTPUTS, OutputCatalogue
from .memory import ChunkPlanner, check_chunk_size  # noqa: F401 (re-exported)
from .orbit_systems import OrbitSystems, output_values

#: ``run(systems, requests) -> {model name: TensorMap}``
Runner = Callable[[List, Dict], Dict]


def atomistic_model_runner(model) -> Runner:
    """``AtomisticModel.forward`` itself, systems in Å and outputs in requested units.

    Going through the public wrapper (not its inner module) keeps every name
    translation and unit conversion metatomic does: the batched path returns what
    the model returns to any engine.
    """
    from metatomic.torch import ModelEvaluationOptions

    def run(systems, requests):
        options = ModelEvaluationOptions(length_unit="angstrom", outputs=requests)
        return model(systems, options, check_consistency=False)
    return run


class BatchedEvaluator:
    """Evaluate outputs on ``K`` rotated copies, as many per call as ``planner`` says
    (:class:`~symmon.adapters.memory.ChunkPlanner`: an explicit ``chunk_size``, else from
    the memory one copy takes; out-of-memory halves the chunk)."""

    def __init__(self, systems: OrbitSystems, catalogue: OutputCatalogue, run: Runner,
                 planner: ChunkPlanner):
        self.systems, self.catalogue, self.run = systems, catalogue, run
        self.planner = planner
        self._requests: Dict[tuple, Dict] = {}

    @property
    def chunk_size(self) -> Optional[int]:
        """The explicit chunk size (``None``: planned from memory)."""
        return self.planner.chunk_size

    def requests(self, names: Sequence[str]) -> Dict:
        """The model's requests for ``names``, built once per set of names."""
        key = tuple(names)
        if key not in self._requests:
            self._requests[key] = self.catalogue.requests(names)
        return self._requests[key]

    def evaluate(self, atoms, matrices, names: Sequence[str],
                 on_device: Sequence[str] = ()) -> Dict[str, torch.Tensor]:
        """Outputs on the copies ``x Q_k^T`` (transformed frame), float64 ``(K, ...)``
        on the CPU; those in ``on_device`` stay on the model's device, in its dtype."""
        system = self.systems.system(atoms)
        volume = abs(atoms.cell.volume)

        def forward(start, stop):
            block = torch.as_tensor(matrices[start:stop], dtype=self.systems.dtype,
                                    device=self.systems.device)
            return {name: value.detach() if name in on_device
                    else value.detach().to("cpu", torch.float64)
                    for name, value in self._chunk(system, block, names, len(atoms),
                                                   volume).items()}

        chunks = self.planner.run(len(matrices), len(atoms), forward)
        return {name: torch.cat([chunk[name] for chunk in chunks]) for name in names}

    def _chunk(self, system, matrices, names, n_atoms, volume):
        direct = [name for name in names if name not in GRADIENT_OUTPUTS]
        gradient = [name for name in names if name in GRADIENT_OUTPUTS]
        if gradient:
            return self._gradient_chunk(system, matrices, gradient, direct, n_atoms, volume)
        with torch.no_grad():
            copies = self.systems.copies(system, matrices)
            raw = self.run(copies, self.requests(direct))
        return self.unpack(raw, direct, len(copies), n_atoms)

    def _gradient_chunk(self, system, matrices, gradient, direct, n_atoms, volume):
        k = matrices.shape[0]
        positions = system.positions.detach().expand(k, -1, -1).clone().requires_grad_(True)
        strain = torch.eye(3, dtype=matrices.dtype, device=matrices.device).expand(k, 3, 3) \
            .clone().requires_grad_("stress" in gradient)
        copies = self.systems.copies(system, matrices, positions=positions @ strain,
                                     cell=system.cell.expand(k, 3, 3) @ strain)
        raw = self.run(copies, self.requests(["energy"] + direct))
        results = self.unpack(raw, direct, k, n_atoms)
        energy = raw[self.catalogue.key("energy")].block().values.reshape(-1)
        wrt = [positions] + ([strain] if "stress" in gradient else [])
        grads = torch.autograd.grad(energy.sum(), wrt)
        if "forces" in gradient:  # -dE/dx in the input frame, rotated to the copy's frame
            results["forces"] = torch.einsum("kni,kji->knj", -grads[0], matrices)
        if "stress" in gradient:
            stress_input_frame = grads[1] / volume
            results["stress"] = matrices @ stress_input_frame @ matrices.transpose(1, 2)
        return results

    def unpack(self, raw, names, n_copies, n_atoms) -> Dict[str, torch.Tensor]:
        """Per-copy tensors of ``names`` from the model's TensorMaps."""
        results = {}
        for name in names:
            key = self.catalogue.key("energy" if name == "energies" else name)
            values = output_values(raw[key].block(), name, n_copies, n_atoms)
            if name == "energy" and values.dim() > 1:  # per-atom energies summed
                values = values.reshape(n_copies, -1).sum(dim=1)
            results[name] = values
        return results
