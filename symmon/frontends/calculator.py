"""``SymmetryMonitor``: a drop-in ASE calculator that measures O(3) symmetry while it runs.

It wraps any ASE calculator (``atoms.calc = SymmetryMonitor(base, log="run.h5")``),
returns the base predictions untouched (``mode="monitor"``), their O(3) average
(``mode="average"``) or a purified readout's (``mode="purified"``), and on monitored
steps evaluates the model on transformed copies of the structure (one batched call for
metatomic models) to log

* every ``every``-th step: ε of energy, forces and stress from ``random_rotations``
  Haar-random rotations paired with their improper partners (unbiased, with error bars);
* every ``full_every``-th step: exact ε on a quadrature of degree ``degree`` and the
  character spectra ``c~(l, sigma)`` up to ``l_max`` (with the residual beyond it).

Attach it to any ASE driver (``monitor.attach(dyn)``: MD or optimizer) to record the
driver's steps and times. The work is done by :class:`symmon.monitoring.monitor.Monitor`;
this class is the ASE glue, modelled on ``ase.calculators.mixing``: a few lines per hook.
"""

from __future__ import annotations

import atexit
import functools
import weakref
from typing import Optional

import numpy as np
from ase.calculators.calculator import (BaseCalculator, PropertyNotImplementedError,
                                        all_changes)

from ..adapters.metatomic import metatomic_calculator  # noqa: F401 (re-exported)
from ..core.outputs import matrix_to_voigt
from ..monitoring.build import build_monitor
from ..monitoring.monitor import Monitor
from ..monitoring.options import (MODES, VIOLATION_ACTIONS, MonitorOptions,  # noqa: F401
                                  check_option_names)
from ..monitoring.policy import SymmetryViolation, SymmetryViolationWarning  # noqa: F401
from ..monitoring.schema import OBSERVABLES, RESULTS
from ..monitoring.steps import same_values

#: scalar diagnostics in ``results`` (NaN on steps where they were not computed): the
#: rows of :data:`symmon.monitoring.schema.OBSERVABLES` marked ``results``
DIAGNOSTICS = tuple(name for name in RESULTS if not OBSERVABLES[name].per_atom)
#: ... and those with one value per atom (NaN per atom where not computed)
PER_ATOM_DIAGNOSTICS = tuple(name for name in RESULTS if OBSERVABLES[name].per_atom)


#: ``SymmetryMonitor`` keywords that are not monitor options (named by a misspelling hint)
FRONT_END_KEYWORDS = ("log", "readout", "chunk_size", "device")


class StressNotAvailable(PropertyNotImplementedError, ValueError):
    """Stress of a structure that is not periodic in three directions."""


def make_monitor(base, log=None, *, readout=None, device=None, chunk_size=None,
                 extra_specs=None, warm_up=True, **options) -> Monitor:
    """A :class:`Monitor` of ``base`` (an ASE calculator, or a model, model file or
    entry point its family has a calculator for), options checked (a misspelt keyword
    is named with the closest valid one)."""
    check_option_names(options, also=FRONT_END_KEYWORDS)
    return build_monitor(base, log, readout=readout, device=device, chunk_size=chunk_size,
                         extra_specs=extra_specs, warm_up=warm_up,
                         options=MonitorOptions(**options))


