"""Every bad input gets one clear sentence, never a traceback from inside (issue 17).

Each case goes through the public API (a ``ValueError`` naming the problem and the fix)
and, where a command takes it, through the command line: exit code 2 and exactly one
line on stderr, ``symmon <command>: error: ...``. A frozen i-PI server (a socket that
accepts and then says nothing) must end the client with a clear message and exit code
3 within its receive timeout instead of blocking forever.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import warnings
import zipfile

import ase.build
from ase.calculators.calculator import Calculator, all_changes
import ase.io
import numpy as np
import pytest
from ase.calculators.emt import EMT

from symmon.frontends.calculator import SymmetryMonitor, metatomic_calculator
from symmon.frontends.cli import main
from symmon.frontends.ipi import ServerSilent, read_template, run_client

DATA = os.path.join(os.path.dirname(__file__), "..", "symmon", "data")
TINY_PET = os.path.join(DATA, "tiny_pet.pt")
TINY_CKPT = os.path.join(DATA, "tiny_pet.ckpt")
STRUCTURES = os.path.join(DATA, "tiny_structures.xyz")


def one_error_line(capsys, command: str) -> str:
    """The single stderr line of a refused command (warnings are not expected either)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"symmon {command}: error: "), lines[0]
    return lines[0]


def copper(rattle: float = 0.05):
    atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(rattle, seed=1)
    return atoms


@pytest.fixture()
def random_model(tmp_path):
    path = tmp_path / "random.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return str(path)


@pytest.fixture()
def empty_file(tmp_path):
    path = tmp_path / "empty.xyz"
    path.write_bytes(b"")
    return str(path)


# ------------------------------------------------------------------ model files
def test_random_bytes_as_model_is_one_sentence(random_model):
    with pytest.raises(ValueError, match="not an exported model.*mtt export"):
        SymmetryMonitor(random_model)


@pytest.mark.parametrize("load", [SymmetryMonitor, metatomic_calculator])
def test_checkpoint_given_as_a_model_gets_the_export_command(load):
    with pytest.raises(ValueError, match=r"tiny_pet.ckpt' is a checkpoint, not an exported "
                       r"model .*`mtt export \S*tiny_pet.ckpt -o \S*tiny_pet.pt`"):
        load(TINY_CKPT)


def test_zip_that_is_no_torchscript_names_the_file(tmp_path):
    path = tmp_path / "not_a_model.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a model")
    with pytest.raises(ValueError, match="cannot load model file .*not_a_model.pt"):
        SymmetryMonitor(str(path))


@pytest.mark.parametrize("command", [
    ["ipi", "--structure", STRUCTURES, "--port", "31415", "--connect-wait", "0",
     "--model"],
    ["eval", STRUCTURES],
])
def test_random_bytes_as_model_on_the_command_line(command, random_model, capsys):
    argv = command + [random_model] if command[0] == "ipi" else \
        [command[0], random_model, *command[1:]]
    assert main(argv) == 2
    assert "random.pt' is not an exported model" in one_error_line(capsys, command[0])


# ------------------------------------------------------------------ i-PI address
@pytest.mark.parametrize("port", ["99999", "65536", "0", "-1"])
def test_out_of_range_port_is_refused_before_any_work(port, tmp_path, capsys):
    log = tmp_path / "run.h5"
    assert main(["ipi", "--model", "emt", "--structure", STRUCTURES, "--port", port,
                 "--log", str(log)]) == 2
    assert f"port {port} is not a TCP port" in one_error_line(capsys, "ipi")
    assert not log.exists()  # refused before the log was created


def test_port_and_timeout_are_checked_by_the_api():
    with pytest.raises(ValueError, match="not a TCP port"):
        run_client("emt", STRUCTURES, port=99999)
    with pytest.raises(ValueError, match="not a TCP port"):
        run_client("emt", STRUCTURES, port=True)
    with pytest.raises(ValueError, match="timeout must be a non-negative number"):
        run_client("emt", STRUCTURES, port=31415, timeout=-1)


