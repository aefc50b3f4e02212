"""Tests of ``symmon report`` on real logs written by the monitor (EMT, the broken
control of tests/broken.py, relaxed and averaged runs) and on synthetic logs."""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from html.parser import HTMLParser

import h5py
import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.md.langevin import Langevin
from ase.optimize import BFGS
from matplotlib.collections import QuadMesh
from matplotlib.lines import Line2D

from broken import LabFrameEMT
from structures import cu_ni
from symmon import SymmetryMonitor
from symmon.core.irreps import irrep_labels, irreps_up_to
from symmon.frontends.cli import main
from symmon.frontends.report import (build_summary, make_figures, read_run, render_html,
                                     render_text, run_report)
from symmon.frontends.report import summarize as typed_summary
from symmon.frontends.report import figures as report_figures
from symmon.frontends.report import series as report_series
from symmon.frontends.report.criteria import resolve_thresholds
from symmon.frontends.report.numbers import fmt, fmt_fraction
from symmon.io.log import LogFormatError, LogReader, LogWriter, ObservableSpec
from symmon.monitoring.thresholds import (LEVELS, REFERENCE_ERRORS, REFERENCE_RATIO_LIMITS,
                                         RELATIVE_LIMITS)

def summarize(*args, **kwargs) -> dict:
    """The report's JSON summary of a log (what ``--format json`` writes)."""
    return typed_summary(*args, **kwargs).to_json()


def summary_and_figures(reader):
    """The typed summary and the figures of an open log."""
    data = read_run(reader)
    summary = build_summary(data, reader=reader)
    return summary, make_figures(data, summary)


LAB_FORCE = 0.05       # eV/angstrom on every atom (tests/broken.py default, along z)
#: a control broken beyond doubt: 6x a typical MLIP force error, 30 % of |F|
STRONGLY_BROKEN = {"lab_force": (0.0, 0.0, 0.3), "lab_stress": 0.01}


def cu_ni_cell():
    return cu_ni(repeat=(1, 1, 2), nickel=(1, 4, 6))


def monitored_md(calc, path, steps=4, full_every=3, **options):
    atoms = cu_ni_cell()
    monitor = SymmetryMonitor(calc, every=1, log=str(path), full_every=full_every, l_max=2,
                              random_rotations=3, **options)
    atoms.calc = monitor
    dynamics = Langevin(atoms, 2 * units.fs, temperature_K=300, friction=0.02,
                        rng=np.random.default_rng(0))
    monitor.attach(dynamics)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dynamics.run(steps)
    monitor.close()
    return str(path)


def single_point(calc, atoms, path):
    """One exact (full-orbit) monitored evaluation of ``atoms``."""
    monitor = SymmetryMonitor(calc, every=1, full_every=1, log=str(path), l_max=1)
    atoms.calc = monitor
    atoms.get_forces()
    atoms.get_stress()
    monitor.close()
    return str(path)


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    d = tmp_path_factory.mktemp("logs")
    return {"emt": monitored_md(EMT(), d / "emt.h5"),
            "broken": monitored_md(LabFrameEMT(**STRONGLY_BROKEN), d / "broken.h5"),
            "nofull": monitored_md(EMT(), d / "nofull.h5", steps=2, full_every=0)}


def _direct(path, name):
    with h5py.File(path, "r") as f:
        g = f[f"observables/{name}"]
        return g["step"][:], g["time"][:], g["value"][:]


def _check(summary, quantity):
    return next(c for c in summary["verdict"]["checks"] if c["quantity"] == quantity)


# ------------------------------------------------------------------ the verdict (issue 14)


