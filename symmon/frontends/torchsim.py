"""``TorchSimMonitor``: a TorchSim model that measures the O(3) symmetry of the model it wraps.

``monitored = TorchSimMonitor(model, log="run", every="auto")`` is a TorchSim
``ModelInterface``: ``ts.integrate``, ``ts.optimize`` and ``ts.static`` take it in place
of ``model`` (autobatchers included) and get the wrapped model's predictions back.

Per forward call (one *batch step*; TorchSim's runners call the model once per step):

1. **which systems** (:class:`SystemTracker`): a system keeps its id while it stays in
   the batch, whatever order the autobatcher puts it in; a system never seen before
   gets the next id and its own monitor;
2. **plan**: one schedule for the batch (``every``, the overhead budget of
   ``every="auto"`` charged once per batch step, calibration and full-orbit steps);
   per system its reference orbits (:mod:`symmon.monitoring.calibration`) and, with
   ``on_violation="average"``, its switch to averaging; a system is also monitored at
   its first step in the batch;
3. **one forward**: every system's unrotated copy and, on monitored steps, its
   ``2 * random_rotations`` rotated/improper copies (more on calibration and
   full-orbit steps) as one ``SimState`` of ``(K + 1) S`` systems, in chunks of
   ``max_atoms`` atoms where given (:func:`symmon.adapters.torchsim.evaluate_copies`);
4. **per system**, where its plan evaluates anything: a
   :class:`symmon.monitoring.monitor.Monitor` -- the one the ASE ``SymmetryMonitor``
   runs -- takes those values as its orbit: the same ε, intervals, calibration,
   thresholds, verdicts, actions and log records, to ``log/system-XXXX.h5``
   (:mod:`symmon.io.run_index`);
5. **returned**: the unrotated copies' energy, forces and stress (``mode="monitor"``),
   their O(3) average (``"average"``) or a random frame's (``"random_frame"``), in the
   wrapped model's dtype. Unmonitored steps in monitor mode are one plain forward of
   the wrapped model, whose output is returned as is.
"""

from __future__ import annotations

import atexit
import math
import os
import sys
import time
import warnings
import weakref
from dataclasses import replace
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from ..adapters.torchsim import (Batch, TorchSimCalculator, TorchSimOrbitModel,
                                 evaluate_copies, is_torchsim_model, model_outputs,
                                 require_torchsim)
from ..core.grids import random_grid
from ..core.outputs import matrix_to_voigt
from ..monitoring.monitor import Monitor, SaidOnce
from ..monitoring.options import MonitorOptions, check_option_names
from ..monitoring.schedule import Schedule, StepPlan, step_seed
from ..monitoring.source import IDENTITY, ModelSource
from ..monitoring.steps import StepClock

_torch_sim = require_torchsim()
from torch_sim.models.interface import ModelInterface  # noqa: E402

#: ``TorchSimMonitor`` keywords that are not monitor options
FRONT_END_KEYWORDS = ("log", "max_atoms", "max_displacement")
#: largest max|batched - plain| / max|plain| of the first monitored step, per dtype
FOLD_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
#: default largest displacement (Å) of an atom between two calls of one system
MAX_DISPLACEMENT = 1.0
#: batch steps after which the log of a system out of the batch is closed
CLOSE_AFTER = 20