@pytest.mark.parametrize("argv, words", [
    (["--port", "abc"], "argument --port: invalid int value"),
    (["--port", "31415", "--unix", "x"], "either --unix or --host/--port"),
    (["--port", "31415", "--threads", "-1"], "threads must be an integer >= 0"),
    (["--port", "31415", "--seed", "-1"], "seed must be an integer >= 0"),
    (["--port", "31415", "--threshold", "forces:0.05"], "expected QUANTITY=VALUE"),
    (["--port", "31415", "--threshold", "forces=0.05", "--log-mode", "append",
      "--overwrite"], "--overwrite contradicts --log-mode append"),
])
def test_bad_ipi_arguments_are_one_line(argv, words, capsys):
    assert main(["ipi", "--model", "emt", "--structure", STRUCTURES, "--connect-wait", "0",
                 *argv]) == 2
    assert words in one_error_line(capsys, "ipi")


# ------------------------------------------------------------------ structure files
def _empty_file_argv(command: str, path: str) -> list:
    return {"ipi": ["ipi", "--model", "emt", "--structure", path, "--port", "31415",
                    "--connect-wait", "0"],
            "eval": ["eval", TINY_PET, path],
            "purify": ["purify", TINY_PET, path, "--target", "non_conservative_forces"],
            "layers": ["layers", TINY_CKPT, path]}[command]


@pytest.mark.parametrize("command", ["ipi", "eval", "purify", "layers"])
def test_empty_structure_file_on_the_command_line(command, empty_file, tmp_path, capsys,
                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)  # any output a command might write stays here
    assert main(_empty_file_argv(command, empty_file)) == 2
    assert "empty.xyz' is empty" in one_error_line(capsys, command)


def test_unreadable_and_atomless_templates(tmp_path, empty_file):
    garbage = tmp_path / "garbage.xyz"
    garbage.write_text("this is\nnot a structure\n")
    with pytest.raises(ValueError, match="cannot read template structure .*garbage.xyz"):
        read_template(str(garbage))
    with pytest.raises(ValueError, match="template structure .*empty.xyz' is empty"):
        read_template(empty_file)
    atomless = tmp_path / "atomless.xyz"
    atomless.write_text("0\n\n")
    with pytest.raises(ValueError, match="atomless.xyz': the structure is empty"):
        read_template(str(atomless))


# ------------------------------------------------------------------ structures
def _energy(atoms, **options):
    atoms.calc = SymmetryMonitor(EMT(), **options)
    return atoms.get_potential_energy()


def test_zero_volume_cell_is_refused():
    atoms = copper()
    atoms.cell[:] = 0.0
    with pytest.raises(ValueError, match="cell has zero volume.*pbc=False"):
        _energy(atoms)


def test_degenerate_periodic_vectors_are_refused_but_a_slab_is_fine():
    slab = copper()
    slab.pbc = [True, True, False]
    slab.cell[2] = 0.0  # the non-periodic direction needs no vector
    assert np.isfinite(_energy(slab))
    slab.cell[1] = slab.cell[0]
    with pytest.raises(ValueError, match="degenerate periodic vectors"):
        _energy(slab)


def test_two_atoms_at_the_same_position_are_named():
    atoms = copper()
    atoms.positions[3] = atoms.positions[1]
    with pytest.raises(ValueError, match="atoms 1 and 3 are at the same position"):
        _energy(atoms)


def test_an_atom_on_a_periodic_image_of_another_is_named():
    atoms = copper(rattle=0.0)
    atoms.positions[2] = atoms.positions[0] + atoms.cell[1]  # the same site, one cell up
    with pytest.raises(ValueError, match="atoms 0 and 2 are at the same position"):
        _energy(atoms)


