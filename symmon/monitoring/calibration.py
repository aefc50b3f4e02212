"""Calibration steps: the reference orbits that give random steps calibrated intervals.

The interval of a random step's ε is the bootstrap pivot interval of a reference orbit
of the same trajectory (:mod:`symmon.core.calibration`): its coverage is nominal when
the step's orientation dependence has the reference's shape, whatever its scale. The
monitor takes a reference

* on its first monitored random step and then on every ``calibrate_every``-th monitored
  random step (itself included: with 3, steps 0, 3, 6, ... of a monitor run every step): that step evaluates ``calibration_rotations`` (default 32) random pairs
  instead of ``random_rotations`` (its own ε is then the more precise one, with a
  bootstrap interval from its own pairs);
* on every full-orbit step (the quadrature, with its weights).

The intervals use the pooled law of the last :data:`~symmon.core.calibration.POOL`
references (:class:`~symmon.core.calibration.CalibrationPool`; a calibration step's
own interval pools its own pairs with the earlier references): the coverage of the
steps that share one 32-pair reference scatters around the nominal value with that
reference's luck, and pooling halves that scatter once four calibrations have run.
A continued run takes a new reference at its first monitored step. With
``calibration_rotations=0`` random steps keep the data-only Student-t interval
(approximate below 10 rotations: docs/theory.md).
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import Deque, Dict, Optional

from ..core.calibration import POOL, PairCalibration, pooled
from ..core.grids import random_grid
from .schedule import StepPlan, step_seed


class Calibrations:
    """The current reference per quantity, and when the next calibration step is due."""

    def __init__(self, rotations: int, every: int, seed: int):
        self.rotations, self.every, self.seed = rotations, every, seed
        self.references: Dict[str, Deque[PairCalibration]] = {}
        self._laws: Dict[str, object] = {}
        self.step: Optional[int] = None  # step of the newest references
        self._random_steps_since = 0

    def adjust(self, plan: StepPlan) -> StepPlan:
        """``plan`` with a calibration grid where a random step is due for one."""
        if self.rotations == 0 or plan.grid is None or plan.grid.kind != "random":
            return plan
        due = not self.references or self._random_steps_since >= self.every
        self._random_steps_since += 1
        if not due:
            return plan
        # never fewer pairs than an ordinary step of this run evaluates
        rotations = max(self.rotations, plan.grid.n_rotations)
        grid = random_grid(rotations, step_seed(self.seed, plan.step))
        return replace(plan, grid=grid, calibrating=True)

    def wanted(self, plan: StepPlan) -> bool:
        """Whether this step's orbits become the references."""
        return plan.calibrating or (plan.full and self.rotations > 0)

    def laws(self) -> Dict[str, object]:
        """quantity -> the pooled law of its references (the intervals' law)."""
        return self._laws

    def update(self, plan: StepPlan, references: Dict[str, PairCalibration]) -> None:
        if references:
            for quantity, reference in references.items():
                self.references.setdefault(quantity, deque(maxlen=POOL)).append(reference)
                self._laws[quantity] = pooled(*self.references[quantity])
            self.step = plan.step
            # the calibration step counts as the first of its block of calibrate_every
            self._random_steps_since = 1 if plan.calibrating else self._random_steps_since

    def values(self, plan: StepPlan) -> dict:
        """Logged with a step: where its intervals' law came from."""
        return {"calibration_step": -1 if self.step is None else self.step,
                "calibration_rotations": len(plan.grid) // 2 if plan.calibrating else 0}
