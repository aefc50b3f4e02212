"""Small analytic metatomic models with a tunable amount of O(3) symmetry breaking.

The factory :func:`make_analytic_model` returns a :class:`metatomic.torch.AtomisticModel`
(float64 by default, TorchScript-compatible module) with four outputs, all computed in
closed form from the neighbour list the model requests
(``NeighborListOptions(cutoff, full_list, strict=True)``; both half and full lists are
supported, periodic and non-periodic systems alike):

``energy`` (per system, or per atom on request; unit eV)
``non_conservative_force`` (per atom, ``xyz`` component; eV/Å; the deprecated
    ``non_conservative_forces`` spelling is answered by ``AtomisticModel`` too)
``non_conservative_stress`` (per system, ``xyz_1 x xyz_2`` components; eV/Å^3)
``feature`` (per atom, 7 properties; the deprecated spelling ``features`` works too)

Notation. Every neighbour pair is turned into two *directed edges* ``e = (i -> j)``
with vector ``v_e = r_j - r_i + shift`` and length ``r_e`` (a full list already holds
both directions; a half list entry ``(i, j, v)`` is expanded to ``(i, v)`` and
``(j, -v)``). With ``r_c`` the cutoff,

    f_c(r) = (1 - (r / r_c)^2)^2           for r < r_c, 0 beyond (C^1 at r_c)
    phi(r) = D [(1 - exp(-alpha (r - r0)))^2 - 1]        (Morse, D=0.5, alpha=1.5, r0=1.6)
    M_k(i) = sum_{e from i} f_c(r_e) r_e^k v_e,   k = 0, 1, 2   (radial moments, vectors)

and ``a = break_symmetry``, ``e_x, e_z`` lab-frame unit vectors, ``[u]_x`` the
antisymmetric matrix of ``u`` (``[u]_x w = u x w``), ``V = |det cell|`` for periodic
systems and ``V = 1`` otherwise.

Energy (exactly invariant for ``a = 0``)::

    E_i = 1/2 sum_{e from i} f_c phi(r_e)
          + a [ z_i + M_0(i) . (M_1(i) x M_2(i)) + sum_{e from i} f_c v_ex v_ez ]
    E   = sum_i E_i

The lab-frame terms put power in (1,+1) (``z_i``), in (0,-1) (the triple product is a
pseudoscalar: invariant under rotations, odd under inversion) and in (0,+1)/(2,+1).

Forces (exactly equivariant vectors for ``a = 0``)::

    F_i = sum_{e from i} f_c(r_e) phi'(r_e) v_e / r_e
          + a [ e_z + M_0(i) x M_1(i) ]

``e_z`` is a constant lab vector, ``M_0 x M_1`` a pseudovector (power in (1,-1)).

Stress (exactly equivariant rank-2 tensor for ``a = 0``)::

    S = 1/(2V) sum_e f_c(r_e) phi'(r_e) v_e v_e^T / r_e
        + [P]_x                 with P = sum_i M_0(i) x M_1(i) (an equivariant,
                                  antisymmetric part, present for every ``a``)
        + a [ e_z e_z^T + [e_x]_x ]

``[P]_x`` is equivariant as a tensor (``det(Q)^2 = 1``), lives in the (1,-1) block of a
rank-2 tensor and so tests the antisymmetric channel without contributing to the
equivariance error; ``a [e_x]_x`` does break it. ``S`` is *not* symmetric.

Features (never equivariant, independent of ``a``), per atom ``i``::

    0: sum_e f_c                          (0,+1)
    1: M_0(i)_x                           (1,+1)
    2: sum_e f_c v_ex v_ey                (2,+1)
    3: sum_e f_c v_ez^3                   (1,+1) + (3,+1)
    4: (M_0(i) x M_1(i))_z                (1,-1)
    5: M_0(i) . (M_1(i) x M_2(i))         (0,-1)
    6: sum_e f_c v_ex^2 v_ey^2            (0,+1) + (2,+1) + (4,+1)

(the irreps are those of the function ``Q -> f(Q x)`` on O(3)).

Only the ``system``/``atom`` samples of ``selected_atoms`` are honoured: per-atom
outputs keep the selected rows, per-system energies sum the selected ``E_i``.
"""