# -- which system is which ------------------------------------------------------------
class SystemTracker:
    """Ids of the systems of successive batches.

    A system keeps its id from one call to the next when it has the same atomic numbers
    and no atom moved more than ``max_displacement`` (Å, minimum image). While the
    batch's layout (atoms per system, atomic numbers) is unchanged this is checked for
    the whole batch at once (one reduction per call); when it changed (an autobatcher
    removed, added or reordered systems, or a runner evaluated its batches one by one)
    system by system, against every system seen so far at its last positions: the next
    system of the previous call in order, else the closest with the same atomic numbers
    within ``max_displacement``, else the one that sat at the same place in the previous
    call with the same atomic numbers (atoms that jumped: an exploding run). A system
    that matches none is new (the next id)."""

    #: systems of the previous call tried in order before a search of all known ones
    LOOK_AHEAD = 8

    def __init__(self, max_displacement: float = MAX_DISPLACEMENT):
        self.max_displacement = float(max_displacement)
        self.next_id = 0
        self.known: Dict[int, tuple] = {}  # id -> (key, positions (n, 3)) when last seen
        self._by_key: Dict[tuple, List[int]] = {}
        self._previous = None  # (ids, positions, numbers, counts) of the last call
        self.changed = False  # whether the last call's layout differed from the one before

    def identify(self, state, counts: torch.Tensor, batch: Callable[[], Batch]):
        """``(ids, new, left)``: the id of each system, the ids seen for the first time,
        the ids of the previous call no longer present (``batch()``: the state as a
        :class:`~symmon.adapters.torchsim.Batch`, made only when needed)."""
        previous = self._previous
        positions, numbers = state.positions, state.atomic_numbers
        if (previous is not None and (previous[3] is counts or torch.equal(previous[3], counts))
                and (previous[2] is numbers or torch.equal(previous[2], numbers))
                and self._stayed(positions, previous[1], batch)):
            ids, new, left = previous[0], [], []
            self.changed = False
        else:
            ids, new, left = self._match(batch(), previous)
            self.changed = True
        self._previous = (ids, positions.clone(), numbers, counts)
        return ids, new, left

    def _stayed(self, positions, before, batch) -> bool:
        """No atom moved more than ``max_displacement``: plainly (one reduction), else
        (an atom wrapped into the cell by the integrator) by the minimum image."""
        if not len(positions):
            return True
        moved = float(((positions - before) ** 2).sum(dim=1).max())
        if moved <= self.max_displacement ** 2:
            return True
        full = batch()
        return float(self._displacement(full, before.to(torch.float64)).max()) \
            <= self.max_displacement

    def _displacement(self, batch: Batch, before: torch.Tensor) -> torch.Tensor:
        """|x - x_before| of every atom, minimum image in each system's cell."""
        delta = batch.positions - before
        if batch.pbc:
            system = torch.repeat_interleave(torch.arange(len(batch.counts),
                                                          device=delta.device), batch.counts)
            cells = batch.cells[system]
            fractional = torch.linalg.solve(cells.mT, delta[..., None])[..., 0]
            delta = ((fractional - torch.round(fractional))[:, None, :] @ cells)[:, 0]
        return torch.linalg.norm(delta, dim=-1)

    def _remember(self, ids, positions, numbers, counts) -> None:
        start = 0
        for system_id, n in zip(ids, counts):
            key = (n, numbers[start:start + n].tobytes())
            if system_id not in self.known:
                self._by_key.setdefault(key, []).append(system_id)
            self.known[system_id] = (key, positions[start:start + n])
            start += n

    def _distance(self, ids, where, cell, pbc) -> np.ndarray:
        """Largest minimum-image displacement from each of ``ids``' last positions."""
        delta = where[None] - np.stack([self.known[i][1] for i in ids])
        if pbc:
            fractional = np.linalg.solve(cell.T, delta.reshape(-1, 3).T).T
            delta = (fractional - np.round(fractional)) @ cell
        return np.linalg.norm(delta.reshape(len(ids), -1, 3), axis=-1).max(axis=1)

    def _match(self, batch: Batch, previous):
        counts = batch.counts.tolist()
        numbers = batch.numbers.cpu().numpy()
        positions = batch.positions.cpu().numpy()
        cells = batch.cells.cpu().numpy()
        slots = []
        if previous is not None:  # the previous call's systems at their last positions
            slots = list(previous[0])
            self._remember(slots, previous[1].cpu().numpy(), previous[2].cpu().numpy(),
                           previous[3].tolist())
        claimed, ids, pointer, start = set(), [], 0, 0
        for s, n in enumerate(counts):
            key, where = (n, numbers[start:start + n].tobytes()), positions[start:start + n]
            start += n
            found = None
            for p in range(pointer, min(pointer + self.LOOK_AHEAD, len(slots))):
                candidate = slots[p]
                if (candidate not in claimed and self.known[candidate][0] == key
                        and self._distance([candidate], where, cells[s], batch.pbc)[0]
                        <= self.max_displacement):
                    found, pointer = candidate, p + 1
                    break
            if found is None:
                candidates = [i for i in self._by_key.get(key, ()) if i not in claimed]
                if candidates:
                    distances = self._distance(candidates, where, cells[s], batch.pbc)
                    best = int(np.argmin(distances))
                    if distances[best] <= self.max_displacement:
                        found = candidates[best]
            if found is not None:
                claimed.add(found)
            ids.append(found)
        new, start = [], 0
        for s, n in enumerate(counts):  # unmatched: the same slot's system, else new
            key = (n, numbers[start:start + n].tobytes())
            start += n
            if ids[s] is not None:
                continue
            slot = slots[s] if s < len(slots) else None
            if slot is not None and slot not in claimed and self.known[slot][0] == key:
                ids[s] = slot
            else:
                ids[s] = self.next_id
                self.next_id += 1
                new.append(ids[s])
            claimed.add(ids[s])
        return ids, new, [i for i in slots if i not in claimed]