@pytest.mark.slow
def test_emt_is_ok_and_the_broken_control_is_a_problem(logs):
    emt, broken = summarize(logs["emt"]), summarize(logs["broken"])
    assert emt["verdict"]["level"] == "ok"
    assert all(c["level"] == "ok" for c in emt["verdict"]["checks"])
    assert emt["verdict"]["headline"].startswith("forces: ε ")
    v = broken["verdict"]
    assert v["level"] == "problem"
    assert _check(broken, "forces")["level"] == "problem"
    assert _check(broken, "energy")["level"] == "ok"        # the energy is untouched EMT
    # the headline names the worst quantity and its number, per atom
    assert v["headline"].startswith("forces: ε 0.3 eV/Å per atom")
    assert "% of |F|" in v["headline"] and "typical MLIP force error" in v["headline"]
    # reasons ranked by severity, one action
    ranks = [LEVELS.index(c["level"]) for c in v["checks"]]
    assert ranks == sorted(ranks, reverse=True) and ranks[0] == 2
    assert v["reasons"][0].startswith("problem: forces")
    assert 'SymmetryMonitor(base, mode="average")' in v["action"]
    assert 'mode="random_frame"' in v["action"] and "purify" not in v["action"]  # EMT
    first = broken["flagged"]["steps"][0]
    assert any(f"At step {first}: forces: ε " in n for n in v["notes"])   # which, and why
    cost = broken["cost_of_average"]
    assert cost["calls_per_step"] == 168 and cost["ms_per_call"] > 0
    assert f"{cost['calls_per_step']} model calls per step" in v["what_to_do"]["cost"]
    # the constant lab-frame force lives in the scalar channel (0,+1) of the forces
    assert broken["contamination"]["forces"]["top_irreps"][0]["irrep"] == "(0,+1)"
    assert "a part that stays fixed in the lab frame (0,+1)" in v["reasons"][0]
    assert emt["contamination"]["forces"]["top_irreps"] == []


def test_supercell_gets_the_same_verdict_and_per_atom_force_eps(tmp_path):
    cell = cu_ni_cell()
    small = summarize(single_point(LabFrameEMT(), cell.copy(), tmp_path / "cell.h5"))
    large = summarize(single_point(LabFrameEMT(), cell.repeat((2, 2, 2)),
                                   tmp_path / "supercell.h5"))
    assert large["run"]["n_atoms"] == 8 * small["run"]["n_atoms"]
    assert large["verdict"]["level"] == small["verdict"]["level"] != "ok"
    for q in ("forces", "stress"):
        assert _check(large, q)["eps"] == pytest.approx(_check(small, q)["eps"], rel=1e-6)
    # exact full orbit: each atom's ε is the lab force's norm, so is their RMS
    assert _check(large, "forces")["eps"] == pytest.approx(LAB_FORCE, rel=1e-9)
    summed = _direct(str(tmp_path / "supercell.h5"), "forces_eps_total")[2][0]
    assert summed == pytest.approx(LAB_FORCE * np.sqrt(64), rel=1e-9)  # what the log sums


def relaxed_cu():
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
    atoms.rattle(0.02, seed=3)
    atoms.calc = EMT()
    BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=1e-4)
    return atoms


def test_relaxed_zero_pressure_structure_is_not_flagged_from_stress_alone(tmp_path):
    atoms = relaxed_cu()
    assert np.abs(atoms.get_stress()).max() < 1e-4
    small_bias = LabFrameEMT(lab_force=(0, 0, 2e-3), lab_stress=2e-5)  # 3 MPa, 2 meV/Å
    s = summarize(single_point(small_bias, atoms.copy(), tmp_path / "relaxed.h5"))
    # relative to the vanishing stress and forces themselves the breaking looks huge ...
    for q in ("stress", "forces"):
        eps, rms = (_direct(str(tmp_path / "relaxed.h5"), f"{q}_{n}")[2][0] for n in
                    ("eps", "rms"))
        assert eps / rms > 0.5
    # ... but against the floors and the field's errors it is small
    assert s["verdict"]["level"] == "ok"
    assert _check(s, "stress")["relative"] < RELATIVE_LIMITS.caution


def test_a_relaxed_crystal_with_a_good_models_eps_is_not_a_problem(tmp_path):
    """An ε of 0.4 typical errors on a relaxed crystal (forces and stress near zero) is
    what the ratio calls ok; the relative check must not call it a problem (it did with
    floors equal to the typical error: 'problem ... well below a typical MLIP error')."""
    atoms = relaxed_cu()
    bias = LabFrameEMT(lab_force=(0, 0, 0.02), lab_stress=8e-4)
    s = summarize(single_point(bias, atoms.copy(), tmp_path / "relaxed.h5"))
    for q in ("forces", "stress"):
        check = _check(s, q)
        assert check["ratio"] < REFERENCE_RATIO_LIMITS.caution  # ok by the ratio ...
        assert check["level"] == "ok"                          # ... and so overall


def test_below_the_floor_the_relative_check_never_flags_what_the_ratio_calls_ok():
    from symmon.monitoring.thresholds import FLOORS, grade

    for q in ("forces", "stress"):
        ref = REFERENCE_ERRORS[q]
        for eps in np.linspace(0.01, 0.499, 25) * ref:   # ratio ok
            for rms in np.geomspace(1e-6, 1.0, 25) * FLOORS[q]:  # at or below the floor
                assert grade(q, eps, rms).level == "ok", (q, eps, rms)
        # above the floor the relative check is the sharper one: 6 % of a large force
        assert grade(q, 0.06 * 3 * FLOORS[q], 3 * FLOORS[q]).level != "ok"


