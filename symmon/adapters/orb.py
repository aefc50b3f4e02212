"""Orb v3 (``orb-models``): every copy of an orbit in one batched forward call.

:class:`OrbOrbitModel` evaluates the copies ``x Q^T`` (cell ``C Q^T``) exactly as
``ORBCalculator.calculate`` evaluates one structure -- each copy's graph from Orb's own
``ase_atoms_to_atom_graphs`` with the calculator's settings (system config, neighbour
limit, edge method, device), so a neighbour list truncated at ``max_num_neighbors``
is the one the calculator would build for that copy -- but the graphs of a chunk of
copies are joined with Orb's ``batch_graphs`` and go through one ``model.predict``.
Direct models (``DirectForcefieldRegressor``) return energy, direct forces and
direct stress; conservative ones (``ConservativeForcefieldRegressor``) the energy
with its gradient forces and stress (autograd inside Orb), plus ``rotational_grad``,
the derivative of the energy along an infinitesimal rotation of the whole structure
(``dE/dG`` with ``R = exp(G - G^T)``, eV): zero for an invariant energy, a free check
on every step (:data:`ROTATIONAL_GRADIENT`).

What is recognised: an ``ORBCalculator`` (its settings and device are used, and its
predictions are the unrotated copy's: the monitor folds it into the orbit), an Orb
regressor (a calculator is made for it), a ``torch.save``'d regressor (through the
registry). Net force and torque: Orb's force head removes them itself
(``remove_mean``, ``remove_torque_for_nonpbc_systems``); what the calculator returns is
what the orbit holds.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch

from .base import OrbitModel, transformed_atoms, validate_atoms, validate_matrices
from .memory import ChunkPlanner
from .registry import Family, module_of, register, require

#: the output holding ``dE/dG`` of a conservative Orb, ``(K, 3, 3)`` eV
ROTATIONAL_GRADIENT = "rotational_grad"
#: the logged free check: ``|dE/dθ| / N`` (eV/atom per radian)
ROTATIONAL_SIGNAL = "rotational_gradient"
#: the Voigt component of each entry of the 3x3 (ASE's order xx yy zz yz xz xy)
_VOIGT_3X3 = torch.tensor([0, 5, 4, 5, 1, 3, 4, 3, 2])
#: Orb's classes recognised without importing orb_models first
_CLASSES = ("ORBCalculator", "DirectForcefieldRegressor", "ConservativeForcefieldRegressor")


def _orb():
    return require("orb_models", "orb", "an Orb model")


def orb_calculator(model, *, device: Optional[str] = None, non_conservative=False):
    """``ORBCalculator`` of an Orb regressor (direct forces of a conservative model with
    a direct force head when ``non_conservative``)."""
    _orb()
    from orb_models.forcefield.calculator import ORBCalculator

    conservative = None
    if non_conservative and hasattr(model, "grad_forces_name") and "forces" in model.heads:
        conservative = False
    return ORBCalculator(model, device=device, conservative=conservative)


class OrbOrbitModel(OrbitModel):
    """An Orb v3 model (or ``ORBCalculator``) on O(3)-transformed copies.

    :param model: ``ORBCalculator`` or an Orb regressor
    :param device: torch device of a regressor (an ``ORBCalculator`` keeps its own)
    :param chunk_size: copies per forward call (default: planned from the memory one
        copy takes, :class:`~symmon.adapters.memory.ChunkPlanner`; a copy's memory
        scales with its graph's edges)
    """

    family = "orb"
    batched = True
    memory_scales_with = "pairs"

    def __init__(self, model, *, device: Optional[str] = None,
                 chunk_size: Optional[int] = None):
        _orb()
        from orb_models.forcefield.calculator import ORBCalculator

        if isinstance(model, ORBCalculator):
            self.calculator = model
        else:
            model = orb_calculator(model, device=device)
        self.orb = model
        self.model = model.model
        self.device = torch.device(model.device)
        self.dtype = next(self.model.parameters()).dtype
        self.conservative = bool(model.conservative)
        self.planner = ChunkPlanner(self.device, chunk_size, self.memory_scales_with)
        heads = set(self.model.heads.keys())
        outputs = {"energy": ("energy", "graph")}
        if self.conservative:
            outputs["forces"] = (self.model.grad_forces_name, "node")
            if self.model.has_stress:
                outputs["stress"] = (self.model.grad_stress_name, "stress")
            outputs[ROTATIONAL_GRADIENT] = (self.model.grad_rotation_name, "graph")
        if "forces" in heads:
            outputs["non_conservative_forces"] = ("forces", "node")
        if "stress" in heads:
            outputs["non_conservative_stress"] = ("stress", "stress")
        self._outputs = outputs
        if self.conservative:  # dE/dG comes with every conservative call
            self.free_signals = {ROTATIONAL_SIGNAL: (
                "eV/atom", "|dE/dtheta| / N: the slope of the energy along the steepest "
                "infinitesimal rotation of the whole structure (per radian), from the "
                "conservative Orb's rotational_grad; 0 for an invariant energy (every record: "
                "monitored steps, every step with trajectory=True)")}
        self.direct = frozenset() if self.conservative else frozenset(
            q for q in ("forces", "stress") if q in heads)
        kind = "conservative" if self.conservative else "direct"
        self.path = (f"batched: chunks of rotated copies as one Orb graph batch "
                     f"(batch_graphs + {type(self.model).__name__}.predict, {kind})")

    @property
    def available_outputs(self) -> Sequence[str]:
        return tuple(self._outputs)

    def free_values(self, values, n_atoms: int) -> dict:
        """``|dE/dθ| / N`` from ``rotational_grad`` (``dE/dG`` with ``R = exp(G - G^T)``):
        ``A = dE/dG`` is antisymmetric, ``A_ij = ε_ijk a_k`` with ``a`` the gradient along
        the rotation vector, so ``|dE/dθ| = |a| = ||A||_F / sqrt(2)``."""
        gradient = values.get(ROTATIONAL_GRADIENT) if self.conservative else None
        if gradient is None:
            return {}
        gradient = np.asarray(gradient, dtype=np.float64).reshape(3, 3)
        return {ROTATIONAL_SIGNAL: float(np.linalg.norm(gradient) / np.sqrt(2) / n_atoms)}

    @property
    def cutoff(self) -> float:
        return float(self.orb.system_config.radius)

    def warm_up_atoms(self):
        return None  # eager PyTorch: the first call costs what later calls cost

    # -- evaluation ----------------------------------------------------------------
    def graph(self, atoms):
        """The graph ``ORBCalculator.calculate`` builds for ``atoms``."""
        from orb_models.forcefield.atomic_system import ase_atoms_to_atom_graphs

        orb = self.orb
        return ase_atoms_to_atom_graphs(atoms, system_config=orb.system_config,
                                        max_num_neighbors=orb.max_num_neighbors,
                                        edge_method=orb.edge_method,
                                        half_supercell=orb.half_supercell,
                                        device=orb.device)

    def evaluate(self, atoms, matrices, outputs: Sequence[str], *,
                 checked: bool = False) -> Dict[str, torch.Tensor]:
        """Outputs on the copies ``x Q_k^T`` (transformed frame), float64 ``(K, ...)``
        on the CPU (``checked``: :meth:`OrbitModel.evaluate`)."""
        self.check_outputs(outputs)
        validate_atoms(atoms, outputs, overlaps=not checked, cell=not checked)
        if any(atoms.pbc) and not all(atoms.pbc):
            raise ValueError(f"Orb models take structures periodic in all three directions "
                             f"or in none (pbc={atoms.pbc.tolist()}): pad the cell with "
                             "vacuum and set pbc=True")
        if self.orb.expects_charge_and_spin and not {"charge", "spin"} <= set(atoms.info):
            raise ValueError("this Orb model is conditioned on charge and spin: set "
                             "atoms.info['charge'] and atoms.info['spin']")
        matrices = validate_matrices(matrices)
        graphs = [self.graph(transformed_atoms(atoms, matrix)) for matrix in matrices]
        chunks = self.planner.run(len(matrices), len(atoms),
                                  lambda start, stop: self.evaluate_chunk(
                                      graphs[start:stop], len(atoms), outputs),
                                  size=int(graphs[0].n_edge.sum()))
        return {name: torch.cat([chunk[name] for chunk in chunks]) for name in outputs}

    @property
    def chunk_size(self) -> Optional[int]:
        """The explicit copies per forward call (``None``: planned from memory)."""
        return self.planner.chunk_size

    @chunk_size.setter
    def chunk_size(self, value: Optional[int]) -> None:
        self.planner = ChunkPlanner(self.device, value, self.memory_scales_with)

    def evaluate_chunk(self, graphs, n: int,
                       outputs: Sequence[str]) -> Dict[str, torch.Tensor]:
        """One forward call: the copies' graphs as one Orb graph batch."""
        from orb_models.forcefield.base import batch_graphs

        batch = batch_graphs(graphs).to(self.orb.device)
        if self.conservative:  # autograd inside predict
            raw = self.model.predict(batch)
        else:
            with torch.no_grad():
                raw = self.model.predict(batch)
        k = len(graphs)
        values = {}
        for name in outputs:
            key, shape = self._outputs[name]
            value = raw[key].detach().to("cpu", torch.float64)
            if shape == "node":
                value = value.reshape(k, n, 3)
            elif shape == "stress":  # Voigt xx yy zz yz xz xy -> 3x3
                value = value.reshape(k, 6)[:, _VOIGT_3X3].reshape(k, 3, 3)
            else:
                value = value.reshape((k,) + tuple(value.shape[1:]))
            values[name] = value
        return values


def _recognises(obj) -> bool:
    if module_of(obj) != "orb_models" or type(obj).__name__ not in _CLASSES:
        return False
    from orb_models.forcefield.calculator import ORBCalculator
    from orb_models.forcefield.conservative_regressor import ConservativeForcefieldRegressor
    from orb_models.forcefield.direct_regressor import DirectForcefieldRegressor

    return isinstance(obj, (ORBCalculator, DirectForcefieldRegressor,
                            ConservativeForcefieldRegressor))


def _build(model, *, device=None, chunk_size=None, **_):
    return OrbOrbitModel(model, device=device, chunk_size=chunk_size)


register(Family("orb", _recognises, _build, calculator=orb_calculator, extra="orb",
                library="orb_models"))
