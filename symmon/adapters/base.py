"""The adapter interface: evaluate a model on O(3)-transformed copies of one structure.

An adapter takes an ``ase.Atoms``, a stack of group elements ``Q`` ``(K, 3, 3)`` and
output names, and returns each output evaluated on the copies ``x Q^T`` (cell
``C Q^T``) *in the transformed frame*, as float64 torch tensors with a leading axis
``K``. The orbit engine (:mod:`symmon.core.metrics`) brings them back and measures them.

Output names, laws and units are those of :mod:`symmon.core.outputs`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Dict, Iterable, Sequence

import numpy as np
import torch

from ..core.outputs import OUTPUTS, output_kind, voigt_to_matrix  # noqa: F401 (re-exported)

STRESS_OUTPUTS = tuple(name for name, o in OUTPUTS.items() if o.quantity == "stress")


#: atoms closer than this (angstrom, after wrapping into the cell) sit "at the same position"
COINCIDENT_DISTANCE = 1e-4
#: periodic cell vectors shorter than this or spanning less (angstrom) are degenerate
DEGENERATE_CELL_LENGTH = 1e-6


def validate_atoms(atoms, outputs: Iterable[str] = (), overlaps: bool = True,
                   cell: bool = True) -> None:
    """Refuse structures no model can be evaluated on, with a message naming the problem
    (``overlaps=False`` skips the search for coincident atoms, a neighbour-tree build;
    ``cell=False`` the checks of a cell already checked, an SVD)."""
    if len(atoms) == 0:
        raise ValueError("the structure is empty (0 atoms)")
    positions = atoms.positions
    if not np.isfinite(positions).all():
        bad = np.where(~np.isfinite(positions).all(axis=1))[0]
        raise ValueError(f"positions of atoms {bad[:10].tolist()} are NaN or infinite")
    if cell:
        if not np.isfinite(atoms.cell.array).all():
            raise ValueError("the cell contains NaN or infinite entries")
        _check_periodic_cell(atoms)
    if overlaps:
        _check_coincident_atoms(atoms)
    stress = [name for name in outputs if name in STRESS_OUTPUTS]
    if stress and not (all(atoms.pbc) and abs(atoms.cell.volume) > 1e-12):
        raise ValueError(
            f"{stress[0]!r} was requested for a structure that is not periodic in all "
            f"three directions (pbc={atoms.pbc.tolist()}): stress needs a 3D cell"
        )


def _check_periodic_cell(atoms) -> None:
    """The cell vectors of the periodic directions must be linearly independent: the
    smallest singular value of those rows is the thinnest extent they span."""
    periodic = np.asarray(atoms.pbc, dtype=bool)
    if not periodic.any():
        return
    vectors = atoms.cell.array[periodic]
    thinnest = np.linalg.svd(vectors, compute_uv=False).min()
    if thinnest < DEGENERATE_CELL_LENGTH:
        what = "has zero volume" if periodic.all() else "has degenerate periodic vectors"
        raise ValueError(
            f"the cell {what} (pbc={periodic.tolist()}, cell="
            f"{np.round(atoms.cell.array, 6).tolist()}): give independent cell vectors "
            "for the periodic directions, or set pbc=False for a molecule")


def _check_coincident_atoms(atoms) -> None:
    """Refuse two atoms at the same position (periodic images included, via wrapping)."""
    if len(atoms) < 2:
        return
    from scipy.spatial import cKDTree

    positions = atoms.get_positions(wrap=True) if any(atoms.pbc) else atoms.get_positions()
    pairs = cKDTree(positions).query_pairs(COINCIDENT_DISTANCE, output_type="ndarray")
    if len(pairs):
        i, j = min(tuple(pair) for pair in pairs.tolist())
        more = f" and {len(pairs) - 1} more pairs" if len(pairs) > 1 else ""
        raise ValueError(
            f"atoms {i} and {j}{more} are at the same position "
            f"({positions[i].round(6).tolist()} angstrom; closer than "
            f"{COINCIDENT_DISTANCE:g} angstrom, periodic images included): remove the "
            "duplicate atoms")


def check_species(atoms, atomic_types: Sequence[int], model_label: str) -> None:
    """Refuse atomic numbers the model was not trained on."""
    unknown = sorted(set(atoms.numbers.tolist()) - set(atomic_types))
    if unknown:
        raise ValueError(f"{model_label} does not know atomic numbers {unknown}; it was "
                         f"trained on {sorted(atomic_types)}")


def validate_matrices(matrices) -> np.ndarray:
    matrices = np.asarray(matrices, dtype=np.float64)
    if matrices.ndim != 3 or matrices.shape[1:] != (3, 3) or len(matrices) == 0:
        raise ValueError(f"group elements must have shape (K, 3, 3), got {matrices.shape}")
    if not np.allclose(matrices @ matrices.transpose(0, 2, 1), np.eye(3), atol=1e-8):
        raise ValueError("group elements must be orthogonal matrices")
    return matrices


def transformed_atoms(atoms, matrix: np.ndarray):
    """A copy of ``atoms`` with positions ``x Q^T``, cell ``C Q^T`` and momenta ``p Q^T``
    (velocities are polar vectors: a model that reads them sees them transformed)."""
    copy = atoms.copy()
    copy.calc = None
    copy.set_cell(atoms.cell.array @ matrix.T, scale_atoms=False)
    copy.set_positions(atoms.get_positions() @ matrix.T)
    if atoms.has("momenta"):
        copy.set_momenta(atoms.get_momenta() @ matrix.T)
    return copy


class OrbitModel(ABC):
    """Evaluate one model on many O(3)-transformed copies of a structure.

    The per-family facts the layers above read (never the family's name):

    * :attr:`family`: the registry entry that built it (:mod:`.registry`);
    * :attr:`calculator`: the ASE calculator whose predictions the orbit reproduces
      exactly (its unrotated copy may replace that calculator's call: "folding"), or
      ``None``;
    * :attr:`batched`: the copies go through few forward calls (else one call each);
    * :attr:`direct`: quantities that calculator returns from direct
      (non-conservative) heads, and :attr:`removes_net_force`: whether it returns
      direct forces less their mean while the model's output keeps it (metatomic);
    * :attr:`dtype`, :attr:`device`: where and in what precision the model computes;
    * :attr:`has_features` (last-layer features, :meth:`feature_output`) and
      :attr:`has_layer_hooks` (``capture`` of internal modules);
    * :meth:`warm_up_atoms`: a small structure whose first calls compile the model's
      code paths (``None``: nothing to warm up);
    * :attr:`free_signals`: observables the model computes with every call at no
      cost (name -> ``(unit, description)``), read by :meth:`free_values` from the
      calculator's results (a conservative Orb's rotational gradient);
    * :attr:`memory_scales_with`: what one copy's memory in a forward call is
      proportional to, ``"atoms"`` or ``"pairs"`` (neighbour pairs, graph edges): the
      chunk planner (:mod:`.memory`) scales measured costs by it.
    """

    family: str = "ase"
    calculator = None
    batched: bool = False
    direct: frozenset = frozenset()
    removes_net_force: bool = False
    dtype = torch.float64
    device = torch.device("cpu")
    has_features: bool = False
    has_layer_hooks: bool = False
    memory_scales_with: str = "atoms"
    free_signals: dict = {}
    path: str = ""

    def warm_up_atoms(self):
        """A structure to warm the model up on (``None``: no warm-up needed)."""
        return None

    def free_values(self, values, n_atoms: int) -> dict:
        """The :attr:`free_signals` of one calculation from the calculator's
        ``results`` (``{}`` when they are not there)."""
        return {}

    def prepare(self, atoms) -> None:
        """Settle what depends on the first structure (a wrapper's check) before the
        facts above are read for it; :meth:`evaluate` does it too."""

    @property
    @abstractmethod
    def available_outputs(self) -> Sequence[str]:
        """Output names this adapter can return for this model."""

    @abstractmethod
    def evaluate(self, atoms, matrices, outputs: Sequence[str], *,
                 checked: bool = False) -> Dict[str, torch.Tensor]:
        """Outputs on the copies ``x Q_k^T``, float64 tensors ``(K, ...)``.

        ``checked=True``: the caller has validated ``atoms`` (:func:`validate_atoms`:
        coincident atoms, the cell); only the checks that depend on ``outputs`` run."""

    def check_outputs(self, outputs: Sequence[str]) -> None:
        unknown = [name for name in outputs if name not in self.available_outputs]
        if unknown:
            raise ValueError(
                f"{type(self).__name__} cannot compute {unknown}; this model provides "
                f"{sorted(self.available_outputs)}"
            )
