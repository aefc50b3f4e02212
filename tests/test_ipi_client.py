"""The i-PI front-end without an i-PI server: options generated from MonitorOptions, a
server that dies or goes silent, Ctrl-C, bad addresses (issues 25 and 30)."""

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import fields

import numpy as np
import pytest

from symmon.frontends.cli import main
from symmon.frontends.ipi import DEFAULT_TIMEOUT, ServerGone, run_client
from symmon.frontends.ipi.options import (add_monitor_arguments, flag_of,
                                          options_from_arguments, options_from_keywords)
from symmon.frontends.ipi.pes import SymmonDriver
from symmon.io.log import read_log
from symmon.monitoring.options import MonitorOptions

DATA = os.path.join(os.path.dirname(__file__), "..", "symmon", "data")
STRUCTURES = os.path.join(DATA, "tiny_structures.xyz")
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
ENV = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           OMP_NUM_THREADS="1")

#: one valid text per MonitorOptions field (command line / PES) and the value it means
TEXTS = {"every": ("3", 3), "overhead": ("0.1", 0.1), "random_rotations": ("4", 4),
         "full_every": ("7", 7), "degree": ("10", 10), "l_max": ("5", 5),
         "mode": ("average", "average"), "average_degree": ("6", 6),
         "thresholds": ("forces=0.05", {"forces": 0.05}),
         "model_errors": ("energy=0.002", {"energy": 0.002}),
         "on_violation": ("raise", "raise"), "calibration_rotations": ("16", 16),
         "calibrate_every": ("9", 9), "seed": ("11", 11), "flush_every": ("2", 2),
         "log_mode": ("append", "append"), "trajectory": ("true", True),
         "metadata": ("run=a1", {"run": "a1"})}


def test_every_monitor_option_is_a_flag_and_a_pes_keyword():
    names = [f.name for f in fields(MonitorOptions)]
    assert sorted(TEXTS) == sorted(names)  # a new option needs a line here, and gets both
    parser = argparse.ArgumentParser()
    add_monitor_arguments(parser)
    argv = []
    for name, (text, _) in TEXTS.items():
        argv += [flag_of(name)] if name == "trajectory" else [flag_of(name), text]
    given = options_from_arguments(parser.parse_args(argv))
    assert given == {name: value for name, (_, value) in TEXTS.items()}
    keywords = {name: text for name, (text, _) in TEXTS.items()}
    assert options_from_keywords(keywords) == given and keywords == {}
    # the defaults are MonitorOptions' own: nothing given, nothing passed
    assert options_from_arguments(parser.parse_args([])) == {}
    # several items: repeated on the command line, joined by ';' in a PES keyword
    two = {"forces": 0.05, "energy": 0.1}
    assert options_from_arguments(parser.parse_args(
        ["--threshold", "forces=0.05", "--thresholds", "energy=0.1"]))["thresholds"] == two
    assert options_from_keywords({"thresholds": "forces=0.05;energy=0.1"})["thresholds"] == two
    assert options_from_keywords({"thresholds": 0.05, "every": 2}) == {"thresholds": 0.05,
                                                                       "every": 2}


def test_bad_option_text_is_one_sentence(capsys):
    parser = argparse.ArgumentParser()
    add_monitor_arguments(parser)
    with pytest.raises(ValueError, match="symmon PES parameter l_max: expected an integer"):
        options_from_keywords({"l_max": "four"})
    with pytest.raises(ValueError, match="QUANTITY=VALUE"):
        options_from_keywords({"model_errors": "0.1"})
    code = main(["ipi", "--model", "emt", "--structure", STRUCTURES, "--port", "1",
                 "--every", "often"])
    assert code == 2
    assert "--every" in capsys.readouterr().err


def test_pes_refuses_unknown_keywords_naming_the_known(tmp_path):
    with pytest.raises(ValueError, match="unknown symmon PES parameters \\['l_mx'\\].*l_max"):
        SymmonDriver(template=STRUCTURES, l_mx=3)


