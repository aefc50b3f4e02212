"""The monitor: one calculation -> returned predictions and a step record.

:meth:`Monitor.calculate` runs five named stages on a typed :class:`StepResult`:

1. **plan** -- the step number (:mod:`.steps`) and its plan (:mod:`.schedule`);
2. **evaluate** -- the base calculator's predictions and, on monitored steps, the orbit
   (one batched call for metatomic models; :mod:`.source`);
3. **measure** -- the diagnostics of the orbit (:mod:`.diagnose`, :mod:`.calibration`);
4. **decide** -- the verdict (:mod:`.policy`) and what is done about a problem: warn,
   raise (log written first), or switch to averaging, logged as the event
   ``mode_switch``; then what is returned (the base predictions, their O(3) average, or
   the purified readout's) and its zero-cost signals;
5. **record** -- the step's values (every name a row of :data:`.schema.OBSERVABLES`)
   committed to the log (:mod:`.recorder`): at once for single points, or when the
   attached driver confirms the step.

It knows nothing of ASE's ``Calculator`` class: front-ends (the ASE calculator, the
i-PI client) call :meth:`calculate` and hand the results on.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from ..adapters.base import validate_atoms
from ..adapters.memory import OrbitOutOfMemory
from ..core.metrics import orbit_average
from ..core.orbit_values import NonFiniteOrbit
from ..core.outputs import output, without_net_force
from ..core.quantities import QUANTITY
from ..io.log import ObservableSpec
from .diagnose import diagnose, frame_noise, in_frame, net_signals
from .options import MonitorOptions
from .policy import Policy, SymmetryViolation, SymmetryViolationWarning, Verdict
from .recorder import Recorder, StepRecord
from .schedule import Schedule, StepPlan
from .schema import CALL_KINDS, log_metadata, observable_specs
from .source import IDENTITY, BaseValues, ModelSource
from .steps import StepClock


@dataclass
class StepResult:
    """One calculation, filled stage by stage; :meth:`values` is what the log records."""

    step: int
    plan: StepPlan
    quantities: Tuple[str, ...]
    positions: np.ndarray
    cell: np.ndarray
    extra: Mapping[str, object]  # a front-end's values (declared in its extra_specs)
    base: Optional[BaseValues] = None  # evaluate: the unrotated predictions
    stacks: Dict[str, Dict] = field(default_factory=dict)  # evaluate: name -> orbit values
    diagnostics: Dict[str, object] = field(default_factory=dict)  # measure
    verdict: Optional[Verdict] = None  # decide
    switched: bool = False  # decide: the monitor switched to averaging at this step
    eps_of_returned: Optional[bool] = None  # decide: ε measures what is returned
    returned: Optional[Dict[str, np.ndarray]] = None  # decide: handed to the front-end
    averaged: Optional[bool] = None  # decide: the returned values were O(3)-averaged
    signals: Dict[str, float] = field(default_factory=dict)  # decide: of the returned
    not_monitored: bool = False  # evaluate: the orbit did not fit in memory

    def values(self) -> Dict[str, object]:
        """The step's observables as the log names them (what was computed only)."""
        values = dict(self.extra)
        if self.base is not None:
            values.update(self.base.predictions)
            values.update(self.base.signals)
        values.update(self.diagnostics)
        if self.verdict is not None:
            values.update(self.verdict.values())
        if self.switched:
            values["mode_switch"] = 1
        if self.eps_of_returned is not None:
            values["eps_of_returned"] = int(self.eps_of_returned)
        if self.plan.scheduled:
            values["monitor_stride"] = self.plan.stride
        if self.averaged is not None:
            values["averaged"] = int(self.averaged)
        values.update(self.signals)
        return values