class _Flat(Calculator):
    """Finite (zero) energy and forces whatever the structure, coincident atoms included."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": 0.0, "free_energy": 0.0,
                        "forces": np.zeros((len(self.atoms), 3))}


def _meet_mid_run(calculator, monitored_at: int, mode: str = "random_frame"):
    """Steps 0 (monitored) and 1, then atoms 1 and 3 meet at step 2; the error is raised
    by the step ``monitored_at``."""
    atoms = copper()
    atoms.pbc = calculator.__class__ is EMT
    atoms.calc = SymmetryMonitor(calculator, every=3, mode=mode)
    for _ in range(2):
        atoms.positions[0] += 0.01
        atoms.get_potential_energy()
    atoms.positions[3] = atoms.positions[1]
    for step in range(2, monitored_at):  # no error before
        atoms.get_potential_energy()
        atoms.positions[0] += 0.01
    with pytest.raises(ValueError, match="atoms 1 and 3 are at the same position"):
        atoms.get_potential_energy()


@pytest.mark.parametrize("mode", ["random_frame", "monitor"])
def test_atoms_that_meet_during_a_run_are_named_when_the_model_returns_nan(mode):
    """Coincident atoms are searched on the first call and on monitored steps (not on
    every step); a model's NaN at the step they meet (EMT: finite energy, NaN forces,
    seen in the random frame's copy or the free net force) names them at once ..."""
    _meet_mid_run(EMT(), monitored_at=2, mode=mode)


def test_atoms_that_meet_under_a_finite_model_are_named_on_the_next_monitored_step():
    """... and a model that stays finite has them named on the next monitored step."""
    _meet_mid_run(_Flat(), monitored_at=3)


def test_a_nan_stress_is_named_by_the_next_orbit_step():
    """Unmonitored steps read only the energy and the free net force (a sum costs 0.5 %
    of such a step); a stress that turns NaN with a finite energy is named at the next
    monitored step."""
    class LateNanStress(EMT):
        broken = False

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            if self.broken:
                self.results["stress"] = self.results["stress"].copy()
                self.results["stress"][0] = np.nan

    base = LateNanStress()
    atoms = copper()
    atoms.calc = SymmetryMonitor(base, every=5)
    atoms.get_stress()  # step 0, monitored, finite
    base.broken = True
    for _ in range(4):  # steps 1-4
        atoms.positions[0] += 0.01
        atoms.get_stress()
    atoms.positions[0] += 0.01
    with pytest.raises(ValueError, match="NaN or infinite values at step 5"):
        atoms.get_stress()


def test_a_models_nan_on_valid_atoms_is_one_sentence():
    class Exploding(_Flat):
        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            self.results["forces"][0, 0] = np.nan

    atoms = copper()
    atoms.calc = SymmetryMonitor(Exploding(), every=1)
    with pytest.raises(ValueError, match="the model returned NaN or infinite values at "
                                         "step 0 .atoms and cell are valid."):
        atoms.get_forces()


def test_close_but_distinct_atoms_are_accepted():
    molecule = ase.build.molecule("H2")
    molecule.positions[1] = molecule.positions[0] + [0.01, 0.0, 0.0]  # 0.01 angstrom
    energy = _energy(molecule)
    assert np.isfinite(energy)


# ------------------------------------------------------------------ monitor options
@pytest.mark.parametrize("options, words", [
    ({"thresholds": "0.05"}, "thresholds must be a positive number or a dict .* got str"),
    ({"thresholds": True}, "thresholds must be a positive number .* got bool True"),
    ({"thresholds": float("inf")}, "thresholds must be a positive number"),
    ({"thresholds": {"forces": True}}, "thresholds for forces must be a positive finite"),
    ({"model_errors": {"forces": float("nan")}}, "model_errors for forces must be"),
    ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"every": 2.0}, "every must be an integer >= 1, got 2.0"),
    ({"every": True}, "every must be an integer >= 1, got True"),
    ({"flush_every": "3"}, "flush_every must be an integer >= 1, got '3'"),
    ({"random_rotations": 1}, "random_rotations must be an integer >= 2"),
    ({"degree": 4, "l_max": 4}, "degree must be an integer >= 8"),
    ({"log_mode": "replace", "log": "never-written.h5"}, "log_mode must be one of"),
    ({"metadata": "run 1"}, "metadata must be a dict"),
    ({"mode": "averaged"}, "mode must be one of"),
])
def test_bad_monitor_options_name_the_option(options, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=words):
        SymmetryMonitor(EMT(), **options)
    assert not os.listdir(tmp_path)  # nothing written


@pytest.mark.parametrize("typed, meant", [("evry", "every"), ("fullevery", "full_every"),
                                          ("lgo", "log")])
