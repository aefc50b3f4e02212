"""symmon export: worst steps to extxyz / chemiscope, from logs of the real monitor."""

import json

import ase.io
import chemiscope
import numpy as np
import pytest
from ase import units
from ase.calculators.emt import EMT
from ase.md.langevin import Langevin

from symmon import SymmetryMonitor
from symmon.frontends.cli import main
from symmon.frontends.export import worst_atoms, worst_steps
from symmon.io.log import LogWriter, ObservableSpec, read_log

from broken import LabFrameEMT
from structures import cu_ni

#: extxyz per-atom columns are written with 8 decimals (ASE's "%16.8f")
COLUMN_ATOL = 5.1e-9
N_STEPS = 5


def monitored_md(path, base, between_steps=None):
    atoms = cu_ni()
    monitor = SymmetryMonitor(base, log=str(path), every=1, random_rotations=3)
    atoms.calc = monitor
    dynamics = Langevin(atoms, 2 * units.fs, temperature_K=300, friction=0.02,
                        rng=np.random.default_rng(0), fixcm=False)
    monitor.attach(dynamics)
    if between_steps is not None:
        dynamics.attach(lambda: between_steps(dynamics.nsteps), interval=1)
    dynamics.run(N_STEPS)
    monitor.close()
    return str(path)


@pytest.fixture(scope="module")
def broken_log(tmp_path_factory):
    """LabFrameEMT whose lab-frame force differs per atom and per step, so that steps
    and atoms have distinct ε."""
    base = LabFrameEMT()
    rng = np.random.default_rng(7)
    patterns = rng.normal(size=(N_STEPS + 2, len(cu_ni()), 3)) * 0.05

    def force_of_step(step):  # called after step `step`, before the next force call
        base.lab_force = patterns[step] * (1 + (step * 3) % 4)

    force_of_step(0)
    return monitored_md(tmp_path_factory.mktemp("export") / "broken.h5", base,
                        lambda step: force_of_step(step + 1))


@pytest.fixture(scope="module")
def emt_log(tmp_path_factory):
    return monitored_md(tmp_path_factory.mktemp("export") / "emt.h5", EMT())


def logged(path):
    """step -> (positions, per-atom ε, energy_eps, energy, forces) as the log holds them."""
    with read_log(path) as reader:
        frames = reader.frames()
        steps, _, eps = reader.observable("forces_eps_per_atom")
        energy_eps = reader.observable("energy_eps")[2]
        energy, forces = reader.observable("energy")[2], reader.observable("forces")[2]
    assert frames.step.tolist() == steps.tolist()
    return {int(s): (frames.positions[i], eps[i], energy_eps[i], energy[i], forces[i])
            for i, s in enumerate(steps)}


def rms(eps_per_atom):
    return float(np.sqrt(np.mean(np.square(eps_per_atom))))


