"""symmon layers / symmon checkpoints on a PET trained for 3 epochs inside the test.

The session fixture writes 24 small rattled Cu/Ni cells with EMT labels, trains a
d_pet=16 PET for 3 epochs with a checkpoint every epoch (``mtt train``, ~40 s on
2 cores) and runs the analyses at l_max = 2 (quadrature degree 4, 140 copies).
"""

import glob
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from ports import free_port
import torch

import ase  # noqa: E402
import metatrain  # noqa: E402,F401

from symmon.frontends.analyze.core import column_labels  # noqa: E402
from symmon.frontends.analyze.drivers import analyze_checkpoints, analyze_layers  # noqa: E402
from symmon.adapters.metatrain import MetatrainOrbitModel  # noqa: E402

pytestmark = pytest.mark.slow  # real components (trained models, ranks)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
L_MAX = 2
COLUMNS = column_labels(L_MAX)  # (0,+1) (0,-1) (1,+1) (1,-1) (2,+1) (2,-1) residual

OPTIONS = """
seed: 0
base_precision: 32
architecture:
  name: pet
  model:
    cutoff: 4.0
    cutoff_width: 0.5
    d_pet: 16
    d_head: 16
    d_node: 16
    d_feedforward: 32
    num_heads: 2
    num_attention_layers: 1
    num_gnn_layers: 2
  training:
    batch_size: 6
    num_epochs: 3
    learning_rate: 3.0e-3
    warmup_fraction: 0.01
    checkpoint_interval: 1
    num_workers: 0
    log_interval: 1
training_set:
  systems: {read_from: train.xyz, length_unit: angstrom}
  targets: &targets
    energy: {quantity: energy, key: emt_energy, unit: eV, forces: false, stress: false}
    non_conservative_force:
      quantity: force
      key: emt_forces
      unit: eV/A
      type: {cartesian: {rank: 1}}
      sample_kind: atom
validation_set:
  systems: {read_from: val.xyz, length_unit: angstrom}
  targets: *targets
test_set: 0.0
"""


