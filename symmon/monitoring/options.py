"""The monitor's settings, checked once: what to measure, how often, what to return.

One frozen value shared by the schedule, the policy, the log metadata and every
front-end (ASE calculator, i-PI client, i-PI PES), so the options are spelled and
validated in one place.
"""

from __future__ import annotations

import difflib
import math
import numbers
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, Mapping, Optional, Union

import numpy as np

from ..core.quantities import QUANTITY_NAMES

#: the overhead budget of every="auto": the monitor may make a run this much slower
DEFAULT_OVERHEAD = 0.05
MODES = ("monitor", "average", "purified", "random_frame")
#: orbit components averaged exactly by the default averaging degree: l <= AVERAGE_BAND
#: (the degree is AVERAGE_BAND + the highest rank returned; symmon.monitoring.schedule)
AVERAGE_BAND = 3
VIOLATION_ACTIONS = ("warn", "raise", "average")
LOG_MODES = ("create", "append", "overwrite")
#: O(3) elements per step above which construction warns (each is one model evaluation)
WARN_ELEMENTS_PER_STEP = 5_000
#: ... and above which it refuses: hours per step for any real model, and Wigner-D tables
#: of tens of GB for the spectra
MAX_ELEMENTS_PER_STEP = 100_000


class UnknownOption(TypeError, ValueError):
    """A keyword that is no monitor option (a ``TypeError`` as Python's own, and a
    ``ValueError`` as every other refused option)."""


def check_option_names(names, also=()) -> None:
    """Refuse the first of ``names`` that is neither a :class:`MonitorOptions` field nor
    one of ``also`` (the front-end's own keywords), naming the closest valid one."""
    valid = [f.name for f in fields(MonitorOptions)] + list(also)
    for name in names:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f"did you mean {close[0]!r}?" if close else \
                f"the options are {', '.join(sorted(valid))}"
            raise UnknownOption(f"unknown option {name!r} ({hint})")


def _integer(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _every(value) -> Union[int, str]:
    """``every``: ``"auto"`` (the overhead budget) or a stride >= 1."""
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"every must be an integer >= 1, got {value!r} (or 'auto': monitor "
                         "as often as the overhead budget allows)")
    return int(value)


def parse_every(text: str) -> Union[int, str]:
    """``--every auto|N`` of the command lines."""
    try:
        return "auto" if text == "auto" else _every(int(text))
    except ValueError:
        raise ValueError(f"--every must be 'auto' or an integer >= 1, got {text!r}") from None


def _overhead(every, value) -> Optional[float]:
    """``overhead``: the budget of ``every="auto"`` (default :data:`DEFAULT_OVERHEAD`)."""
    if value is None:
        return DEFAULT_OVERHEAD if every == "auto" else None
    if every != "auto":
        raise ValueError(f"overhead={value!r} applies to every='auto' only; with every="
                         f"{every!r} the schedule is fixed (drop overhead, or pass "
                         "every='auto')")
    if not _positive_number(value):
        raise ValueError(f"overhead must be a positive number, the allowed extra time as a "
                         f"fraction of the unmonitored run's (0.05: 5 % slower), got {value!r}")
    return float(value)


def _positive_number(value) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(value) and value > 0)


def _per_quantity(name: str, values, what: str) -> Dict[str, float]:
    """``{"forces": 0.05}`` or one number for all quantities -> checked dict."""
    if values is None:
        return {}
    if _positive_number(values):
        values = {quantity: float(values) for quantity in QUANTITY_NAMES}
    if not isinstance(values, Mapping):
        raise ValueError(f"{name} must be a positive number or a dict quantity -> {what} "
                         f"(e.g. {name}=0.05 or {name}={{'forces': 0.05}}), got "
                         f"{type(values).__name__} {values!r}")
    unknown = set(values) - set(QUANTITY_NAMES)
    if unknown:
        raise ValueError(f"{name} for unknown quantities {sorted(unknown, key=str)}; "
                         f"expected some of {sorted(QUANTITY_NAMES)}")
    for quantity, value in values.items():
        if not _positive_number(value):
            raise ValueError(f"{name} for {quantity} must be a positive finite number, got "
                             f"{value!r}")
    return {quantity: float(value) for quantity, value in values.items()}


