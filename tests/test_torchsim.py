"""TorchSim: the orbit adapter (one SimState of K copies) and the monitored TorchSim model.

Models: TorchSim's own Lennard-Jones (periodic images shifted with the transposed cell
in torch-sim 0.3.0, a real symmetry bug; fixed by :func:`fixed_shifts`) and TorchSim's
metatomic wrapper around symmon's bundled untrained PET (tests/torchsim_models.py).
"""

import json
import os
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

ts = pytest.importorskip("torch_sim")

from symmon.adapters.ase import ASEOrbitModel  # noqa: E402
from symmon.adapters.base import transformed_atoms  # noqa: E402
from symmon.adapters.torchsim import TorchSimCalculator, TorchSimOrbitModel  # noqa: E402
from symmon.frontends.calculator import SymmetryMonitor  # noqa: E402
from symmon.frontends.torchsim import TorchSimMonitor  # noqa: E402
from symmon.io.log import read_log  # noqa: E402
from symmon.io.run_index import read_index  # noqa: E402
from symmon.monitoring.policy import SymmetryViolationWarning  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from torchsim_models import (anisotropic_lennard_jones, field_on_krypton,  # noqa: E402
                             fixed_shifts, lennard_jones, nickel_copper_crystals, rare_gas_clusters,
                             rare_gas_crystals, tiny_pet)

#: two proper rotations and two improper elements
ELEMENTS = np.stack([np.eye(3),
                     [[0.36, 0.48, -0.8], [-0.8, 0.6, 0.0], [0.48, 0.64, 0.6]],
                     -np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
                     -np.eye(3)])
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
QUIET = pytest.mark.filterwarnings("ignore::symmon.monitoring.policy.SymmetryViolationWarning")


