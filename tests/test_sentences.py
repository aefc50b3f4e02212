"""Sentences are generated from the numbers they state: every rule that can grade a
problem has its words (monitor warning, exception, report), and every percentage of the
quantity is the relative ε or share the JSON holds; one relative ε on the whole page."""

import json
import re
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from ase.build import bulk
from ase.md.verlet import VelocityVerlet
from ase import units

from broken import LabFrameEMT
from symmon import SymmetryMonitor
from symmon.frontends.cli import main
from symmon.frontends.report import build_summary, make_figures, read_run
from symmon.frontends.report.criteria import judge, verdict
from symmon.frontends.report.series import QuantitySeries
from symmon.io.log import LogReader
from symmon.monitoring.policy import (SymmetryViolation, SymmetryViolationWarning, number,
                                      percent, problem_text)
from symmon.core.quantities import QUANTITY
from symmon.monitoring.thresholds import REFERENCE_ERRORS, grade, relative_eps
from test_report import relaxed_cu

# (eps, rms, overrides) in typical errors, graded problem by exactly one rule
RULES = {
    "ratio": (6.0, 600.0, None),            # 6x a typical error, 1 % of the quantity
    "relative": (0.4, 1.0, 0.02),           # 40 % of the quantity, over a 2 % limit
    "dominant": (2.2, 1.0, None),           # 220 % of a quantity of one typical error
}


def _case(quantity, rule):
    eps, rms, limit = RULES[rule]
    typical = REFERENCE_ERRORS[quantity]
    overrides = None if limit is None else {quantity: limit}
    if rule == "dominant" and quantity == "energy":   # the energy is judged relatively
        overrides = {quantity: 10.0}                   # only where a limit is given
    return eps * typical, rms * typical, overrides


def _percentages(text):
    return set(re.findall(r"(\d+(?:\.\d+)?) %", text))


@pytest.mark.parametrize("quantity", ["energy", "forces", "stress"])
@pytest.mark.parametrize("rule", list(RULES))
def test_every_rule_that_grades_a_problem_has_its_sentence(quantity, rule):
    eps, rms, overrides = _case(quantity, rule)
    g = grade(quantity, eps, rms, overrides=overrides)
    assert g.level == "problem" and rule in g.rules
    text = problem_text(g)
    assert text.startswith(f"{quantity}: ε {number(eps)} ")
    if rule == "dominant":
        assert f"{percent(g.share)} % of" in text and "the breaking is the quantity" in text
    elif rule == "relative":
        assert f"{percent(g.relative)} % of" in text
        assert f"relative ε {number(g.relative)} is above {number(overrides[quantity])}" in text
    else:
        assert "above 5× the typical MLIP error" in text
    # every percentage of the quantity is one of the Grade's own numbers
    allowed = {percent(x) for x in (g.relative, g.share, g.ratio) if x is not None} | {"50"}
    assert _percentages(text) <= allowed, text


@pytest.mark.parametrize("quantity", ["energy", "forces", "stress"])
@pytest.mark.parametrize("rule", list(RULES))
def test_the_reports_reasons_state_the_jsons_numbers(quantity, rule):
    """The report judges 95th percentiles of per-step numbers; its headline and reason
    give the same relative ε and share the JSON holds, for every rule."""
    eps, rms, overrides = _case(quantity, rule)
    n = 12
    scatter = np.linspace(0.9, 1.1, n)
    e, r = eps * scatter, rms * scatter[::-1]
    s = QuantitySeries(quantity, np.arange(n), np.arange(n) * 0.002, e, e * 0.1, r,
                       np.asarray(relative_eps(quantity, e, r, overrides)),
                       e / np.maximum(r, REFERENCE_ERRORS[quantity]), np.zeros(n, bool),
                       QUANTITY[quantity].eps_unit)
    checks = judge({quantity: s}, overrides=overrides)
    run = SimpleNamespace(metadata={}, full_orbit_steps=0, first_step=0)
    v = verdict(checks, run).to_json()
    check = v["checks"][0]
    assert v["level"] == check["level"] == "problem"
    assert check["relative"] == pytest.approx(np.percentile(s.relative, 95), rel=1e-12)
    assert check["share"] == pytest.approx(np.percentile(s.share, 95), rel=1e-12)
    reason = v["reasons"][0]
    assert reason and v["headline"] in reason
    if rule == "dominant":
        assert f"{percent(check['share'])} % of" in v["headline"]
    elif check["relative_judged"] and check["rms"] >= check["floor"]:
        assert f"{percent(check['relative'])} % of" in v["headline"]
    allowed = {percent(check[k]) for k in ("relative", "share", "ratio")} | {
        "50", "100", percent(check["fraction_steps_flagged"])}
    assert _percentages(reason) <= allowed, reason


