"""Calibration steps: the reference orbits that give random steps calibrated intervals.

The interval of a random step's ε is the bootstrap pivot interval of a reference orbit
of the same trajectory (:mod:`symmon.core.calibration`): its coverage is nominal when
the step's orientation dependence has the reference's shape, whatever its scale. A
calibration step evaluates ``calibration_rotations`` (default 32) random pairs instead
of ``random_rotations`` (its own ε is then the more precise one, with the bootstrap
interval of its own pairs pooled with the earlier references); every full-orbit step
adds its quadrature as a reference too.

When (:meth:`Calibrations.pending`; steps counted from the run's first calculation):

* never on the run's first monitored step, which is an ordinary random step (the
  overhead budget holds from the first step, :mod:`.budget`), and not before
  :data:`FIRST_CALIBRATION_STEPS` steps: the law is learnt on a structure the run has
  reached, not on the starting one (a rattled or freshly built cell unlike the frames
  that follow: with the reference of step 0, the first 100 steps of a tiny-PET MD
  covered 77 % at 68 % for one model and 61 % for another);
* then early and geometrically, as the run moves away from its start: whenever the
  steps since the start have grown by :data:`GROWTH` since the last calibration
  (steps 4, 8, 16, 32, ...), or ``calibrate_every`` monitored random steps have
  passed, whichever comes first;
* with ``every="auto"`` a due calibration comes when the budget's credit covers its
  cost (no random step in between); with ``every=n`` it is the next monitored step.

Until the first reference, random steps keep the data-only Student-t interval
(approximate, docs/theory.md); each step logs which method made each interval
(``<q>_interval_method``) and the step of the newest reference (``calibration_step``).
The intervals use the pooled law of the last :data:`~symmon.core.calibration.POOL`
references (:class:`~symmon.core.calibration.CalibrationPool`): the coverage of the
steps that share one 32-pair reference scatters around the nominal value with that
reference's luck, and pooling halves that scatter once four calibrations have run.
With ``calibration_rotations=0`` random steps keep the data-only interval.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Deque, Dict, Optional

from ..core.calibration import POOL, PairCalibration, pooled

if TYPE_CHECKING:  # the schedule imports this module
    from .schedule import StepPlan

#: steps after the run's first calculation before the first calibration
FIRST_CALIBRATION_STEPS = 4
#: factor by which the steps since the start grow between early calibrations
GROWTH = 2


class Calibrations:
    """The current references per quantity, and when the next calibration step is due."""

    def __init__(self, rotations: int, every: int, seed: int):
        self.rotations, self.every, self.seed = rotations, every, seed
        self.references: Dict[str, Deque[PairCalibration]] = {}
        self._laws: Dict[str, object] = {}
        self.step: Optional[int] = None  # step of the newest references
        self._start: Optional[int] = None  # the run's first planned step
        self._last: Optional[int] = None  # step of this run's last calibration step
        self._random_since = 0  # monitored random steps since then (or the start)

    def pending(self, step: int) -> bool:
        """Is a calibration due at ``step`` (should the next monitored step be one)?"""
        if self.rotations == 0 or self._random_since == 0:
            return False
        elapsed = step - self._start
        if self._last is None:
            return elapsed >= FIRST_CALIBRATION_STEPS
        return (self._random_since >= self.every
                or elapsed >= GROWTH * max(self._last - self._start, 1))

    def planned(self, step: int, kind: Optional[str]) -> None:
        """Count a new step's plan: ``kind`` ``"random"``, ``"calibration"`` or ``None``
        (unmonitored, full-orbit or averaged)."""
        if self._start is None or step < self._start:  # a driver that restarted its count
            self._start, self._last, self._random_since = step, None, 0
        if kind == "random":
            self._random_since += 1
        elif kind == "calibration":
            self._last, self._random_since = step, 0

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

    def values(self, plan: StepPlan) -> dict:
        """Logged with a step: where its intervals' law came from."""
        return {"calibration_step": -1 if self.step is None else self.step,
                "calibration_rotations": len(plan.grid) // 2 if plan.calibrating else 0}