def test_worst_steps_to_extxyz_carry_the_logs_per_atom_eps(broken_log, tmp_path, capsys):
    out = tmp_path / "worst.extxyz"
    assert main(["export", broken_log, "-o", str(out), "--worst", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and str(out) in line and "3 worst" in line
    frames = ase.io.read(out, ":")
    log = logged(broken_log)
    by_rms = sorted(log, key=lambda s: -rms(log[s][1]))
    assert [a.info["symmon_step"] for a in frames] == by_rms[:3]
    assert len(set(round(rms(log[s][1]), 12) for s in log)) == len(log)  # distinct ε
    for rank, atoms in enumerate(frames, start=1):
        positions, eps, energy_eps, energy, forces = log[atoms.info["symmon_step"]]
        assert atoms.info["symmon_rank"] == rank
        np.testing.assert_allclose(atoms.arrays["symmon_forces_eps"], eps, rtol=0,
                                   atol=COLUMN_ATOL)
        np.testing.assert_allclose(atoms.positions, positions, rtol=0, atol=COLUMN_ATOL)
        np.testing.assert_allclose(atoms.get_forces(), forces, rtol=0, atol=COLUMN_ATOL)
        assert atoms.get_potential_energy() == pytest.approx(energy, rel=1e-12)
        assert atoms.info["symmon_forces_eps_rms"] == pytest.approx(rms(eps), rel=1e-12)
        assert atoms.info["symmon_energy_eps"] == pytest.approx(energy_eps, rel=1e-12)
        assert atoms.info["symmon_forces_eps_rms_unit"] == "eV/angstrom"
    assert frames[0].info["symmon_forces_eps_rms"] > 1e-3  # the lab-frame force shows


def test_steps_and_all_keep_their_order(broken_log, tmp_path):
    out = tmp_path / "some.xyz"
    assert main(["export", broken_log, "-o", str(out), "--steps", "4,1,3"]) == 0
    assert [a.info["symmon_step"] for a in ase.io.read(out, ":")] == [4, 1, 3]
    assert main(["export", broken_log, "-o", str(out), "--all"]) == 0
    assert [a.info["symmon_step"] for a in ase.io.read(out, ":")] == list(range(N_STEPS + 1))


def test_emt_exports_negligible_eps(emt_log, tmp_path):
    out = tmp_path / "emt.extxyz"
    assert main(["export", emt_log, "-o", str(out), "--worst", "2", "--quantity",
                 "stress"]) == 0
    frames = ase.io.read(out, ":")
    assert len(frames) == 2
    assert frames[0].info["symmon_stress_eps"] >= frames[1].info["symmon_stress_eps"]
    for atoms in frames:
        assert atoms.info["symmon_ranked_by"] == "stress_eps"
        assert np.all(atoms.arrays["symmon_forces_eps"] < 1e-8)
        assert atoms.info["symmon_forces_eps_rms"] < 1e-12


def test_chemiscope_dataset_of_all_monitored_frames(broken_log, tmp_path, capsys):
    out = tmp_path / "dataset.json"
    assert main(["export", broken_log, "-o", str(out)]) == 0
    assert "chemiscope" in capsys.readouterr().out
    chemiscope.show_input(str(out))  # chemiscope's own loader accepts it
    data = json.loads(out.read_text())
    log = logged(broken_log)
    steps = sorted(log)
    assert len(data["structures"]) == len(steps)
    properties = data["properties"]
    assert properties["atom_forces_eps"]["target"] == "atom"
    np.testing.assert_allclose(properties["atom_forces_eps"]["values"],
                               np.concatenate([log[s][1] for s in steps]), rtol=1e-15)
    assert properties["step"]["values"] == steps
    np.testing.assert_allclose(properties["forces_eps_rms"]["values"],
                               [rms(log[s][1]) for s in steps], rtol=1e-15)
    assert properties["forces_eps_rms"]["units"] == "eV/Å"
    for name in ("energy_eps_per_atom", "stress_eps", "forces_rel_eps", "time_ps"):
        assert properties[name]["target"] == "structure"
    assert len(data["environments"]) == len(steps) * len(cu_ni())


def test_helpers_rank_steps_and_atoms(broken_log):
    log = logged(broken_log)
    with read_log(broken_log) as reader:
        ranked = worst_steps(reader, None)
        atoms = worst_atoms(reader, 3)
        at_step_2 = worst_atoms(reader, 100, step=2)
    assert [w.step for w in ranked] == sorted(log, key=lambda s: -rms(log[s][1]))
    assert ranked[0].eps == pytest.approx(rms(log[ranked[0].step][1]), rel=1e-12)
    assert ranked[0].unit == "eV/angstrom"
    eps = log[ranked[0].step][1]
    assert [a.index for a in atoms] == list(np.argsort(-eps)[:3])
    assert all(a.step == ranked[0].step for a in atoms)
    assert [a.eps_eV_per_A for a in at_step_2] == sorted(log[2][1], reverse=True)
    assert {a.symbol for a in at_step_2} == {"Cu", "Ni"}


def test_shards_repeating_steps_export_every_occurrence(broken_log, tmp_path):
    out = tmp_path / "twice.extxyz"
    assert main(["export", broken_log, broken_log, "-o", str(out), "--worst", "2"]) == 0
    first, second = ase.io.read(out, ":")
    assert first.info["symmon_step"] == second.info["symmon_step"]
    assert [first.info["symmon_rank"], second.info["symmon_rank"]] == [1, 2]


def empty_log(path):
    spec = {"forces_eps_per_atom": ObservableSpec((2,), "eV/angstrom")}
    LogWriter(str(path), spec, species=[29, 29]).close()
    return str(path)


@pytest.mark.parametrize("case, words", [
    ("missing", "not found"),
    ("empty", "no monitored steps"),
    ("unknown step", "step 99 is not a monitored step"),
    ("no directory", "does not exist"),
    ("stress of a molecule", "no stress"),
])
def test_bad_input_is_one_sentence_and_exit_code_2(case, words, broken_log, tmp_path, capsys):
    out = str(tmp_path / "x.extxyz")
    argv = {"missing": [str(tmp_path / "nope.h5"), "-o", out],
            "empty": [empty_log(tmp_path / "empty.h5"), "-o", out],
            "unknown step": [broken_log, "-o", out, "--steps", "2,99"],
            "no directory": [broken_log, "-o", str(tmp_path / "no" / "x.extxyz")],
            "stress of a molecule": [_molecule_log(tmp_path), "-o", out, "--quantity",
                                     "stress"]}[case]
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "x.extxyz").exists()
    assert not list(tmp_path.rglob("*.partial.*"))


def _molecule_log(tmp_path):
    spec = {"forces_eps_per_atom": ObservableSpec((2,), "eV/angstrom"),
            "energy_eps": ObservableSpec((), "eV")}
    with LogWriter(str(tmp_path / "molecule.h5"), spec, species=[1, 1], pbc=False) as log:
        log.append_frame(0, 0.0, np.zeros((2, 3)), np.zeros((3, 3)))
        log.append_many(0, 0.0, {"forces_eps_per_atom": [0.1, 0.2], "energy_eps": 0.0})
    return str(tmp_path / "molecule.h5")


def test_export_and_report_agree_on_units_and_numbers(broken_log, tmp_path, capsys):
    """``--quantity energy`` ranks and prints ε per atom (eV/atom), as the report does;
    the relative ε written per step is the report's."""
    from symmon.frontends.report import summarize

    out = tmp_path / "energy.extxyz"
    assert main(["export", broken_log, "-o", str(out), "--worst", "1", "--quantity",
                 "energy"]) == 0
    line = capsys.readouterr().out
    frame = ase.io.read(out)
    summary = summarize(broken_log).to_json()
    n_atoms = len(cu_ni())
    eps = frame.info["symmon_energy_eps_per_atom"]
    assert frame.info["symmon_ranked_by"] == "energy_eps_per_atom"
    assert eps == pytest.approx(frame.info["symmon_energy_eps"] / n_atoms, rel=1e-12)
    assert eps == pytest.approx(summary["eps"]["energy"]["abs"]["max"], rel=1e-12)
    assert f"{eps:.3g} eV/atom" in line
    worst = {r["step"]: r for r in summary["worst_steps"]}
    out = tmp_path / "forces.extxyz"
    assert main(["export", broken_log, "-o", str(out), "--worst", "3"]) == 0
    for atoms in ase.io.read(out, ":"):
        row = worst[atoms.info["symmon_step"]]
        assert atoms.info["symmon_forces_eps_rms"] == pytest.approx(row["forces_eps"],
                                                                    rel=1e-9)
        assert atoms.info["symmon_forces_rel_eps"] == pytest.approx(row["forces_rel_eps"],
                                                                    rel=1e-9)
