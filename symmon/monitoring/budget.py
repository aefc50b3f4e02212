"""The overhead budget of ``every="auto"``: when the next monitored step happens.

A user asks "how much slower is my run": ``overhead`` is the monitor's extra time as a
fraction of the time the same calculations take unmonitored. With ``t_plain`` the
median of the last :data:`PLAIN_WINDOW` unmonitored calculations (robust to the odd
slow step), every calculation earns ``overhead * t_plain`` of credit and a monitored
one spends its extra time ``max(t - t_plain, 0)`` -- every kind of monitored step:
the first calculation, random-rotation steps, calibration steps
(:mod:`.calibration`), full-orbit steps, and the log writes of a monitored step.

A step of kind ``k`` (``"random"`` or ``"calibration"``) is due at the first
calculation at which the credit covers its expected extra cost: the median of the last
:data:`EXTRA_WINDOW` measured extras of that kind; before one is measured, a random
step is expected to cost ``copies * t_plain`` (copies costing what a plain step costs:
the CPU case, an overestimate on GPUs) and a calibration step the measured random
extra scaled by its copies. The stride (steps since the previous monitored step) is
clamped to ``[1, MAX_STRIDE]`` (a forced step is a random one). Credit a monitored step
leaves, having cost less than expected, is dropped: no bursts of monitored steps. While
a calibration is due (:meth:`.calibration.Calibrations.pending`) the credit is saved for
it: no random step comes in between (the calibration step is itself a monitored step,
with the more precise ε of its many pairs).

The first calculation is always monitored, as an ordinary random-rotation step (one
orbit, ``1 + copies`` model evaluations), and charged like the others: its extra is
taken as ``min(t_first - t_plain, copies * t_plain)`` once ``t_plain`` is known (the
first calculation also holds one-time costs the unmonitored run pays as well:
TorchScript, first neighbour lists; ``first_step_s`` in the log's metadata), and it is
the first measured random extra.

Over ``n`` calculations the extra time is then at most ``overhead * n * t_plain`` plus
one monitored step's deviation from the expected extra (the credit is spent only when
it covers the expectation), except where full-orbit steps alone cost more or
``MAX_STRIDE`` forces a step. Timing is the caller's: which steps are monitored depends
on the machine's speed (the rotations of a monitored step are still seeded by its
step number).
"""

from __future__ import annotations

from collections import deque
from time import perf_counter
from typing import Callable, Optional

#: unmonitored calculation times kept for the median ``t_plain``
PLAIN_WINDOW = 16
#: monitored steps' extra times kept per kind for the expected extra cost
EXTRA_WINDOW = 5
#: stride limits: at most one monitored step per step, at least one per MAX_STRIDE
MIN_STRIDE, MAX_STRIDE = 1, 1000
#: credit kept at most, in expected extra costs of the dearest kind (no burst of
#: monitored steps after a phase in which the budget exceeded the cost of monitoring)
CREDIT_CAP = 2.0
#: kinds of monitored step whose extra is learnt (full-orbit steps are charged only)
KINDS = ("random", "calibration")


class OverheadBudget:
    """Credit bookkeeping of the overhead budget (seconds of the ``clock``).

    :param overhead: allowed extra time / unmonitored time (0.05: 5 % slower)
    :param copies: model evaluations a random-rotation step adds (``2 *
        random_rotations``): the prior of its extra cost in plain steps
    :param clock: seconds (default ``time.perf_counter``)
    :param calibration_copies: model evaluations a calibration step adds (0: none)
    """

    def __init__(self, overhead: float, copies: int,
                 clock: Optional[Callable[[], float]] = None, calibration_copies: int = 0):
        self.overhead, self.copies = float(overhead), int(copies)
        self.calibration_copies = int(calibration_copies)
        self.clock = clock or perf_counter
        self.credit = 0.0  # seconds of extra time the budget allows now
        self._plain = deque(maxlen=PLAIN_WINDOW)
        self._extras = {kind: deque(maxlen=EXTRA_WINDOW) for kind in KINDS}
        self._medians = {kind: 0.0 for kind in KINDS}
        self._charged_any = False  # False until the first calculation is done
        self._first_s: Optional[float] = None  # the first calculation, until charged
        self._last_kind: Optional[str] = None  # kind of the last charged monitored step
        self._plain_s: Optional[float] = None  # median of _plain

    @property
    def plain_s(self) -> Optional[float]:
        """Robust time of an unmonitored calculation (None before one was timed)."""
        return self._plain_s

    def expected_extra_s(self, kind: str = "random") -> Optional[float]:
        """Expected extra time of the next monitored step of ``kind`` (None before any
        time is known)."""
        if self._extras[kind]:
            return self._medians[kind]
        if self._extras["random"]:
            random = self._medians["random"]
        elif self._plain_s is not None:
            random = self.copies * self._plain_s
        else:
            return None
        return random if kind == "random" else random * self.calibration_copies / self.copies

    def copy_s(self) -> Optional[float]:
        """Seconds one more model evaluation is expected to add (for announcements)."""
        random = self.expected_extra_s("random")
        return None if random is None else random / self.copies

    def due(self, stride: Optional[int], kind: str = "random") -> bool:
        """Is a step of ``kind`` due ``stride`` steps after the previous monitored one
        (``None``: no step monitored yet, the first calculation)?"""
        if stride is None:
            return True
        if kind == "random" and stride >= MAX_STRIDE:
            return True
        expected = self.expected_extra_s(kind)
        return stride >= MIN_STRIDE and expected is not None and self.credit >= expected

    def charge(self, seconds: float, monitored: bool, kind: Optional[str] = None) -> None:
        """Book one calculation of ``seconds``; ``kind``: that of a monitored step
        (``"random"``, ``"calibration"``; others, e.g. full-orbit steps, are charged
        only)."""
        self._last_kind = None
        if not self._charged_any:  # the first calculation: charged once t_plain is known
            self._charged_any = True
            self._first_s = seconds if monitored else None
            return
        if not monitored:
            self._plain.append(seconds)
            self._plain_s = _median(self._plain)
        plain = self.plain_s
        if plain is None:  # monitored before any unmonitored step: nothing to compare
            return
        if self._first_s is not None:  # an ordinary random step, one-time costs bounded
            first = min(max(self._first_s - plain, 0.0), self.copies * plain)
            self.credit -= first
            self._extras["random"].append(first)
            self._medians["random"] = first
            self._first_s = None
        if monitored:
            extra = max(seconds - plain, 0.0)
            self.credit -= extra
            if kind in KINDS:
                self._extras[kind].append(extra)
                self._medians[kind] = _median(self._extras[kind])
                self._last_kind = kind
                self.credit = min(self.credit, 0.0)  # no burst from an overestimate
        cap = CREDIT_CAP * self.expected_extra_s(
            "calibration" if self.calibration_copies > self.copies else "random")
        self.credit = min(self.credit + self.overhead * plain, cap)

    def spend(self, seconds: float) -> None:
        """Charge monitor work done after the calculation (a monitored step's log write)
        to the budget and to that step's extra."""
        self.credit -= seconds
        kind = self._last_kind
        if kind is not None:
            self._extras[kind][-1] += seconds
            self._medians[kind] = _median(self._extras[kind])


def _median(values) -> float:
    """Median of a few numbers (a sort: microseconds, unlike ``np.median``'s ~10 µs)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])