def test_misspelt_option_names_the_closest(typed, meant):
    for error in (TypeError, ValueError):  # Python's own kind, and every bad option's
        with pytest.raises(error, match=rf"^unknown option '{typed}' \(did you mean "
                           rf"'{meant}'\?\)$"):
            SymmetryMonitor(EMT(), **{typed: 5})


def test_default_options_give_no_cost_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SymmetryMonitor(EMT(), full_every=10)


def test_expensive_full_steps_warn_with_the_number_of_evaluations():
    from scipy.integrate import lebedev_rule

    # l_max=12 -> degree 24; Lebedev orders 25 and 27 have negative weights, so the
    # sphere rule is order 29; 25 in-plane angles; proper and improper halves
    n_elements = 2 * lebedev_rule(29)[0].shape[1] * 25
    with pytest.warns(UserWarning, match=f"{n_elements} model evaluations each"):
        SymmetryMonitor(EMT(), l_max=12, full_every=100)


def test_absurd_full_steps_are_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"l_max=30 needs degree >= 60\): \d+ model "
                       "evaluations each, more than the 100000 symmon allows"):
        SymmetryMonitor(EMT(), l_max=30, full_every=1)
    with pytest.raises(ValueError, match="average_degree.*exceeds the largest Lebedev"):
        SymmetryMonitor(EMT(), mode="average", average_degree=200)


# ------------------------------------------------------------------ report
def test_report_of_the_same_log_twice_is_refused(tmp_path, capsys):
    log = tmp_path / "a.h5"
    with SymmetryMonitor(EMT(), log=str(log), every=1) as monitor:
        atoms = copper()
        atoms.calc = monitor
        atoms.get_potential_energy()
    assert main(["report", str(log), str(log), "-o", str(tmp_path / "report")]) == 2
    assert "given twice" in one_error_line(capsys, "report")
    assert not (tmp_path / "report").exists()


def _emt_log(path, atoms, **options) -> str:
    with SymmetryMonitor(EMT(), log=str(path), every=1, random_rotations=2,
                         **options) as monitor:
        atoms.calc = monitor
        atoms.get_potential_energy()
    return str(path)


@pytest.mark.parametrize("content", [b"\x89HDF\r\n\x1a\n\x00\xff", b"{}", b"[1, 2]"])
def test_model_error_file_that_is_no_eval_output(content, tmp_path, capsys):
    log = _emt_log(tmp_path / "a.h5", copper())
    errors = tmp_path / "errors.h5"
    errors.write_bytes(content)
    assert main(["report", log, "--model-error", str(errors), "--format", "json",
                 "-o", str(tmp_path / "report.json")]) == 2
    line = one_error_line(capsys, "report")
    assert "errors.h5" in line and "symmon eval" in line
    assert not (tmp_path / "report.json").exists()


def test_two_runs_without_compare_are_one_short_sentence(tmp_path, capsys):
    """Different settings and observables (spectra of full steps): not shards of one run."""
    a = _emt_log(tmp_path / "a.h5", copper())
    b = _emt_log(tmp_path / "b.h5", copper(), full_every=1, l_max=1, seed=3)
    assert main(["report", a, b, "--format", "json", "-o", str(tmp_path / "r.json")]) == 2
    line = one_error_line(capsys, "report")
    assert "are not shards of one run (different settings, observables)" in line
    assert f"--compare {a} {b}" in line
    assert len(line) < 150 + 2 * (len(a) + len(b))  # each path twice, ~130 characters else


def test_runs_of_two_models_with_one_layout_are_not_merged_as_shards(tmp_path, capsys):
    """Same system and settings, another calculator: once merged silently as one run."""
    from ase.calculators.lj import LennardJones

    a = _emt_log(tmp_path / "a.h5", copper())
    with SymmetryMonitor(LennardJones(), log=str(tmp_path / "b.h5"), every=1,
                         random_rotations=2) as monitor:
        atoms = copper()
        atoms.calc = monitor
        atoms.get_potential_energy()
    b = str(tmp_path / "b.h5")
    assert main(["report", a, b, "--format", "json", "-o", str(tmp_path / "r.json")]) == 2
    line = one_error_line(capsys, "report")
    assert "are not shards of one run (different model" in line and "--compare" in line