# -- one system's monitor, fed by the batch ----------------------------------------------
class _SystemSource(ModelSource):
    """The :class:`~symmon.monitoring.source.ModelSource` of one system, whose orbit and
    unrotated prediction come from the batch's forward call (:meth:`feed`): the stacks
    the batch evaluated (the unrotated copy first) are served from it; anything else (an
    averaging grid at the step a system switches to averaging) is evaluated for this
    system alone through the TorchSim adapter, and the base prediction then by the
    model's own call (:class:`~symmon.adapters.torchsim.TorchSimCalculator`)."""

    def __init__(self, orbit_model: TorchSimOrbitModel):
        super().__init__(orbit_model.calculator)
        self.orbit_model = orbit_model
        # the batch compares its unrotated copies with the model's own call
        # (TorchSimMonitor._check_fold); TorchSim's stress is the full 3x3
        self._fold_checked = True
        self._fed = None  # (matrices, values) of this step

    def feed(self, matrices: np.ndarray, values: Dict[str, torch.Tensor]) -> None:
        self._fed = (matrices, values)

    def clear(self) -> None:
        self._fed = None

    def _served(self, matrices: np.ndarray):
        """The fed values of ``matrices`` (the fed stack, or all of it but its unrotated
        copy), else None."""
        if self._fed is None:
            return None
        fed, values = self._fed
        if fed.shape == matrices.shape and np.array_equal(fed, matrices):
            return values
        if (len(fed) == len(matrices) + 1 and np.array_equal(fed[0], IDENTITY[0])
                and np.array_equal(fed[1:], matrices)):
            return {name: value[1:] for name, value in values.items()}
        return None

    def _raw_orbit(self, atoms, matrices, quantities, features):
        served = None if features else self._served(np.asarray(matrices))
        if served is None:
            return super()._raw_orbit(atoms, matrices, quantities, features)
        return {q: served[q] for q in quantities}

    def _own_call(self, atoms, quantities):
        """The unrotated copy of the batch's call (as TorchSim returns it: stress 3x3),
        where fed; else the model's own call."""
        if self._fed is None or not np.array_equal(self._fed[0][0], IDENTITY[0]):
            return super()._own_call(atoms, quantities)
        values = {q: self._fed[1][q][0].numpy() for q in quantities}
        results = {q: matrix_to_voigt(v) if q == "stress" else v for q, v in values.items()}
        if "energy" in results:
            results["free_energy"] = results["energy"]
        return values, results


