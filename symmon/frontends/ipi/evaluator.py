"""One i-PI force call at a time: a template structure + a symmetry monitor, the
structure checks and the extras returned to i-PI (ASE units: angstrom, eV)."""

from __future__ import annotations

import json
import math
import warnings
from typing import Dict, Optional

import numpy as np

from ...monitoring.build import build_monitor
from ...monitoring.options import MonitorOptions
from ...monitoring.schema import EXTRAS, OBSERVABLES

#: Keys of the JSON extras returned to i-PI with *every* force (NaN where a value was
#: not computed on this call): i-PI raises KeyError if a key named in a trajectory's
#: ``extra_type`` is missing at any step.
#: ``symmon_step`` is this client's call counter (= the log's step), ``monitored`` 1 if the
#: diagnostics were computed on this call; the others are the rows of
#: :data:`symmon.monitoring.schema.OBSERVABLES` marked ``extras`` (per-atom ones as lists
#: of n_atoms values; units as in the log).
EXTRAS_KEYS = ("symmon_step", "monitored") + EXTRAS
#: Warn when i-PI's first structure is farther than this (angstrom, per atom, minimum
#: image) from the template: the template's atom order probably differs from i-PI's.
DEFAULT_POSITION_TOLERANCE = 0.5


class StructureMismatch(ValueError):
    """i-PI sent a structure that does not match the template (atom count)."""