def _calibration_rotations(value) -> int:
    from ..core.calibration import MIN_REFERENCE_PAIRS

    value = _integer("calibration_rotations", value, 0)
    if 0 < value < MIN_REFERENCE_PAIRS:
        raise ValueError(f"calibration_rotations must be 0 (no calibration steps) or at least "
                         f"{MIN_REFERENCE_PAIRS} (a reference needs that many pairs), got {value}")
    return value


def _choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_cost(options: "MonitorOptions") -> None:
    """Warn when a monitored step evaluates the model on more than
    :data:`WARN_ELEMENTS_PER_STEP` O(3) elements, refuse above
    :data:`MAX_ELEMENTS_PER_STEP` (full steps: the quadrature of ``degree``, which has
    ``2 n_lebedev (degree + 1)`` elements; averaging: that of ``average_degree`` at every
    step)."""
    from ..core.grids import quadrature_grid

    steps = []
    if options.full_every > 0:
        steps.append((f"full steps (full_every={options.full_every}) use the degree-"
                      f"{options.degree} quadrature (l_max={options.l_max} needs degree >= "
                      f"{2 * options.l_max})", options.degree, "lower l_max or degree"))
    if options.mode == "average" or options.on_violation == "average":
        degree = options.average_degree
        if degree is None:  # the default is chosen per returned rank: at most this
            degree = AVERAGE_BAND + 2
        steps.append((f"averaged steps use the degree-{degree} quadrature "
                      "(average_degree)", degree, "lower average_degree"))
    for what, degree, fix in steps:
        try:
            n_elements = len(quadrature_grid(degree))
        except ValueError as error:
            raise ValueError(f"{what}: {error}; {fix}") from None
        cost = f"{what}: {n_elements} model evaluations each"
        if n_elements > MAX_ELEMENTS_PER_STEP:
            raise ValueError(f"{cost}, more than the {MAX_ELEMENTS_PER_STEP} symmon allows "
                             "(hours per step with a real model, tens of GB for the "
                             f"spectra); {fix}")
        if n_elements > WARN_ELEMENTS_PER_STEP:
            warnings.warn(f"{cost} (more than {WARN_ELEMENTS_PER_STEP}), which is slow; "
                          f"{fix} to make them cheaper", UserWarning, stacklevel=6)


