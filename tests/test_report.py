"""Tests of ``symmon report`` on real logs written by the monitor (EMT and a broken EMT)."""

import base64
import json
import shutil
import time
import warnings
from html.parser import HTMLParser

import h5py
import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.md.langevin import Langevin
from matplotlib.collections import QuadMesh
from matplotlib.lines import Line2D

from symmon.frontends import report
from symmon.frontends.cli import main
from symmon.io.log import LogFormatError, LogReader, LogWriter, ObservableSpec
from symmon.frontends.calculator import SymmetryMonitor
from symmon.core.irreps import irrep_labels, irreps_up_to
from symmon.frontends.report import make_figures, render_html, render_text, run_report, summarize

LAB_FORCE = np.array([0.05, 0.0, 0.0])             # eV/angstrom on every atom
LAB_STRESS = np.array([2e-3, 0, 0, 0, 0, 0])        # eV/angstrom^3, Voigt


class LabFrameEMT(Calculator):
    """EMT plus lab-frame terms: a constant force on every atom and a constant stress."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self):
        super().__init__()
        self.emt = EMT()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        copy = self.atoms.copy()
        copy.calc = self.emt
        energy = copy.get_potential_energy()
        self.results = {"energy": energy, "free_energy": energy,
                        "forces": copy.get_forces() + LAB_FORCE,
                        "stress": copy.get_stress() + LAB_STRESS}


def cu_ni_cell():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1, 1, 2))
    atoms.numbers[[1, 4, 6]] = 28
    atoms.rattle(0.05, seed=1)
    return atoms


def monitored_md(calc, path, steps=4, full_every=3):
    atoms = cu_ni_cell()
    monitor = SymmetryMonitor(calc, every=1, log=str(path), full_every=full_every, l_max=2,
                              random_rotations=3)
    atoms.calc = monitor
    dynamics = Langevin(atoms, 2 * units.fs, temperature_K=300, friction=0.02,
                        rng=np.random.default_rng(0))
    monitor.attach(dynamics)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dynamics.run(steps)
    monitor.close()
    return str(path)


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    d = tmp_path_factory.mktemp("logs")
    return {"emt": monitored_md(EMT(), d / "emt.h5"),
            "broken": monitored_md(LabFrameEMT(), d / "broken.h5"),
            "nofull": monitored_md(EMT(), d / "nofull.h5", steps=2, full_every=0)}


# ------------------------------------------------------------------ verdict and numbers


def test_verdict_separates_exact_from_broken(logs):
    emt, broken = summarize(logs["emt"]), summarize(logs["broken"])
    assert emt["verdict"]["level"] == "ok"
    assert all(c["level"] == "ok" for c in emt["verdict"]["checks"])
    assert broken["verdict"]["level"] == "problem"
    levels = {c["name"]: c["level"] for c in broken["verdict"]["checks"]}
    assert levels["forces_eps"] == "problem"
    assert levels["energy_eps_per_atom"] == "ok"          # the energy is untouched EMT
    assert any("forces ε" in r for r in broken["verdict"]["reasons"])
    # the constant force lives in the scalar channel (0,+1) of the forces
    assert broken["contamination"]["forces"]["top_irreps"][0]["irrep"] == "(0,+1)"
    assert emt["contamination"]["forces"]["top_irreps"] == []


def _direct(path, name):
    with h5py.File(path, "r") as f:
        g = f[f"observables/{name}"]
        return g["step"][:], g["time"][:], g["value"][:]


def test_json_numbers_equal_direct_computation(logs, tmp_path):
    out = tmp_path / "broken.json"
    assert run_report([logs["broken"]], output=str(out), fmt="json") == 0
    s = json.loads(out.read_text())
    step, time_ps, rel = _direct(logs["broken"], "forces_rel_eps")
    _, _, eps = _direct(logs["broken"], "forces_eps")
    _, _, full = _direct(logs["broken"], "full_orbit")
    assert s["run"]["steps_monitored"] == len(step) == 5
    assert s["run"]["full_orbit_steps"] == int(full.sum()) == 2
    assert s["run"]["time_start_ps"] == pytest.approx(time_ps.min())
    assert s["run"]["time_end_ps"] == pytest.approx(time_ps.max())
    assert s["run"]["composition"] == {"Cu": 5, "Ni": 3}
    f = s["eps"]["forces"]
    assert f["unit"] == "eV/angstrom"
    assert f["rel"]["median"] == pytest.approx(np.median(rel))
    assert f["rel"]["p95"] == pytest.approx(np.percentile(rel, 95))
    assert f["rel"]["max"] == pytest.approx(rel.max())
    assert f["abs"]["p95"] == pytest.approx(np.percentile(eps, 95))
    worst = np.argsort(rel)[::-1][:5]
    assert [w["step"] for w in s["worst_steps"]] == step[worst].tolist()
    assert s["worst_steps"][0]["forces_rel_eps"] == pytest.approx(rel.max())
    with LogReader(logs["broken"]) as log:
        _, _, cont = log.observable("forces_contamination")
        _, _, per_atom = log.observable("forces_eps_per_atom")
        _, _, spectrum = log.observable("forces_spectrum")
        labels = log.labels("forces_spectrum")
    c = s["contamination"]["forces"]
    assert c["n"] == 2 and c["mean"] == pytest.approx(cont.mean())
    assert c["max"] == pytest.approx(cont.max())
    scalar = np.flatnonzero((labels == [0, 1]).all(axis=1))[0]
    assert c["top_irreps"][0]["mean_power"] == pytest.approx(spectrum[:, scalar].mean())
    medians = np.median(per_atom, axis=0)
    assert s["worst_atoms"][0]["median_eps"] == pytest.approx(medians.max())
    assert s["worst_atoms"][0]["symbol"] in ("Cu", "Ni")
    check = next(c for c in s["verdict"]["checks"] if c["name"] == "forces_eps")
    assert check["value"] == pytest.approx(np.percentile(eps, 95))
    assert check["fraction_above_problem"] == pytest.approx(np.mean(eps > 0.05))


def test_thresholds_override(logs):
    relaxed = {c.name: float("inf") for c in report.CRITERIA}
    assert summarize(logs["broken"], relaxed)["verdict"]["level"] == "ok"
    s = summarize(logs["broken"], [("forces", 0.5), ("forces_eps_caution", 1e-6)])
    t = s["thresholds"]
    assert t["forces_rel_eps"]["problem"] == 0.5 and t["forces_rel_eps"]["caution"] == 0.01
    assert t["forces_eps"]["caution"] == 1e-6
    strict = summarize(logs["emt"], {"forces_eps": 1e-20})
    assert strict["verdict"]["level"] == "problem"
    with pytest.raises(ValueError, match="unknown threshold"):
        report.resolve_thresholds({"forcez": 1})
    with pytest.raises(ValueError, match=">= 0"):
        report.resolve_thresholds({"forces_eps": -1})


# ------------------------------------------------------------------ outputs


class _ImageCounter(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.verdict_classes = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "div" and "verdict" in (attrs.get("class") or ""):
            self.verdict_classes.append(attrs["class"])


def test_html_is_self_contained_and_embeds_every_figure(logs, tmp_path):
    log = shutil.copy(logs["broken"], tmp_path / "run.h5")
    png_dir = tmp_path / "png"
    assert run_report([str(log)], png_dir=str(png_dir)) == 0
    page = (tmp_path / "run.html").read_text()          # default: next to the log
    parser = _ImageCounter()
    parser.feed(page)
    pngs = sorted(p.stem for p in png_dir.glob("*.png"))
    assert pngs == sorted(["eps_time", "eps_hist", "spectra", "per_atom"])
    embedded = [src for src in parser.images if src.startswith("data:image/png;base64,")]
    assert len(embedded) == len(parser.images) == len(pngs)
    for src in embedded:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert parser.verdict_classes == ["verdict problem"]
    assert "http://" not in page and "https://" not in page


def test_text_output_has_verdict_and_tables(logs, capsys):
    assert run_report([logs["emt"]], fmt="text") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[2].startswith("VERDICT: OK")
    assert "Worst steps" in out and "Contamination" in out
    text = render_text(summarize(logs["broken"]))
    assert "VERDICT: PROBLEM" in text and "forces ε" in text


def test_log_without_full_orbit_steps(logs):
    s = summarize(logs["nofull"])
    assert s["run"]["full_orbit_steps"] == 0 and s["run"]["steps_monitored"] == 3
    assert all(c is None for c in s["contamination"].values())
    assert any("No full-orbit steps" in n for n in s["verdict"]["notes"])
    with LogReader(logs["nofull"]) as log:
        figures = make_figures(log, s)
    assert "spectra" not in figures and "eps_time" in figures
    assert "Verdict: OK" in render_html(s, figures)


def test_shards_merge(logs):
    s = summarize([logs["emt"], logs["broken"]])
    assert s["run"]["steps_monitored"] == 10 and s["run"]["full_orbit_steps"] == 4
    assert s["verdict"]["level"] == "problem"
    assert len(s["logs"]) == 2


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
    other = tmp_path / "other.h5"
    with LogWriter(other, {"temperature": ObservableSpec(unit="K")}, [29]) as w:
        w.append("temperature", 0, 0.0, 300.0)
    with pytest.raises(LogFormatError, match="without monitor diagnostics"):
        summarize(str(other))


# ------------------------------------------------------------------ synthetic logs


def synthetic_specs(n_atoms, labels):
    specs = {"forces_error": ObservableSpec((), "eV/angstrom")}
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


def write_synthetic(path, n_steps, n_atoms=16, full_every=50, close=True):
    """A monitor-like log written directly (fast): forces ε ~ 1e-3, a spike at the end."""
    labels = irrep_labels(irreps_up_to(2))
    rng = np.random.default_rng(0)
    writer = LogWriter(path, synthetic_specs(n_atoms, labels), [29] * (n_atoms - 1) + [8],
                       flush_every=1000, write_positions=False)
    spectrum = np.where((labels == [1, 1]).all(axis=1), 1 - 1e-6, 0.0)
    spectrum[0] = 1e-6
    for s in range(n_steps):
        rel = 1e-3 * (1 + rng.random()) * (100 if s == n_steps - 3 else 1)
        values = {"energy_eps": 1e-5, "energy_eps_err": 1e-6, "energy_rel_eps": 1e-6,
                  "forces_eps": rel, "forces_eps_err": 1e-4, "forces_rel_eps": rel,
                  "forces_error": 0.05, "forces_eps_per_atom": np.linspace(1, 2, n_atoms) * rel,
                  "full_orbit": int(s % full_every == 0)}
        if s % full_every == 0:
            for q in ("energy", "forces"):
                values.update({f"{q}_spectrum": spectrum, f"{q}_residual": 0.0,
                               f"{q}_contamination": 1e-6})
        writer.append_frame(s, 0.001 * s, None, np.eye(3) * 10)
        writer.append_many(s, 0.001 * s, values)
    if close:
        writer.close()
    return writer


def test_large_log_reports_quickly_with_bounded_reads(tmp_path, monkeypatch):
    path = tmp_path / "long.h5"
    write_synthetic(path, 20000)
    budget = 40_000
    monkeypatch.setattr(report, "SAMPLE_BUDGET", budget)
    rows_read = {}
    original = LogReader.observable

    def spy(self, name, start=None, stop=None, stride=None):
        result = original(self, name, start, stop, stride)
        rows_read[name] = max(rows_read.get(name, 0), result[2].size)
        return result

    monkeypatch.setattr(LogReader, "observable", spy)
    start = time.perf_counter()
    with LogReader(str(path)) as log:
        s = report._summarize(log, report.resolve_thresholds())
        figures = make_figures(log, s)
    assert time.perf_counter() - start < 20
    assert rows_read["forces_eps_per_atom"] <= budget   # never the whole (20000, 16) array
    assert s["run"]["steps_monitored"] == 20000 and s["run"]["full_orbit_steps"] == 400
    assert s["worst_steps"][0]["step"] == 19997       # the spike is found ...
    assert s["verdict"]["level"] == "caution"          # ... and flagged, though rare
    assert s["worst_atoms"][0]["symbol"] == "O" and s["worst_atoms"][0]["index"] == 15
    assert s["model_error"]["forces"]["eps_over_error"]["median"] < 0.1
    assert set(figures) == {"eps_time", "eps_hist", "spectra", "per_atom", "eps_vs_error"}
    for fig in figures.values():
        for ax in fig.axes:
            for line in ax.get_lines():
                assert len(line.get_xdata()) <= report.MAX_POINTS
            for mesh in ax.collections:
                if isinstance(mesh, QuadMesh):
                    assert mesh.get_array().shape[1] <= report.MAX_HEATMAP_COLUMNS
    eps_axis = figures["eps_time"].axes[1]
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
        assert s["verdict"]["level"] in report.LEVELS
    finally:
        writer.close()


def test_empty_log_is_an_error(tmp_path):
    path = tmp_path / "empty.h5"
    write_synthetic(path, 0)
    with pytest.raises(ValueError, match="no monitored step"):
        summarize(str(path))