class _SharedSchedule:
    """A system's view of the batch's schedule: the same plans; the budget is charged
    once per batch step by :class:`TorchSimMonitor`, not per system."""

    def __init__(self, schedule: Schedule):
        self._schedule = schedule

    def __getattr__(self, name):
        return getattr(self._schedule, name)

    def plan(self, step: int, averaging: bool) -> StepPlan:
        """The batch's plan of ``step`` (made once per step and mode: a random grid is
        drawn for every call of ``Schedule.plan``)."""
        cache = self._schedule.__dict__.setdefault("_system_plans", {})
        if step not in cache:
            cache.clear()
            cache[step] = {}
        if averaging not in cache[step]:
            cache[step][averaging] = self._schedule.plan(step, averaging)
        return cache[step][averaging]

    def charge(self, plan, seconds) -> None:
        pass

    def spend(self, seconds) -> None:
        pass

    def warm_up(self) -> None:
        pass


class _BatchClock(StepClock):
    """Step numbers of a system's monitor: the batch's step (every call is committed as
    a driver step at once)."""

    def __init__(self, owner: "TorchSimMonitor"):
        super().__init__()
        self._owner = weakref.ref(owner)

    @property
    def attached(self) -> bool:
        return True

    def peek(self) -> int:
        return self._owner().batch_step

    def observe(self) -> int:
        return self._owner().batch_step

    def confirms(self, positions) -> bool:
        return True

    def left_initial_state(self, *args) -> bool:
        return False

    def time_ps(self, step: int) -> float:
        return float("nan")


class _System:
    """One system of the run: its monitor, log file and index entry."""

    def __init__(self, system_id: int, monitor: Monitor, entry: dict):
        self.id, self.monitor, self.entry = system_id, monitor, entry
        self.source: _SystemSource = monitor.source
        self.closed = False  # its log closed while it is out of the batch
        self.left_step = 0