def test_append_of_another_run_is_one_short_sentence(tmp_path):
    """Another system (species, pbc), seed and observables: at most 3 named, values cut."""
    log = _emt_log(tmp_path / "run.h5", copper())
    before = (tmp_path / "run.h5").read_bytes()
    other = ase.build.molecule("CH3OH")
    with pytest.raises(ValueError) as refused:
        _emt_log(log, other, log_mode="append", seed=4, full_every=1, l_max=1)
    message = str(refused.value)
    assert re.match(re.escape(f"{log}: cannot append, the log holds another run (species "
                              "differ; pbc (True, True, True) vs (False, False, False); "
                              "metadata seed 0 vs 4; and ") + r"\d+ more\)", message)
    assert message.endswith("log this run to a new path, or pass log_mode='overwrite' to "
                            "replace the log")
    assert len(message) < 250 + len(log)
    assert (tmp_path / "run.h5").read_bytes() == before


def test_differences_name_the_entry_of_a_settings_text_and_cut_values():
    from symmon.io.mismatch import VALUE_WIDTH, metadata_differences

    stored = {"base_parameters": '{"model": "a.pt", "skin": 2.0}', "model_sha256": "a" * 64}
    new = {"base_parameters": '{"model": "b.pt", "skin": 2.0}', "model_sha256": "b" * 64}
    found = metadata_differences(stored, new, ("model_sha256", "base_parameters"))
    assert found[1] == "base_parameters.model 'a.pt' vs 'b.pt'"
    cut = "'" + "a" * (VALUE_WIDTH - 2) + "…"
    assert found[0] == f"model_sha256 {cut} vs {cut.replace('a', 'b')}"


# ------------------------------------------------------------------ frozen i-PI server
class SilentServer:
    """A TCP server on a free local port that accepts one client and says nothing."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        self.listener.settimeout(30)
        try:
            self.connection, _ = self.listener.accept()
            self.accepted.set()
        except OSError:  # closed before a client came
            pass

    def close(self):
        self.listener.close()
        if self.accepted.is_set():
            self.connection.close()
        self.thread.join(timeout=5)


@pytest.fixture()
def silent_server():
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()


def test_client_gives_up_on_a_silent_server(silent_server, tmp_path):
    start = time.monotonic()
    with pytest.raises(ServerSilent, match="no message from the i-PI server for 1.5 s; "
                       "is it still running"):
        run_client("emt", STRUCTURES, port=silent_server.port, timeout=1.5,
                   connect_wait=5, log=str(tmp_path / "run.h5"))
    elapsed = time.monotonic() - start
    assert silent_server.accepted.is_set()  # it did connect, then waited
    assert 1.5 <= elapsed < 15


def test_silent_server_on_the_command_line_exits_3(silent_server, capsys):
    code = main(["ipi", "--model", "emt", "--structure", STRUCTURES, "--port",
                 str(silent_server.port), "--timeout", "1", "--connect-wait", "5"])
    assert code == 3
    started, error = capsys.readouterr().err.strip().splitlines()
    assert started.startswith("symmon ipi: connected") and "waits up to 1 s" in started
    assert error.startswith("symmon ipi: error: no message from the i-PI server for 1 s")


def test_two_parameter_sets_of_one_ase_calculator_are_not_shards(tmp_path, capsys):
    """Calculators without a model file (SHA None) differ by their parameters."""
    from ase.calculators.lj import LennardJones

    paths = []
    for name, sigma in (("a", 2.3), ("b", 3.0)):
        with SymmetryMonitor(LennardJones(sigma=sigma), log=str(tmp_path / f"{name}.h5"),
                             every=1, random_rotations=2) as monitor:
            atoms = copper()
            atoms.calc = monitor
            atoms.get_potential_energy()
        paths.append(str(tmp_path / f"{name}.h5"))
    assert main(["report", *paths, "--format", "json", "-o", str(tmp_path / "r.json")]) == 2
    assert "are not shards of one run (different model" in one_error_line(capsys, "report")