def _relative(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


# -- the adapter -------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["lj-float64", "pet-float32"])
@pytest.mark.parametrize("kind", ["periodic", "molecule"])
def test_batched_orbit_equals_per_copy_calls(model_name, kind):
    """The copies as one SimState (chunked) equal one TorchSim call per copy."""
    dtype = torch.float64 if model_name.endswith("64") else torch.float32
    model = lennard_jones(dtype) if model_name.startswith("lj") else tiny_pet(dtype)
    atoms = (rare_gas_crystals()[1] if model_name.startswith("lj")
             else nickel_copper_crystals()[2])
    if kind == "molecule":
        atoms.pbc, atoms.cell = False, np.zeros((3, 3))
    outputs = ["energy", "forces"] + (["stress"] if kind == "periodic" else [])
    batched = TorchSimOrbitModel(model, max_atoms=2 * len(atoms)).evaluate(atoms, ELEMENTS,
                                                                           outputs)
    per_copy = _per_copy(model, atoms, ELEMENTS, outputs)
    for name in outputs:
        assert batched[name].shape == per_copy[name].shape
        assert _relative(batched[name], per_copy[name]) < TOLERANCE[dtype], name
    # the copies differ (a check that could fail): the model is not invariant to them
    assert float(batched["energy"].std()) > 0 or model_name.startswith("lj")
    if kind == "periodic":  # and TorchSim's own ASE calculator path: its symmetric part
        voigt = ASEOrbitModel(TorchSimCalculator(model)).evaluate(atoms, ELEMENTS, ["stress"])
        symmetric = (batched["stress"] + batched["stress"].mT) / 2
        assert _relative(symmetric, voigt["stress"]) < TOLERANCE[dtype]


def _per_copy(model, atoms, matrices, outputs):
    """One TorchSim call per transformed copy, through TorchSim's own conversion."""
    values = {name: [] for name in outputs}
    for matrix in matrices:
        state = ts.io.atoms_to_state([transformed_atoms(atoms, matrix)], "cpu", model.dtype)
        result = model(state)
        for name in outputs:
            value = result[name].detach().to(torch.float64)
            values[name].append(value[0] if name != "forces" else value)
    return {name: torch.stack(v) for name, v in values.items()}


def test_adapter_refuses_mixed_periodicity_and_non_models():
    atoms = rare_gas_crystals()[0]
    atoms.pbc = [True, True, False]
    with pytest.raises(ValueError, match="periodic in all three directions or in none"):
        TorchSimOrbitModel(lennard_jones()).evaluate(atoms, ELEMENTS, ["energy"])
    with pytest.raises(TypeError, match="not a TorchSim ModelInterface"):
        TorchSimOrbitModel(object())


# -- the monitored model ---------------------------------------------------------------------
def _states(structures, n_calls, dtype, seed=0):
    """SimStates of ``structures`` moved a little from call to call."""
    rng = np.random.default_rng(seed)
    states = []
    for _ in range(n_calls):
        states.append(ts.io.atoms_to_state(structures, "cpu", dtype))
        structures = [a.copy() for a in structures]
        for a in structures:
            a.positions += 0.01 * rng.normal(size=a.positions.shape)
    return states, structures


COMPARED = ("energy_eps_per_atom", "forces_eps", "stress_eps", "energy_eps_per_atom_ci68",
            "forces_eps_ci95", "energy_rel_eps", "forces_rel_eps", "stress_rel_eps",
            "forces_eps_per_atom", "level", "calibration_step", "calibration_rotations")


@pytest.mark.slow
@QUIET
@pytest.mark.parametrize("model_name", ["pet", "anisotropic-lj"])
def test_per_system_eps_equals_symmetry_monitor(model_name, tmp_path):
    """A batch of 4 systems (sizes and species differ): each system's ε, intervals and
    grades equal those of SymmetryMonitor on the same structures, step by step (a
    calibration step, then random steps that use its law); the returned energies,
    forces and stresses are the wrapped model's."""
    if model_name == "pet":
        model, structures = tiny_pet(), nickel_copper_crystals()
        quantities = ("energy", "forces")  # TorchSim's metatomic stress is not symmetric;
    else:                                  # ASE's Voigt stress is
        model, structures = anisotropic_lennard_jones(), rare_gas_crystals()
        quantities = ("energy", "forces", "stress")
    with fixed_shifts():
        _compare_with_symmetry_monitor(model, structures, quantities, model_name, tmp_path)


def _compare_with_symmetry_monitor(model, structures, quantities, model_name, tmp_path):
    # (LJ: random steps, a calibration step (due from step 4) and random steps that use
    # its law; PET: Student-t intervals, 7 model calls per system and monitored step)
    states, _ = _states(structures, 4 if model_name == "pet" else 16, torch.float64)
    options = dict(every=3, random_rotations=3, seed=5,
                   calibration_rotations=0 if model_name == "pet" else 16)
    monitored = TorchSimMonitor(model, log=tmp_path / "run", **options)
    batched = []
    for state in states:
        output = monitored(state)
        plain = model(state)
        for name in ("energy", "forces", "stress"):
            assert _relative(output[name], plain[name]) < 1e-12, name
            assert output[name].dtype == plain[name].dtype
        batched.append({k: dict(v) for k, v in monitored.last_values.items()})
    monitored.close()
    for s in range(len(structures)):
        reference = SymmetryMonitor(TorchSimCalculator(model), **options)
        for call, state in enumerate(states):
            atoms = state.to_atoms()[s]
            atoms.calc = reference
            atoms.get_forces()
            if call % 3:
                continue
            ours = batched[call][s]
            theirs = reference.monitor.last_values
            for name in COMPARED:
                if name not in theirs or not any(q in name for q in quantities + ("level",
                                                                                  "calib")):
                    continue
                assert name in ours, name
                # (interval ends: quantile ratios, which amplify the copies' last bits)
                rtol = 1e-6 if "_ci" in name else 1e-7
                np.testing.assert_allclose(ours[name], theirs[name], rtol=rtol, atol=0,
                                           err_msg=f"call {call} system {s} {name}")
        assert reference.monitor.last_values["calibration_step"] == (
            -1 if model_name == "pet" else 12)
    index = read_index(tmp_path / "run")
    assert [system["n_atoms"] for system in index["systems"]] == [len(a) for a in structures]
    with read_log(index["systems"][2]["path"]) as log:
        assert log.steps("forces_eps").tolist() == list(range(0, len(states), 3))
        assert log.metadata["system_id"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("periodic", [False, True])
def test_exact_lennard_jones_is_ok_for_every_system(periodic, tmp_path):
    """TorchSim's Lennard-Jones (its periodic shifts fixed) through ts.integrate, every
    step monitored: every system, every step graded ok, relative ε at round-off."""
    structures = rare_gas_crystals() if periodic else rare_gas_clusters()
    with fixed_shifts(), warnings.catch_warnings():
        warnings.simplefilter("error", SymmetryViolationWarning)
        monitored = TorchSimMonitor(lennard_jones(stress=periodic), log=tmp_path / "run",
                                    every=1, full_every=4, l_max=2)
        ts.integrate(structures, monitored, integrator=ts.nvt_langevin, n_steps=5,
                     temperature=60.0, timestep=0.002)
        monitored.close()
    index = read_index(tmp_path / "run")
    assert len(index["systems"]) == 4
    for system in index["systems"]:
        with read_log(system["path"]) as log:
            steps, _, level = log.observable("level")
            assert steps.tolist() == list(range(6)) and (level == 0).all()  # init + 5
            assert log.observable("forces_eps")[2].max() < 1e-12
            assert log.observable("forces_rel_eps")[2].max() < 1e-12
            assert log.observable("full_orbit")[2].sum() == 2  # steps 0 and 4


@QUIET
def test_torchsim_lennard_jones_periodic_shift_bug_is_a_problem():
    """Unfixed, TorchSim 0.3.0's Lennard-Jones changes energy when a periodic cell is
    rotated (shifts applied with the transposed cell): graded problem, while the same
    molecules are ok."""
    monitored = TorchSimMonitor(lennard_jones(), every=1)
    monitored(ts.io.atoms_to_state(rare_gas_crystals()[:2], "cpu", torch.float64))
    assert all(values["level"] == 2 for values in monitored.last_values.values())
    assert all(values["energy_eps_per_atom"] > 1e-3 for values in monitored.last_values.values())


def test_systems_keep_their_ids_when_the_batch_changes(tmp_path):
    """Reordered, removed and added systems: each keeps its id (and its own log)."""
    structures = rare_gas_clusters()
    monitored = TorchSimMonitor(lennard_jones(stress=False), log=tmp_path / "run", every=1,
                                random_rotations=2, calibration_rotations=0)
    first = ts.io.atoms_to_state(structures, "cpu", torch.float64)
    monitored(first)
    moved = [a.copy() for a in structures]
    for a in moved:
        a.positions += 0.05
    extra = rare_gas_clusters()[2].copy()
    extra.positions *= 1.3  # same species as system 2, elsewhere
    monitored(ts.io.atoms_to_state([moved[2], moved[0], extra, moved[3]], "cpu",
                                   torch.float64))
    monitored(ts.io.atoms_to_state([moved[3], extra, moved[2]], "cpu", torch.float64))
    monitored.close()
    index = read_index(tmp_path / "run")
    systems = {s["id"]: s for s in index["systems"]}
    assert sorted(systems) == [0, 1, 2, 3, 4]
    assert systems[1]["left"] and systems[0]["left"] and not systems[2]["left"]
    assert [systems[i]["last_step"] for i in range(5)] == [1, 0, 2, 2, 2]
    for system_id, atoms in ((2, moved[2]), (3, moved[3]), (4, extra)):
        with read_log(systems[system_id]["path"]) as log:
            frames = log.frames()
            assert np.allclose(frames.positions[-1], atoms.positions)
            assert log.species.tolist() == atoms.numbers.tolist()


def test_autobatched_relaxation_keeps_identities(tmp_path):
    """ts.optimize with an in-flight autobatcher (systems converge and leave, others
    enter): every system's log holds its own structure from its first step."""
    from torch_sim.autobatching import InFlightAutoBatcher

    structures = rare_gas_clusters() + [a.copy() for a in rare_gas_clusters()[:2]]
    for i, atoms in enumerate(structures[4:]):
        atoms.positions *= 1.05 + 0.05 * i
    monitored = TorchSimMonitor(lennard_jones(stress=False), log=tmp_path / "run", every=2,
                                random_rotations=2, calibration_rotations=0)
    batcher = InFlightAutoBatcher(monitored, memory_scales_with="n_atoms",
                                  max_memory_scaler=16)
    ts.optimize(structures, monitored, optimizer=ts.optimizers.fire,
                autobatcher=batcher, max_steps=60, steps_between_swaps=3)
    monitored.close()
    index = read_index(tmp_path / "run")
    assert len(index["systems"]) == len(structures)
    matched = set()
    for system in index["systems"]:
        with read_log(system["path"]) as log:
            first = log.frames(stop=1).positions[0]
            hits = [i for i, atoms in enumerate(structures) if len(atoms) == len(first)
                    and np.allclose(atoms.positions, first, atol=1e-9)
                    and atoms.numbers.tolist() == log.species.tolist()]
            assert len(hits) == 1, system
            matched.add(hits[0])
    assert matched == set(range(len(structures)))
    assert any(system["first_step"] > 0 for system in index["systems"])  # entered later


@pytest.mark.slow
@QUIET
@pytest.mark.parametrize("mode", ["average", "random_frame"])
def test_average_and_random_frame_modes(mode):
    """An exact model: the O(3) average and the random frame's prediction equal the
    plain prediction; an unconstrained one: they differ from it."""
    state = ts.io.atoms_to_state(rare_gas_clusters()[:2], "cpu", torch.float64)
    exact = lennard_jones(stress=False)
    monitored = TorchSimMonitor(exact, mode=mode, every=2, calibration_rotations=0)
    for _ in range(2):
        output = monitored(state)
        plain = exact(state)
        assert _relative(output["forces"], plain["forces"]) < 1e-10
        assert _relative(output["energy"], plain["energy"]) < 1e-12
    pet_state = ts.io.atoms_to_state(nickel_copper_crystals()[:1], "cpu", torch.float64)
    pet = tiny_pet(stress=False)
    output = TorchSimMonitor(pet, mode=mode, every=2, calibration_rotations=0)(pet_state)
    assert _relative(output["forces"], pet(pet_state)["forces"]) > 1e-3


def test_bad_input_one_sentence(tmp_path):
    from ase.calculators.emt import EMT

    with pytest.raises(TypeError, match="wraps a TorchSim model.*SymmetryMonitor"):
        TorchSimMonitor(EMT())
    with pytest.raises(ValueError, match="mode='purified'"):
        TorchSimMonitor(lennard_jones(), mode="purified")
    with pytest.raises(TypeError, match="unknown option 'evry'"):
        TorchSimMonitor(lennard_jones(), evry=3)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        TorchSimMonitor(lennard_jones(), log=tmp_path / "file")
    TorchSimMonitor(lennard_jones(), log=tmp_path / "run").close()
    with pytest.raises(FileExistsError, match="log_mode='overwrite'"):
        TorchSimMonitor(lennard_jones(), log=tmp_path / "run")


@pytest.mark.slow
def test_sigkill_leaves_readable_logs(tmp_path):
    """A run killed with SIGKILL: the index and every system's flushed steps read back."""
    log = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
         os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__),
                                                           "_torchsim_child.py"), str(log), "4"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        line = child.stdout.readline()
        assert line.startswith("flushed 5"), child.stderr.read()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    index = read_index(log)
    assert len(index["systems"]) == 4
    for system in index["systems"]:
        with read_log(system["path"]) as reader:
            assert reader.steps("forces_eps").tolist()[:5] == [0, 1, 2, 3, 4]
    assert json.loads((log / "index.json").read_text())["format"] == "symmon-run"