# -- the model TorchSim runs -----------------------------------------------------------
class TorchSimMonitor(ModelInterface):
    """A TorchSim model that returns ``model``'s predictions and logs their O(3) symmetry,
    system by system.

    :param model: any TorchSim ``ModelInterface`` (Lennard-Jones, metatomic, Orb, MACE...)
    :param log: a directory (created) for one symmon log per system and ``index.json``
        (:mod:`symmon.io.run_index`); ``None``: diagnostics in :attr:`last_values` only
    :param max_atoms: atoms per forward call of the transformed copies (``None``: one
        call; a CUDA out-of-memory error halves it and retries)
    :param max_displacement: largest move (Å) of an atom between two calls for a system
        to keep its id (:class:`SystemTracker`)
    :param options: the monitor's settings, those of ``SymmetryMonitor``
        (:class:`symmon.monitoring.options.MonitorOptions`); ``mode`` is ``"monitor"``,
        ``"average"`` or ``"random_frame"``; ``every`` counts batch steps (forward calls)
    """

    def __init__(self, model, log: Optional[str] = None, *, max_atoms: Optional[int] = None,
                 max_displacement: float = MAX_DISPLACEMENT, **options):
        super().__init__()
        if not is_torchsim_model(model):
            raise TypeError(f"TorchSimMonitor wraps a TorchSim model (a torch_sim "
                            f"ModelInterface), got {type(model).__name__}; for an ASE "
                            "calculator use symmon.SymmetryMonitor")
        check_option_names(options, also=FRONT_END_KEYWORDS)
        self.options = MonitorOptions(**options)
        if self.options.mode == "purified":
            raise ValueError("mode='purified' needs a metatomic model's last-layer features; "
                             "TorchSimMonitor offers 'monitor', 'average' and 'random_frame'")
        self.model = model
        self._device, self._dtype = model.device, model.dtype
        self._compute_forces = bool(getattr(model, "compute_forces", False))
        self._compute_stress = bool(getattr(model, "compute_stress", False))
        self._memory_scales_with = model.memory_scales_with
        self.outputs = model_outputs(model)
        self.orbit_model = TorchSimOrbitModel(model, max_atoms=max_atoms)
        self.max_atoms = max_atoms
        self.schedule = Schedule(self.options)
        self.tracker = SystemTracker(max_displacement)
        self.systems: Dict[int, _System] = {}
        self._said = SaidOnce()
        self.batch_step = 0
        self.directory = None if log is None else os.fspath(log)
        if self.directory is not None:
            self._prepare_directory()
        self.last_values: Dict[int, dict] = {}
        self._fold_checked = False
        self._fold = True
        self._monitored_any = False
        #: every step goes through the systems' monitors (averaging, random frames, a
        #: logged trajectory), not only the monitored ones
        self._general = self.options.mode != "monitor" or self.options.trajectory
        self._closed = False
        atexit.register(_close_at_exit, weakref.ref(self))

    # -- set-up --------------------------------------------------------------------------
    def _prepare_directory(self) -> None:
        from ..io.run_index import INDEX, is_run_directory

        directory, mode = self.directory, self.options.log_mode
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise NotADirectoryError(f"log={directory!r} is a file: TorchSimMonitor writes a "
                                     "directory of logs, one per system; give a new path")
        if is_run_directory(directory):
            if mode == "create":
                raise FileExistsError(f"{directory!r} holds a run already ({INDEX}); pass "
                                      "log_mode='overwrite' to replace it or 'append' to "
                                      "continue it, or give another directory")
            if mode == "overwrite":
                for name in os.listdir(directory):
                    if name == INDEX or (name.startswith("system-") and name.endswith(".h5")):
                        os.remove(os.path.join(directory, name))
        elif mode == "append":
            raise FileNotFoundError(f"cannot append: {directory!r} holds no run ({INDEX})")
        parent = os.path.dirname(os.path.abspath(directory))
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"cannot write logs to {directory!r}: directory "
                                    f"{parent!r} does not exist")
        os.makedirs(directory, exist_ok=True)
        self._write_index()

    def _new_system(self, system_id: int, atoms, entry: Optional[dict] = None) -> _System:
        """A system's monitor (``entry``: the index entry of a system whose closed log is
        continued)."""
        path = None
        if self.directory is not None:
            from ..io.run_index import system_file

            path = os.path.join(self.directory, system_file(system_id))
        mode = "append" if entry is not None or self.options.log_mode == "append" \
            else self.options.log_mode
        if mode == "append" and (path is None or not os.path.exists(path)):
            mode = "create"
        metadata = dict(self.options.metadata, system_id=system_id,
                        driver="TorchSim (batched)", batch_log=self.directory)
        options = replace(self.options, metadata=metadata, log_mode=mode)
        source = _SystemSource(self.orbit_model)
        monitor = Monitor(source, options, log=path, warm_up=False)
        monitor._said = self._said  # one warning per kind for the whole batch
        # the batch's schedule decides which steps are monitored or calibrate; the
        # system's own Calibrations (its monitor's) keep its reference orbits
        monitor.schedule = _SharedSchedule(self.schedule)
        monitor.clock = _BatchClock(self)
        if entry is None:
            entry = {"id": system_id, "file": os.path.basename(path) if path else None,
                     "formula": atoms.get_chemical_formula(), "n_atoms": len(atoms),
                     "pbc": bool(np.all(atoms.pbc)), "first_step": self.batch_step,
                     "last_step": self.batch_step, "left": False, "logged": False}
        return _System(system_id, monitor, entry)

    # -- TorchSim's call -----------------------------------------------------------------
    def forward(self, state, **kwargs) -> Dict[str, torch.Tensor]:
        if isinstance(state, dict):
            state = _torch_sim.SimState(**state, masses=torch.ones_like(state["positions"]))
        if self._closed or _memory_probe():
            return self.model(state, **kwargs)  # TorchSim's autobatcher sizing its batches
        clock = self.schedule.clock
        started = clock()
        step = self.batch_step
        counts = self._counts(state)
        made = []

        def batch() -> Batch:  # float64 copies of the state: only where needed
            if not made:
                made.append(Batch.from_state(state, counts))
            return made[0]

        ids, new, left = self.tracker.identify(state, counts, batch)
        if self.tracker.changed:
            self._batch_changed(ids, left)
        batch_plan = self.schedule.plan(step, False)
        if batch_plan.grid is None and not new and not self._general:
            output = self.model(state, **kwargs)
            self._charge(batch_plan, started, output)
            self.__dict__["batch_step"] = step + 1  # (not nn.Module.__setattr__: µs)
            return output
        output = self._monitored_step(state, batch(), ids, new, batch_plan, step)
        self._general = (self.options.mode != "monitor" or self.options.trajectory
                         or any(system.monitor.averaging for system in self.systems.values()))
        self._charge(batch_plan, started, output, self._monitored_any)
        self.__dict__["batch_step"] = step + 1  # (not nn.Module.__setattr__: µs)
        return output

    def _counts(self, state) -> torch.Tensor:
        """Atoms per system (the previous call's, when the state holds the same
        ``system_idx`` tensor: integrators pass it on unchanged)."""
        cached = self.__dict__.get("_counts_of")
        if cached is not None and cached[0] is state.system_idx:
            return cached[1]
        counts = torch.bincount(state.system_idx, minlength=state.cell.shape[0])
        self.__dict__["_counts_of"] = (state.system_idx, counts)
        return counts

    def _charge(self, plan: StepPlan, started: float, output, monitored: bool = False) -> None:
        """Book the batch step's time in the overhead budget (once per batch step)."""
        if self.schedule.auto and torch.device(self._device).type == "cuda":
            torch.cuda.synchronize(self._device)  # the budget times the work, not its launch
        seconds = self.schedule.clock() - started
        if plan.grid is None and monitored:  # only entering systems: charged, not learnt
            self.schedule.budget.charge(seconds, True, None)
        else:
            self.schedule.charge(plan, seconds)

    def _monitored_step(self, state, batch: Batch, ids, new, batch_plan, step):
        host = _HostBatch(batch)
        for s, system_id in enumerate(ids):
            if system_id not in self.systems:
                self.systems[system_id] = self._new_system(system_id, host.atoms(s))
        # every system's elements: its unrotated copy first where its monitor needs it
        plans, stacks, owner = {}, {}, []
        for s, system_id in enumerate(ids):
            monitor = self.systems[system_id].monitor
            plan = self._plan(monitor, step, entering=system_id in new, pbc=batch.pbc)
            frames = monitor._frames(plan)
            parts = ([IDENTITY] if not frames or monitor._needs_base(plan) else []) + \
                list(frames.values())
            plans[s], stacks[s] = (plan, frames), np.concatenate(parts)
            owner.extend([s] * len(stacks[s]))
        values = evaluate_copies(self.model, batch,
                                 torch.from_numpy(np.concatenate(list(stacks.values()))),
                                 torch.tensor(owner), self.outputs, max_atoms=self.max_atoms)
        values = {name: value.cpu() for name, value in values.items()}  # one transfer
        per_system = _split(values, batch, owner, self.outputs)
        with_base = all(stack[0].tobytes() == IDENTITY[0].tobytes() for stack in stacks.values())
        if not self._fold_checked and with_base:
            self._check_fold(state, per_system)
        returned = {name: [] for name in self.outputs}
        any_monitored = False
        for s, system_id in enumerate(ids):
            system = self.systems[system_id]
            system.entry["last_step"] = step
            plan, frames = plans[s]
            mine = per_system[s]
            if not frames:  # nothing to evaluate for this system: its unrotated copy
                for name in self.outputs:
                    returned[name].append(mine[name][0])
                continue
            any_monitored = any_monitored or plan.scheduled
            system.source.feed(stacks[s], mine)
            monitor = system.monitor
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    result, diagnostics = monitor.calculate(host.atoms(s))
                    monitor.observe()
                finally:
                    system.source.clear()
            for warning in caught:  # named by system (once per run and key: _said)
                warnings.warn(f"system {system_id} ({system.entry['formula']}): "
                              f"{warning.message}", warning.category, stacklevel=4)
            self.last_values[system_id] = diagnostics
            if (self.directory is not None and not system.entry["logged"]
                    and monitor.last_monitored.get("step") == step):
                system.entry["logged"] = True
                new = True  # the index is rewritten below
            for name in self.outputs:
                if name in result:
                    returned[name].append(torch.as_tensor(np.asarray(result[name]),
                                                          dtype=torch.float64))
                else:  # stress of a structure without a 3D cell: the model's own
                    returned[name].append(mine[name][0])
        if new:
            self._write_index()
        output = self._assemble(returned)
        if not self._fold and self.options.mode == "monitor":
            output = self.model(state)  # the model's own call (see _check_fold)
        self._monitored_any = any_monitored
        return output

    def _plan(self, monitor: Monitor, step: int, entering: bool, pbc: bool) -> StepPlan:
        """The system's plan: the batch's (averaging where it averages, its calibration
        steps), or a random step at its first call when the batch's step is not one."""
        if monitor.averaging:
            self.schedule.choose_average_grid([q for q in self.outputs
                                               if q != "stress" or pbc])
        if isinstance(monitor.schedule, _FirstPlan):
            monitor.schedule = _SharedSchedule(self.schedule)
        plan = monitor.schedule.plan(step, monitor.averaging)
        if entering and plan.grid is None and not monitor.averaging:
            grid = random_grid(self.options.random_rotations, step_seed(self.options.seed, step))
            plan = replace(plan, grid=grid, scheduled=True, stride=0)
            monitor.schedule = _FirstPlan(self.schedule, plan)
        return plan

    def _check_fold(self, state, per_system) -> None:
        """On the first monitored step: the unrotated copies of the batched call against
        the wrapped model's own call (a fast path never diverges from the model's)."""
        self._fold_checked = True
        plain = self.model(state)
        worst = 0.0
        for name in self.outputs:
            batched = torch.cat([values[name][0:1] if name != "forces" else values[name][0]
                                 for values in per_system.values()])
            reference = plain[name].detach().to("cpu", torch.float64).reshape(batched.shape)
            scale = max(float(reference.abs().max()), 1e-12)
            worst = max(worst, float((batched - reference).abs().max()) / scale)
        if worst > FOLD_TOLERANCE.get(self._dtype, 1e-10):
            self._fold = False
            warnings.warn(f"the unrotated copies in the batched call differ from "
                          f"{type(self.model).__name__}'s own call (relative {worst:.2g}): "
                          "monitored steps return the model's own call (one more forward)",
                          UserWarning, stacklevel=4)

    def _assemble(self, returned) -> Dict[str, torch.Tensor]:
        output = {}
        for name, parts in returned.items():
            if name == "forces":
                value = torch.cat([p.reshape(-1, 3) for p in parts])
            else:
                value = torch.stack([p.reshape(()) if name == "energy" else p.reshape(3, 3)
                                     for p in parts])
            output[name] = value.to(device=self._device, dtype=self._dtype)
        return output

    def _batch_changed(self, ids, left) -> None:
        """Systems that left are marked (their logs closed once absent for
        :data:`CLOSE_AFTER` batch steps: open files stay few); systems that came back
        are marked present (a closed log is continued)."""
        step, changed = self.batch_step, False
        for system_id in left:
            system = self.systems.get(system_id)
            if system is not None and not system.entry["left"]:
                system.entry["left"], system.left_step, changed = True, step, True
        for system_id in ids:
            system = self.systems.get(system_id)
            if system is not None and system.entry["left"]:
                system.entry["left"], changed = False, True
                if system.closed:
                    self.systems[system_id] = self._new_system(system_id, None, system.entry)
        for system in self.systems.values():
            if system.entry["left"] and not system.closed and \
                    step - system.left_step > CLOSE_AFTER:
                system.monitor.close()
                system.closed = True
        if changed:
            self._write_index()

    # -- results and log -----------------------------------------------------------------
    def _write_index(self) -> None:
        if self.directory is None:
            return
        from ..io.run_index import write_index

        entries = [system.entry for system in self.systems.values()]
        write_index(self.directory, entries, {
            "driver": "TorchSim", "model": type(self.model).__name__,
            "model_dtype": str(self._dtype).replace("torch.", ""),
            "batch_steps": self.batch_step, "options": self.options.describe()})

    @property
    def n_violations(self) -> int:
        """Per-system steps graded ``problem`` so far, summed over systems."""
        return sum(system.monitor.n_violations for system in self.systems.values())

    def flush(self) -> None:
        for system in self.systems.values():
            system.monitor.flush()
        self._write_index()

    def close(self) -> None:
        """Close every system's log and write the index (also done at interpreter exit)."""
        if self._closed:
            return
        for system in self.systems.values():
            system.monitor.close()
        self._write_index()
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _FirstPlan(_SharedSchedule):
    """The schedule view of a system at its first step when the batch's step is not a
    monitored one: its own random step."""

    def __init__(self, schedule: Schedule, plan: StepPlan):
        super().__init__(schedule)
        self._plan = plan

    def plan(self, step, averaging):
        return self._plan if step == self._plan.step and not averaging \
            else super().plan(step, averaging)




