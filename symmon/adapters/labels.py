"""Labelled structures: read a data set and the reference labels each structure carries.

A label is looked up under its key in ``atoms.info``, then ``atoms.arrays``, then the
results of an attached calculator (ASE's extxyz reader puts ``energy``, ``forces`` and
``stress`` into a SinglePointCalculator). Its shape follows the outputs table
(:mod:`symmon.core.outputs`): an energy is a float, forces ``(N, 3)``, a stress 3x3
(from 9 values or ASE's 6 Voigt values); names outside the table are returned as
float64 arrays as stored.
"""

from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np

from ..core.outputs import OUTPUTS, output, voigt_to_matrix
from ..core.representations import get_representation

__all__ = ["label_quantity", "read_label", "read_labels", "read_structures"]


def read_structures(path, index=":", what: str = "structures file") -> list:
    """All structures of an ASE-readable file (``index`` as ``ase.io.read``), refused with
    one sentence naming the file when it is missing, empty or unreadable."""
    import ase.io

    name = os.fspath(path)
    if not os.path.exists(name):
        raise FileNotFoundError(f"{what} {name!r} does not exist")
    if os.path.isdir(name):
        raise IsADirectoryError(f"{what} {name!r} is a directory; give a structure file")
    if os.path.getsize(name) == 0:
        raise ValueError(f"{what} {name!r} is empty; give a file with at least one "
                         "structure (extxyz, or any format ASE reads)")
    try:
        structures = ase.io.read(name, index=index)
    except Exception as error:  # noqa: BLE001 - any parser's failure is a bad file
        detail = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"cannot read {what} {name!r} with ASE ({detail}); give a file in "
                         "a format ASE reads (e.g. extxyz), with a known extension") from None
    if not isinstance(structures, list):
        structures = [structures]
    if not structures:
        raise ValueError(f"no structures in {name!r} (index {index!r})")
    return structures


def label_quantity(name: str) -> str:
    """Which label an output is compared with: its quantity (``energy``, ``forces``,
    ``stress``) for outputs of the table, its own name otherwise."""
    row = output(name)
    return name if row is None else row.quantity


def _stored(atoms, key: str):
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays:
        return atoms.arrays[key]
    results = getattr(getattr(atoms, "calc", None), "results", None) or {}
    return results.get(key)


def _available(atoms) -> list:
    results = getattr(getattr(atoms, "calc", None), "results", None) or {}
    keys = set(atoms.info) | set(atoms.arrays) | set(results)
    return sorted(keys - {"numbers", "positions"})


def _shaped(value, name: str, n_atoms: int, key: str) -> np.ndarray:
    """``value`` in the shape of output ``name`` (``energy``/``forces``/``stress``, or a
    name of the outputs table)."""
    row = OUTPUTS.get(name) or output(name)
    value = np.asarray(value, dtype=np.float64)
    if row is None:
        return value
    item = get_representation(row.kind).item_shape
    if row.kind == "symmetric_tensor" and value.size in (6, 9):
        value = voigt_to_matrix(value.reshape(3, 3) if value.size == 9 else value)
    expected = ((n_atoms,) if row.per_atom else ()) + item
    if value.size != int(np.prod(expected, dtype=int)):
        raise ValueError(f"label {key!r} has shape {value.shape}, expected {expected} for "
                         f"{name}")
    return value.reshape(expected)


def read_label(atoms, key: str, name: str, required: bool = False) -> Optional[np.ndarray]:
    """The label stored under ``key``, shaped as output (or quantity) ``name``.

    :param required: raise (naming the keys the structure has) instead of returning
        ``None`` when there is no such label
    """
    value = _stored(atoms, key)
    if value is None:
        if required:
            raise ValueError(f"structure has no label {key!r}; it has {_available(atoms)}")
        return None
    return _shaped(value, name, len(atoms), key)


def read_labels(atoms, keys: Dict[str, Optional[str]]) -> Dict[str, np.ndarray]:
    """Labels of one structure: ``keys`` maps ``energy``/``forces``/``stress`` (or any
    other target name) to the key holding it; missing labels are left out."""
    labels = {}
    for what, key in keys.items():
        value = read_label(atoms, key, what) if key else None
        if value is not None:
            labels[what] = value
    return labels