def test_a_users_relative_limit_is_a_share_of_the_quantity_itself():
    """thresholds={"forces": 0.05} means 5 % of |F| (floor: the typical error), not 5 %
    of the ten-error floor: 7.5 % of |F| = 0.2 eV/Å is a problem."""
    from symmon.monitoring.thresholds import grade

    assert grade("forces", 0.015, 0.2, overrides={"forces": 0.05}).level == "problem"
    assert grade("forces", 0.015, 0.2).level == "ok"  # the table alone: 3 % of the floor


@pytest.mark.parametrize("quantity, eps", [("forces", 0.12), ("stress", 0.0062)])
def test_breaking_that_is_the_quantity_itself_is_a_problem_however_small(quantity, eps):
    """A lab-frame force of 0.12 eV/Å on a relaxed crystal, a 1 GPa lab-frame stress at
    zero pressure: all of the quantity is breaking, at over two typical errors -- a
    problem, though the relative check's floor alone would call it caution; half a
    typical error, or 1.5 typical errors, of the same kind stay below."""
    from symmon.monitoring.thresholds import grade, grade_levels

    assert grade(quantity, eps, eps).level == "problem"
    assert grade_levels(quantity, np.array([eps]), np.array([eps])).tolist() == [2]
    small = 0.4 * REFERENCE_ERRORS[quantity]
    assert grade(quantity, small, small).level == "ok"
    comparable = 1.5 * REFERENCE_ERRORS[quantity]
    assert grade(quantity, comparable, comparable).level == "caution"


@pytest.mark.slow
def test_the_augmented_and_unaugmented_pair_get_different_verdicts(tmp_path):
    """The bundled tiny PETs trained with and without O(3) augmentation (same data and
    seed), 600 K MD of the demo cell, monitored every step: the unaugmented model is a
    problem, the augmented one is not."""
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from symmon.frontends.calculator import metatomic_calculator
    from symmon.frontends.demo import bundled_model_path, demo_structure

    levels = {}
    for name in ("aug", "noaug"):
        path = os.path.join(os.path.dirname(bundled_model_path()), f"tiny_pet_{name}.pt")
        atoms = demo_structure()
        monitor = SymmetryMonitor(metatomic_calculator(path, non_conservative=True),
                                  log=str(tmp_path / f"{name}.h5"), every=1, full_every=0)
        atoms.calc = monitor
        MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(0))
        dynamics = Langevin(atoms, 2 * units.fs, temperature_K=600, friction=0.02,
                            rng=np.random.default_rng(1))
        monitor.attach(dynamics)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dynamics.run(40)
        monitor.close()
        levels[name] = summarize(str(tmp_path / f"{name}.h5"))["verdict"]["level"]
    assert levels["noaug"] == "problem"
    assert levels["aug"] != "problem"


@pytest.mark.slow
def test_average_mode_judges_the_returned_averaged_predictions(tmp_path):
    path = monitored_md(LabFrameEMT(**STRONGLY_BROKEN), tmp_path / "avg.h5", steps=2,
                        mode="average")
    v = summarize(path)["verdict"]
    assert v["level"] == "ok" and v["judged"] == "average"
    assert "base model" in v["reasons"][0] and "O(3)-averaged" in v["reasons"][0]
    assert "'problem'" in v["action"]                     # the base model alone is broken
    assert _check({"verdict": v}, "forces")["level"] == "problem"


@pytest.mark.slow
def test_average_mode_names_the_degree_of_the_grid_it_used(tmp_path):
    """average_degree=None (the default) is chosen by the monitor: 3 + the highest rank
    returned, 5 with stress; the report names that degree, not the setting."""
    path = monitored_md(EMT(), tmp_path / "avg.h5", steps=1, full_every=0, mode="average")
    summary = summarize(path)
    assert summary["run"]["metadata"]["average_degree"] == 5
    assert "quadrature degree 5)" in summary["verdict"]["reasons"][0]