class SaidOnce:
    """Warnings given once per key over a run."""

    def __init__(self):
        self.said = set()

    def new(self, keys) -> list:
        """The ``keys`` not said yet, now marked said."""
        fresh = [key for key in keys if key not in self.said]
        self.said.update(fresh)
        return fresh


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
        free = source.free_specs()
        self.extra_specs = {name: ObservableSpec((), unit, description)  # the adapter's
                            for name, (unit, description) in free.items()}
        self.extra_specs.update(extra_specs or {})
        self.recorder = Recorder(log, options.log_mode, options.flush_every,
                                 options.trajectory, extra_names=self.extra_specs,
                                 every_step=free)
        self.readout = readout
        if options.mode == "purified":
            self._check_readout(readout)
        self.clock = StepClock()
        self.averaging = options.mode == "average"
        self.n_violations = 0
        #: steps whose orbit did not fit in memory (not monitored, the plain prediction)
        self.n_not_monitored = 0
        self.last_values: Dict[str, object] = {}
        #: the values of the last monitored step committed to the log, with its ``step``
        self.last_monitored: Dict[str, object] = {}
        self._pending: Optional[StepRecord] = None
        self._atoms = None  # the structure of the first record (the log's species, pbc)
        self._valid_cell = None  # (cell, pbc) bytes last checked by validate_atoms
        self._said = SaidOnce()  # one-time messages already given
        #: feature outputs every orbit call asks for (the purified readout's)
        self.features = [readout.feature] if readout is not None else []
        source.keep_on_device(self.features)
        self.warm_up_s = (source.warm_up(1 + 2 * options.random_rotations, self.features)
                          if warm_up else 0.0)
        if warm_up:
            self.schedule.warm_up()
        #: the base calculator's own results (ASE names, untouched) when the returned
        #: predictions are its own, else None (front-ends return these, dtype included)
        self.returned_results: Optional[Dict[str, object]] = None
        self.first_step_s: Optional[float] = None  # wall time of the first calculation

    # -- set-up ------------------------------------------------------------------------
    def _check_readout(self, readout) -> None:
        returned = {QUANTITY["forces"].direct_output: self.source.nc_forces,
                    QUANTITY["stress"].direct_output: self.source.nc_stress}
        if not returned.get(readout.target):
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
        result = self._plan(atoms, extra_values)
        self._evaluate(atoms, result)
        if result.plan.grid is not None:
            self._measure(atoms, result)
            self._decide(result)
        self._respond(atoms, result)
        base = result.base
        self.returned_results = (base.results if base is not None
                                 and result.returned is base.predictions else None)
        values = self._record(result)
        if self.first_step_s is None:
            self.first_step_s = self.schedule.clock() - started
        self.schedule.charge(result.plan, self.schedule.clock() - started)
        return result.returned, values

    def _plan(self, atoms, extra_values: Optional[Mapping]) -> StepResult:
        """Check the structure, number the step and plan it."""
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
        return StepResult(step, plan, quantities, atoms.positions.copy(),
                          atoms.cell.array.copy(), dict(extra_values or {}))

    def _evaluate(self, atoms, result: StepResult) -> None:
        """The base predictions and the planned stacks of copies (one batched call)."""
        plan = result.plan
        try:
            result.base, result.stacks = self.source.evaluate(
                atoms, result.quantities, self._frames(plan), base=self._needs_base(plan),
                features=self.features)
        except OrbitOutOfMemory as error:  # the plain call's prediction, not monitored
            self._not_monitored(atoms, result, error)
        self._purify(result.stacks)
        if result.stacks:  # the grid's orbit is checked by the engine (NonFiniteOrbit)
            self._check_finite(atoms, result.step, [
                v for name, stack in result.stacks.items() if name != "grid"
                for v in stack.values()])

    def _not_monitored(self, atoms, result: StepResult, error: OrbitOutOfMemory) -> None:
        """A step whose orbit does not fit in memory: the base calculator's own
        prediction, returned as is (not averaged or purified), and no diagnostics."""
        self.n_not_monitored += 1
        instead = {"average": " (instead of the O(3) average)",
                   "purified": " (instead of the purified prediction)"}.get(self.mode, "")
        self._say_once("out_of_memory", f"step {result.step} is not monitored: {error}; the "
                       f"base calculator's own prediction is returned{instead}, and later "
                       "steps whose orbit does not fit are counted in n_not_monitored",
                       stacklevel=5)
        result.plan = replace(result.plan, grid=None, spectrum=None, frame=None,
                              scheduled=False, calibrating=False)
        result.base, result.stacks = self.source.plain(atoms, result.quantities), {}
        result.not_monitored = True

    def _measure(self, atoms, result: StepResult) -> None:
        """ε, intervals and spectra of the grid's orbit (one sentence if not finite)."""
        plan = result.plan
        collected = {} if self.calibrations.wanted(plan) else None
        try:
            result.diagnostics = diagnose(
                result.stacks["grid"], plan, len(result.positions), self.options.l_max,
                self.source.model_dtype, self.calibrations.laws(), collected)
        except NonFiniteOrbit:
            finite = False
        else:
            finite = True
        if not finite:
            self._refuse_non_finite(atoms, result.step)  # outside the handler: one sentence
        if collected:
            self.calibrations.update(plan, collected)
        result.diagnostics.update(self.calibrations.values(plan))

    def _decide(self, result: StepResult) -> None:
        """Grade the step and act on a problem."""
        result.verdict = self.policy.judge(result.diagnostics, result.quantities)
        self.n_violations += int(result.verdict.level == "problem")
        self._act(result)
        result.eps_of_returned = self.mode in ("monitor", "purified")

    def _respond(self, atoms, result: StepResult) -> None:
        """What is returned, its zero-cost signals, and the finite check of steps
        without an orbit."""
        base = result.base
        result.returned = (base.predictions if result.not_monitored  # the plain call's
                           else self._returned(atoms, result.quantities, base, result.plan,
                                               result.stacks))
        result.averaged = self.averaging
        if "frame" in result.stacks and base is not None:
            result.signals.update(frame_noise(result.returned, base.predictions, len(atoms)))
        forces = self._net_force_source(result.returned, base)
        if forces is not None:
            periodic = bool(any(atoms.pbc))
            result.signals.update(net_signals(forces, result.positions,
                                              None if periodic else atoms.get_masses(),
                                              periodic))
        if not result.stacks:  # orbit steps: checked in evaluate and measure
            self._check_finite(atoms, result.step, self._base_sums(base, result.signals))

    def _record(self, result: StepResult) -> Dict[str, object]:
        """The step's record: committed now, or when the attached driver confirms it."""
        values = result.values()
        record = StepRecord(result.step, self.clock.time_ps(result.step), result.positions,
                            result.cell, result.plan.scheduled, values)
        self.last_values = values
        if self.clock.attached:
            record.at_driver = self.clock.confirms(record.positions)
            self._pending = record
        else:
            self._commit(record, "single_point")
        return values

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
        model call costs tens of µs, a visible part of an unmonitored step."""
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
        quantity = output(readout.target).quantity
        for values in stacks.values():
            features = values.pop(readout.feature)
            corrected = readout.correct_torch(values[quantity], features)
            if QUANTITY[quantity].per_atom:  # as MetatomicCalculator returns direct forces
                corrected = without_net_force(corrected)
            values[quantity] = corrected

    def _returned(self, atoms, quantities, base, plan: StepPlan, stacks):
        if self.averaging:
            grid = self.schedule.choose_average_grid(quantities)
            orbit = stacks.get("grid" if plan.grid is grid else "average")
            if orbit is None:  # switched to averaging at this step
                orbit = self._evaluate_extra(atoms, quantities, grid.matrices)
            return {q: orbit_average(orbit[q], grid, QUANTITY[q].kind).numpy()
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
    def _act(self, result: StepResult) -> None:
        verdict = result.verdict
        action = self.policy.action(verdict, self.averaging)
        if action is None:
            return
        step, text = result.step, verdict.describe()
        if action == "raise":
            record = StepRecord(result.step, self.clock.time_ps(result.step),
                                result.positions, result.cell, True, result.values())
            self._commit(record, "driver_step" if self.clock.attached else "single_point")
            self.close()
            raise SymmetryViolation(f"symmetry violation at step {step}: {text}")
        if action == "average":
            warnings.warn(f"symmetry violation at step {step} ({text}); switching to O(3) "
                          "averaging from this step on", SymmetryViolationWarning,
                          stacklevel=4)
            self.averaging = result.switched = True
            return
        new = self._said.new(("problem", q) for q in verdict.problems)
        if new:
            quantities = ", ".join(q for _, q in new)
            warnings.warn(f"symmetry violation at step {step}: {text} (warned once per "
                          f"quantity; further problem steps of {quantities} are "
                          "counted in the log's 'violation')",
                          SymmetryViolationWarning, stacklevel=4)

    def _say_once(self, key, message: str, stacklevel: int = 4) -> None:
        if self._said.new([key]):
            warnings.warn(message, UserWarning, stacklevel=stacklevel)

    def _say_not_monitored(self, atoms) -> None:
        missing = self.source.not_monitored(atoms)
        if missing:
            self._say_once(("missing", tuple(missing)),
                           f"{type(self.source.base).__name__} does not provide "
                           f"{' or '.join(missing)}: not monitored (monitoring "
                           f"{', '.join(self.source.quantities(atoms))})", stacklevel=5)

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
        """The log's metadata (:func:`.schema.log_metadata`)."""
        return log_metadata(self.source, self.options, self.schedule, self.clock.dynamics,
                            self.warm_up_s, self.first_step_s)

    def flush(self) -> None:
        self.recorder.flush()

    def close(self) -> None:
        """Flush and close the log (a calculation the driver never confirmed is dropped)."""
        self._pending = None
        self.recorder.close()

