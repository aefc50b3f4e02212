"""Which O(3) elements are evaluated at which step.

* every ``every``-th step, or with ``every="auto"`` as often as the overhead budget
  allows (:mod:`.budget`; the first calculation always): ``random_rotations``
  Haar-random rotations and their improper partners, seeded by
  ``SeedSequence([seed, step])`` (same seed, same elements at the same step; a
  continued run draws the same elements at the same step);
* on calibration steps (:mod:`.calibration`: when one is due, the next monitored step;
  with ``every="auto"`` when the credit covers it): ``calibration_rotations`` pairs,
  seeded alike;
* every ``full_every``-th step: the exact quadrature of degree ``degree``, turned by one
  seeded Haar rotation (ε exact, and the character spectra up to ``l_max``; the turn
  keeps a structure aligned with the grid's axis from hiding its aliasing);
* when the monitor returns O(3) averages: the averaging quadrature at every step (it
  also gives ε of the base model exactly);
* ``mode="random_frame"``: one Haar-random O(3) element per step (proper or improper
  with probability 1/2, seeded by ``SeedSequence([seed, step, 1])``), the frame the
  returned prediction is evaluated in.

Averaging degree. With ``F(g) = rho(g)^{-1} f(g x)``, the O(3) average is ``∫ F``. If
the orbit ``g -> f(g x)`` has components up to ``l = L`` only, ``F``'s are products of a
``D^l'`` with ``l' <= L`` and a ``D^l_v`` of the output (``l_v <= r`` for a rank-``r``
tensor: energy 0, forces 1, stress 2), hence of degree ``<= L + r``: a quadrature of
degree ``d`` (exact for every ``D^l`` with ``l <= d``) averages exactly every orbit
component with ``l <= d - r``, and the components beyond alias. The default averaging
degree is ``AVERAGE_BAND + r`` for the highest rank ``r`` returned.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from ..core.grids import (O3Grid, quadrature_grid, quaternion_matrices, random_grid,
                          randomized_quadrature_grid)
from ..core.quantities import QUANTITY
from ..core.representations import get_representation
from .budget import MAX_STRIDE, OverheadBudget
from .calibration import Calibrations
from .options import AVERAGE_BAND, MonitorOptions

#: one-time work expected to take longer than this says what it does (seconds)
LONG_WORK_S = 5.0


def step_seed(seed: int, step: int) -> int:
    """The random-rotation seed of ``step``: independent streams per step."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def output_rank(quantity: str) -> int:
    """Highest angular order of an equivariant ``quantity`` (energy 0, forces 1, stress 2)."""
    return max(irrep.l for irrep in get_representation(QUANTITY[quantity].kind).targets)


def average_degree(quantities: Sequence[str], band: int = AVERAGE_BAND) -> int:
    """Smallest quadrature degree averaging every orbit component ``l <= band`` of each
    quantity exactly: ``band + `` the highest rank."""
    return band + max(output_rank(q) for q in quantities)