def test_model_error_file_sets_the_scale(logs, tmp_path):
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps({"quantities": {
        "forces": {"rmse": 1.0, "unit": "eV/angstrom"},
        "energy": {"rmse": 0.01, "unit": "eV/atom"}}}))
    default = _check(summarize(logs["broken"]), "forces")
    judged = _check(summarize(logs["broken"], model_error={"forces": 1.0}), "forces")
    assert default["scale"] == REFERENCE_ERRORS["forces"]
    assert judged["scale"] == 1.0 and judged["scale_source"] == "model error"
    assert judged["ratio"] == pytest.approx(default["ratio"] * REFERENCE_ERRORS["forces"])
    out = tmp_path / "r.json"
    assert run_report([logs["broken"]], output=str(out), fmt="json",
                      model_error=str(evaluation)) == 0
    s = json.loads(out.read_text())
    assert _check(s, "forces")["scale"] == 1.0
    assert any("the model's force error (1 eV/Å)" in r for r in s["verdict"]["reasons"])
    assert _check(s, "energy")["scale_source"] == "model error"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"quantities": {"forces": {"rmse": 1, "unit": "kcal/mol"}}}))
    assert main(["report", logs["broken"], "--model-error", str(bad)]) == 2


def test_json_numbers_equal_direct_computation(logs, tmp_path):
    out = tmp_path / "broken.json"
    assert run_report([logs["broken"]], output=str(out), fmt="json") == 0
    s = json.loads(out.read_text())
    step, time_ps, rel = _direct(logs["broken"], "forces_rel_eps")
    _, _, per_atom = _direct(logs["broken"], "forces_eps_per_atom")
    _, _, full = _direct(logs["broken"], "full_orbit")
    _, _, energy = _direct(logs["broken"], "energy_eps")
    rms_per_atom = np.sqrt(np.mean(per_atom ** 2, axis=1))   # RMS over atoms, eV/angstrom
    assert s["run"]["steps_monitored"] == len(step) == 5
    assert s["run"]["full_orbit_steps"] == int(full.sum()) == 2
    assert s["run"]["time_start_ps"] == pytest.approx(time_ps.min())
    assert s["run"]["composition"] == {"Cu": 5, "Ni": 3}
    f = s["eps"]["forces"]
    assert f["unit"] == "eV/angstrom" and s["eps"]["energy"]["unit"] == "eV/atom"
    assert f["abs"]["p95"] == pytest.approx(np.percentile(rms_per_atom, 95))
    assert f["rel"]["max"] == pytest.approx(rel.max())
    assert s["eps"]["energy"]["abs"]["max"] == pytest.approx(energy.max() / 8)
    assert _check(s, "forces")["eps"] == pytest.approx(np.percentile(rms_per_atom, 95))
    _, _, logged = _direct(logs["broken"], "forces_eps")   # the per-atom RMS, as logged
    assert logged == pytest.approx(rms_per_atom, rel=1e-9)
    worst = np.argsort(-logged, kind="stable")[:5]
    assert [w["step"] for w in s["worst_steps"]][:5] == step[worst].tolist()
    first = s["worst_steps"][0]["worst_atom"]
    assert first["index"] == int(np.argmax(per_atom[worst[0]]))
    with LogReader(logs["broken"]) as log:
        _, _, cont = log.observable("forces_contamination")
    c = s["contamination"]["forces"]
    assert c["n"] == 2 and c["mean"] == pytest.approx(cont.mean())
    assert s["worst_atoms"][0]["median_eps"] == pytest.approx(np.median(per_atom, 0).max())
    assert "Å" not in out.read_text()                    # file spelling of units in JSON


def test_thresholds_override(logs):
    strict = summarize(logs["emt"], {"forces": 1e-20})
    assert strict["verdict"]["level"] == "problem"
    assert _check(strict, "forces")["limits"]["relative"]["problem"] == 1e-20
    assert resolve_thresholds([("forces_rel_eps", 0.5)]) == {"forces": 0.5}
    with pytest.raises(ValueError, match="unknown threshold"):
        resolve_thresholds({"forcez": 1})
    with pytest.raises(ValueError, match=">= 0"):
        resolve_thresholds({"forces": -1})


# ------------------------------------------------------------------ the page (issue 16)


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.verdict_classes, self.ids, self.links = [], [], set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "div" and "verdict" in (attrs.get("class") or ""):
            self.verdict_classes.append(attrs["class"])
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a":
            self.links.append(attrs["href"])


