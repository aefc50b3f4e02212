"""TorchSim models (``torch-sim-atomistic``): the orbit of a structure as one ``SimState``.

Any TorchSim ``ModelInterface`` (its Lennard-Jones, metatomic, Orb, MACE wrappers...)
maps a batched ``SimState`` to ``energy`` ``(n_systems,)``, ``forces`` ``(n_atoms, 3)``
and ``stress`` ``(n_systems, 3, 3)`` (eV, eV/Å, eV/Å³). The K transformed copies of a
structure are K systems of one state, evaluated in one forward call (chunks of
``max_atoms`` atoms where given; a CUDA out-of-memory error halves the chunk and
retries).

Cells. ASE stores cell vectors as rows (``atoms.cell[i]`` is vector i); TorchSim's
``SimState.cell[s]`` holds them as *columns* (``state.cell[s] = C.T``, see
``SimState.row_vector_cell``). The group acts on rows, ``x -> x Q^T`` and
``C -> C Q^T``; on TorchSim's columns that is ``state.cell -> Q state.cell``. The
conversion is made here, once: everything above this module speaks ASE rows.

Periodicity. A TorchSim state has one ``pbc`` flag for all three directions and all
systems: a structure periodic in some directions only is refused with one sentence; a
molecule's copies get a zero cell (TorchSim's metatomic wrapper refuses any other).
"""

from __future__ import annotations

import sys
import warnings
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from .base import OrbitModel, validate_atoms, validate_matrices
from .memory import is_out_of_memory
from .registry import Family, register, require

#: outputs a TorchSim model offers (those its ``compute_*`` flags switch on)
TORCHSIM_OUTPUTS = ("energy", "forces", "stress")


def model_interface_class():
    """TorchSim's ``ModelInterface`` class, or ``None`` when torch-sim is not installed."""
    try:
        from torch_sim.models.interface import ModelInterface
    except ImportError:
        return None
    return ModelInterface


def is_torchsim_model(value) -> bool:
    """Whether ``value`` is a TorchSim model (a ``ModelInterface``)."""
    cls = model_interface_class()
    return cls is not None and isinstance(value, cls)


def require_torchsim():
    """``torch_sim``, or one sentence naming the install that provides it."""
    return require("torch_sim", "torchsim", "a TorchSim model")


def model_outputs(model) -> tuple:
    """The outputs ``model`` computes: energy, and forces / stress where switched on."""
    flags = {"energy": True, "forces": bool(getattr(model, "compute_forces", False)),
             "stress": bool(getattr(model, "compute_stress", False))}
    return tuple(name for name in TORCHSIM_OUTPUTS if flags[name])


def state_pbc(atoms) -> bool:
    """The one ``pbc`` flag of a TorchSim state for ``atoms`` (all or nothing)."""
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.all() != pbc.any():
        raise ValueError(f"TorchSim models take structures periodic in all three directions "
                         f"or in none; this one has pbc={pbc.tolist()} (set pbc=True with a "
                         "vacuum layer, or pbc=False)")
    return bool(pbc.all())


class Batch:
    """S structures as float64 tensors on one device, ASE conventions (cell rows).

    :param positions: ``(N, 3)`` of all systems, system after system
    :param cells: ``(S, 3, 3)`` cell vectors as rows
    :param numbers: ``(N,)`` atomic numbers; ``masses``: ``(N,)``
    :param counts: ``(S,)`` atoms per system
    """

    def __init__(self, positions, cells, numbers, masses, counts, pbc: bool):
        self.positions = positions
        self.cells = cells
        self.numbers, self.masses, self.counts = numbers, masses, counts
        self.pbc = bool(pbc)
        self.offsets = torch.cumsum(counts, 0) - counts

    @classmethod
    def from_atoms(cls, atoms, device) -> "Batch":
        pbc = state_pbc(atoms)
        as_tensor = lambda a, dtype: torch.as_tensor(np.asarray(a), dtype=dtype,  # noqa: E731
                                                     device=device)
        return cls(as_tensor(atoms.positions, torch.float64),
                   as_tensor(atoms.cell.array[None], torch.float64),
                   as_tensor(atoms.numbers, torch.long), as_tensor(atoms.get_masses(),
                                                                   torch.float64),
                   torch.tensor([len(atoms)], device=device), pbc)

    @classmethod
    def from_state(cls, state, counts=None) -> "Batch":
        """A TorchSim state's systems (its column cells turned into rows)."""
        if counts is None:
            counts = torch.bincount(state.system_idx, minlength=state.cell.shape[0])
        return cls(state.positions.to(torch.float64), state.cell.to(torch.float64).mT,
                   state.atomic_numbers, state.masses.to(torch.float64), counts,
                   bool(state.pbc))