def random_frame(seed: int, step: int) -> np.ndarray:
    """``(1, 3, 3)``: the Haar-random O(3) element of ``step`` (improper with prob. 1/2).

    The rotation is that of a uniform unit quaternion (a normalised 4D Gaussian), a few
    microseconds instead of SciPy's ~0.3 ms per call."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, step, 1]))
    w, x, y, z = rng.normal(size=4)
    rotation = quaternion_matrices(np.array([[x, y, z, w]]))
    return rotation * rng.choice((-1.0, 1.0))


@dataclass(frozen=True)
class StepPlan:
    """What one step evaluates: ``grid`` for ε (None: nothing), ``spectrum`` for spectra,
    ``frame`` the random frame of the returned prediction (``mode="random_frame"``);
    ``stride``: steps since the previous monitored step (0 at the first)."""

    step: int
    grid: Optional[O3Grid]
    spectrum: Optional[O3Grid]
    scheduled: bool  # a monitored step of the schedule (logged with its diagnostics)
    frame: Optional[np.ndarray] = None
    calibrating: bool = False  # a calibration step (symmon.monitoring.calibration)
    stride: int = 0

    @property
    def full(self) -> bool:
        return self.spectrum is not None


class Schedule:
    """The grid of every step, from the monitor's options (``clock``: seconds, for the
    overhead budget of ``every="auto"``; default ``time.perf_counter``)."""

    def __init__(self, options: MonitorOptions, clock: Optional[Callable[[], float]] = None):
        self.every, self.full_every = options.every, options.full_every
        self.auto = options.every == "auto"
        self.calibrations = Calibrations(options.calibration_rotations,
                                         options.calibrate_every, options.seed)
        self.calibration_rotations = max(options.calibration_rotations,
                                         options.random_rotations)
        # every mode times its calculations (the expected time of long work); the
        # budget decides which steps are monitored with every="auto" only
        self.budget = OverheadBudget(options.overhead or 0.0, 2 * options.random_rotations,
                                     clock, 2 * options.calibration_rotations)
        #: seconds (the monitor times its calculations with it)
        self.clock = self.budget.clock
        self._last_monitored: Optional[int] = None  # step of the last monitored step
        self._planned = (None, False, 0, None)  # (step, monitored?, stride, kind)
        self.random_rotations, self.seed = options.random_rotations, options.seed
        self.random_frames = options.mode == "random_frame"
        # turned by one Haar rotation (seeded): exact all the same, and a structure
        # aligned with the grid's axis (an n-ring, n dividing degree + 1) cannot hide its
        # aliasing from the exactness check
        self.full_grid = randomized_quadrature_grid(options.degree, options.seed)
        self._degree = options.degree
        self._average_degree = options.average_degree
        self.average_grid: Optional[O3Grid] = None  # set by choose_average_grid

    def choose_average_grid(self, quantities: Sequence[str]) -> O3Grid:
        """The averaging grid (``average_degree``, or the smallest exact one for the
        returned quantities), chosen once."""
        if self.average_grid is None:
            degree = self._average_degree
            self.average_grid = quadrature_grid(average_degree(quantities)
                                                if degree is None else degree)
        return self.average_grid

    def plan(self, step: int, averaging: bool) -> StepPlan:
        """The plan of ``step`` (``averaging``: the returned values are O(3) averages)."""
        full = self.full_every > 0 and step % self.full_every == 0
        if step != self._planned[0]:  # a new step (a re-evaluation keeps its decision)
            self._planned = (step, *self._decide(step, full, averaging))
            self._announce(step, self._planned[3])
        _, scheduled, stride, kind = self._planned
        frame = random_frame(self.seed, step) if self.random_frames and not averaging \
            else None
        if full:
            return StepPlan(step, self.full_grid, self.full_grid, True, frame, stride=stride)
        if averaging:
            return StepPlan(step, self.average_grid, None, scheduled, stride=stride)
        if scheduled:
            rotations = (self.calibration_rotations if kind == "calibration"
                         else self.random_rotations)
            grid = random_grid(rotations, step_seed(self.seed, step))
            return StepPlan(step, grid, None, True, frame, calibrating=kind == "calibration",
                            stride=stride)
        return StepPlan(step, None, None, False, frame)

    def _decide(self, step: int, full: bool, averaging: bool):
        """(monitored?, stride, kind) of a new step: ``every``'s multiples, or the
        budget's choice (the first step, and one numbered before the last monitored
        one, as when a driver restarts its count, is monitored); ``kind``: ``"random"``,
        ``"calibration"``, ``"full"`` or None."""
        last = self._last_monitored
        stride = step - last if last is not None and step > last else None
        pending = not (full or averaging) and self.calibrations.pending(step)
        if full:
            monitored, kind = True, "full"
        elif not self.auto:
            monitored = step % self.every == 0
            kind = "calibration" if pending else "random"
        elif pending and self.budget.due(stride, "calibration"):
            monitored, kind = True, "calibration"
        else:  # a due calibration saves the credit: only a forced step comes first
            monitored = (stride is None or stride >= MAX_STRIDE) if pending \
                else self.budget.due(stride)
            kind = "random"
        if averaging and kind != "full":
            kind = None  # the averaging grid's step: no random orbit, no calibration
        if not monitored:
            kind = None
        self.calibrations.planned(step, kind)
        if monitored:
            self._last_monitored = step
        return monitored, stride or 0, kind

    def _announce(self, step: int, kind: Optional[str]) -> None:
        """One line on stderr before long work (a calibration or full-orbit step expected
        to take more than :data:`LONG_WORK_S`, or of unknown time): what and how long."""
        if kind == "calibration":
            copies = 2 * self.calibration_rotations
            what = (f"calibrating the error bars on {self.calibration_rotations} rotation "
                    "pairs (early in a run, then every calibrate_every monitored steps)")
        elif kind == "full":
            copies = len(self.full_grid)
            what = f"full orbit on the degree-{self._degree} quadrature"
        else:
            return
        copy_s = self.budget.copy_s()
        if copy_s is None:
            if copies < 100:
                return
            how_long = "time per evaluation not measured yet"
        else:
            seconds = copies * copy_s
            if seconds < LONG_WORK_S:
                return
            how_long = f"about {_duration(seconds)}"
        print(f"symmon: step {step}: {what}: {copies} model evaluations, {how_long}",
              file=sys.stderr, flush=True)

    def warm_up(self) -> None:
        """Imports and first use of the grid code (no step is planned)."""
        random_grid(self.random_rotations, step_seed(self.seed, 0))

    def charge(self, plan: StepPlan, seconds: float) -> None:
        """Book a calculation's time in the overhead budget."""
        kind = "calibration" if plan.calibrating else (
            "random" if plan.scheduled and plan.spectrum is None else None)
        self.budget.charge(seconds, plan.scheduled, kind)

    def spend(self, seconds: float) -> None:
        """Book monitor work after a calculation (its log write) in the budget."""
        self.budget.spend(seconds)


def _duration(seconds: float) -> str:
    """``"40 s"``, ``"3 min"``, ``"1.5 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
