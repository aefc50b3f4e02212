"""Which step a calculation belongs to: driver steps, re-evaluations and single points.

Attached to an ASE driver (any ``Dynamics``: MD integrators, optimizers, also on a
filter such as ``FrechetCellFilter``), a calculation is *pending* until the driver's
observer confirms it: the observer runs after every step with ``nsteps`` = that step,
and the pending calculation is committed when it was made at the positions of the
driver's real atoms (a filter's ``.atoms``, not its generalized positions). A newer
calculation supersedes an unconfirmed one (line searches, probes between runs); the
committed record counts them (``calls``), so nothing disappears unseen.

The step number is decided when the calculation is made (it selects the schedule's
grid): the first calculation after attaching is step ``nsteps`` (the driver's initial
evaluation), later ones are ``last finished step + 1``. A driver continued from
``nsteps > 0`` calls no observer for its initial state (ASE skips it on restarts), so
that state is committed when the driver first moves the atoms away from it. Without a driver every calculation is a single point,
numbered in call order. Times are the driver's ``get_time()`` in ps (NaN for drivers
without a time, such as optimizers).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from ase import units

PS = 1000 * units.fs  # ASE time units per picosecond


def same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """True if two arrays hold the same values bit for bit (shape, dtype and bytes).

    A byte comparison, not ``np.array_equal``: right after a model call a NumPy ufunc
    costs ~10-40 us, a measurable part of an unmonitored step (the values compared
    here are finite positions, cells and atomic numbers)."""
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def driver_atoms(dynamics):
    """The real ``Atoms`` a driver moves (a filter's ``.atoms``)."""
    atoms = dynamics.atoms
    return getattr(atoms, "atoms", atoms)


class StepClock:
    """Step numbers and times of calculations, with or without a driver."""

    def __init__(self):
        self.dynamics = None
        self._finished: Optional[int] = None  # the driver's last step known to be done
        self._next_single = 0
        self.calls = 0  # calculations since the last committed step

    @property
    def attached(self) -> bool:
        return self.dynamics is not None

    def attach(self, dynamics) -> None:
        for needed in ("attach", "nsteps", "atoms"):
            if not hasattr(dynamics, needed):
                raise TypeError(f"attach() needs an ASE Dynamics (MD or optimizer); "
                                f"{type(dynamics).__name__} has no {needed!r}")
        self.dynamics, self._finished = dynamics, None

    def next_step(self) -> int:
        """The step number of the calculation being made now (counts the call)."""
        self.calls += 1
        return self.peek()

    def peek(self) -> int:
        """The step number the next calculation will get."""
        if self.dynamics is None:
            return self._next_single
        if self._finished is None:
            return int(self.dynamics.nsteps)
        return self._finished + 1

    def single_point_done(self) -> None:
        self._next_single += 1
        self.calls = 0

    def observe(self) -> int:
        """Driver observer: the driver finished step ``nsteps``; returns it."""
        self._finished = int(self.dynamics.nsteps)
        return self._finished

    def left_initial_state(self, step: int, positions: np.ndarray, at_driver: bool) -> bool:
        """True if a calculation of step ``step`` was the initial state of a continued
        driver (made at the driver's positions, at ``nsteps``, before any observer call)
        and the driver has now moved on; the step is then done."""
        if (self.dynamics is None or self._finished is not None or not at_driver
                or step != int(self.dynamics.nsteps) or self.confirms(positions)):
            return False
        self._finished = step
        return True

    def confirms(self, positions: np.ndarray) -> bool:
        """True if ``positions`` are those of the driver's atoms now."""
        return same_values(driver_atoms(self.dynamics).positions, positions)

    def committed(self) -> None:
        self.calls = 0

    def time_ps(self, step: int) -> float:
        """Time of ``step`` in ps (NaN for drivers without a time and for single points)."""
        dynamics = self.dynamics
        if dynamics is None or not hasattr(dynamics, "get_time"):
            return float("nan")
        ahead = step - int(dynamics.nsteps)
        offset = ahead * getattr(dynamics, "dt", float("nan")) if ahead else 0.0
        return float((dynamics.get_time() + offset) / PS)