@pytest.mark.slow
def test_html_is_self_contained_and_links_atoms_to_steps(logs, tmp_path, capsys):
    log = shutil.copy(logs["broken"], tmp_path / "run.h5")
    png_dir = tmp_path / "png"
    assert run_report([str(log)], png_dir=str(png_dir)) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"wrote {tmp_path / 'run.html'}: problem — forces: ε 0.3 eV/Å "
                          "per atom") and len(out.splitlines()) == 1
    page = (tmp_path / "run.html").read_text()          # default: next to the log
    parser = _Page()
    parser.feed(page)
    pngs = sorted(p.stem for p in png_dir.glob("*.png"))
    assert pngs == sorted(["eps_time", "eps_hist", "spectra", "per_atom"])
    embedded = [src for src in parser.images if src.startswith("data:image/png;base64,")]
    assert len(embedded) == len(parser.images) == len(pngs)
    for src in embedded:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert parser.verdict_classes == ["verdict problem"]
    assert "http://" not in page and "https://" not in page
    step_links = [h for h in parser.links if h.startswith("#step-")]
    assert len(step_links) == 5 and all(h[1:] in parser.ids for h in parser.links)
    assert "Forces ε per atom (RMS over atoms)" in page and "forces_rel_eps" not in page
    assert "eV/Å" in page and "eV/angstrom" not in page


def test_run_table_values_align_as_text_and_the_stress_channel_reads_right(logs):
    """The Run table lists name: value (a count is not right-aligned there, but is in
    tables of columns); a lab-frame stress e_z e_z^T has a traceless part that does not
    rotate at all, named as the traceless stress's (0,+1) channel."""
    summary = summarize(logs["broken"])
    page = render_html(typed_summary(logs["broken"]))
    assert re.search(r"<td>full-orbit steps</td><td>\d+</td>", page)
    assert re.search(r"<td class='num'>\d+</td>", page)
    stress = next(r for r in summary["verdict"]["reasons"] if "stress" in r.split(":")[1])
    assert ("the breaking sits mostly in a part of the traceless stress that stays fixed "
            "in the lab frame (0,+1)") in stress


def test_figures_have_units_one_legend_and_their_own_limits(logs):
    with LogReader(logs["broken"]) as log:
        typed, figures = summary_and_figures(log)
        s = typed.to_json()
    for name, fig in figures.items():
        assert len(fig.legends) == (0 if name == "spectra" else 1), name  # spectra: colour bar
        assert all(ax.get_legend() is None for ax in fig.axes), name
    for ax in figures["eps_time"].axes:
        assert "(eV" in ax.get_ylabel()
    limits = {}
    for ax in figures["eps_hist"].axes:
        q = ax.get_title().split()[0]
        limits[q] = sorted(line.get_xdata()[0] for line in ax.get_lines())
    expected = sorted([RELATIVE_LIMITS.caution, RELATIVE_LIMITS.problem])
    assert limits == {q: expected for q in ("forces", "stress")}  # energy: not relative
    spectra_ax = figures["spectra"].axes[0]
    assert spectra_ax.get_xlim() == pytest.approx((s["run"]["time_start_ps"],
                                                   s["run"]["time_end_ps"]))


def test_the_heatmap_colours_target_and_wrong_channels_apart(logs):
    """Target rows (★) in one colour map (blue, linear), the other rows in another
    (yellow-red, log, white below 1e-6): on-target power never reads as breaking."""
    with LogReader(logs["broken"]) as log:
        _, figures = summary_and_figures(log)
    forces = figures["spectra"].axes[1]
    on, off = [m for m in forces.collections if isinstance(m, QuadMesh)]
    assert on.get_cmap().name == "Blues" and off.get_cmap().name.startswith("YlOrRd")
    labels = [t.get_text() for t in forces.get_yticklabels()]
    on_rows = ~np.ma.getmaskarray(on.get_array()).all(axis=1)
    off_rows = ~np.ma.getmaskarray(off.get_array()).all(axis=1)
    assert [labels[i] for i in np.flatnonzero(on_rows)] == ["(1,+1) ★"]
    assert not (on_rows & off_rows).any() and (on_rows | off_rows).all()
    assert off.norm.vmin == report_figures.OFF_TARGET_FLOOR


def test_small_numbers_and_rounding_noise_are_printed_honestly():
    assert fmt(1.234e-7) == "1.23e-07" and fmt(0.0612) == "0.0612" and fmt(None) == "–"
    assert fmt(0.0) == "0" and fmt(3) == "3"
    assert fmt_fraction(-4.8e-16) == "< 1e-12" and fmt_fraction(2.5e-3) == "0.0025"


def test_text_output_has_verdict_action_and_tables(logs, capsys):
    assert run_report([logs["emt"]], fmt="text") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[2].startswith("VERDICT: OK - forces: ε ")
    assert "what to do:" in out and "Worst steps" in out and "Contamination" in out
    text = render_text(typed_summary(logs["broken"]))
    assert "VERDICT: PROBLEM" in text and "  1. problem: forces" in text


