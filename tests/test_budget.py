"""The overhead budget of every="auto": strides from measured (here: simulated) times."""

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from symmon import SymmetryMonitor
from symmon.io.log import read_log
from symmon.monitoring import budget as budget_module
from symmon.monitoring.budget import MAX_STRIDE
from symmon.monitoring.options import MonitorOptions, parse_every
from symmon.monitoring.schedule import Schedule


class FakeClock:
    """Simulated seconds: calculations advance it by what they are said to cost."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run_schedule(options, steps, plain_s, extra_s, calibrations=None):
    """Plan and charge ``steps`` calculations whose monitored ones cost
    ``plain_s + extra_s(step)`` (calibration steps: that times their copies over a
    random step's); returns the monitored steps and the extra time of all of them
    (``calibrations``: a list the calibration steps are appended to)."""
    clock = FakeClock()
    options = MonitorOptions(**options)
    schedule = Schedule(options, clock=clock)
    monitored, extra_total = [], 0.0
    for step in range(steps):
        started = clock()
        plan = schedule.plan(step, averaging=False)
        extra = extra_s(step) if plan.scheduled else 0.0
        if plan.calibrating:
            extra *= options.calibration_rotations / options.random_rotations
            if calibrations is not None:
                calibrations.append(step)
        clock.now += plain_s + extra
        schedule.charge(plan, clock() - started)
        if plan.scheduled:
            monitored.append(step)
            extra_total += extra
    return monitored, extra_total


def test_stride_follows_the_measured_cost_and_stays_within_the_budget():
    # copies cheaper than the prior (2 * 3 plain steps): 1.2 plain steps of extra
    monitored, extra = run_schedule({"overhead": 0.05, "calibration_rotations": 0}, 2000,
                                    0.01, lambda step: 0.012)
    strides = np.diff(monitored)
    assert monitored[0] == 0
    # the first step's 1.2 plain steps are charged and expected of the next: 2.4 / 0.05
    assert 47 <= strides[0] <= 50
    assert np.all((strides[1:] >= 23) & (strides[1:] <= 26))  # measured: 1.2 / 0.05
    achieved = extra / (2000 * 0.01)
    assert 0.04 < achieved <= 0.05 + 0.012 / (2000 * 0.01)


def test_calibrations_are_charged_and_come_when_the_credit_allows():
    """The first monitored step is an ordinary orbit; calibration steps (32 pairs, here
    ~10x a random step) come after FIRST_CALIBRATION_STEPS, when the credit covers them,
    with no random step while one is saved for, then at growing intervals; the budget
    holds over every prefix of the run."""
    from symmon.monitoring.calibration import FIRST_CALIBRATION_STEPS

    calibrations = []
    n_steps, plain = 20000, 0.01
    monitored, extra = run_schedule({"overhead": 0.05}, n_steps, plain,
                                    lambda step: 0.012, calibrations)
    assert monitored[0] == 0 and calibrations[0] >= FIRST_CALIBRATION_STEPS
    # 0.012 * 32/3 = 0.128 s of extra = 256 steps of credit, after the first step's
    # debt and the random steps before the first calibration was due
    assert 250 <= calibrations[0] <= 300
    gaps = np.diff(calibrations)  # geometric refresh (steps since the start double) ...
    assert np.allclose(gaps[1:3] / gaps[:2], 2, rtol=0.1)
    randoms = [sum(a < s < b for s in monitored) for a, b in zip(calibrations, calibrations[1:])]
    assert max(randoms) == 100  # ... until calibrate_every monitored random steps come first
    before = [s for s in monitored if calibrations[0] - 250 < s < calibrations[0]]
    assert before == []  # the credit was saved for the calibration
    assert extra / (n_steps * plain) <= 0.05 + 0.128 / (n_steps * plain)
    # the budget holds on every prefix (within one calibration step's extra)
    prefix_n = calibrations[2] + 1
    _, prefix_extra = run_schedule({"overhead": 0.05}, prefix_n, plain, lambda step: 0.012)
    assert prefix_extra <= 0.05 * prefix_n * plain + 0.128 + 0.012


def test_stride_adapts_when_monitoring_gets_dearer():
    monitored, extra = run_schedule({"overhead": 0.10, "calibration_rotations": 0}, 3000,
                                    0.01,
                                    lambda step: 0.01 if step < 1000 else 0.05)
    early = np.diff([s for s in monitored if 100 < s < 1000])
    late = np.diff([s for s in monitored if s > 1200])
    assert np.all((early >= 9) & (early <= 12))  # 1 plain step of extra / 0.1
    assert np.all((late >= 49) & (late <= 52))  # 5 plain steps / 0.1
    assert extra / (3000 * 0.01) <= 0.10 + 0.05 / (3000 * 0.01)


def test_stride_is_clamped_to_the_limits():
    tiny, _ = run_schedule({"overhead": 1e-6}, 2500, 0.01, lambda step: 0.06)
    assert tiny == [0, MAX_STRIDE, 2 * MAX_STRIDE]  # forced steps are random, not calibrations
    huge, _ = run_schedule({"overhead": 100.0}, 50, 0.01, lambda step: 0.06)
    assert huge == [0] + list(range(2, 50))  # step 1 measures t_plain, then every step


def test_full_orbit_steps_keep_their_schedule_and_are_charged():
    # full steps of 20 plain steps every 100: 20 % > the 5 % budget, no random step
    monitored, _ = run_schedule({"overhead": 0.05, "full_every": 100,
                                 "calibration_rotations": 0}, 1000, 0.01,
                                lambda step: 0.2 if step % 100 == 0 else 0.012)
    assert monitored == list(range(0, 1000, 100))
    # full steps of 2 plain steps every 100 (2 %): random steps use the other 3 %
    monitored, extra = run_schedule({"overhead": 0.05, "full_every": 100,
                                     "calibration_rotations": 0}, 2000, 0.01,
                                    lambda step: 0.02 if step % 100 == 0 else 0.012)
    assert set(range(0, 2000, 100)) < set(monitored)
    assert 0.04 < extra / (2000 * 0.01) <= 0.05 + 0.02 / (2000 * 0.01)


def test_a_step_planned_again_keeps_its_decision_and_stride():
    clock = FakeClock()
    schedule = Schedule(MonitorOptions(overhead=100.0), clock=clock)
    for step in (0, 1, 2):
        plan = schedule.plan(step, False)
        clock.now += 0.01 + (0.05 if plan.scheduled else 0.0)
        schedule.charge(plan, 0.01 + (0.05 if plan.scheduled else 0.0))
    again = schedule.plan(2, False)  # a re-evaluation of step 2 (a line search)
    assert again.scheduled and again.stride == 2


def test_fixed_every_is_the_reproducible_schedule():
    monitored, _ = run_schedule({"every": 7, "full_every": 10}, 100, 0.01,
                                lambda step: 5.0)
    assert monitored == sorted(set(range(0, 100, 7)) | set(range(0, 100, 10)))


def test_default_is_auto_with_five_percent_and_every_n_has_no_budget():
    assert MonitorOptions().every == "auto" and MonitorOptions().overhead == 0.05
    options = MonitorOptions(every=10)
    assert options.overhead is None and options.describe()["every"] == 10
    assert parse_every("auto") == "auto" and parse_every("25") == 25


@pytest.mark.parametrize("options, words", [
    ({"overhead": 0.0}, "overhead must be a positive number, .* got 0.0"),
    ({"overhead": "5%"}, "overhead must be a positive number"),
    ({"overhead": float("nan")}, "overhead must be a positive number"),
    ({"every": 10, "overhead": 0.1}, "overhead=0.1 applies to every='auto' only"),
    ({"every": "sometimes"}, "every must be an integer >= 1, got 'sometimes' .*'auto'"),
])
def test_bad_budget_options_say_what_to_do(options, words):
    with pytest.raises(ValueError, match=words):
        MonitorOptions(**options)


class TimedEMT(EMT):
    """EMT whose every calculation costs one second of a fake clock."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def calculate(self, *args, **kwargs):
        self.clock.now += 1.0
        super().calculate(*args, **kwargs)


def test_the_monitor_times_its_calculations_and_logs_the_strides(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(budget_module, "perf_counter", clock)
    atoms = bulk("Cu", cubic=True)
    log = str(tmp_path / "auto.h5")
    # per-copy ASE loop: a monitored step costs 1 + 2 * 2 calculations, 4 s of extra
    monitor = SymmetryMonitor(TimedEMT(clock), log=log, random_rotations=2, overhead=0.2,
                              calibration_rotations=0)
    atoms.calc = monitor
    for step in range(100):
        atoms.positions[0, 0] = 0.01 * step
        atoms.get_potential_energy()
    monitor.close()
    with read_log(log) as reader:
        steps, _, strides = reader.observable("monitor_stride")
        assert reader.metadata["every"] == "auto" and reader.metadata["overhead"] == 0.2
    assert steps[0] == 0 and strides[0] == 0 and len(steps) >= 4
    assert list(np.diff(steps)) == list(strides[1:])
    # the first step's 4 s are charged and expected of the next: 8 s / (0.2 * 1 s)
    assert 39 <= strides[1] <= 42
    assert np.all((strides[2:] >= 19) & (strides[2:] <= 22))  # 4 s / (0.2 * 1 s)


def test_long_one_time_work_says_what_it_does_and_how_long(capsys):
    """A calibration step expected to take more than LONG_WORK_S prints one line on
    stderr first (what, how many evaluations, about how long); ordinary steps print
    nothing."""
    # random steps: 6 copies for 0.6 s of extra -> 0.1 s a copy; calibration: 64 copies
    monitored, _ = run_schedule({"every": 5, "calibrate_every": 3}, 40, 1.0,
                                lambda step: 0.6)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) >= 2  # steps 5 and 10 at least
    assert lines[0] == ("symmon: step 5: calibrating the error bars on 32 rotation pairs "
                        "(early in a run, then every calibrate_every monitored steps): 64 "
                        "model evaluations, about 6 s")
    run_schedule({"every": 5}, 5, 1.0, lambda step: 0.6)  # no calibration before step 5
    run_schedule({"every": 5, "calibration_rotations": 16}, 20, 1.0, lambda step: 0.3)
    assert capsys.readouterr().err == ""  # 32 copies of 0.05 s: not long