def test_ipi_front_end_does_not_go_through_the_ase_front_end():
    code = ("import sys, symmon.frontends.ipi, symmon.frontends.ipi.pes; "
            "print('symmon.frontends.calculator' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=ENV, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_timeout_default_is_stated_in_help(capsys):
    assert main(["ipi", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"default {DEFAULT_TIMEOUT:g} s" in text and DEFAULT_TIMEOUT == 600


def test_too_long_unix_name_is_refused_before_anything(tmp_path, capsys):
    code = main(["ipi", "--model", "emt", "--structure", STRUCTURES, "--unix", "x" * 120,
                 "--log", str(tmp_path / "run.h5")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--unix" in err and "too long" in err, err
    assert not (tmp_path / "run.h5").exists()


# ------------------------------------------------------------------ servers that misbehave


class DyingServer:
    """A unix-socket i-PI server that sends one structure, asks for its forces and
    closes the connection without reading them (as a crashed i-PI does); with
    ``hang=True`` it reads them and then says nothing (until closed)."""

    def __init__(self, hang=False):
        self.hang, self.served = hang, threading.Event()
        self.name = f"sm-{uuid.uuid4().hex[:8]}"
        self.path = f"/tmp/ipi_{self.name}"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        from ase.calculators.socketio import IPIProtocol

        from symmon.frontends.ipi import read_template

        atoms = read_template(STRUCTURES)
        self.listener.settimeout(60)
        connection, _ = self.listener.accept()
        protocol = IPIProtocol(connection)
        protocol.status()
        protocol.sendinit()
        protocol.status()
        cell = atoms.cell.array
        protocol.sendposdata(cell, np.linalg.inv(cell), atoms.positions)
        if self.hang:
            protocol.sendrecv_force()
            self.served.set()
            self.connection = connection
            return
        protocol.sendmsg("GETFORCE")
        connection.close()

    def close(self):
        self.listener.close()
        self.thread.join(timeout=10)
        if getattr(self, "connection", None) is not None:
            self.connection.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


@pytest.fixture()
def dying_server():
    server = DyingServer()
    try:
        yield server
    finally:
        server.close()


def test_server_that_dies_is_one_sentence_and_the_log_keeps_the_call(dying_server,
                                                                      tmp_path):
    log = tmp_path / "run.h5"
    with pytest.raises(ServerGone, match="the i-PI server closed the connection during a "
                       "force call") as error:
        run_client("emt", STRUCTURES, unix=dying_server.name, log=str(log), every=1,
                   connect_wait=10, timeout=30)
    assert "Errno" not in str(error.value)
    with read_log(log) as reader:
        assert reader.count("energy") == 1  # the call it computed is logged


def test_server_that_dies_on_the_command_line_exits_3(dying_server, capsys):
    code = main(["ipi", "--model", "emt", "--structure", STRUCTURES, "--unix",
                 dying_server.name, "--every", "1", "--connect-wait", "10"])
    assert code == 3
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("symmon ipi: connected to the i-PI server")
    assert "waits up to 600 s for each of its messages" in lines[0]
    assert lines[-1].startswith("symmon ipi: error: the i-PI server closed the connection")
    assert "Broken pipe" not in lines[-1]


def test_ctrl_c_closes_the_log_without_a_traceback(tmp_path):
    """SIGINT while `symmon ipi` waits for the server's next message: one line, exit
    130, the served call in a log that every reader opens."""
    server = DyingServer(hang=True)
    log = tmp_path / "run.h5"
    proc = subprocess.Popen(
        [sys.executable, "-m", "symmon.frontends.cli", "ipi", "--model", "emt",
         "--structure", STRUCTURES, "--unix", server.name, "--log", str(log), "--every",
         "1"], stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert server.served.wait(60), "the client served no call"
        line = proc.stderr.readline()  # the startup line: connected
        assert "connected to the i-PI server" in line, line
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.close()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines() == [f"symmon ipi: interrupted (Ctrl-C); the log is "
                                        f"closed ({log})"]
    with read_log(log) as reader:
        assert reader.count("energy") == 1