class SymmetryMonitor(BaseCalculator):
    """An ASE calculator that wraps ``base`` and logs its O(3) symmetry diagnostics.

    :param base: ASE calculator to wrap (a calculator of a batched family --
        ``MetatomicCalculator``, ``ORBCalculator``... -- or one holding it, gets the
        fast batched path), a model object of such a family, a model file (``.pt``) or
        a Python entry point ``"module:function"`` (docs/compatibility.md)
    :param log: HDF5 log path (``None``: keep diagnostics in ``results`` only)
    :param readout: purified readout file (``symmon purify``) for ``mode="purified"``
    :param chunk_size: transformed copies per batched forward call (batched families;
        default: as many as the device's free memory holds, measured on the first calls,
        :mod:`symmon.adapters.memory`)
    :param device: torch device of the model
    :param options: the monitor's settings, see
        :class:`symmon.monitoring.options.MonitorOptions` (``every``, ``random_rotations``,
        ``full_every``, ``degree``, ``l_max``, ``mode``, ``average_degree``,
        ``thresholds``, ``model_errors``, ``on_violation``, ``seed``, ``flush_every``,
        ``log_mode``, ``metadata``)

    ``results`` hold the returned ``energy``, ``free_energy``, ``forces``, ``stress``
    (those the base implements) and the diagnostics :data:`DIAGNOSTICS` and
    :data:`PER_ATOM_DIAGNOSTICS` (``forces_eps_per_atom``); ``forces_eps`` is the RMS over atoms of each atom's ε (eV/Å).
    A structure that is not periodic in three directions has no stress: no stress
    diagnostics then (the log still declares them, NaN).
    """

    def __init__(self, base, log: Optional[str] = None, *, readout=None,
                 chunk_size: Optional[int] = None, device: Optional[str] = None,
                 **options):
        super().__init__()
        self.monitor = make_monitor(base, log, readout=readout, device=device,
                                    chunk_size=chunk_size, **options)
        self.base = self.monitor.source.base
        self.implemented_properties = (self.monitor.source.implemented
                                       + list(RESULTS))
        atexit.register(_close_at_exit, weakref.ref(self))

    @property
    def mode(self) -> str:
        """What is returned now (``"average"`` after an ``on_violation="average"`` switch)."""
        return self.monitor.mode

    @property
    def n_violations(self) -> int:
        """Calculations graded ``problem`` so far."""
        return self.monitor.n_violations

    @property
    def n_not_monitored(self) -> int:
        """Scheduled steps whose orbit did not fit in memory (not monitored; the base
        calculator's own prediction was returned)."""
        return self.monitor.n_not_monitored

    @property
    def step(self) -> int:
        """Step number the next calculation will be logged under."""
        return self.monitor.step

    @property
    def last_monitored(self) -> dict:
        """The diagnostics of the last *monitored* step (``results`` hold NaN for them on
        unmonitored steps), named as in ``results``, with its ``step``; empty before the
        first one."""
        values = self.monitor.last_monitored
        if not values:
            return {}
        diagnostics = _diagnostics(values)
        diagnostics.update({name: np.asarray(values[name]) for name in PER_ATOM_DIAGNOSTICS
                            if name in values})
        return dict(diagnostics, step=int(values["step"]))

    def metadata(self) -> dict:
        """The log's metadata (settings, model, units, thresholds)."""
        return self.monitor.metadata()

    def attach(self, dynamics) -> None:
        """Record the steps (and times, where the driver has one) of an ASE driver."""
        self.monitor.attach(dynamics)

    def calculate(self, atoms, properties, system_changes=all_changes):
        if "stress" in properties and not all(atoms.pbc):
            raise StressNotAvailable(
                "stress was requested for a structure that is not periodic in all three "
                f"directions (pbc={atoms.pbc.tolist()}): stress needs a 3D cell")
        if not _is_snapshot(self.atoms, atoms):  # ASE's get_property took one just now
            self.atoms = atoms.copy()
        returned, values = self.monitor.calculate(atoms)
        self.results = _ase_results(returned, values, len(atoms), all(atoms.pbc),
                                    self.monitor.returned_results)

    def flush(self) -> None:
        self.monitor.flush()

    def close(self) -> None:
        """Flush and close the log (also done at interpreter exit)."""
        self.monitor.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _is_snapshot(snapshot, atoms) -> bool:
    """True if ``snapshot`` is another ``Atoms`` with the positions, numbers, cell and
    pbc of ``atoms`` (a copy costs 3x these comparisons; a snapshot kept with other
    differences only makes ASE's next state check recalculate)."""
    return (snapshot is not None and snapshot is not atoms
            and same_values(snapshot.positions, atoms.positions)
            and same_values(snapshot.numbers, atoms.numbers)
            and same_values(snapshot.cell.array, atoms.cell.array)
            and same_values(snapshot.pbc, atoms.pbc))


def _ase_results(returned, values, n_atoms, periodic: bool, own=None) -> dict:
    """ASE ``results`` of one calculation: the returned predictions -- the base
    calculator's own values untouched (``own``, dtype and shape included) where they are
    what is returned --, then the diagnostics (NaN where not computed; none of stress
    for a structure that has no stress, not 3D-periodic)."""
    results = dict(_NOT_COMPUTED if periodic else _NOT_COMPUTED_WITHOUT_STRESS)
    if own is not None:
        results.update(own)
        results.setdefault("free_energy", own["energy"])
    else:
        energy = float(returned["energy"])
        results.update(energy=energy, free_energy=energy)
        if "forces" in returned:
            results["forces"] = np.asarray(returned["forces"]).reshape(n_atoms, 3)
        if "stress" in returned:
            results["stress"] = matrix_to_voigt(returned["stress"])
    results.update(_diagnostics(values))  # none on unmonitored steps
    for name in PER_ATOM_DIAGNOSTICS:
        per_atom = values.get(name)
        results[name] = (_not_computed_per_atom(n_atoms).copy() if per_atom is None
                         else np.asarray(per_atom))
    return results


def _diagnostics(values) -> dict:
    """The :data:`DIAGNOSTICS` among a calculation's ``values``, as floats."""
    return {name: float(values[name]) for name in _DIAGNOSTIC_NAMES.intersection(values)}


_NOT_COMPUTED = dict.fromkeys(DIAGNOSTICS, float("nan"))
_NOT_COMPUTED_WITHOUT_STRESS = {name: value for name, value in _NOT_COMPUTED.items()
                                if OBSERVABLES[name].quantity != "stress"}
_DIAGNOSTIC_NAMES = frozenset(DIAGNOSTICS)


@functools.lru_cache(maxsize=8)
def _not_computed_per_atom(n_atoms: int) -> np.ndarray:
    """NaN per atom (copied per step: cheaper than ``np.full`` after a model call)."""
    values = np.full(n_atoms, np.nan)
    values.flags.writeable = False
    return values


def _close_at_exit(reference) -> None:
    monitor = reference()
    if monitor is not None:
        monitor.close()