@pytest.mark.slow
def test_log_without_full_orbit_steps(logs):
    s = summarize(logs["nofull"])
    assert s["run"]["full_orbit_steps"] == 0 and s["run"]["steps_monitored"] == 3
    assert all(c is None for c in s["contamination"].values())
    assert any("No full-orbit steps" in n for n in s["verdict"]["notes"])
    with LogReader(logs["nofull"]) as log:
        typed, figures = summary_and_figures(log)
    assert "spectra" not in figures and "eps_time" in figures
    assert "Verdict: OK" in render_html(typed, figures)


@pytest.mark.slow
def test_shards_merge_and_a_file_twice_is_refused(logs, tmp_path):
    """Two logs of one model and settings merge; another model's log is no shard."""
    second = monitored_md(LabFrameEMT(**STRONGLY_BROKEN), tmp_path / "broken2.h5")
    s = summarize([logs["broken"], second])
    assert s["run"]["steps_monitored"] == 10 and s["run"]["full_orbit_steps"] == 4
    assert s["verdict"]["level"] == "problem"
    with pytest.raises(ValueError, match="given twice"):
        summarize([logs["emt"], logs["emt"]])
    assert main(["report", logs["emt"], logs["emt"], "--format", "json"]) == 2
    with pytest.raises(ValueError, match="not shards of one run .different model"):
        summarize([logs["emt"], logs["broken"]])


@pytest.mark.slow
def test_compare_shows_two_runs_side_by_side(logs, tmp_path, capsys):
    out = tmp_path / "cmp.html"
    assert run_report([logs["emt"], logs["broken"]], output=str(out), compare=True) == 0
    line = capsys.readouterr().out
    assert "emt.h5: ok" in line and "broken.h5: problem" in line
    page = out.read_text()
    parser = _Page()
    parser.feed(page)
    assert parser.verdict_classes == ["verdict ok", "verdict problem"]
    assert page.count("<table>") == 1 and "Runs side by side" in page
    assert run_report([logs["emt"], logs["broken"]], output=str(tmp_path / "c.json"),
                      fmt="json", compare=True) == 0
    s = json.loads((tmp_path / "c.json").read_text())
    assert [r["verdict"]["level"] for r in s["runs"]] == ["ok", "problem"]
    with LogReader(logs["emt"]) as a, LogReader(logs["broken"]) as b:
        data = [read_run(a), read_run(b)]
        figures = make_figures(data, [build_summary(d) for d in data],
                               labels=["emt", "broken"])
    forces_ax = figures["eps_time"].axes[1]
    colours = {line.get_color() for line in forces_ax.get_lines() if line.get_label()[0] != "_"}
    assert {"C0", "C1"} <= colours
    with pytest.raises(ValueError, match="at least two"):
        run_report([logs["emt"]], compare=True)


