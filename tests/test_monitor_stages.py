"""The monitor's stages (plan -> evaluate -> measure -> decide -> record) driven by a fake
source over an analytic model: no ASE calculator, no torch model, exact numbers."""

import warnings

import numpy as np
import pytest

from fake_source import FakeSource
from symmon.io.log import ObservableSpec
from symmon.monitoring.monitor import Monitor
from symmon.monitoring.options import MonitorOptions
from symmon.monitoring.policy import SymmetryViolation, SymmetryViolationWarning
from symmon.monitoring.schema import NAMES, OBSERVABLES, UndeclaredObservable

LAB_FORCE = (0.0, 0.0, 1.0)  # eV/Å on every atom: 20 typical errors, 100 % of |F| here


def monitor_of(source, **options):
    options = {"every": 1, "random_rotations": 4, "l_max": 2, **options}
    return Monitor(source, MonitorOptions(**options), warm_up=False)


def test_an_equivariant_model_is_ok_and_returned_untouched(water):
    source = FakeSource()
    monitor = monitor_of(source, full_every=2)
    for step in range(3):
        water.positions[0, 0] += 0.01 * step
        returned, values = monitor.calculate(water)
        plain = source.plain(water, ("energy", "forces")).predictions
        np.testing.assert_array_equal(returned["forces"], plain["forces"])
        assert values[NAMES["forces"].eps] < 1e-12 and values[NAMES["energy"].eps] < 1e-12
        assert values["level"] == 0 and values["violation"] == 0
        assert values["full_orbit"] == (step % 2 == 0)
        assert values["monitor_stride"] == (0 if step == 0 else 1)
        assert values["averaged"] == 0 and values["eps_of_returned"] == 1
        assert set(values) <= set(OBSERVABLES)
    assert monitor.last_monitored["step"] == 2 and monitor.n_violations == 0
    assert source.calls == 3  # one batched evaluation per step


def test_a_lab_frame_force_is_a_problem_measured_per_atom(water):
    monitor = monitor_of(FakeSource(LAB_FORCE), full_every=1)
    with pytest.warns(SymmetryViolationWarning):
        _, values = monitor.calculate(water)
    # back-transformed forces -2c + Q^T f_lab: each atom's ε^2 is the orbit variance of
    # Q^T f_lab, |f_lab|^2 on an exact quadrature (O(3) averages Q to zero)
    np.testing.assert_allclose(values["forces_eps_per_atom"], 1.0, rtol=1e-10)
    np.testing.assert_allclose(values[NAMES["forces"].eps], 1.0, rtol=1e-10)
    np.testing.assert_allclose(values[NAMES["forces"].raw_eps], np.sqrt(len(water)),
                               rtol=1e-10)
    assert values[NAMES["forces"].level] == 2 and values["violation"] == 1
    assert values[NAMES["energy"].eps] < 1e-12  # the energy is still invariant
    assert monitor.n_violations == 1


def test_switching_to_averaging_returns_the_orbit_average(water):
    monitor = monitor_of(FakeSource(LAB_FORCE), full_every=1, on_violation="average")
    with pytest.warns(SymmetryViolationWarning, match="switching to O\\(3\\) averaging"):
        returned, values = monitor.calculate(water)
    assert values["mode_switch"] == 1 and values["averaged"] == 1
    assert values["eps_of_returned"] == 0 and monitor.mode == "average"
    centred = water.positions - water.positions.mean(axis=0)
    np.testing.assert_allclose(returned["forces"], -2 * centred, atol=1e-12)  # no lab part
    _, later = monitor.calculate(water)
    assert "mode_switch" not in later and later["averaged"] == 1


def test_raise_stops_with_the_step_recorded(water):
    monitor = monitor_of(FakeSource(LAB_FORCE), on_violation="raise")
    with pytest.raises(SymmetryViolation, match="symmetry violation at step 0: forces"):
        monitor.calculate(water)
    assert monitor.last_monitored["step"] == 0 and monitor.last_monitored["violation"] == 1


def test_warned_once_per_quantity(water):
    monitor = monitor_of(FakeSource(LAB_FORCE))
    with pytest.warns(SymmetryViolationWarning, match="warned once per quantity"):
        monitor.calculate(water)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SymmetryViolationWarning)
        _, values = monitor.calculate(water)
    assert values["violation"] == 1 and monitor.n_violations == 2


def test_unmonitored_steps_carry_the_every_step_values_only(water):
    monitor = monitor_of(FakeSource(), every=3)
    kinds = []
    for _ in range(4):
        _, values = monitor.calculate(water)
        kinds.append(NAMES["forces"].eps in values)
        if not kinds[-1]:
            assert {"energy", "forces", "averaged", "net_force_per_atom",
                    "net_torque", "calls", "call_kind"} >= set(values)
    assert kinds == [True, False, False, True]


def test_a_non_finite_orbit_is_one_sentence(water):
    monitor = monitor_of(FakeSource(nan_at_call=2))
    monitor.calculate(water)
    with pytest.raises(ValueError, match="the model returned NaN or infinite values at "
                       "step 1 \\(atoms and cell are valid\\)") as error:
        monitor.calculate(water)
    assert error.value.__context__ is None  # raised outside the engine's handler


def test_an_undeclared_front_end_value_is_refused(water):
    monitor = monitor_of(FakeSource())
    with pytest.raises(UndeclaredObservable, match="'request' are not declared"):
        monitor.calculate(water, {"request": 1})
    declared = Monitor(FakeSource(), MonitorOptions(every=1, l_max=2), warm_up=False,
                       extra_specs={"request": ObservableSpec((), "1", "a request id")})
    _, values = declared.calculate(water, {"request": 1})
    assert values["request"] == 1