def test_a_floored_quantity_says_it_is_tiny_and_names_the_floor():
    g = grade("forces", 0.0186, 0.013)
    text = problem_text(g) if g.level == "problem" else ""
    from symmon.monitoring.policy import statement

    text = statement(g)
    assert "|F| is tiny (0.013 eV/Å); judged against the 0.5 eV/Å floor" in text
    assert "3.7 %" not in text   # the share of the floor is no share of |F|


@pytest.fixture(scope="module")
def relaxed():
    return relaxed_cu()


def _lab_stress_single_point(relaxed, path, **options):
    atoms = relaxed.copy()
    monitor = SymmetryMonitor(LabFrameEMT(lab_force=(0, 0, 0), lab_stress=0.008), every=1,
                              full_every=1, log=str(path), l_max=1, **options)
    atoms.calc = monitor
    return atoms, monitor


def test_a_third_rule_problem_raises_and_warns_with_its_reason(relaxed, tmp_path):
    """A lab-frame stress at zero pressure is graded problem by the third rule only;
    the exception and the warning say so, with the share the log's numbers give."""
    atoms, monitor = _lab_stress_single_point(relaxed, tmp_path / "raise.h5", on_violation="raise")
    with pytest.raises(SymmetryViolation) as raised:
        atoms.get_stress()
    message = str(raised.value)
    with LogReader(str(tmp_path / "raise.h5")) as log:
        eps = log.observable("stress_eps")[2][0]
        rms = log.observable("stress_rms")[2][0]
    share = eps / max(rms, REFERENCE_ERRORS["stress"])
    assert f"{percent(share)} % of |σ|" in message and "the breaking is the quantity" in message
    atoms, monitor = _lab_stress_single_point(relaxed, tmp_path / "warn.h5")
    with pytest.warns(SymmetryViolationWarning) as caught:
        atoms.get_stress()
    monitor.close()
    text = str(caught[0].message)
    assert f"{percent(share)} % of |σ|" in text and ":  (" not in text


@pytest.mark.slow
def test_every_relative_eps_on_the_page_is_one_number(tmp_path, capsys):
    """``symmon report --threshold``: the verdict, the ε table, the histogram, the worst
    steps, the JSON and the monitor's log hold one relative ε per step. The forces here
    (|F| ~ 0.2 eV/Å) lie between the override's floor (the typical error, 0.05 eV/Å) and
    the table's (0.5 eV/Å), where two floors would disagree by up to 10x."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((1, 1, 2))
    atoms.rattle(0.02, seed=2)
    path = str(tmp_path / "run.h5")
    monitor = SymmetryMonitor(LabFrameEMT(lab_force=(0, 0, 0.1), lab_stress=0.0), every=1,
                              full_every=0, random_rotations=3, log=path,
                              thresholds={"forces": 0.05})
    atoms.calc = monitor
    dynamics = VelocityVerlet(atoms, 2 * units.fs)
    monitor.attach(dynamics)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dynamics.run(11)
    monitor.close()
    overrides = {"forces": 0.05}
    with LogReader(path) as log:
        step, _, eps = log.observable("forces_eps")
        rms = log.observable("forces_rms")[2]
        logged = log.observable("forces_rel_eps")[2]
        data = read_run(log, overrides)
        summary = build_summary(data, reader=log)
    expected = relative_eps("forces", eps, rms, overrides)
    assert 0.05 < np.median(rms) < 0.5                        # between the two floors
    np.testing.assert_allclose(logged, expected, rtol=1e-12)  # the monitor's
    assert main(["report", path, "--threshold", "forces=0.05", "--format", "json",
                 "-o", str(tmp_path / "s.json")]) == 0
    s = json.loads((tmp_path / "s.json").read_text())
    check = next(c for c in s["verdict"]["checks"] if c["quantity"] == "forces")
    p95 = np.percentile(expected, 95)
    assert check["relative"] == pytest.approx(p95, rel=1e-12)          # verdict
    assert s["eps"]["forces"]["rel"]["p95"] == pytest.approx(p95, rel=1e-12)  # table
    by_step = dict(zip(step.tolist(), expected))
    for row in s["worst_steps"]:                                       # worst steps
        assert row["forces_rel_eps"] == pytest.approx(by_step[row["step"]], rel=1e-12)
    headline = s["verdict"]["headline"]
    assert f"{percent(check['relative'])} % of |F|" in headline
    assert main(["report", path, "--threshold", "forces=0.05", "--format", "text"]) == 0
    text = capsys.readouterr().out
    assert number(check["relative"]) in text and number(s["eps"]["forces"]["rel"]["p95"]) in text
    hist = make_figures(data, summary)["eps_hist"]                      # histogram
    ax = next(a for a in hist.axes if a.get_title().startswith("forces"))
    counts, edges = ax.patches[0].get_data()[:2]
    assert np.array_equal(counts, np.histogram(np.clip(expected, edges[0], edges[-1]),
                                               edges)[0])
    limits = sorted(line.get_xdata()[0] for line in ax.get_lines())
    assert limits == pytest.approx([0.01, 0.05])          # the override's own limits