@dataclass(frozen=True)
class MonitorOptions:
    """Settings of a symmetry monitor (the keyword arguments of ``SymmetryMonitor``).

    :param every: ``"auto"`` (default): monitor as often as the overhead budget
        ``overhead`` allows, from the measured time of each calculation
        (:mod:`symmon.monitoring.budget`); which steps are monitored then depends on
        timing and can differ from run to run (the rotations of a monitored step do
        not: they are seeded by its step number). An integer n: every n-th step, a
        reproducible schedule (the orbit costs about ``2 * random_rotations`` model
        calls, see docs/performance.md)
    :param overhead: with ``every="auto"``, the monitor's allowed extra time as a
        fraction of the unmonitored calculations' time (default 0.05: 5 % slower),
        calibration steps and the first step (an ordinary orbit) included; full-orbit
        steps keep their schedule and are charged
    :param random_rotations: Haar-random rotations per monitored step (each paired with
        its improper partner); at least 2, and 3 for error bars
    :param full_every: every m-th step use the exact quadrature and compute character
        spectra (0: never)
    :param degree: quadrature degree of full steps (default ``2 * l_max``)
    :param l_max: character spectra up to this angular order
    :param mode: ``"monitor"`` (return base predictions), ``"average"`` (return the
        O(3) average over a quadrature of ``average_degree``), ``"purified"``
        (return the purified readout's predictions; needs ``readout``),
        ``"random_frame"`` (return the prediction in one Haar-random O(3) frame per
        step, rotated back: an unbiased one-sample estimate of the average)
    :param average_degree: quadrature degree of ``mode="average"`` (default: the
        smallest that averages orbit components ``l <= 3`` of every returned quantity
        exactly, ``3 +`` its rank: 4 without stress, 5 with it; see
        :mod:`symmon.monitoring.schedule`)
    :param thresholds: problem limit of the relative ε (ε / max(orbit RMS, floor)), per
        quantity (``{"forces": 0.05}``) or one number for all; the other limits are
        those of :mod:`symmon.monitoring.thresholds`
    :param model_errors: the model's own test RMSE per quantity, in eV/atom, eV/Å and
        eV/Å³ (from ``symmon eval``); ε is judged against them instead of typical MLIP
        errors
    :param on_violation: on a step graded ``problem``: ``"warn"``, ``"raise"`` (log
        flushed, run stopped) or ``"average"`` (switch to averaging from this step on,
        a logged event)
    :param calibration_rotations: random pairs of a calibration step (0: none), whose
        orbit gives the following random steps' intervals their law
        (:mod:`symmon.monitoring.calibration`); at least 16
    :param calibrate_every: a calibration step at least every this many monitored
        random steps (earlier in a run: 4 steps in, then whenever the steps since the
        start have doubled; :mod:`symmon.monitoring.calibration`)
    :param seed: seed of the random rotations (same seed, same log)
    :param flush_every: flush the log every this many monitored steps (default 50), and
        every 1000 steps and 10 s whatever the count (:mod:`symmon.monitoring.recorder`)
    :param log_mode: ``"create"`` (refuse an existing file), ``"append"``, ``"overwrite"``
    :param trajectory: also log every unmonitored step (frame, the model's energy,
        forces and stress, net force/torque, calls), so the log is the whole trajectory;
        by default only monitored steps are logged (an unmonitored step then costs no I/O)
    :param metadata: extra JSON-ready items stored in the log's metadata
    """

    every: Union[int, str] = "auto"
    overhead: Optional[float] = None
    random_rotations: int = 3
    full_every: int = 0
    degree: Optional[int] = None
    l_max: int = 4
    mode: str = "monitor"
    average_degree: Optional[int] = None
    thresholds: Union[None, float, Mapping[str, float]] = None
    model_errors: Optional[Mapping[str, float]] = None
    on_violation: str = "warn"
    calibration_rotations: int = 32
    calibrate_every: int = 100
    seed: int = 0
    flush_every: int = 50
    log_mode: str = "create"
    trajectory: bool = False
    metadata: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self):
        checked = {"every": _every(self.every),
                   "random_rotations": _integer("random_rotations", self.random_rotations, 2),
                   "full_every": _integer("full_every", self.full_every, 0),
                   "l_max": _integer("l_max", self.l_max, 0),
                   "average_degree": None if self.average_degree is None
                   else _integer("average_degree", self.average_degree, 1),
                   "flush_every": _integer("flush_every", self.flush_every, 1),
                   "calibration_rotations": _calibration_rotations(self.calibration_rotations),
                   "calibrate_every": _integer("calibrate_every", self.calibrate_every, 1),
                   "seed": _integer("seed", self.seed, 0)}
        checked["degree"] = (2 * checked["l_max"] if self.degree is None
                             else _integer("degree", self.degree, 2 * checked["l_max"]))
        checked["overhead"] = _overhead(checked["every"], self.overhead)
        checked["mode"] = _choice("mode", self.mode, MODES)
        checked["on_violation"] = _choice("on_violation", self.on_violation,
                                          VIOLATION_ACTIONS)
        checked["log_mode"] = _choice("log_mode", self.log_mode, LOG_MODES)
        if not isinstance(self.trajectory, bool):
            raise ValueError(f"trajectory must be True or False, got {self.trajectory!r}")
        checked["thresholds"] = _per_quantity("thresholds", self.thresholds, "limit")
        checked["model_errors"] = _per_quantity("model_errors", self.model_errors, "RMSE")
        if not isinstance(self.metadata or {}, Mapping):
            raise ValueError(f"metadata must be a dict of JSON-ready values, got "
                             f"{type(self.metadata).__name__}")
        checked["metadata"] = dict(self.metadata or {})
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        check_cost(self)

    def describe(self) -> dict:
        """The settings as JSON-ready metadata (without the user's extra metadata)."""
        settings = asdict(self)
        settings.pop("metadata")
        settings.pop("log_mode")
        return settings