# -- report and export of a run directory --------------------------------------------------
@pytest.mark.slow
@QUIET
def test_report_and_export_of_a_run_directory(tmp_path, capsys):
    """One verdict per system (the verdict of its own log's report), counts, worst
    first, the figure; export writes the worst systems' worst steps."""
    from ase.io import read

    from symmon.frontends.cli import main
    from symmon.frontends.report.summary import summarize

    monitored = TorchSimMonitor(field_on_krypton(), log=tmp_path / "run", every=2,
                                random_rotations=2)
    ts.integrate(rare_gas_clusters(), monitored, integrator=ts.nvt_langevin, n_steps=6,
                 temperature=30.0, timestep=0.002)
    monitored.close()
    assert main(["report", str(tmp_path / "run"), "--format", "json",
                 "-o", str(tmp_path / "run.json")]) == 0
    report = json.loads((tmp_path / "run.json").read_text())
    levels = {s["formula"]: s["level"] for s in report["systems"]}
    assert levels["Ar3"] == levels["Ne4"] == "ok"
    assert levels["Kr5"] != "ok" and levels["Ar3Kr3"] != "ok"
    assert report["counts"]["ok"] == 2 and report["level"] == levels["Kr5"]
    assert {s["formula"] for s in report["systems"][:2]} == {"Kr5", "Ar3Kr3"}  # worst first
    for system in report["systems"]:  # the verdict of the system's own report
        own = summarize(system["log"]).verdict
        assert (system["level"], system["headline"]) == (own.level, own.headline)
    assert main(["report", str(tmp_path / "run")]) == 0
    page = (tmp_path / "run" / "report.html").read_text()
    assert "data:image/png;base64" in page and "Systems, worst first" in page
    assert main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "worst.xyz"),
                 "--worst", "2"]) == 0
    frames = read(tmp_path / "worst.xyz", ":")
    assert [f.info["symmon_system_rank"] for f in frames] == [1, 2]
    assert {f.get_chemical_formula() for f in frames} == {"Kr5", "Ar3Kr3"}
    assert frames[0].info["symmon_forces_eps_rms"] >= frames[1].info["symmon_forces_eps_rms"]
    assert "worst system(s)" in capsys.readouterr().out


