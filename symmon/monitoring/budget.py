"""The overhead budget of ``every="auto"``: when the next random-rotation step happens.

A user asks "how much slower is my run": ``overhead`` is the monitor's extra time as a
fraction of the time the same calculations take unmonitored. With ``t_plain`` the
median of the last :data:`PLAIN_WINDOW` unmonitored calculations (robust to the odd
slow step), every calculation earns ``overhead * t_plain`` of credit and a monitored
one spends its extra time ``max(t - t_plain, 0)`` (full-orbit and calibration steps
too: they happen on their own schedules and are charged; the log writes of a monitored
step as well). The
next random-rotation step is the first at which the credit covers the expected extra
cost (credit a random step leaves, having cost less than expected, is dropped: no
bursts of monitored steps), the median of the last :data:`EXTRA_WINDOW` random steps' extras -- before one is
measured, ``copies * t_plain`` (copies costing what a plain step costs: the CPU case,
an overestimate on GPUs) --, with the stride (steps since the previous monitored step)
clamped to ``[1, MAX_STRIDE]``. The first calculation is always monitored and not
charged (one-time costs: TorchScript, first neighbour lists; ``first_step_s`` in the
log's metadata).

Over ``n`` calculations the extra time is then at most ``overhead * n * t_plain`` plus
one monitored step's deviation from the expected extra (the credit is spent only when
it covers the expectation), except where full-orbit steps alone cost more or
``MAX_STRIDE`` forces a step. Timing is the
caller's: which steps are monitored depends on the machine's speed (the rotations of a
monitored step are still seeded by its step number).
"""

from __future__ import annotations

from collections import deque
from time import perf_counter
from typing import Callable, Optional

#: unmonitored calculation times kept for the median ``t_plain``
PLAIN_WINDOW = 16
#: random-rotation steps' extra times kept for the expected extra cost
EXTRA_WINDOW = 5
#: stride limits: at most one random-rotation step per step, at least one per MAX_STRIDE
MIN_STRIDE, MAX_STRIDE = 1, 1000
#: credit kept at most, in expected extra costs (no burst of monitored steps after a
#: phase in which the budget exceeded the cost of monitoring every step)
CREDIT_CAP = 2.0


class OverheadBudget:
    """Credit bookkeeping of the overhead budget (seconds of the ``clock``).

    :param overhead: allowed extra time / unmonitored time (0.05: 5 % slower)
    :param copies: model evaluations a random-rotation step adds (``2 *
        random_rotations``): the prior of its extra cost in plain steps
    :param clock: seconds (default ``time.perf_counter``)
    """

    def __init__(self, overhead: float, copies: int,
                 clock: Optional[Callable[[], float]] = None):
        self.overhead, self.copies = float(overhead), int(copies)
        self.clock = clock or perf_counter
        self.credit = 0.0  # seconds of extra time the budget allows now
        self._plain = deque(maxlen=PLAIN_WINDOW)
        self._extras = deque(maxlen=EXTRA_WINDOW)
        self._charged_any = False  # False until the first calculation is done
        self._last_random = False  # the last charged calculation was a random step
        self._plain_s: Optional[float] = None  # median of _plain
        self._extra_s = 0.0  # median of _extras

    @property
    def plain_s(self) -> Optional[float]:
        """Robust time of an unmonitored calculation (None before one was timed)."""
        return self._plain_s

    @property
    def expected_extra_s(self) -> Optional[float]:
        """Expected extra time of the next random-rotation step."""
        if self._extras:
            return self._extra_s
        return None if self._plain_s is None else self.copies * self._plain_s

    def due(self, stride: Optional[int]) -> bool:
        """Is the step ``stride`` steps after the previous monitored one a random-rotation
        step (``None``: no step monitored yet, the first calculation)?"""
        if stride is None or stride >= MAX_STRIDE:
            return True
        expected = self.expected_extra_s
        return stride >= MIN_STRIDE and expected is not None and self.credit >= expected

    def charge(self, seconds: float, monitored: bool, random_step: bool) -> None:
        """Book one calculation of ``seconds`` (``random_step``: a random-rotation step,
        whose extra enters the expected cost; full-orbit steps are charged only)."""
        self._last_random = False
        if not self._charged_any:  # the first calculation: one-time costs
            self._charged_any = True
            return
        if not monitored:
            self._plain.append(seconds)
            self._plain_s = _median(self._plain)
        plain = self.plain_s
        if plain is None:  # monitored before any unmonitored step: nothing to compare
            return
        if monitored:
            extra = max(seconds - plain, 0.0)
            self.credit -= extra
            if random_step:
                self._extras.append(extra)
                self._extra_s = _median(self._extras)
                self._last_random = True
                self.credit = min(self.credit, 0.0)  # no burst from an overestimate
        self.credit = min(self.credit + self.overhead * plain,
                          CREDIT_CAP * self.expected_extra_s)

    def spend(self, seconds: float) -> None:
        """Charge monitor work done after the calculation (a monitored step's log write)
        to the budget and to that step's extra."""
        self.credit -= seconds
        if self._last_random:
            self._extras[-1] += seconds
            self._extra_s = _median(self._extras)


def _median(values) -> float:
    """Median of a few numbers (a sort: microseconds, unlike ``np.median``'s ~10 µs)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])
