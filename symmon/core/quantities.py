"""The one table of the quantities a monitor measures: energy, forces, stress.

Each :class:`Quantity` row holds every fact a module needs about one quantity, so that
the monitor, the thresholds, the report, export and eval read the same ones:

========== ================ ============= ================ ==================== ========
name       kind (law)       unit          ε unit           per-atom factor      symbol
========== ================ ============= ================ ==================== ========
energy     scalar           eV            eV/atom          ``1 / N``            E
forces     vector           eV/Å          eV/Å             ``1 / sqrt(N)``      F
stress     symmetric_tensor eV/Å³         eV/Å³ (and GPa)  ``1``                σ
========== ================ ============= ================ ==================== ========

The per-atom factor takes ε (and the orbit RMS) of the quantity as measured to the
normalisation a person reads, so the same structure repeated ``n`` times gives the
same number: the total energy's ε per atom; the forces' ``sqrt(sum_i eps_i^2) /
sqrt(N) = sqrt(mean_i eps_i^2)``, the RMS over atoms of each atom's ε; the stress is
intensive already. Kind and unit are those of the conservative output of the same
name in :data:`symmon.core.outputs.OUTPUTS`; ``direct_output`` names the
non-conservative one.

>>> QUANTITY["forces"].per_atom_factor(4)
0.5
>>> [q.name for q in QUANTITIES]
['energy', 'forces', 'stress']
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from .outputs import EV_PER_A3_IN_GPA, OUTPUTS, Output, pretty_unit


@dataclass(frozen=True)
class Quantity:
    """One measured quantity: its law and unit (from its output), the normalisation of
    its ε, and what a person calls it."""

    name: str
    #: unit of the per-atom-normalised ε (file spelling)
    eps_unit: str
    #: ε per atom is ε * N ** -atom_power: 1 per atom, 1/2 RMS over atoms, 0 intensive
    atom_power: float
    #: one-letter symbol of the quantity (figures, sentences)
    symbol: str
    #: its size as a person reads it ("|F|"), normalised as its ε
    size_label: str
    #: its ε as a table row or axis names it
    eps_label: str
    #: its ε as a check's title names it
    title: str
    #: the noun of its error ("force error")
    noun: str
    #: words after its ε's unit in a sentence ("eV/Å per atom"; "eV/atom" says it)
    unit_words: str = ""
    #: a second unit people read ε in, and the factor from ``eps_unit`` to it
    alt_unit: Optional[Tuple[str, float]] = None

    @property
    def output(self) -> Output:
        return OUTPUTS[self.name]

    @property
    def kind(self) -> str:
        """Transformation law (a representation of :mod:`symmon.core.representations`)."""
        return self.output.kind

    @property
    def unit(self) -> str:
        """Unit of the quantity itself (file spelling)."""
        return self.output.unit

    @property
    def per_atom(self) -> bool:
        """True when the quantity has one entry per atom (forces)."""
        return self.output.per_atom

    @property
    def direct_output(self) -> Optional[str]:
        """Its non-conservative output (``None`` for the energy)."""
        return next((o.name for o in OUTPUTS.values()
                     if o.quantity == self.name and not o.conservative), None)

    @property
    def components(self) -> int:
        """Components of one transforming object (1, 3, 9)."""
        return {"scalar": 1, "vector": 3, "symmetric_tensor": 9}[self.kind]

    def shape(self, n_atoms: int) -> Tuple[int, ...]:
        """Shape of one prediction for ``n_atoms`` atoms (stress as 3x3)."""
        return {"scalar": (), "vector": (n_atoms, 3), "symmetric_tensor": (3, 3)}[self.kind]

    def per_atom_factor(self, n_atoms: int) -> float:
        """The factor taking ε (and orbit RMS) as measured to the per-atom normalisation
        (``1 / N``, ``1 / sqrt(N)`` or 1; divisions, not powers, to the last bit)."""
        if self.atom_power == 0:
            return 1.0
        return 1.0 / (n_atoms if self.atom_power == 1 else math.sqrt(n_atoms))

    def pretty_eps_unit(self) -> str:
        return pretty_unit(self.eps_unit)


QUANTITIES: Tuple[Quantity, ...] = (
    Quantity("energy", "eV/atom", 1.0, "E", "|E| per atom", "energy ε per atom",
             "Energy ε per atom", "energy"),
    Quantity("forces", "eV/angstrom", 0.5, "F", "|F|", "forces ε per atom",
             "Forces ε per atom (RMS over atoms)", "force", unit_words=" per atom"),
    Quantity("stress", "eV/angstrom^3", 0.0, "σ", "|σ|", "stress ε", "Stress ε", "stress",
             alt_unit=("GPa", EV_PER_A3_IN_GPA)),
)
#: name -> row
QUANTITY: Dict[str, Quantity] = {q.name: q for q in QUANTITIES}
#: the names, in the table's order
QUANTITY_NAMES: Tuple[str, ...] = tuple(QUANTITY)


def quantity(name: str) -> Quantity:
    """The row of ``name``; one sentence naming the known ones otherwise."""
    try:
        return QUANTITY[name]
    except KeyError:
        raise ValueError(f"unknown quantity {name!r}; known: {', '.join(QUANTITY)}") from None
