"""Structure files of monitored steps: extended XYZ and chemiscope datasets.

Both are written whole or not at all (:func:`symmon.io.files.write_through`). The frames
are ASE ``Atoms`` carrying per-atom arrays (``symmon_forces_eps`` [eV/Å]) and per-step
numbers in ``info`` (``symmon_<name>``, units in ``symmon_<name>_unit``), as
``symmon export`` builds them (docs/export.md).
"""

from __future__ import annotations

import warnings
from typing import Dict

import numpy as np

from ..core.outputs import pretty_unit
from .files import write_through

#: the per-atom array of each atom's forces ε
EPS_ARRAY = "symmon_forces_eps"


def write_extxyz(path: str, frames) -> None:
    """Extended XYZ of ``frames`` (per-atom columns keep 8 decimals: ASE's format)."""
    import ase.io

    write_through(path, lambda tmp: ase.io.write(tmp, frames, format="extxyz"))


#: per-step numbers shown as chemiscope structure properties: info key -> description
STRUCTURE_PROPERTIES = {
    "symmon_step": "MD step",
    "symmon_time_ps": "simulation time",
    "symmon_forces_eps_rms": "forces ε, RMS over atoms",
    "symmon_energy_eps_per_atom": "energy ε per atom",
    "symmon_stress_eps": "stress ε",
    "symmon_forces_rel_eps": "forces ε / max(|F|, floor)",
    "symmon_energy_rel_eps": "energy ε / max(|E|, floor)",
    "symmon_stress_rel_eps": "stress ε / max(|σ|, floor)",
    "symmon_violation": "1 when the monitor graded the step problem",
}


def chemiscope_properties(frames) -> Dict[str, dict]:
    """Structure properties (per-step numbers present in every frame, not all NaN) and
    the atom property ``atom_forces_eps`` of ``frames``, in chemiscope's form."""
    properties = {}
    for key, text in STRUCTURE_PROPERTIES.items():
        if not all(key in a.info for a in frames):
            continue
        values = np.array([a.info[key] for a in frames], dtype=np.float64)
        if np.all(np.isnan(values)):
            continue
        unit = frames[0].info.get(f"{key}_unit", "ps" if key == "symmon_time_ps" else "")
        properties[key[len("symmon_"):]] = _property("structure", values, text, unit)
    if all(EPS_ARRAY in a.arrays for a in frames):
        values = np.concatenate([a.arrays[EPS_ARRAY] for a in frames])
        properties["atom_forces_eps"] = _property(
            "atom", values, "forces ε of each atom", "eV/angstrom")
    return properties


def _property(target: str, values: np.ndarray, text: str, unit: str) -> dict:
    entry = {"target": target, "values": values, "description": text}
    if unit and unit != "1":
        entry["units"] = pretty_unit(unit)
    return entry


def write_chemiscope(path: str, frames, name: str) -> None:
    """A chemiscope dataset of ``frames`` (see :func:`chemiscope_properties`); the map
    shows forces ε against step, the structures are coloured by per-atom ε."""
    from ..extras import require

    chemiscope = require("chemiscope", "chemiscope", "a chemiscope dataset")

    if not path.endswith((".json", ".json.gz")):
        raise ValueError(f"a chemiscope dataset must end in .json or .json.gz, got {path!r}")
    properties = chemiscope_properties(frames)
    color = "atom_forces_eps" if "atom_forces_eps" in properties else None
    settings = chemiscope.quick_settings(
        x="step" if "step" in properties else None,
        y="forces_eps_rms" if "forces_eps_rms" in properties else None,
        map_color="forces_eps_rms" if "forces_eps_rms" in properties else None,
        structure_color=color, trajectory=True, periodic=bool(all(frames[0].pbc)))
    metadata = {"name": name, "description": "symmon: per-atom and per-step O(3) "
                "equivariance errors (ε) of the monitored steps"}
    with warnings.catch_warnings():  # NaN (e.g. relative ε of a zero stress) is expected
        warnings.filterwarnings("ignore", message=".*has NaNs.*")
        write_through(path, lambda tmp: chemiscope.write_input(
            tmp, structures=list(frames), properties=properties, metadata=metadata,
            environments=chemiscope.all_atomic_environments(frames), settings=settings))