class _HostBatch:
    """The batch on the host, one ``ase.Atoms`` per system on demand."""

    def __init__(self, batch: Batch):
        self.positions = batch.positions.cpu().numpy()
        self.cells = batch.cells.cpu().numpy()
        self.numbers = batch.numbers.cpu().numpy()
        self.masses = batch.masses.cpu().numpy()
        self.counts = batch.counts.tolist()
        self.starts = batch.offsets.tolist()
        self.pbc = batch.pbc

    def atoms(self, s: int):
        from ase import Atoms

        start, n = self.starts[s], self.counts[s]
        return Atoms(numbers=self.numbers[start:start + n],
                     positions=self.positions[start:start + n],
                     masses=self.masses[start:start + n], cell=self.cells[s], pbc=self.pbc)


def _split(values, batch: Batch, owner, outputs) -> Dict[int, Dict[str, torch.Tensor]]:
    """The batched call's values per system: ``{s: {name: (copies, ...)}}``."""
    owner = np.asarray(owner)
    counts = batch.counts.cpu().numpy()
    per_copy_atoms = counts[owner]
    copy_starts = np.concatenate([[0], np.cumsum(per_copy_atoms)[:-1]])
    result = {}
    boundaries = np.flatnonzero(np.diff(np.concatenate([[-1], owner, [-1]]))).tolist()
    for begin, end in zip(boundaries[:-1], boundaries[1:]):
        s = int(owner[begin])
        mine = {}
        for name in outputs:
            if name == "forces":
                first = int(copy_starts[begin])
                last = first + int(per_copy_atoms[begin:end].sum())
                mine[name] = values[name][first:last].reshape(end - begin, int(counts[s]), 3)
            else:
                mine[name] = values[name][begin:end]
        result[s] = mine
    return result


def _memory_probe() -> bool:
    """Whether TorchSim's autobatcher is measuring the model's memory (not a step)."""
    frame = sys._getframe(2)
    for _ in range(6):
        if frame is None:
            return False
        if frame.f_code.co_name == "measure_model_memory_forward":
            return True
        frame = frame.f_back
    return False


def _close_at_exit(reference) -> None:
    monitor = reference()
    if monitor is not None:
        monitor.close()