from typing import Dict, List, Optional

import numpy as np
import torch
from metatensor.torch import Labels, TensorBlock, TensorMap
from metatomic.torch import (AtomisticModel, ModelCapabilities, ModelEvaluationOptions,
                             ModelMetadata, ModelOutput, NeighborListOptions, System)

__all__ = [
    "AnalyticModel", "make_analytic_model", "N_FEATURES", "OUTPUT_NAMES",
    "system_from_arrays", "add_neighbor_lists", "evaluate", "evaluate_orbit",
    "run_ase",
]

N_FEATURES = 7
#: current metatomic names of the outputs
OUTPUT_NAMES = ("energy", "non_conservative_force", "non_conservative_stress", "feature")


class AnalyticModel(torch.nn.Module):
    """Analytic pair model; see the module docstring for the formulas."""

    def __init__(self, cutoff: float = 3.5, break_symmetry: float = 0.0,
                 full_list: bool = False, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.cutoff = float(cutoff)
        self.break_symmetry = float(break_symmetry)
        self.morse_d = 0.5
        self.morse_alpha = 1.5
        self.morse_r0 = 1.6
        self._nl_options = NeighborListOptions(cutoff=self.cutoff, full_list=full_list,
                                               strict=True)
        self.full_list = bool(full_list)
        self.n_features = N_FEATURES
        # a buffer fixes the dtype/device SymmetrizedModel picks for its quadrature
        self.register_buffer("_dtype_anchor", torch.zeros(1, dtype=dtype))

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [self._nl_options]

    # -- per-system kernel ------------------------------------------------------------
    def _directed_edges(self, system: System):
        neighbors = system.get_neighbor_list(self._nl_options)
        first = neighbors.samples.column("first_atom").to(torch.long)
        second = neighbors.samples.column("second_atom").to(torch.long)
        vectors = neighbors.values.reshape(-1, 3)
        if not self.full_list:
            first, second = torch.cat([first, second]), torch.cat([second, first])
            vectors = torch.cat([vectors, -vectors])
        return first, vectors

    def _compute(self, system: System):
        """Per-atom energies ``(n,)``, forces ``(n, 3)``, stress ``(3, 3)``, features."""
        dtype = system.positions.dtype
        device = system.positions.device
        n_atoms = system.positions.shape[0]
        a = self.break_symmetry
        centres, v = self._directed_edges(system)
        r = torch.linalg.norm(v, dim=1)
        x = r / self.cutoff
        fc = torch.where(x < 1.0, (1.0 - x * x) ** 2, torch.zeros_like(x))
        expo = torch.exp(-self.morse_alpha * (r - self.morse_r0))
        phi = self.morse_d * ((1.0 - expo) ** 2 - 1.0)
        dphi = 2.0 * self.morse_d * self.morse_alpha * (1.0 - expo) * expo

        m0 = per_atom(centres, n_atoms, fc[:, None] * v)
        m1 = per_atom(centres, n_atoms, (fc * r)[:, None] * v)
        m2 = per_atom(centres, n_atoms, (fc * r * r)[:, None] * v)
        cross01 = torch.linalg.cross(m0, m1, dim=1)
        triple = (m0 * torch.linalg.cross(m1, m2, dim=1)).sum(dim=1)
        xz = per_atom(centres, n_atoms, fc * v[:, 0] * v[:, 2])

        energies = 0.5 * per_atom(centres, n_atoms, fc * phi)
        energies = energies + a * (system.positions[:, 2] + triple + xz)

        radial = fc * dphi / r
        forces = per_atom(centres, n_atoms, radial[:, None] * v)
        e_z = torch.tensor([0.0, 0.0, 1.0], dtype=dtype, device=device)
        forces = forces + a * (e_z[None, :] + cross01)

        if bool(system.pbc.any()):
            volume = torch.abs(torch.linalg.det(system.cell))
        else:
            volume = torch.ones((), dtype=dtype, device=device)
        stress = 0.5 * (radial[:, None] * v).T @ v / volume
        stress = stress + _skew(cross01.sum(dim=0))
        e_x = torch.tensor([1.0, 0.0, 0.0], dtype=dtype, device=device)
        stress = stress + a * (torch.outer(e_z, e_z) + _skew(e_x))

        features = torch.stack([
            per_atom(centres, n_atoms, fc),
            m0[:, 0],
            per_atom(centres, n_atoms, fc * v[:, 0] * v[:, 1]),
            per_atom(centres, n_atoms, fc * v[:, 2] ** 3),
            cross01[:, 2],
            triple,
            per_atom(centres, n_atoms, fc * v[:, 0] ** 2 * v[:, 1] ** 2),
        ], dim=1)
        return energies, forces, stress, features

    # -- ModelInterface -------------------------------------------------------------------
    def forward(self, systems: List[System], outputs: Dict[str, ModelOutput],
                selected_atoms: Optional[Labels] = None) -> Dict[str, TensorMap]:
        if len(systems) == 0:
            raise ValueError("AnalyticModel needs at least one system")
        device = systems[0].positions.device
        energies: List[torch.Tensor] = []
        forces: List[torch.Tensor] = []
        stresses: List[torch.Tensor] = []
        features: List[torch.Tensor] = []
        atom_samples: List[torch.Tensor] = []
        for index, system in enumerate(systems):
            e_i, f_i, s, x_i = self._compute(system)
            atoms = torch.arange(len(system), device=device)
            if selected_atoms is not None:
                mask = selected_atoms.column("system") == index
                atoms = selected_atoms.column("atom")[mask].to(torch.long)
                e_i, f_i, x_i = e_i[atoms], f_i[atoms], x_i[atoms]
            energies.append(e_i)
            forces.append(f_i)
            stresses.append(s)
            features.append(x_i)
            atom_samples.append(torch.stack([torch.full_like(atoms, index), atoms], dim=1))

        samples_atom = Labels(["system", "atom"], torch.cat(atom_samples).to(torch.int32))
        samples_system = Labels(
            ["system"], torch.arange(len(systems), device=device, dtype=torch.int32)
            .reshape(-1, 1))
        xyz = Labels(["xyz"], torch.arange(3, device=device, dtype=torch.int32).reshape(-1, 1))
        xyz_1 = Labels(["xyz_1"], torch.arange(3, device=device, dtype=torch.int32)
                       .reshape(-1, 1))
        xyz_2 = Labels(["xyz_2"], torch.arange(3, device=device, dtype=torch.int32)
                       .reshape(-1, 1))
        keys = Labels(["_"], torch.zeros((1, 1), dtype=torch.int32, device=device))

        results: Dict[str, TensorMap] = {}
        for name, request in outputs.items():
            if name == "energy":
                properties = Labels(["energy"],
                                    torch.zeros((1, 1), dtype=torch.int32, device=device))
                if request.sample_kind == "atom":
                    block = TensorBlock(torch.cat(energies).reshape(-1, 1), samples_atom,
                                        [], properties)
                else:
                    totals = torch.stack([e.sum() for e in energies]).reshape(-1, 1)
                    block = TensorBlock(totals, samples_system, [], properties)
            elif name == "non_conservative_force" or name == "non_conservative_forces":
                properties = Labels([name],
                                    torch.zeros((1, 1), dtype=torch.int32, device=device))
                block = TensorBlock(torch.cat(forces).reshape(-1, 3, 1), samples_atom,
                                    [xyz], properties)
            elif name == "non_conservative_stress":
                properties = Labels([name],
                                    torch.zeros((1, 1), dtype=torch.int32, device=device))
                block = TensorBlock(torch.stack(stresses).reshape(-1, 3, 3, 1),
                                    samples_system, [xyz_1, xyz_2], properties)
            elif name == "feature" or name == "features":
                properties = Labels(["feature"], torch.arange(
                    self.n_features, dtype=torch.int32, device=device).reshape(-1, 1))
                block = TensorBlock(torch.cat(features), samples_atom, [], properties)
            else:
                raise ValueError("AnalyticModel cannot compute output '" + name + "'")
            results[name] = TensorMap(keys, [block])
        return results


def per_atom(centres: torch.Tensor, n_atoms: int, edge_values: torch.Tensor) -> torch.Tensor:
    """Sum edge values onto their centre atoms, ``(n_atoms, *edge_values.shape[1:])``."""
    shape: List[int] = [n_atoms]
    for size in edge_values.shape[1:]:
        shape.append(size)
    out = torch.zeros(shape, dtype=edge_values.dtype, device=edge_values.device)
    return out.index_add_(0, centres, edge_values)


def _skew(u: torch.Tensor) -> torch.Tensor:
    """``[u]_x`` such that ``[u]_x w = u x w``."""
    zero = torch.zeros((), dtype=u.dtype, device=u.device)
    return torch.stack([
        torch.stack([zero, -u[2], u[1]]),
        torch.stack([u[2], zero, -u[0]]),
        torch.stack([-u[1], u[0], zero]),
    ])


def make_analytic_model(break_symmetry: float = 0.0, cutoff: float = 3.5,
                        dtype: torch.dtype = torch.float64,
                        full_list: bool = False) -> AtomisticModel:
    """The :class:`AnalyticModel` wrapped as an exported ``AtomisticModel``.

    :param break_symmetry: amplitude ``a`` of the lab-frame (symmetry-breaking) terms of
        energy, forces and stress; ``0`` gives exactly invariant/equivariant outputs
    :param cutoff: neighbour-list cutoff in Å (the radial functions vanish smoothly there)
    :param dtype: ``torch.float64`` or ``torch.float32``
    :param full_list: request a full (``True``) or half (``False``) neighbour list
    """
    if dtype not in (torch.float64, torch.float32):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    module = AnalyticModel(cutoff, break_symmetry, full_list, dtype).eval()
    outputs = {
        "energy": ModelOutput(unit="eV", sample_kind="atom",
                              description="Morse pair energy + a * lab-frame terms"),
        "non_conservative_force": ModelOutput(unit="eV/Angstrom", sample_kind="atom"),
        "non_conservative_stress": ModelOutput(unit="eV/Angstrom^3", sample_kind="system"),
        "feature": ModelOutput(sample_kind="atom",
                               description="7 non-equivariant analytic features"),
    }
    capabilities = ModelCapabilities(
        outputs=outputs, atomic_types=list(range(1, 119)), interaction_range=cutoff,
        length_unit="angstrom", supported_devices=["cpu"],
        dtype="float64" if dtype == torch.float64 else "float32",
    )
    metadata = ModelMetadata(name="symmon-analytic-test-model",
                             description="analytic test model with tunable symmetry "
                                         f"breaking (a={break_symmetry})")
    return AtomisticModel(module, metadata, capabilities)


# --------------------------------------------------------------------------------------
# helpers to run the model
# --------------------------------------------------------------------------------------
def system_from_arrays(positions, types, cell=None, pbc=None,
                       dtype: torch.dtype = torch.float64) -> System:
    """A metatomic ``System`` from arrays (``cell=None``: non-periodic, zero cell)."""
    positions = torch.as_tensor(np.asarray(positions), dtype=dtype)
    if cell is None:
        cell = torch.zeros((3, 3), dtype=dtype)
        pbc = torch.zeros(3, dtype=torch.bool)
    else:
        cell = torch.as_tensor(np.asarray(cell), dtype=dtype)
        pbc = torch.as_tensor(np.asarray(True if pbc is None else pbc)).to(
            torch.bool).expand(3).clone()
    return System(types=torch.as_tensor(np.asarray(types), dtype=torch.int32),
                  positions=positions, cell=cell, pbc=pbc)


def add_neighbor_lists(model: AtomisticModel, systems: List[System]) -> List[System]:
    """Compute (with vesin) and attach every neighbour list ``model`` requests."""
    from vesin.metatomic import neighbor_lists_for_model

    for calculator in neighbor_lists_for_model("angstrom", model):
        calculator.add_neighbor_list(systems)
    return systems


def evaluate(model: AtomisticModel, systems: List[System], outputs,
             check_consistency: bool = False,
             sample_kinds: Optional[Dict[str, str]] = None) -> Dict[str, TensorMap]:
    """Run an ``AtomisticModel`` on systems that already carry their neighbour lists.

    :param outputs: names of the outputs to compute (per-atom where the model declares
        them per-atom unless ``sample_kinds`` says otherwise)
    """
    declared = model.capabilities().outputs
    requests = {}
    for name in outputs:
        kind = (sample_kinds or {}).get(name, declared[name].sample_kind)
        requests[name] = ModelOutput(sample_kind=kind)
    options = ModelEvaluationOptions(length_unit="angstrom", outputs=requests)
    return model(systems, options, check_consistency=check_consistency)


def evaluate_orbit(model: AtomisticModel, system: System, matrices, outputs,
                   batch_size: int = 128, sample_kinds=None) -> Dict[str, torch.Tensor]:
    """Evaluate ``model`` on every ``Q system`` (positions and cell ``@ Q.T``).

    The neighbour lists are recomputed from scratch on each transformed system (so that
    nothing but the geometry is carried over). Returns, per output, a tensor with a
    leading orbit axis: energy ``(K,)`` with ``sample_kinds={"energy": "system"}``
    (``(K, n_atoms)`` otherwise: the model declares energy per atom), forces
    ``(K, n_atoms, 3)``, stress ``(K, 3, 3)``, features ``(K, n_atoms, F)``. Rows are
    sorted by atom index; the property axis is dropped when it has size one.
    """
    matrices = torch.as_tensor(np.asarray(matrices), dtype=system.positions.dtype)
    collected: Dict[str, List[torch.Tensor]] = {name: [] for name in outputs}
    for start in range(0, matrices.shape[0], batch_size):
        batch = []
        for matrix in matrices[start:start + batch_size]:
            batch.append(System(types=system.types, positions=system.positions @ matrix.T,
                                cell=system.cell @ matrix.T, pbc=system.pbc))
        add_neighbor_lists(model, batch)
        results = evaluate(model, batch, outputs, sample_kinds=sample_kinds)
        for name in outputs:
            block = results[name].block()
            samples = block.samples.values.to(torch.long).numpy()
            order = torch.as_tensor(np.lexsort(samples.T[::-1]))
            values = block.values[order].reshape((len(batch), -1) + tuple(block.values.shape[1:]))
            collected[name].append(values)
    dense = {}
    for name, chunks in collected.items():
        values = torch.cat(chunks)
        values = values[..., 0] if values.shape[-1] == 1 else values  # one property
        if values.shape[1] == 1 and results[name].block().samples.names == ["system"]:
            values = values[:, 0]  # one row per system
        dense[name] = values
    return dense


def run_ase(model: AtomisticModel, atoms, outputs=("energy",)) -> Dict[str, np.ndarray]:
    """Evaluate ``model`` on an ``ase.Atoms`` through ``metatomic_ase``.

    Returns ``{name: array}`` for the requested metatomic outputs (via
    ``MetatomicCalculator.run_model``), values of the single block, rows in sample order.
    """
    from metatomic_ase import MetatomicCalculator

    calculator = MetatomicCalculator(model, check_consistency=False)
    requests = {name: ModelOutput(sample_kind=model.capabilities().outputs[name].sample_kind)
                for name in outputs}
    results = calculator.run_model(atoms, requests)
    return {name: results[name].block().values.detach().cpu().numpy() for name in outputs}