def set_threads(threads: Optional[int]) -> None:
    """Limit torch (intra-op) threads; ``None`` or 0 leaves torch's default."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 0):
        raise ValueError(f"threads must be an integer >= 0 (0: torch's default), got "
                         f"{threads!r}")
    if not threads:
        return
    import torch

    torch.set_num_threads(int(threads))
    try:
        torch.set_num_interop_threads(int(threads))
    except RuntimeError:  # already set, or parallel work already started
        pass


def make_base_calculator(model: str, non_conservative: bool = False,
                         device: Optional[str] = None):
    """``"emt"`` -> ASE's EMT; a model file or entry point -> its family's calculator
    (a metatomic ``.pt`` -> ``MetatomicCalculator``)."""
    if str(model).lower() == "emt":
        from ase.calculators.emt import EMT

        return EMT()
    from ...adapters.registry import calculator_for

    try:
        return calculator_for(model, device=device, non_conservative=bool(non_conservative))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{error} (use a model file, a Python entry point "
                                "'module:function', or 'emt' for ASE's EMT)") from None


def read_template(path: str):
    """The last structure of ``path`` (as ``ase.io.read``), refused with one sentence
    when the file is missing, empty or unreadable."""
    from ...adapters.base import validate_atoms
    from ...adapters.labels import read_structures

    template = read_structures(path, index=-1, what="template structure")[0]
    try:
        validate_atoms(template)
    except ValueError as error:
        raise ValueError(f"template structure {path!r}: {error}") from None
    return template


def _request_id_spec():
    from ...io.log import ObservableSpec

    return {"ipi_request_id": ObservableSpec(
        (), "1", "i-PI request id of this force call (bead index with one force "
        "component; -1 if unknown)", dtype="int64")}


class MonitoredEvaluator:
    """Template structure + :class:`~symmon.monitoring.monitor.Monitor`: one force call
    from i-PI at a time, each logged with its i-PI request id (``ipi_request_id``: the
    bead index when the system has one force component; -1 when unknown, the
    ``<ffdirect>`` route).

    :param template: ASE ``Atoms`` listing the atoms in i-PI's order (its species are
        used: the i-PI protocol does not transmit species)
    :param base: ASE calculator (or metatomic ``.pt`` path) to monitor
    :param monitor_options: :class:`~symmon.monitoring.options.MonitorOptions` fields
    """

    def __init__(self, template, base, *, log=None, metadata=None,
                 position_tolerance: float = DEFAULT_POSITION_TOLERANCE,
                 template_name: str = "template", readout=None, device=None,
                 chunk_size=None, **monitor_options):
        self.atoms = template.copy()
        self.atoms.calc = None
        self.template_positions = template.get_positions()
        self.template_cell = template.cell.array.copy()
        self.template_name = template_name
        self.position_tolerance = float(position_tolerance)
        meta = {"ipi_template": template_name,
                "ipi_template_formula": template.get_chemical_formula()}
        meta.update(metadata or {})
        meta.update(monitor_options.pop("metadata", None) or {})
        options = MonitorOptions(metadata=meta, **monitor_options)
        self.monitor = build_monitor(base, log, readout=readout, device=device,
                                     chunk_size=chunk_size, extra_specs=_request_id_spec(),
                                     options=options)
        self.last_values: Dict[str, object] = {}
        self.periodic = bool(all(self.atoms.pbc))
        self.n_calls = 0

    # -- checks
    def check_structure(self, positions: np.ndarray, cell: np.ndarray) -> None:
        """Refuse a wrong atom count; on the first call warn if far from the template."""
        n_template = len(self.atoms)
        if len(positions) != n_template:
            raise StructureMismatch(
                f"i-PI sent {len(positions)} atoms but the template {self.template_name} "
                f"has {n_template}: the template must list the same atoms, in the same "
                "order, as i-PI's initial structure")
        if self.n_calls == 0 and self.position_tolerance > 0:
            distance = self._distance_to_template(positions, cell)
            if distance > self.position_tolerance:
                warnings.warn(
                    f"the first structure from i-PI is up to {distance:.3g} angstrom away "
                    f"from the template {self.template_name} (tolerance "
                    f"{self.position_tolerance:g}): check that the template lists the atoms "
                    "in i-PI's order -- symmon uses the template's species. (Expected when "
                    "this client joins a running simulation.)", RuntimeWarning,
                    stacklevel=3)

    def _distance_to_template(self, positions, cell) -> float:
        """Largest per-atom distance, compared in fractional coordinates (i-PI may
        rotate the cell into its standard orientation), minimum image if periodic."""
        cell = np.asarray(cell, dtype=float)
        try:
            if not self.periodic or abs(np.linalg.det(cell)) < 1e-12 \
                    or abs(np.linalg.det(self.template_cell)) < 1e-12:
                raise np.linalg.LinAlgError
            frac_new = np.linalg.solve(cell.T, np.asarray(positions).T).T
            frac_old = np.linalg.solve(self.template_cell.T, self.template_positions.T).T
        except np.linalg.LinAlgError:
            delta = np.asarray(positions) - self.template_positions
            return float(np.max(np.linalg.norm(delta, axis=1)))
        delta = frac_new - frac_old
        delta -= np.round(delta)
        return float(np.max(np.linalg.norm(delta @ cell, axis=1)))

    # -- evaluation
    def evaluate(self, positions: np.ndarray, cell: np.ndarray, request_id: int = -1):
        """Energy (eV), forces (eV/angstrom), virial (eV, 3x3) and the extras dict of
        one structure (positions and cell rows in angstrom)."""
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
        self.check_structure(positions, cell)
        atoms = self.atoms
        atoms.cell[:] = cell
        atoms.positions[:] = positions
        step = int(self.monitor.step)
        returned, self.last_values = self.monitor.calculate(
            atoms, {"ipi_request_id": int(request_id)})  # every request is a fresh step
        energy = float(returned["energy"])
        forces = np.array(returned["forces"], dtype=np.float64)
        if self.periodic:
            virial = -atoms.get_volume() * np.asarray(returned["stress"])
        else:
            virial = np.zeros((3, 3))
        self.n_calls += 1
        return energy, forces, virial, self.extras(step)

    def extras(self, step: int) -> Dict[str, object]:
        """The fixed key set :data:`EXTRAS_KEYS` of the last calculation (NaN: not
        computed on this call)."""
        values = self.last_values
        out: Dict[str, object] = {"symmon_step": step,
                                  "monitored": int("n_elements" in values)}
        for name in EXTRAS:
            value = values.get(name)
            if not OBSERVABLES[name].per_atom:
                out[name] = math.nan if value is None else float(value)
            else:
                out[name] = (np.asarray(value, dtype=float).reshape(-1).tolist()
                             if value is not None else [math.nan] * len(self.atoms))
        return out

    def close(self) -> None:
        self.monitor.close()


def encode_extras(extras: Dict[str, object]) -> str:
    """JSON text of the extras (NaN written as ``NaN``, which Python's json, and so
    i-PI, reads back)."""
    return json.dumps(extras, allow_nan=True)