# -- the family in the registry: SymmetryMonitor, the array API -----------------------------
def test_registry_gives_torchsim_models_the_batched_adapter(tmp_path):
    """A TorchSim model (or its ASE calculator) passed to the registry, SymmetryMonitor
    or orbit_model_for: the batched TorchSim adapter; the monitor returns the model's own
    predictions and an exact model is graded ok."""
    from symmon.adapters import orbit_model_for

    model = lennard_jones(stress=False)
    adapter = orbit_model_for(model)
    assert isinstance(adapter, TorchSimOrbitModel) and adapter.family == "torchsim"
    assert isinstance(orbit_model_for(TorchSimCalculator(model)).calculator,
                      TorchSimCalculator)
    atoms = rare_gas_clusters()[2]
    values = adapter.evaluate(atoms, ELEMENTS, ["energy", "forces"])
    assert _relative(values["energy"], values["energy"][:1].expand(4)) < 1e-12
    monitor = SymmetryMonitor(model, log=tmp_path / "one.h5", every=1)
    atoms.calc = monitor
    forces = atoms.get_forces()
    plain = model(ts.io.atoms_to_state([atoms], "cpu", torch.float64))
    assert _relative(forces, plain["forces"]) < 1e-12
    assert monitor.monitor.last_values["level"] == 0
    assert "TorchSim" in monitor.metadata()["orbit_path"]
    monitor.close()


