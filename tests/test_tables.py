"""The quantity and observable tables: every name used is declared, lists derive from them."""

import dataclasses

import numpy as np
import pytest

from symmon.core.outputs import OUTPUTS
from symmon.core.quantities import QUANTITIES, QUANTITY, quantity
from symmon.frontends.calculator import DIAGNOSTICS, PER_ATOM_DIAGNOSTICS
from symmon.frontends.ipi import EXTRAS_KEYS
from symmon.monitoring.recorder import Recorder, StepRecord
from symmon.monitoring.schema import (EVERY_STEP, NAMES, OBSERVABLES, UndeclaredObservable,
                                      observable_specs)


def test_quantity_rows_agree_with_the_outputs_table():
    for q in QUANTITIES:
        assert q.kind == OUTPUTS[q.name].kind and q.unit == OUTPUTS[q.name].unit
        if q.direct_output is not None:
            assert OUTPUTS[q.direct_output].quantity == q.name
            assert not OUTPUTS[q.direct_output].conservative
    assert QUANTITY["energy"].direct_output is None
    # ε per atom of a structure repeated n times is the same number (ε^2 is additive)
    for q in QUANTITIES:
        eps_total = {1: 1.0, 8: 8.0 if q.atom_power == 1 else
                     np.sqrt(8.0) if q.atom_power == 0.5 else 1.0}
        assert eps_total[1] * q.per_atom_factor(5) == pytest.approx(
            eps_total[8] * q.per_atom_factor(40))
    with pytest.raises(ValueError, match="unknown quantity 'force'; known: energy"):
        quantity("force")


def test_every_name_of_a_quantity_is_a_declared_observable():
    for q, names in NAMES.items():
        for name in dataclasses.astuple(names):
            if name is not None:
                assert OBSERVABLES[name].quantity == q, name
    assert NAMES["forces"].eps == "forces_eps" and NAMES["forces"].raw_eps == "forces_eps_total"
    assert NAMES["energy"].eps == "energy_eps_per_atom"
    assert NAMES["stress"].eps_alt == "stress_eps_gpa"


def test_front_end_lists_derive_from_the_table():
    assert set(DIAGNOSTICS) | set(PER_ATOM_DIAGNOSTICS) == {
        name for name, o in OBSERVABLES.items() if o.results}
    assert PER_ATOM_DIAGNOSTICS == ("forces_eps_per_atom",)
    assert EXTRAS_KEYS[:2] == ("symmon_step", "monitored")
    assert set(EXTRAS_KEYS[2:]) == {name for name, o in OBSERVABLES.items() if o.extras}
    assert {"energy", "forces", "stress", "calls", "averaged"} <= EVERY_STEP
    assert "forces_eps" not in EVERY_STEP


def test_specs_depend_on_the_structure():
    specs = observable_specs(("energy", "forces"), 7, periodic=False, l_max=2)
    assert specs["forces_eps_per_atom"].shape == (7,)
    assert specs["forces"].shape == (7, 3)
    assert "net_torque" in specs and "stress_eps" not in specs
    assert specs["forces_spectrum"].shape == (len(specs["forces_spectrum"].labels),)
    periodic = observable_specs(("energy", "forces", "stress"), 7, periodic=True, l_max=2)
    assert "net_torque" not in periodic and periodic["stress"].shape == (3, 3)


def _record(values):
    return StepRecord(0, 0.0, np.zeros((1, 3)), np.eye(3), True, values)


def test_the_recorder_refuses_an_undeclared_value(tmp_path):
    recorder = Recorder(None, "create", 10, extra_names=("ipi_request_id",))
    recorder.write(_record({"forces_eps": 0.1, "ipi_request_id": 3}), None, dict, dict)
    with pytest.raises(UndeclaredObservable, match="'forces_epsilon' are not declared: "
                       "add a row to symmon.monitoring.schema.OBSERVABLES"):
        recorder.write(_record({"forces_epsilon": 0.1}), None, dict, dict)
    path = tmp_path / "x.h5"
    recorder = Recorder(path, "create", 10)
    with pytest.raises(UndeclaredObservable):
        recorder.write(_record({"energy_eps": 0.1, "bogus": 1}), None, dict, dict)
    assert not path.exists()  # refused before the log is created
