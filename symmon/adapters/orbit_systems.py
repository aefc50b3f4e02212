"""The orbit as a batch of metatomic Systems, and the model's rows back per copy.

The structure's :class:`~metatomic.torch.System` and its neighbour lists are built
once; the ``K`` copies rotate positions, cell *and* neighbour-list vectors in one
batched product. Pairs and cell shifts are invariant under ``x -> x Q^T``, so the
lists are transported, never recomputed (what
``metatomic.torch.o3.O3Transformations.transform_systems`` does, without its
per-copy loop of small products), and atoms and edges keep their order in every copy.
"""

from __future__ import annotations

from typing import List

import torch

from ..core.outputs import output_kind


class OrbitSystems:
    """Build a structure's System and its rotated copies.

    :param neighbor_calculators: vesin calculators of the lists the model requests
        (``vesin.metatomic.neighbor_lists_for_model``, positions in Å)
    """

    def __init__(self, neighbor_calculators, dtype: torch.dtype, device: torch.device):
        self.neighbor_calculators = list(neighbor_calculators)
        self.dtype, self.device = dtype, device

    def system(self, atoms):
        """The structure's System (Å) with every neighbour list the model requests."""
        from metatomic.torch import System

        system = System(
            types=torch.as_tensor(atoms.numbers, dtype=torch.int32, device=self.device),
            positions=torch.as_tensor(atoms.positions, dtype=self.dtype, device=self.device),
            cell=torch.as_tensor(atoms.cell.array * atoms.pbc[:, None], dtype=self.dtype,
                                 device=self.device),
            pbc=torch.as_tensor(atoms.pbc, device=self.device),
        )
        for calculator in self.neighbor_calculators:
            system.add_neighbor_list(calculator.options, calculator.compute(system))
        return system

    def copies(self, system, matrices: torch.Tensor, positions=None, cell=None) -> List:
        """Copies with positions ``x Q^T``, cell ``C Q^T`` and neighbour vectors ``r Q^T``.

        With ``positions``/``cell`` (one tensor per copy, e.g. autograd leaves) the
        neighbour vectors are registered for autograd against each copy.
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
        # per-copy views in one call each (not one indexing op per copy and tensor)
        rotated_vectors = [rotate(block.values.detach()[..., 0]).unsqueeze(-1).unbind(0)
                           for _, block in neighbors]
        copies = []
        for k, (copy_positions, copy_cell) in enumerate(zip(rotated_positions.unbind(0),
                                                            rotated_cells.unbind(0))):
            # metatomic validates each System and list: 3 host reads (syncs on GPUs)
            copy = System(types=system.types, positions=copy_positions, cell=copy_cell,
                          pbc=system.pbc)
            for (options, block), vectors in zip(neighbors, rotated_vectors):
                rotated = TensorBlock(vectors[k], block.samples, block.components,
                                      block.properties)
                if positions is not None:
                    register_autograd_neighbors(copy, rotated)
                copy.add_neighbor_list(options, rotated)
            copies.append(copy)
        return copies


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


def output_values(block, name: str, n_copies: int, n_atoms: int) -> torch.Tensor:
    """:func:`per_copy_values` with the trailing property axis of size 1 dropped
    (features keep theirs)."""
    values = per_copy_values(block, n_copies, n_atoms, name)
    if output_kind(name) != "feature" and values.shape[-1] == 1:
        values = values[..., 0]
    return values