def test_static_runs_unchanged(tmp_path):
    """ts.static with the monitored model: the wrapped model's energies and forces, one
    monitored single point per system."""
    structures = rare_gas_clusters()
    model = lennard_jones(stress=False)
    monitored = TorchSimMonitor(model, log=tmp_path / "run", every=1, random_rotations=2)
    results = ts.static(structures, monitored)
    plain = ts.static(structures, model)
    monitored.close()
    for ours, theirs in zip(results, plain):
        assert _relative(ours["potential_energy"], theirs["potential_energy"]) < 1e-12
        assert _relative(ours["forces"], theirs["forces"]) < 1e-12
    assert [s["last_step"] for s in read_index(tmp_path / "run")["systems"]] == [0] * 4


def test_symmon_eval_takes_a_torchsim_model_from_an_entry_point(tmp_path):
    """``symmon eval module:function`` with a function returning a TorchSim model: the
    batched TorchSim adapter; exact Lennard-Jones molecules at round-off."""
    from ase.io import write

    from symmon.frontends.cli import main

    write(tmp_path / "clusters.xyz", rare_gas_clusters()[:2])
    assert main(["eval", "torchsim_models:lennard_jones", str(tmp_path / "clusters.xyz"),
                 "--degree", "4", "--format", "json", "-o", str(tmp_path / "eval.json"),
                 "--no-progress"]) == 0
    document = json.loads((tmp_path / "eval.json").read_text())
    text = json.dumps(document)
    assert "forces" in text
    eps = document["quantities"]["forces"]["eps"]
    assert 0 <= eps < 1e-10
