"""A new user's first hour (issue 28's smaller items): the demo run twice, what git
ignores, the README's promises, notes said once and flagged steps named, sentences that
fit the model's kind of forces."""

import fnmatch
import os
import re
import subprocess
import sys
import warnings

import pytest

from symmon.frontends.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as handle:
        return handle.read()


def test_demo_run_twice_says_how_to_overwrite_before_loading_torch(tmp_path):
    log = tmp_path / "demo.h5"
    log.write_bytes(b"an earlier demo")
    code = ("import sys\nfrom symmon.frontends.cli import main\n"
            f"code = main(['demo', '--log', {str(log)!r}])\n"
            "print(code, 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    assert done.stdout.split() == ["2", "False"], done.stderr
    assert "symmon demo --overwrite" in done.stderr and "log_mode" not in done.stderr
    assert log.read_bytes() == b"an earlier demo"


def test_git_ignores_the_demos_outputs():
    patterns = [line.strip() for line in _read(".gitignore").splitlines()
                if line.strip() and not line.startswith(("#", "!"))]
    for name in ("demo.html", "demo.h5"):
        assert any(fnmatch.fnmatch(name, p) for p in patterns), name


def test_readme_says_what_it_shows():
    readme = _read("README.md")
    assert re.search(r'last_monitored\["forces_eps"\]\)\s+# one number', readme)
    assert "any ASE calculator" in readme and "MACECalculator" in readme
    assert "base = ORBCalculator(" in readme
    pinned = re.search(r"torch==([\d.]+)", readme).group(1)
    allowed = re.search(r'"torch(>=[\d.]+,<[\d.]+)"', _read("pyproject.toml")).group(1)
    assert f"torch{allowed}" in readme          # the range a user may keep, as declared
    low, high = re.findall(r"[\d.]+", allowed)
    as_tuple = lambda v: tuple(int(x) for x in v.split(".")[:2])  # noqa: E731
    assert as_tuple(low) <= as_tuple(pinned) < as_tuple(high)


@pytest.fixture(scope="module")
def direct_force_log(tmp_path_factory):
    """Three monitored MD-free single points of the bundled tiny PET with direct forces."""
    from symmon import SymmetryMonitor
    from symmon.frontends.calculator import metatomic_calculator
    from symmon.frontends.demo import bundled_model_path, demo_structure

    path = str(tmp_path_factory.mktemp("direct") / "direct.h5")
    atoms = demo_structure(0)
    monitor = SymmetryMonitor(metatomic_calculator(bundled_model_path(),
                                                   non_conservative=True),
                              log=path, every=1, full_every=0, random_rotations=2,
                              on_violation="warn")
    atoms.calc = monitor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in range(3):
            atoms.positions[0, 0] += 0.01 * k
            atoms.get_forces()
    monitor.close()
    return path


def test_notes_once_flagged_steps_named_and_net_force_of_direct_forces(direct_force_log,
                                                                       capsys):
    assert main(["report", direct_force_log, "--format", "text"]) == 0
    text = capsys.readouterr().out
    assert text.count("Only 3 monitored step(s)") == 1
    assert "0 for an exactly symmetric conservative model" not in text
    assert "direct forces before the calculator removes their mean" in text
    flagged = re.search(r"The monitor flagged (\d+) step\(s\) as problem during the run: "
                        r"step ([\d, ]+)", text)
    if flagged:  # which steps, and the quantity that made each one a problem
        assert int(flagged.group(1)) == len(flagged.group(2).split(","))
        assert re.search(r"\((all by (energy|forces|stress)|(energy|forces|stress) at \d)",
                         text)
    assert "SymmetryMonitor(base, mode=\"average\")" in text or "VERDICT: OK" in text
    assert "symmon purify" in text or "VERDICT: OK" in text   # a metatomic model


def test_the_flagged_note_names_the_steps_and_the_quantities():
    from types import SimpleNamespace

    from symmon.frontends.report.criteria import Flagged, _notes

    run = SimpleNamespace(full_orbit_steps=1)
    one = _notes(run, Flagged(2, [3, 7], {"forces": [3, 7], "energy": []}))
    assert one == ["The monitor flagged 2 step(s) as problem during the run: step 3, 7 "
                   "(all by forces)."]
    many = _notes(run, Flagged(8, list(range(8)), {"forces": [0, 1], "stress": list(range(8))}))
    assert "step 0, 1, 2, 3, 4 and 3 more (forces at 0, 1; stress at 0, 1, 2, 3, 4 and 3 " \
           "more)." in many[0]