def _structures(n, seed=0):
    from ase.build import bulk
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        if i % 2:
            atoms = atoms * (2, 1, 1)
        atoms.numbers = rng.choice([28, 29], size=len(atoms))
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.02 * rng.standard_normal((3, 3))),
                       scale_atoms=True)
        atoms.rattle(0.1, seed=i)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = None
        atoms.info["emt_energy"] = energy
        atoms.arrays["emt_forces"] = forces
        out.append(atoms)
    return out


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    import ase.io

    folder = tmp_path_factory.mktemp("pet_run")
    structures = _structures(24)
    ase.io.write(folder / "train.xyz", structures[:18])
    ase.io.write(folder / "val.xyz", structures[18:])
    ase.io.write(folder / "analyse.xyz", structures[18:20])  # 4 and 8 atoms
    (folder / "options.yaml").write_text(OPTIONS)
    env = dict(os.environ, OMP_NUM_THREADS="2")
    mtt = [sys.executable, "-c", "import sys; from metatrain.__main__ import main; "
           "sys.argv = ['mtt'] + sys.argv[1:]; sys.exit(main())"]
    result = subprocess.run(mtt + ["train", "options.yaml", "-o", "model.pt"], cwd=folder,
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    checkpoints = sorted(glob.glob(str(folder / "outputs" / "*" / "*" / "model_*.ckpt")))
    assert len(checkpoints) == 3, checkpoints
    return {"folder": folder, "structures": str(folder / "analyse.xyz"),
            "checkpoints": sorted(checkpoints, key=lambda p: int(p[:-5].rsplit("_", 1)[1]))}


@pytest.fixture(scope="session")
def layers(run):
    from symmon.frontends.cli import main

    output = str(run["folder"] / "layers.h5")
    code = main(["layers", run["checkpoints"][-1], run["structures"], "--l-max", str(L_MAX),
                 "-o", output, "--no-progress"])
    assert code == 0
    with h5py.File(output, "r") as f:
        from symmon.io.analysis import read_analysis

        return read_analysis(f), output


def _column(entry, label, statistic="aggregate"):
    return float(entry[statistic][COLUMNS.index(label)])


def test_default_modules_spectra_are_normalised(run, layers):
    result, output = layers
    model = MetatrainOrbitModel(run["checkpoints"][-1], device="cpu")
    defaults = model.default_modules()
    for name in ("backend.gnn_layers.0.edge_embedder", "backend.gnn_layers.1:node",
                 "backend.gnn_layers.1:edge", "backend.node_backbone.0",
                 "backend.edge_backbone.0", "backend.node_heads.energy.0",
                 "output:energy", "output:non_conservative_force"):
        assert name in defaults
    assert list(result["modules"]) == defaults
    assert result["columns"] == COLUMNS
    for name, entry in result["modules"].items():
        for statistic in ("aggregate", "mean", "median"):
            values = entry[statistic]
            assert np.all(np.isfinite(values)), (name, statistic)
        assert entry["aggregate"].sum() == pytest.approx(1.0, abs=1e-9), name
        assert entry["mean"].sum() == pytest.approx(1.0, abs=1e-9), name
        assert np.all(entry["aggregate"][:-1] > -1e-12)
        assert np.all(entry["q25"] <= entry["median"] + 1e-15)
        assert np.all(entry["median"] <= entry["q75"] + 1e-15)
        assert entry["per_structure"].shape == (2, len(COLUMNS))
    # sample counts: 4 + 8 atoms; edges > atoms; one sample per structure for energy
    modules = result["modules"]
    assert modules["backend.gnn_layers.1:node"]["n_samples"] == 12
    assert modules["backend.gnn_layers.1:node"]["sample_kind"] == "atom"
    assert modules["backend.gnn_layers.1:edge"]["sample_kind"] == "edge"
    assert modules["backend.gnn_layers.1:edge"]["n_samples"] > 12 * 10
    assert modules["output:energy"]["n_samples"] == 2
    assert os.path.exists(os.path.splitext(output)[0] + ".png")
    # labels were found through options_restart.yaml next to the checkpoint
    assert np.isfinite(result["outputs"]["energy"]["rmse"])
    assert np.isfinite(result["outputs"]["non_conservative_forces"]["rmse"])


def test_geometry_embedding_has_nothing_above_l1(layers):
    """PET's geometry embedding is ``Linear(4, d)`` of ``[r_ij, |r_ij|]`` in every GNN
    layer (``gnn_layers.i.edge_embedder``): an invariant plus a polar vector, so only
    (0,+1) and (1,+1). ``backend.edge_embedder`` is the neighbour-species embedding
    (the first input messages), which is invariant."""
    result, _ = layers
    for layer in (0, 1):
        entry = result["modules"][f"backend.gnn_layers.{layer}.edge_embedder"]
        assert _column(entry, "(0,+1)") + _column(entry, "(1,+1)") == pytest.approx(1, abs=1e-10)
        assert _column(entry, "(1,+1)") > 0.05
        for label in ("(0,-1)", "(1,-1)", "(2,+1)", "(2,-1)", "residual"):
            assert abs(_column(entry, label)) < 1e-10, (layer, label)
            assert abs(float(entry["q75"][COLUMNS.index(label)])) < 1e-10
    species = result["modules"]["backend.edge_embedder"]
    assert _column(species, "(0,+1)") == pytest.approx(1, abs=1e-10)


def test_backbone_invariant_and_outputs(run, layers):
    result, _ = layers
    modules = result["modules"]
    assert _column(modules["backend.node_backbone.0"], "(0,+1)") > 0.9
    assert _column(modules["output:energy"], "(0,+1)") > 0.99
    # after the first GNN layer, edge tokens carry l >= 1 content (unconstrained model)
    assert _column(modules["backend.gnn_layers.0:edge"], "(1,+1)") > 1e-4
    # the output metrics agree with symmon's orbit engine through the plain adapter
    from symmon.core.metrics import equivariance_error
    from symmon.core.grids import quadrature_grid

    model = MetatrainOrbitModel(run["checkpoints"][-1], device="cpu")
    atoms = ase.io.read(run["structures"], index=0)
    grid = quadrature_grid(2 * L_MAX)
    values = model.evaluate(atoms, grid.matrices, ["energy", "non_conservative_forces"])
    eps = equivariance_error(values["non_conservative_forces"], grid, "vector").eps
    stored = result["outputs"]["non_conservative_forces"]["eps"][0]
    assert eps == pytest.approx(stored, rel=1e-8)


def _trained_tiny_pet():
    candidates = [os.path.join(ROOT, "symmon", "data", "tiny_pet.ckpt")]
    candidates += sorted(glob.glob(os.path.join(ROOT, "examples", "tiny_pet", "runs", "normal",
                                                "outputs", "*", "*", "model_35.ckpt")))
    for path in candidates:
        if os.path.exists(path):
            return path
    raise FileNotFoundError("the bundled checkpoint symmon/data/tiny_pet.ckpt is missing")


def test_trained_force_output_is_a_vector():
    """A 3-epoch PET has not learnt its force head yet (mostly a constant vector,
    (0,+1)); the bundled 40-epoch tiny PET has: its forces are (1,+1)."""
    path = _trained_tiny_pet()
    structures = os.path.join(ROOT, "examples", "tiny_pet", "data", "test.xyz")
    if not os.path.exists(structures):
        structures = os.path.join(ROOT, "symmon", "data", "tiny_structures.xyz")
    import ase.io

    atoms = ase.io.read(structures, index=0)
    for weights in ("epoch", "best"):
        try:
            model = MetatrainOrbitModel(path, device="cpu", weights=weights)
            break
        except ValueError:
            continue
    from symmon.frontends.analyze.core import analyze_model

    analysis = analyze_model(model, [atoms], modules=["output:non_conservative_force*"],
                             l_max=1)
    spectrum = analysis.modules["output:non_conservative_force"].aggregate
    assert spectrum[column_labels(1).index("(1,+1)")] > 0.9


def test_epoch_weights_are_analysed(run, tmp_path):
    import metatomic.torch  # noqa: F401

    path = run["checkpoints"][-1]
    checkpoint = torch.load(path, weights_only=False)
    # make sure the epoch and best weights differ, whatever the training did
    key = next(k for k, v in checkpoint["model_state_dict"].items()
               if k.endswith("gnn_layers.0.edge_embedder.weight"))
    checkpoint["model_state_dict"][key] = checkpoint["model_state_dict"][key] + 0.5
    modified = tmp_path / "model_7.ckpt"
    torch.save(checkpoint, modified)
    expected = checkpoint["model_state_dict"][key].to(torch.float64)
    best = checkpoint["best_model_state_dict"][key].to(torch.float64)

    epoch_model = MetatrainOrbitModel(str(modified), device="cpu")
    best_model = MetatrainOrbitModel(str(modified), device="cpu", weights="best")
    assert epoch_model.info["epoch"] == 7
    assert not epoch_model.model.training
    params = dict(epoch_model.model.named_parameters())
    assert params[key].dtype == torch.float64
    assert torch.equal(params[key].detach(), expected)
    assert torch.equal(dict(best_model.model.named_parameters())[key].detach(), best)
    atoms = ase.io.read(run["structures"], index=0)
    matrices = np.eye(3)[None]
    e_epoch = epoch_model.evaluate(atoms, matrices, ["energy"])["energy"]
    e_best = best_model.evaluate(atoms, matrices, ["energy"])["energy"]
    assert not torch.allclose(e_epoch, e_best)
    # a real checkpoint whose best epoch is another one
    original = torch.load(path, weights_only=False)
    if original["best_epoch"] != original["epoch"]:
        real = MetatrainOrbitModel(path, device="cpu")
        real_best = MetatrainOrbitModel(path, device="cpu", weights="best")
        assert not torch.allclose(real.evaluate(atoms, matrices, ["energy"])["energy"],
                                  real_best.evaluate(atoms, matrices, ["energy"])["energy"])


def test_checkpoints_resume(run, tmp_path):
    output = str(tmp_path / "training.h5")
    kwargs = dict(modules=["gnn_layers.0.edge_embedder", "output:*"], l_max=1,
                  label_keys={"energy": "emt_energy", "forces": "emt_forces"},
                  progress=False, log=lambda *a: None)
    folder = str(run["folder"] / "outputs")
    first = analyze_checkpoints([folder], run["structures"], output, **kwargs)
    assert first["epochs"] == [0, 1, 2] and first["analysed"] == [0, 1, 2]
    assert first["skipped"] == 0
    assert all(os.path.exists(p) for p in first["figures"])
    assert first["spectra"]["output:energy"].shape == (3, len(column_labels(1)))
    assert np.all(np.isfinite(first["outputs"]["energy"]["rmse"]))
    second = analyze_checkpoints([folder], run["structures"], output, **kwargs)
    assert second["analysed"] == [] and second["skipped"] == 3
    np.testing.assert_array_equal(second["spectra"]["output:energy"],
                                  first["spectra"]["output:energy"])
    # an interrupted checkpoint (no 'complete' flag) is redone
    with h5py.File(output, "a") as f:
        del f["checkpoints/epoch_000001"].attrs["complete"]
    third = analyze_checkpoints([folder], run["structures"], output, **kwargs)
    assert third["analysed"] == [1] and third["epochs"] == [0, 1, 2]
    # other settings refuse to mix into the same file
    with pytest.raises(ValueError, match="other settings"):
        analyze_checkpoints([folder], run["structures"], output, **dict(kwargs, l_max=2))


def test_bad_module_pattern(run, capsys):
    model = MetatrainOrbitModel(run["checkpoints"][-1], device="cpu")
    with pytest.raises(ValueError, match="matches no module.*backend.gnn_layers.0"):
        model.resolve_modules(["backend.no_such_layer*"])
    from symmon.frontends.cli import main

    code = main(["layers", run["checkpoints"][-1], run["structures"], "--modules", "nope",
                 "-o", str(run["folder"] / "bad.h5"), "--no-progress"])
    assert code == 2
    assert "matches no module" in capsys.readouterr().err
    with pytest.raises(FileExistsError):
        analyze_layers(run["checkpoints"][-1], run["structures"],
                       str(run["folder"] / "layers.h5"))


# -- under torchrun (issue 19): 2 gloo ranks on CPU equal one process -------------------
def _torchrun_cli(args, cwd, wait=True):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-port", str(free_port()),
               "-m", "symmon.frontends.cli", *args, "--no-progress", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([ROOT] + sys.path))
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def _assert_same_analysis(a, b):
    assert list(a["modules"]) == list(b["modules"])
    for name in a["modules"]:
        for statistic in ("aggregate", "mean", "median"):
            np.testing.assert_allclose(b["modules"][name][statistic],
                                       a["modules"][name][statistic], rtol=1e-12, atol=0)
    for name in a["outputs"]:
        for key in ("eps_rms", "rmse"):
            np.testing.assert_allclose(b["outputs"][name][key], a["outputs"][name][key],
                                       rtol=1e-12, atol=0)