def test_report_help_imports_no_heavy_module():
    code = ("import sys; from symmon.frontends.cli import build_parser; "
            "build_parser('report'); "
            "print(sorted(m for m in ('torch', 'matplotlib', 'h5py') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, check=True)
    assert result.stdout.strip() == "[]"
    assert time.perf_counter() - start < 5      # a fresh interpreter; well under 1 s idle


# ------------------------------------------------------------------ errors


def test_corrupt_and_foreign_files_give_clear_errors(logs, tmp_path, capsys):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an hdf5 file at all" * 10)
    with pytest.raises(LogFormatError, match="not an HDF5 file"):
        run_report([str(garbage)], fmt="json")
    truncated = tmp_path / "truncated.h5"
    data = open(logs["emt"], "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(LogFormatError):
        run_report([str(truncated)], fmt="json")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(LogFormatError, match="not a symmon log"):
        summarize(str(foreign))
    assert main(["report", str(foreign), "--format", "json"]) == 2
    assert "not a symmon log" in capsys.readouterr().err
    assert main(["report", str(garbage)]) == 2
    assert not (tmp_path / "garbage.html").exists()          # nothing half-written
    other = tmp_path / "other.h5"
    with LogWriter(other, {"temperature": ObservableSpec(unit="K")}, [29]) as w:
        w.append("temperature", 0, 0.0, 300.0)
    with pytest.raises(LogFormatError, match="without monitor diagnostics"):
        summarize(str(other))


# ------------------------------------------------------------------ synthetic logs


def synthetic_specs(n_atoms, labels, renamed=False):
    specs = {"forces_error": ObservableSpec((), "eV/angstrom")}
    if renamed:  # the monitor's new names: forces_eps per atom, the sum as _total
        specs["forces_eps_total"] = ObservableSpec((), "eV/angstrom")
    for q, unit in (("energy", "eV"), ("forces", "eV/angstrom")):
        specs.update({f"{q}_eps": ObservableSpec((), unit),
                      f"{q}_eps_err": ObservableSpec((), unit),
                      f"{q}_rel_eps": ObservableSpec(()),
                      f"{q}_spectrum": ObservableSpec((len(labels),), labels=labels),
                      f"{q}_residual": ObservableSpec(()),
                      f"{q}_contamination": ObservableSpec(())})
    specs["forces_eps_per_atom"] = ObservableSpec((n_atoms,), "eV/angstrom")
    specs["full_orbit"] = ObservableSpec((), dtype="int64")
    return specs


def write_synthetic(path, n_steps, n_atoms=16, full_every=50, close=True, renamed=False):
    """A monitor-like log written directly (fast): forces ε ~ 1e-3, a spike at the end."""
    labels = irrep_labels(irreps_up_to(2))
    rng = np.random.default_rng(0)
    specs = synthetic_specs(n_atoms, labels, renamed)
    writer = LogWriter(path, specs, [29] * (n_atoms - 1) + [8],
                       flush_every=1000, write_positions=False)
    spectrum = np.where((labels == [1, 1]).all(axis=1), 1 - 1e-6, 0.0)
    spectrum[0] = 1e-6
    for s in range(n_steps):
        rel = 1e-3 * (1 + rng.random()) * (100 if s == n_steps - 3 else 1)
        values = {"energy_eps": 1e-5, "energy_eps_err": 1e-6, "energy_rel_eps": 1e-6,
                  "forces_eps": rel, "forces_eps_err": 1e-4, "forces_rel_eps": rel,
                  "forces_error": 0.05, "forces_eps_per_atom": np.linspace(1, 2, n_atoms) * rel,
                  "full_orbit": int(s % full_every == 0)}
        if renamed:
            values["forces_eps_total"] = rel * np.sqrt(n_atoms)
        if s % full_every == 0:
            for q in ("energy", "forces"):
                values.update({f"{q}_spectrum": spectrum, f"{q}_residual": 0.0,
                               f"{q}_contamination": 1e-6})
        writer.append_frame(s, 0.001 * s, None, np.eye(3) * 10)
        writer.append_many(s, 0.001 * s, values)
    if close:
        writer.close()
        if not renamed:  # the old names: a log written before the log-semantics version
            with h5py.File(path, "r+") as f:
                del f["parameters/symmon"].attrs["semantics_version"]
                del f["parameters/symmon/attribute_sha256"]
    return writer


@pytest.mark.slow
def test_large_log_reports_quickly_with_bounded_reads(tmp_path, monkeypatch):
    path = tmp_path / "long.h5"
    write_synthetic(path, 20000)
    budget = 40_000
    monkeypatch.setattr(report_series, "SAMPLE_BUDGET", budget)
    rows_read = {}
    original = LogReader.observable

    def spy(self, name, start=None, stop=None, stride=None):
        result = original(self, name, start, stop, stride)
        rows_read[name] = max(rows_read.get(name, 0), result[2].size)
        return result

    monkeypatch.setattr(LogReader, "observable", spy)
    start = time.perf_counter()
    with LogReader(str(path)) as log:
        typed, figures = summary_and_figures(log)
        s = typed.to_json()
    assert time.perf_counter() - start < 20
    assert rows_read["forces_eps_per_atom"] <= budget   # never the whole (20000, 16) array
    assert s["run"]["steps_monitored"] == 20000 and s["run"]["full_orbit_steps"] == 400
    assert s["worst_steps"][0]["step"] == 19997       # the spike is found ...
    assert s["verdict"]["level"] == "caution"          # ... and flagged, though rare
    assert s["worst_atoms"][0]["symbol"] == "O" and s["worst_atoms"][0]["index"] == 15
    assert s["logged_model_error"]["forces"]["eps_over_error"]["median"] < 0.1
    assert set(figures) == {"eps_time", "eps_hist", "spectra", "per_atom", "eps_vs_error"}
    for fig in figures.values():
        for ax in fig.axes:
            for line in ax.get_lines():
                assert len(line.get_xdata()) <= report_figures.MAX_POINTS
            for mesh in ax.collections:
                if isinstance(mesh, QuadMesh):
                    assert mesh.get_array().shape[1] <= report_figures.MAX_HEATMAP_COLUMNS
    eps_axis = figures["eps_time"].axes[1]                # forces ε per atom
    peak = max(np.nanmax(np.asarray(c.get_paths()[0].vertices[:, 1]))
               for c in eps_axis.collections)
    assert peak > 0.05                                  # the spike survives downsampling
    assert any(isinstance(line, Line2D) for line in eps_axis.get_lines())


def test_log_still_being_written(tmp_path):
    path = tmp_path / "live.h5"
    writer = write_synthetic(path, 60, close=False)
    writer.flush()
    try:
        s = summarize(str(path))
        assert s["run"]["steps_monitored"] == 60
        assert s["verdict"]["level"] in LEVELS
    finally:
        writer.close()


def test_empty_log_is_an_error(tmp_path):
    path = tmp_path / "empty.h5"
    write_synthetic(path, 0)
    with pytest.raises(ValueError, match="no monitored step"):
        summarize(str(path))


def test_renamed_forces_eps_is_read_as_the_per_atom_rms(tmp_path):
    old, new = tmp_path / "old.h5", tmp_path / "new.h5"
    write_synthetic(old, 40)
    write_synthetic(new, 40, renamed=True)
    _, _, logged = _direct(str(new), "forces_eps")
    _, _, per_atom = _direct(str(old), "forces_eps_per_atom")
    assert _check(summarize(str(new)), "forces")["eps"] == pytest.approx(
        np.percentile(logged, 95))                       # taken as it is ...
    assert _check(summarize(str(old)), "forces")["eps"] == pytest.approx(
        np.percentile(np.sqrt(np.mean(per_atom ** 2, axis=1)), 95))  # ... or converted


@pytest.mark.parametrize("quantity, model_error, overrides", [
    ("energy", None, None), ("forces", None, None), ("stress", None, None),
    ("forces", 0.04, None), ("energy", None, {"energy": 0.1}),
    ("stress", 0.002, {"stress": 0.3})])
def test_vectorised_step_grades_are_grade_step_by_step(quantity, model_error, overrides):
    """The report grades every step at once (``grade_levels``); each step's level is
    what ``grade`` says of it alone, across limits, NaN and tiny orbit RMS."""
    from symmon.monitoring.thresholds import LEVELS, grade, grade_levels

    rng = np.random.default_rng(3)
    eps = 10 ** rng.uniform(-5, 0, 400)
    rms = 10 ** rng.uniform(-4, 1, 400)
    eps[:5], rms[5:10] = np.nan, np.nan
    rms[10:15] = 0.0
    levels = grade_levels(quantity, eps, rms, model_error, overrides)
    expected = [LEVELS.index(grade(quantity, e, None if np.isnan(r) else r, model_error,
                                   overrides).level) for e, r in zip(eps, rms)]
    assert levels.tolist() == expected
    assert len(set(expected)) == 3  # all three levels were exercised


def test_a_verdict_on_few_monitored_steps_says_so(logs):
    notes = summarize(logs["nofull"])["verdict"]["notes"]
    assert any(note.startswith("Only 3 monitored step(s)") and "every=1" in note
               for note in notes)
    many = monitored_md(EMT(), logs["nofull"].replace("nofull", "many"), steps=11,
                        full_every=0)
    assert not any("monitored step(s)" in n for n in summarize(many)["verdict"]["notes"])


def test_the_report_shows_the_net_force_of_the_returned_forces(logs):
    """EMT's forces sum to zero; the broken control adds 0.3 eV/Å along z on every atom,
    so its net force per atom is 0.3 eV/Å; periodic cells log no torque."""
    emt, broken = summarize(logs["emt"])["net"], summarize(logs["broken"])["net"]
    assert emt["forces"] == "returned forces" and "net_torque" not in emt
    assert emt["net_force_per_atom"]["max"] < 1e-10
    assert broken["net_force_per_atom"]["median"] == pytest.approx(0.3, rel=1e-9)
    text = render_text(typed_summary(logs["broken"]))
    assert "net force per atom      median 0.3" in text
    assert "0 for an exactly symmetric conservative model" in text


def test_a_problem_by_the_third_rule_says_its_share_of_the_quantity(tmp_path):
    """A lab-frame stress at zero pressure is all breaking: the headline gives that share
    (not only the floored relative ε, which reads like a caution)."""
    atoms = relaxed_cu()
    s = summarize(single_point(LabFrameEMT(lab_force=(0, 0, 0), lab_stress=0.008),
                               atoms.copy(), tmp_path / "lab_stress.h5"))
    check = _check(s, "stress")
    assert check["level"] == "problem" and check["dominated"]
    share = f"{check['share'] * 100:.0f} % of |σ| ({check['rms']:.3g} eV/Å³) itself"
    assert share in s["verdict"]["headline"] and share in s["verdict"]["reasons"][0]
