"""Which O(3) elements are evaluated at which step.

* every ``every``-th step: ``random_rotations`` Haar-random rotations and their improper
  partners, seeded by ``SeedSequence([seed, step])`` (same seed, same log; a continued
  run draws the same elements at the same step);
* every ``full_every``-th step: the exact quadrature of degree ``degree`` (ε exact, and
  the character spectra up to ``l_max``);
* when the monitor returns O(3) averages: the averaging quadrature of
  ``average_degree`` at every step (it also gives ε of the base model exactly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..core.grids import O3Grid, quadrature_grid, random_grid
from .options import MonitorOptions


def step_seed(seed: int, step: int) -> int:
    """The random-rotation seed of ``step``: independent streams per step."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


@dataclass(frozen=True)
class StepPlan:
    """What one step evaluates: ``grid`` for ε (None: nothing), ``spectrum`` for spectra."""

    step: int
    grid: Optional[O3Grid]
    spectrum: Optional[O3Grid]
    scheduled: bool  # a monitored step of the schedule (logged with its diagnostics)

    @property
    def full(self) -> bool:
        return self.spectrum is not None


class Schedule:
    """The grid of every step, from the monitor's options."""

    def __init__(self, options: MonitorOptions):
        self.every, self.full_every = options.every, options.full_every
        self.random_rotations, self.seed = options.random_rotations, options.seed
        self.full_grid = quadrature_grid(options.degree)
        self.average_grid = quadrature_grid(options.average_degree)

    def plan(self, step: int, averaging: bool) -> StepPlan:
        """The plan of ``step`` (``averaging``: the returned values are O(3) averages)."""
        full = self.full_every > 0 and step % self.full_every == 0
        scheduled = full or step % self.every == 0
        if full:
            return StepPlan(step, self.full_grid, self.full_grid, True)
        if averaging:
            return StepPlan(step, self.average_grid, None, scheduled)
        if scheduled:
            grid = random_grid(self.random_rotations, step_seed(self.seed, step))
            return StepPlan(step, grid, None, True)
        return StepPlan(step, None, None, False)