def test_layers_two_ranks_equal_one_process(run, layers, tmp_path):
    from symmon.io.analysis import read_analysis

    _torchrun_cli(["layers", run["checkpoints"][-1], run["structures"], "--l-max",
                   str(L_MAX), "-o", "two.h5"], tmp_path)
    with h5py.File(tmp_path / "two.h5", "r") as f:
        _assert_same_analysis(layers[0], read_analysis(f))
    assert not (tmp_path / "two.h5.parts").exists()


def test_checkpoints_two_ranks_killed_and_resumed_equal_one_process(run, tmp_path):
    import signal
    import time

    from symmon.frontends.analyze.drivers import read_training

    folder = str(run["folder"] / "outputs")
    args = ["checkpoints", folder, run["structures"], "--l-max", "1", "--modules",
            "gnn_layers.0.edge_embedder", "output:*", "--energy-key", "emt_energy"]
    from symmon.frontends.cli import main

    assert main(args + ["-o", str(tmp_path / "one.h5"), "--no-progress"]) == 0
    one = read_training(str(tmp_path / "one.h5"))
    launch = _torchrun_cli(args + ["-o", "two.h5"], tmp_path, wait=False)
    parts = tmp_path / "two.h5.parts"
    deadline = time.time() + 300
    while time.time() < deadline and not list(parts.glob("item-*.pkl")):
        time.sleep(0.05)
    os.killpg(launch.pid, signal.SIGKILL)
    launch.wait()
    assert list(parts.glob("item-*.pkl")), "the launch was killed before any item finished"
    _torchrun_cli(args + ["-o", "two.h5"], tmp_path)
    two = read_training(str(tmp_path / "two.h5"))
    assert two["epochs"] == one["epochs"] == [0, 1, 2]
    for epoch in one["epochs"]:
        _assert_same_analysis(one["per_epoch"][epoch], two["per_epoch"][epoch])