def copies_state(batch: Batch, matrices: torch.Tensor, owner: torch.Tensor, dtype):
    """One ``SimState`` whose system m is system ``owner[m]`` of ``batch`` transformed
    by ``matrices[m]``: positions ``x Q^T``, cell rows ``C Q^T`` (TorchSim's columns
    ``Q C^T``), in the model's ``dtype`` (the transformation is made in float64)."""
    ts = require_torchsim()
    device = batch.positions.device
    matrices = matrices.to(device=device, dtype=torch.float64)
    owner = owner.to(device)
    counts = batch.counts[owner]
    copy_of_atom = torch.repeat_interleave(torch.arange(len(owner), device=device), counts)
    start = torch.cumsum(counts, 0) - counts
    atom = batch.offsets[owner][copy_of_atom] + (
        torch.arange(int(counts.sum()), device=device) - start[copy_of_atom])
    positions = torch.einsum("aji,ai->aj", matrices[copy_of_atom], batch.positions[atom])
    cells = batch.cells[owner] @ matrices.mT  # rows C Q^T
    if not batch.pbc:  # a molecule's cell means nothing (metatomic refuses one)
        cells = torch.zeros_like(cells)
    return ts.SimState(positions=positions.to(dtype), masses=batch.masses[atom].to(dtype),
                       cell=cells.mT.contiguous().to(dtype), pbc=batch.pbc,
                       atomic_numbers=batch.numbers[atom], system_idx=copy_of_atom)


