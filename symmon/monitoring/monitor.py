"""The monitor: one calculation -> returned predictions and a step record.

Per calculation (:meth:`Monitor.calculate`):

1. the step number (:mod:`.steps`) and its plan (:mod:`.schedule`);
2. the base calculator's predictions (:mod:`.source`);
3. on monitored steps, the orbit (one batched call for metatomic models), the
   diagnostics (:mod:`.diagnose`) and the verdict (:mod:`.policy`); a problem is acted
   on here -- warn, raise (log written first), or switch to averaging, which is logged
   as the event ``mode_switch``;
4. what is returned: the base predictions, their O(3) average, or the purified readout's;
5. the record (:mod:`.recorder`): committed at once for single points, or when the
   attached driver confirms the step.

It knows nothing of ASE's ``Calculator`` class: front-ends (the ASE calculator, the
i-PI client) call :meth:`calculate` and hand the results on.
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from .. import __version__
from ..adapters.base import validate_atoms
from ..core.metrics import orbit_average
from ..core.orbit_values import NonFiniteOrbit
from ..core.outputs import QUANTITY_KINDS, QUANTITY_UNITS, without_net_force
from ..io.files import file_sha256
from . import thresholds
from .diagnose import diagnose, frame_noise, in_frame, net_signals
from .options import MonitorOptions
from .policy import Policy, SymmetryViolation, SymmetryViolationWarning, Verdict
from .recorder import Recorder, StepRecord
from .schedule import Schedule, StepPlan
from .schema import CALL_KINDS, observable_specs
from .source import IDENTITY, ModelSource
from .steps import StepClock


class Monitor:
    """Measures the O(3) symmetry of ``source``'s predictions while it is being used.

    :param source: the base calculator and its orbit adapter
    :param options: the monitor's settings
    :param log: HDF5 log path (``None``: results only)
    :param readout: a purified readout (``mode="purified"``), already checked to fit
    :param extra_specs: observables a front-end adds (values passed to :meth:`calculate`)
    :param warm_up: run the model's code paths on a dimer now (TorchScript compiles on
        first calls), so that step 0 costs about what later steps cost; the seconds it
        took (:attr:`warm_up_s`) and those of the first calculation
        (:attr:`first_step_s`) are in the log's metadata
    """

    def __init__(self, source: ModelSource, options: MonitorOptions, *, log=None,
                 readout=None, extra_specs: Optional[Mapping] = None,
                 warm_up: bool = True):
        self.source, self.options = source, options
        self.schedule, self.policy = Schedule(options), Policy(options)
        self.calibrations = self.schedule.calibrations
        self.recorder = Recorder(log, options.log_mode, options.flush_every,
                                 options.trajectory)
        self.readout = readout
        if options.mode == "purified":
            self._check_readout(readout)
        self.extra_specs = dict(extra_specs or {})
        self.clock = StepClock()
        self.averaging = options.mode == "average"
        self.n_violations = 0
        self.last_values: Dict[str, object] = {}
        #: the values of the last monitored step committed to the log, with its ``step``
        self.last_monitored: Dict[str, object] = {}
        self._pending: Optional[StepRecord] = None
        self._atoms = None  # the structure of the first record (the log's species, pbc)
        self._valid_cell = None  # (cell, pbc) bytes last checked by validate_atoms
        self._said = set()  # one-time messages already given
        #: feature outputs every orbit call asks for (the purified readout's)
        self.features = [readout.feature] if readout is not None else []
        source.keep_on_device(self.features)
        self.warm_up_s = (source.warm_up(1 + 2 * options.random_rotations, self.features)
                          if warm_up else 0.0)
        if warm_up:
            self.schedule.warm_up()
        self.first_step_s: Optional[float] = None  # wall time of the first calculation

    # -- set-up ------------------------------------------------------------------------
    def _check_readout(self, readout) -> None:
        sources = {"non_conservative_forces": ("forces", self.source.nc_forces),
                   "non_conservative_stress": ("stress", self.source.nc_stress)}
        if readout.target not in sources or not sources[readout.target][1]:
            raise ValueError(
                f"the readout corrects {readout.target!r}, which this monitor does not "
                "return: purified mode applies to direct (non-conservative) forces or "
                "stress; use MetatomicCalculator(..., non_conservative=True)")

    @property
    def mode(self) -> str:
        """What is returned now: ``"monitor"``, ``"average"`` or ``"purified"``."""
        return "average" if self.averaging else self.options.mode

    @property
    def step(self) -> int:
        """Step number the next calculation will be logged under."""
        return self.clock.peek()

    # -- driver ------------------------------------------------------------------------
    def attach(self, dynamics) -> None:
        """Number calculations by the steps of ``dynamics`` (any ASE ``Dynamics``)."""
        self.clock.attach(dynamics)
        dynamics.attach(self.observe, interval=1)

    def observe(self) -> None:
        """Driver observer: commit the calculation of the step the driver just finished."""
        step = self.clock.observe()
        pending, self._pending = self._pending, None
        if pending is None:
            return  # no new calculation for this step (the driver reused cached results)
        if not self.clock.confirms(pending.positions):
            self._say_once("unconfirmed", f"the driver's step {step} was not at the "
                           "positions of the last calculation; that calculation is not "
                           "logged (the driver moved the atoms after evaluating them)")
            return
        pending.step, pending.time_ps = step, self.clock.time_ps(step)
        started = self.schedule.clock()
        self._commit(pending, "driver_step")
        self.schedule.spend(self.schedule.clock() - started)

    def _commit_left_initial_state(self) -> None:
        pending = self._pending
        if pending is not None and self.clock.left_initial_state(
                pending.step, pending.positions, pending.at_driver):
            self._pending = None
            self._commit(pending, "driver_step")

    # -- one calculation ---------------------------------------------------------------
    def calculate(self, atoms, extra_values: Optional[Mapping] = None
                  ) -> Tuple[Dict[str, np.ndarray], Dict[str, object]]:
        """Returned predictions (energy, forces, 3x3 stress as available) and the values
        of this calculation (diagnostics, NaN-free; only what was computed); its time
        is booked in the overhead budget of ``every="auto"``."""
        started = self.schedule.clock()
        searched = self._validate(atoms)
        quantities = self.source.quantities(atoms)
        if self._atoms is None:
            self._say_not_monitored(atoms)
            self._atoms = atoms.copy()
        self._commit_left_initial_state()
        step = self.clock.next_step()
        if self.averaging:
            self.schedule.choose_average_grid(quantities)
        plan = self.schedule.plan(step, self.averaging)
        if plan.scheduled and not searched:
            validate_atoms(atoms, overlaps=True, cell=False)  # a tree build: monitored steps
        base, stacks = self.source.evaluate(
            atoms, quantities, self._frames(plan), base=self._needs_base(plan),
            features=self.features)
        self._purify(stacks)
        if stacks:  # the grid's orbit is checked by the engine (NonFiniteOrbit below)
            self._check_finite(atoms, step, [v for name, stack in stacks.items()
                                             if name != "grid" for v in stack.values()])
        values = dict(extra_values or {})
        if base is not None:
            values.update(base.predictions)  # logged with every frame
        record = StepRecord(step, self.clock.time_ps(step), atoms.positions.copy(),
                            atoms.cell.array.copy(), plan.scheduled, values)
        if plan.grid is not None:
            if not self._judge(stacks["grid"], plan, base, quantities, record):
                self._refuse_non_finite(atoms, step)  # outside the handler: one sentence
        if plan.scheduled:
            values["monitor_stride"] = plan.stride
        returned = self._returned(atoms, quantities, base, plan, stacks)
        values["averaged"] = int(self.averaging)
        if "frame" in stacks and base is not None:
            values.update(frame_noise(returned, base.predictions, len(atoms)))
        forces = self._net_force_source(returned, base)
        if forces is not None:
            periodic = bool(any(atoms.pbc))
            values.update(net_signals(forces, record.positions,
                                      None if periodic else atoms.get_masses(), periodic))
        if not stacks:  # orbit steps: checked above
            self._check_finite(atoms, step, self._base_sums(base, values))
        self.last_values = values
        if self.first_step_s is None:
            self.first_step_s = self.schedule.clock() - started
        if self.clock.attached:
            record.at_driver = self.clock.confirms(record.positions)
            self._pending = record
        else:
            self._commit(record, "single_point")
        self.schedule.charge(plan, self.schedule.clock() - started)
        return returned, values

    def _validate(self, atoms) -> bool:
        """:func:`validate_atoms` at the cost an unmonitored step can bear: coincident
        atoms are searched on the first call (returns True then; the caller searches
        again on monitored steps: a tree build, ~1.5 ms at 500 atoms, too much for every
        step of ``random_frame`` or averaging mode), the cell (an SVD) whenever it or the
        periodicity changes; the adapters are told not to repeat it (``checked=True``)."""
        cell = (atoms.cell.array.tobytes(), atoms.pbc.tobytes())
        first = self._atoms is None
        validate_atoms(atoms, overlaps=first, cell=cell != self._valid_cell)
        self._valid_cell = cell
        return first

    def _check_finite(self, atoms, step: int, arrays) -> None:
        """One sentence instead of NaN handed to the driver (or an engine error on a
        monitored step): coincident atoms if that is the cause (they are searched only on
        monitored steps; EMT, for one, returns a finite energy and NaN forces there),
        else the model's non-finite values: the orbit arrays the engine does not see (a
        sum each; the grid's raise :class:`NonFiniteOrbit` there), and of the base what
        :meth:`_base_sums` gives."""
        if not all(math.isfinite(float(a.sum() if hasattr(a, "sum") else a)) for a in arrays):
            self._refuse_non_finite(atoms, step)

    @staticmethod
    def _refuse_non_finite(atoms, step: int) -> None:
        validate_atoms(atoms, overlaps=True, cell=False)
        raise ValueError(f"the model returned NaN or infinite values at step {step} (atoms "
                         "and cell are valid): the structure is outside what it can evaluate "
                         "(atoms far closer than in its training data?); check the trajectory "
                         "before this step")

    @staticmethod
    def _base_sums(base, values) -> list:
        """What :meth:`_check_finite` reads of the base predictions on steps without an
        orbit: the energy and the net force where it was computed anyway (conservative
        forces), both free. A stress or direct forces that turn non-finite while the
        energy stays finite are named on the next orbit step: a NumPy sum right after a
        model call costs 20-40 µs (measured: 1.5 -> 2.1 % of a 32-atom unmonitored step
        with the stress and forces summed)."""
        if base is None:
            return []
        sums = [float(base.predictions["energy"])] if "energy" in base.predictions else []
        if "net_force_per_atom" in values:
            sums.append(values["net_force_per_atom"])
        return sums

    def _frames(self, plan: StepPlan) -> Dict[str, np.ndarray]:
        """The stacks of elements this step evaluates (one batched call)."""
        frames = {}
        if self.readout is not None:
            frames["identity"] = IDENTITY  # the purified prediction
        if plan.frame is not None:
            frames["frame"] = plan.frame
        if plan.grid is not None:
            frames["grid"] = plan.grid.matrices
        if self.averaging and plan.grid is not self.schedule.average_grid:
            frames["average"] = self.schedule.average_grid.matrices
        return frames

    def _needs_base(self, plan: StepPlan) -> bool:
        """Random frames need the unrotated prediction on monitored steps only (the
        noise they inject); every other mode returns or logs it on every step."""
        return plan.frame is None or plan.grid is not None

    def _purify(self, stacks) -> None:
        """Replace the readout's target in every stack by the purified prediction (the
        correction is computed where the features are, on the model's device)."""
        readout = self.readout
        if readout is None:
            return
        quantity = "forces" if readout.target == "non_conservative_forces" else "stress"
        for values in stacks.values():
            features = values.pop(readout.feature)
            corrected = readout.correct_torch(values[quantity], features)
            if quantity == "forces":  # as MetatomicCalculator returns direct forces
                corrected = without_net_force(corrected)
            values[quantity] = corrected

    def _judge(self, orbit, plan: StepPlan, base, quantities, record: StepRecord) -> bool:
        """Diagnose, grade and act; False (nothing done) when the orbit is not finite."""
        values = record.values
        collected = {} if self.calibrations.wanted(plan) else None
        try:
            values.update(diagnose(orbit, plan, record.positions.shape[0], self.options.l_max,
                                   self.source.model_dtype, self.calibrations.laws(),
                                   collected))
        except NonFiniteOrbit:
            return False
        if collected:
            self.calibrations.update(plan, collected)
        values.update(self.calibrations.values(plan))
        verdict = self.policy.judge(values, quantities)
        values.update(verdict.values())
        self.n_violations += values["violation"]
        self._act(verdict, record)
        values["eps_of_returned"] = int(self.mode in ("monitor", "purified"))
        return True

    def _returned(self, atoms, quantities, base, plan: StepPlan, stacks):
        if self.averaging:
            grid = self.schedule.choose_average_grid(quantities)
            orbit = stacks.get("grid" if plan.grid is grid else "average")
            if orbit is None:  # switched to averaging at this step
                orbit = self._evaluate_extra(atoms, quantities, grid.matrices)
            return {q: orbit_average(orbit[q], grid, QUANTITY_KINDS[q]).numpy()
                    for q in quantities}
        if self.readout is not None:
            return {q: stacks["identity"][q][0].numpy() for q in quantities}
        if plan.frame is not None:
            return in_frame(stacks["frame"], plan.frame, quantities)
        return base.predictions

    def _net_force_source(self, returned, base) -> Optional[np.ndarray]:
        """The forces whose net force and torque are logged: the returned ones, but for
        direct forces (returned without their mean) the unrotated copy's raw forces,
        known on steps that evaluate it in the batched call."""
        if not self.source.nc_forces:
            return returned.get("forces")
        return None if base is None else base.raw_forces

    def _evaluate_extra(self, atoms, quantities, matrices):
        """One more batched call (purified where the monitor purifies)."""
        _, stacks = self.source.evaluate(atoms, quantities, {"extra": matrices}, base=False,
                                         features=self.features)
        self._purify(stacks)
        return stacks["extra"]

    # -- acting on a verdict -----------------------------------------------------------
    def _act(self, verdict: Verdict, record: StepRecord) -> None:
        action = self.policy.action(verdict, self.averaging)
        if action is None:
            return
        step, text = record.step, verdict.describe()
        if action == "raise":
            self._commit(record, "driver_step" if self.clock.attached else "single_point")
            self.close()
            raise SymmetryViolation(f"symmetry violation at step {step}: {text}")
        if action == "average":
            warnings.warn(f"symmetry violation at step {step} ({text}); switching to O(3) "
                          "averaging from this step on", SymmetryViolationWarning,
                          stacklevel=4)
            self.averaging = True
            record.values["mode_switch"] = 1
            return
        new = [q for q in verdict.problems if ("problem", q) not in self._said]
        if new:
            self._said.update(("problem", q) for q in new)
            warnings.warn(f"symmetry violation at step {step}: {text} (warned once per "
                          f"quantity; further problem steps of {', '.join(new)} are "
                          "counted in the log's 'violation')",
                          SymmetryViolationWarning, stacklevel=4)

    def _say_once(self, key: str, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            warnings.warn(message, UserWarning, stacklevel=4)

    def _say_not_monitored(self, atoms) -> None:
        missing = self.source.not_monitored(atoms)
        if missing:
            self._say_once(("missing", tuple(missing)),
                           f"{type(self.source.base).__name__} does not provide "
                           f"{' or '.join(missing)}: not monitored (monitoring "
                           f"{', '.join(self.source.quantities(atoms))})")

    # -- log ---------------------------------------------------------------------------
    def _commit(self, record: StepRecord, kind: str) -> None:
        record.values["calls"] = max(self.clock.calls, 1)
        record.values["call_kind"] = CALL_KINDS[kind]
        if kind == "single_point":
            self.clock.single_point_done()
        else:
            self.clock.committed()
        atoms = self._atoms
        self.recorder.write(record, atoms, lambda: self.observable_specs(atoms),
                            self.metadata)
        if record.monitored:  # what the log holds (a calculation the driver dropped: not)
            self.last_monitored = dict(record.values, step=record.step)

    def observable_specs(self, atoms) -> dict:
        return observable_specs(self.source.quantities(atoms), len(atoms),
                                bool(any(atoms.pbc)), self.options.l_max, self.extra_specs)

    def metadata(self) -> dict:
        source, options = self.source, self.options
        model_path = getattr(source.orbit_model, "model_path", None) or \
            getattr(source.base, "parameters", {}).get("model")
        dynamics = self.clock.dynamics
        meta = dict(options.describe())
        meta.update({
            "symmon_version": __version__,
            "base_calculator": type(source.base).__name__,
            "base_parameters": _parameters(source.base),
            "orbit_path": source.path,
            "model_file": model_path, "model_sha256": file_sha256(model_path),
            "full_grid": self.schedule.full_grid.describe(),
            "forces_source": "non_conservative" if source.nc_forces else "conservative",
            "stress_source": "non_conservative" if source.nc_stress else "conservative",
            "driver": None if dynamics is None else type(dynamics).__name__,
            "warm_up_s": self.warm_up_s, "first_step_s": self.first_step_s,
            "average_grid": None if self.schedule.average_grid is None
            else self.schedule.average_grid.describe(),
            "eps_measured_on": "base model" if options.mode in ("average", "random_frame")
            else "returned predictions",
            "interval_method": ("per step and quantity in <q>_interval_method: "
                                "student_t_log_pairs (random steps before the first "
                                "calibration), calibrated_bootstrap (the pivot law of the "
                                "references up to step calibration_step) or bootstrap "
                                "(a first calibration step), exact_quadrature or "
                                "aliasing_bound (full-orbit steps); docs/theory.md"
                                if options.calibration_rotations else
                                "student_t_log_pairs (random steps), exact_quadrature or "
                                "aliasing_bound (full-orbit steps); docs/theory.md"),
            "model_dtype": str(source.model_dtype).replace("torch.", ""),
            "reference_errors": dict(thresholds.REFERENCE_ERRORS),
            "floors": dict(thresholds.FLOORS),
            "units": {"energy": "eV", "length": "angstrom", "time": "ps",
                      "forces": QUANTITY_UNITS["forces"], "stress": QUANTITY_UNITS["stress"],
                      "forces_eps": "eV/angstrom (RMS over atoms)",
                      "energy_eps_per_atom": "eV/atom"},
        })
        meta.update(options.metadata)
        return meta

    def flush(self) -> None:
        self.recorder.flush()

    def close(self) -> None:
        """Flush and close the log (a calculation the driver never confirmed is dropped)."""
        self._pending = None
        self.recorder.close()


def _parameters(calculator) -> str:
    """The base calculator's ASE parameters as sorted JSON (what an append must match)."""
    import json

    parameters = getattr(calculator, "parameters", None) or {}
    return json.dumps(dict(parameters), sort_keys=True, default=str)
