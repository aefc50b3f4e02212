"""Bad inputs refused at construction or argument parsing with one sentence naming the
option and the fix, and a log whose directory vanishes mid-run (issue 30)."""

import os
import shutil

import ase.build
import numpy as np
import pytest
import torch
from ase import units
from ase.calculators.emt import EMT
from ase.md.verlet import VelocityVerlet

import _log_writer_child as child
from symmon.frontends.calculator import SymmetryMonitor
from symmon.frontends.cli import main
from symmon.io.log import LogWriteError, LogWriter, read_log

DATA = os.path.join(os.path.dirname(__file__), "..", "symmon", "data")
TINY_PET = os.path.join(DATA, "tiny_pet.pt")
TINY_CKPT = os.path.join(DATA, "tiny_pet.ckpt")


def error_line(capsys, command):
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"symmon {command}: error: "), lines[0]
    return lines[0]


def copper(repeat=1):
    atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True).repeat((repeat, 1, 1))
    atoms.rattle(0.05, seed=1)
    return atoms


def test_atom_deleted_between_runs_names_the_change(tmp_path):
    atoms = copper(2)
    atoms.calc = SymmetryMonitor(EMT(), log=str(tmp_path / "run.h5"), every=1)
    dynamics = VelocityVerlet(atoms, 1 * units.fs)
    atoms.calc.attach(dynamics)
    dynamics.run(1)
    del atoms[0]
    with pytest.raises(ValueError, match="the system changed since the log .* was created: "
                       "it holds 8 atoms \\(Cu8\\), this step has 7.*new SymmetryMonitor"):
        dynamics.run(1)
    atoms.calc.close()
    with read_log(tmp_path / "run.h5") as reader:  # what was logged stays readable
        assert reader.count("energy") >= 1


def test_monitor_class_instead_of_instance():
    with pytest.raises(ValueError, match="the class EMT, not a calculator: pass an instance, "
                       "e.g. EMT\\(\\)"):
        SymmetryMonitor(EMT)


@pytest.mark.parametrize("log", [123, b"run.h5", ""])
def test_log_that_is_no_path(log):
    with pytest.raises(ValueError, match="log (must be a file path|is an empty path).*"
                       "log='run.h5'"):
        SymmetryMonitor(EMT(), log=log)
    with pytest.raises(ValueError, match="log "):
        LogWriter(log, child.specs(), child.SPECIES)


def test_checkpoint_named_pt_is_never_told_to_overwrite_itself(tmp_path):
    from symmon.adapters.metatomic import metatomic_calculator

    checkpoint = tmp_path / "model.pt"
    shutil.copy(TINY_CKPT, checkpoint)
    with pytest.raises(ValueError) as error:
        metatomic_calculator(str(checkpoint))
    text = str(error.value)
    assert "checkpoint" in text and "mtt export" in text, text
    assert f"-o {checkpoint} " not in text and f"-o {checkpoint}`" not in text
    assert "model-exported.pt" in text


def test_torch_saved_dict_is_not_given_export_advice(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="holds a dict") as error:
        SymmetryMonitor(str(path))
    assert "mtt export" not in str(error.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_device_is_not_a_damaged_file():
    with pytest.raises(ValueError, match="requested device is not available on this "
                       "machine.*device='cpu'") as error:
        SymmetryMonitor(TINY_PET, device="cuda")
    assert "damaged" not in str(error.value)


def test_png_dir_naming_a_file(tmp_path, capsys):
    afile = tmp_path / "figures"
    afile.write_text("not a directory")
    assert main(["report", str(tmp_path / "missing.h5"), "--png-dir", str(afile)]) == 2
    line = error_line(capsys, "report")
    assert "--png-dir" in line and "is a file; give a directory" in line


@pytest.mark.parametrize("argv", [["--steps", "-5"], ["--steps", "0"],
                                  ["--full-every", "-1"]])
def test_demo_refuses_negative_counts(argv, tmp_path, capsys):
    assert main(["demo", "--log", str(tmp_path / "demo.h5"), *argv]) == 2
    line = error_line(capsys, "demo")
    assert argv[0] in line and "expected an integer >=" in line
    assert not (tmp_path / "demo.h5").exists()


# ------------------------------------------------------------------ vanished directory


def test_log_directory_deleted_while_running_stops_with_one_sentence(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    log = LogWriter(folder / "run.h5", child.specs(), child.SPECIES, flush_every=1000)
    for step in range(3):
        child.write_step(log, step)
    log.flush()
    shutil.rmtree(folder)
    child.write_step(log, 3)
    with pytest.raises(LogWriteError) as error:
        log.flush()
    text = str(error.value)
    assert "the log is gone while the run was writing it (its directory" in text
    assert "the 3 steps written so far went with it" in text and "\n" not in text
    with pytest.raises(LogWriteError):  # stopped for good
        child.write_step(log, 4)
    log.close()


def test_log_file_replaced_while_running_is_detected(tmp_path):
    path = tmp_path / "run.h5"
    log = LogWriter(path, child.specs(), child.SPECIES, flush_every=1000)
    child.write_step(log, 0)
    log.flush()
    os.replace(path, tmp_path / "moved.h5")
    path.write_bytes(b"someone else's file")
    child.write_step(log, 1)
    with pytest.raises(LogWriteError, match="replaced by another"):
        log.flush()
    assert path.read_bytes() == b"someone else's file"  # never written over
    with read_log(tmp_path / "moved.h5") as reader:
        np.testing.assert_array_equal(reader.steps("energy_eps"), [0])


def test_monitor_whose_log_directory_vanished_stops_at_its_next_flush(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    atoms = copper()
    calc = SymmetryMonitor(EMT(), log=str(folder / "run.h5"), every=1, flush_every=1,
                           calibration_rotations=0)
    atoms.calc = calc
    atoms.get_forces()
    shutil.rmtree(folder)
    atoms.positions[0, 0] += 0.01
    with pytest.raises(LogWriteError, match="the log is gone"):
        atoms.get_forces()
    calc.close()