def evaluate_copies(model, batch: Batch, matrices, owner, outputs: Sequence[str], *,
                    max_atoms: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """``outputs`` of ``model`` on the copies (system ``owner[m]`` transformed by
    ``matrices[m]``), float64 on the model's device: ``energy`` ``(M,)``, ``stress``
    ``(M, 3, 3)``, ``forces`` ``(atoms of all copies, 3)`` copy after copy.

    One forward call, or chunks of at most ``max_atoms`` atoms (whole copies; a CUDA
    out-of-memory error halves the chunk and retries, with one warning)."""
    matrices = torch.as_tensor(matrices, dtype=torch.float64)
    owner = torch.as_tensor(owner, dtype=torch.long, device=batch.positions.device)
    atoms_per_copy = batch.counts[owner]
    total = int(atoms_per_copy.sum())
    limit = total if max_atoms is None else max(int(max_atoms), int(atoms_per_copy.max()))
    while True:
        try:
            return _evaluate_chunks(model, batch, matrices, owner, outputs, limit,
                                    atoms_per_copy)
        except (RuntimeError, MemoryError) as error:
            smallest = int(atoms_per_copy.max())
            if not is_out_of_memory(error) or limit <= smallest:
                raise
            limit = max(limit // 2, smallest)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            warnings.warn(f"out of memory in a forward call of the transformed copies: "
                          f"retrying in chunks of at most {limit} atoms (pass max_atoms to "
                          "start there)", UserWarning, stacklevel=3)


def _evaluate_chunks(model, batch, matrices, owner, outputs, limit, atoms_per_copy):
    counts = atoms_per_copy.tolist()
    chunks, start, atoms = [], 0, 0
    for m, n in enumerate(counts):  # whole copies of at most `limit` atoms
        if atoms + n > limit and m > start:
            chunks.append((start, m))
            start, atoms = m, 0
        atoms += n
    chunks.append((start, len(counts)))
    parts = {name: [] for name in outputs}
    for begin, end in chunks:
        state = copies_state(batch, matrices[begin:end], owner[begin:end], model.dtype)
        result = model(state)
        for name in outputs:
            if name not in result:
                raise ValueError(f"{type(model).__name__} returned no {name!r} (it returned "
                                 f"{sorted(result)}); set compute_{name}=True on the model")
            parts[name].append(result[name].detach().to(torch.float64))
    return {name: torch.cat(values) for name, values in parts.items()}


class TorchSimOrbitModel(OrbitModel):
    """Evaluate a TorchSim model on transformed copies: one ``SimState`` of K systems.

    :param model: a TorchSim ``ModelInterface`` (any dtype, any device)
    :param max_atoms: atoms per forward call (``None``: all copies in one call)
    :param chunk_size: copies per forward call (instead of ``max_atoms``)
    :param calculator: the :class:`TorchSimCalculator` of ``model`` the orbit stands for
        (made on first use if not given)
    """

    family = "torchsim"
    batched = True

    def __init__(self, model, *, max_atoms: Optional[int] = None,
                 chunk_size: Optional[int] = None, calculator=None):
        require_torchsim()
        if not is_torchsim_model(model):
            raise TypeError(f"{type(model).__name__} is not a TorchSim ModelInterface")
        self.model = model
        self.max_atoms, self.chunk_size = max_atoms, chunk_size
        self.path = (f"batched TorchSim model ({type(model).__name__}: the copies as one "
                     "SimState)")
        self._calculator = calculator

    @property
    def memory_scales_with(self) -> str:
        """TorchSim's ``n_atoms`` / ``n_atoms_x_density`` in the planner's words."""
        return "atoms" if self.model.memory_scales_with == "n_atoms" else "pairs"

    @property
    def dtype(self):
        return self.model.dtype

    @property
    def device(self):
        return torch.device(self.model.device)

    @property
    def available_outputs(self) -> Sequence[str]:
        return model_outputs(self.model)

    @property
    def calculator(self):
        """The ASE calculator of the same model (:class:`TorchSimCalculator`)."""
        if self._calculator is None:
            self._calculator = TorchSimCalculator(self.model)
        return self._calculator

    def evaluate(self, atoms, matrices, outputs: Sequence[str], *,
                 checked: bool = False) -> Dict[str, torch.Tensor]:
        self.check_outputs(outputs)
        validate_atoms(atoms, outputs, overlaps=not checked, cell=not checked)
        matrices = torch.from_numpy(validate_matrices(matrices))
        batch = Batch.from_atoms(atoms, self.device)
        owner = torch.zeros(len(matrices), dtype=torch.long)
        max_atoms = self.max_atoms if self.chunk_size is None \
            else self.chunk_size * len(atoms)
        raw = evaluate_copies(self.model, batch, matrices, owner, outputs,
                              max_atoms=max_atoms)
        values = {}
        for name in outputs:
            value = raw[name].cpu()
            values[name] = value.reshape(len(matrices), len(atoms), 3) if name == "forces" \
                else value
        return values


def _calculator_base():
    from ase.calculators.calculator import Calculator

    return Calculator


class TorchSimCalculator(_calculator_base()):
    """An ASE calculator of a TorchSim model: one ``SimState`` of one system per call.

    ``energy``/``free_energy`` (eV), ``forces`` (eV/Å) and ``stress`` (eV/Å³, Voigt) as
    the model computes them; the model's dtype and device are kept.
    """

    def __init__(self, model, **kwargs):
        require_torchsim()
        if not is_torchsim_model(model):
            raise TypeError(f"{type(model).__name__} is not a TorchSim ModelInterface")
        super().__init__(**kwargs)
        self.model = model
        names = model_outputs(model)
        self.implemented_properties = ["energy", "free_energy"] + \
            [name for name in ("forces", "stress") if name in names]
        self.parameters = {"model": type(model).__name__, "dtype": str(model.dtype),
                           "device": str(model.device)}

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        from ase.calculators.calculator import PropertyNotImplementedError, all_changes

        from ..core.outputs import matrix_to_voigt

        super().calculate(atoms, properties, system_changes or all_changes)
        if "stress" in properties and not self.atoms.pbc.all():
            raise PropertyNotImplementedError("stress needs a structure periodic in all "
                                              "three directions")
        batch = Batch.from_atoms(self.atoms, torch.device(self.model.device))
        names = [name for name in model_outputs(self.model)
                 if name != "stress" or batch.pbc]
        raw = evaluate_copies(self.model, batch, torch.eye(3)[None],
                              torch.zeros(1, dtype=torch.long), names)
        energy = float(raw["energy"][0])
        self.results = {"energy": energy, "free_energy": energy}
        if "forces" in raw:
            self.results["forces"] = raw["forces"].cpu().numpy()
        if "stress" in raw:
            self.results["stress"] = matrix_to_voigt(raw["stress"][0].cpu().numpy())


# -- the registry entry ------------------------------------------------------------------
def _recognises(obj) -> bool:
    """A TorchSim model or its ASE calculator (torch_sim imported already: a user with a
    TorchSim model has; nothing is imported to recognise anything else)."""
    if isinstance(obj, TorchSimCalculator):
        return True
    return "torch_sim" in sys.modules and is_torchsim_model(obj)


def _build(obj, *, chunk_size=None, max_atoms=None, **_):
    if isinstance(obj, TorchSimCalculator):
        return TorchSimOrbitModel(obj.model, chunk_size=chunk_size, max_atoms=max_atoms,
                                  calculator=obj)
    return TorchSimOrbitModel(obj, chunk_size=chunk_size, max_atoms=max_atoms)


def _calculator(obj, device=None, non_conservative=False):
    return obj if isinstance(obj, TorchSimCalculator) else TorchSimCalculator(obj)


register(Family("torchsim", _recognises, _build, calculator=_calculator, extra="torchsim",
                library="torch_sim"))
