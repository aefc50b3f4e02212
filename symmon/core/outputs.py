"""The one table of outputs symmon knows: name -> transformation law, unit, per-atom, aliases.

Every layer reads this table (adapters to name and convert outputs, the monitor to
choose representations and log units, the report to label tables, purification and
the analyzer to pick targets); nothing else spells these facts.

=========================== ============ ================== ============== ==========
name (symmon's)             shape        kind (law)         unit           per atom
=========================== ============ ================== ============== ==========
``energy``                  ``()``       scalar             eV             no
``energies``                ``(N,)``     scalar             eV             yes
``forces``                  ``(N, 3)``   vector             eV/Å           yes
``stress``                  ``(3, 3)``   symmetric_tensor   eV/Å^3         no
``non_conservative_forces`` ``(N, 3)``   vector             eV/Å           yes
``non_conservative_stress`` ``(3, 3)``   symmetric_tensor   eV/Å^3         no
anything else (features)    ``(N, d)``   feature            model's        yes
=========================== ============ ================== ============== ==========

Aliases are the other spellings models use for the same output (metatomic 0.1.19
renamed ``non_conservative_forces`` to ``non_conservative_force``; metatrain still
trains the plural); :func:`canonical_name` maps any of them to symmon's name.
Units are written ``eV/angstrom`` in files and ``eV/Å`` for people (:func:`pretty_unit`).
The three quantities a monitor measures (energy, forces, stress: the ``quantity`` of
these rows) have their own table, :mod:`symmon.core.quantities`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np


@dataclass(frozen=True)
class Output:
    """One physical output: how it transforms, its unit, whether it is per atom."""

    name: str
    kind: str  # a representation name of :mod:`symmon.core.representations`
    unit: str  # ASE units, file spelling ("eV/angstrom")
    per_atom: bool
    quantity: str  # "energy", "forces" or "stress": what a person calls it
    aliases: Tuple[str, ...] = ()
    conservative: bool = True


OUTPUTS: Dict[str, Output] = {o.name: o for o in (
    Output("energy", "scalar", "eV", False, "energy"),
    Output("energies", "scalar", "eV", True, "energy", aliases=("energy_per_atom",)),
    Output("forces", "vector", "eV/angstrom", True, "forces"),
    Output("stress", "symmetric_tensor", "eV/angstrom^3", False, "stress"),
    Output("non_conservative_forces", "vector", "eV/angstrom", True, "forces",
           aliases=("non_conservative_force",), conservative=False),
    Output("non_conservative_stress", "symmetric_tensor", "eV/angstrom^3", False, "stress",
           conservative=False),
)}

_ALIAS_TO_NAME = {alias: o.name for o in OUTPUTS.values() for alias in o.aliases}

#: 1 eV/Å^3 in GPa
EV_PER_A3_IN_GPA = 160.21766208


def without_net_force(forces):
    """``(K, N, 3)`` direct forces less their mean over atoms (axis 1), as
    ``MetatomicCalculator`` returns direct forces; torch tensors or NumPy arrays."""
    if isinstance(forces, np.ndarray):
        return forces - forces.mean(axis=1, keepdims=True)
    return forces - forces.mean(dim=1, keepdim=True)


def canonical_name(name: str) -> str:
    """symmon's name of an output spelled ``name`` by some model (unknown names pass)."""
    return _ALIAS_TO_NAME.get(name, name)


def spellings(name: str) -> Tuple[str, ...]:
    """All names a model may use for symmon's output ``name``, symmon's first."""
    output = OUTPUTS.get(canonical_name(name))
    return (name,) if output is None else (output.name,) + output.aliases


def output(name: str) -> Optional[Output]:
    """The table row of ``name`` (any spelling), or ``None`` for features."""
    return OUTPUTS.get(canonical_name(name))


def output_kind(name: str) -> str:
    """Transformation law of an output (``"feature"`` for names not in the table)."""
    row = output(name)
    return row.kind if row is not None else "feature"


def is_per_atom(name: str) -> bool:
    """True for outputs with one entry per atom (features are per atom)."""
    row = output(name)
    return True if row is None else row.per_atom


def pretty_unit(unit: str) -> str:
    """``eV/angstrom^3`` -> ``eV/Å³`` for tables and figures."""
    return (unit.replace("angstrom", "Å").replace("Angstrom", "Å")
            .replace("^3", "³").replace("^2", "²"))


def voigt_to_matrix(stress) -> np.ndarray:
    """3x3 stress from ASE's Voigt order ``xx yy zz yz xz xy`` (a 3x3 passes through)."""
    stress = np.asarray(stress, dtype=np.float64)
    if stress.shape == (3, 3):
        return stress
    stress = stress.reshape(-1)
    if stress.shape != (6,):
        raise ValueError(f"a stress has 6 (Voigt) or 9 components, got {stress.size}")
    xx, yy, zz, yz, xz, xy = stress.tolist()  # Python floats: see matrix_to_voigt
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def matrix_to_voigt(stress) -> np.ndarray:
    """ASE's Voigt order ``xx yy zz yz xz xy`` of the symmetric part of a 3x3 stress.

    In Python floats (the same IEEE arithmetic as NumPy's): right after a model call a
    NumPy ufunc on a 3x3 costs ~10-20 us, a measurable part of an unmonitored step."""
    (xx, xy, xz), (yx, yy, yz), (zx, zy, zz) = np.asarray(stress, dtype=np.float64).tolist()
    return np.array([xx, yy, zz, (yz + zy) / 2, (xz + zx) / 2, (xy + yx) / 2])
