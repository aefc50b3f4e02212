"""``symmon layers`` and ``symmon checkpoints``: analyses written to HDF5 + figures."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...adapters.labels import read_structures
from ..ranks import PartialResults, Ranks, evaluate_items, rank_device
from .core import analysis_grid, analyze_structure, combine, torch_device
from ...io.analysis import (complete_epochs, prepare_training_file, read_epochs,
                            read_layers_file, write_epoch, write_layers_file)
from .plots import figures_dir, plot_layers, plot_module_epochs, plot_output_metrics, \
    safe_filename

__all__ = ["analyze_layers", "analyze_checkpoints", "find_checkpoints", "label_keys_from_options",
           "read_training"]

_CKPT = re.compile(r"model_(\d+)\.ckpt$")


# --------------------------------------------------------------------------------------
# label keys from metatrain options
# --------------------------------------------------------------------------------------
def label_keys_from_options(path: str) -> Dict[str, str]:
    """``{"energy": KEY, "forces": KEY, "stress": KEY}`` from a metatrain options file's
    ``training_set`` targets (the key of each target, default its name)."""
    import yaml

    with open(path) as f:
        options = yaml.safe_load(f) or {}
    training = options.get("training_set", {})
    if isinstance(training, list):
        training = training[0] if training else {}
    targets = training.get("targets", {}) if isinstance(training, dict) else {}
    keys: Dict[str, str] = {}
    for name, target in (targets or {}).items():
        target = target if isinstance(target, dict) else {}
        key = target.get("key", name)
        quantity = str(target.get("quantity", "")).lower()
        if name == "energy" or quantity == "energy":
            keys.setdefault("energy", key)
        elif "force" in name:
            keys.setdefault("forces", key)
        elif "stress" in name or quantity in ("pressure", "stress"):
            keys.setdefault("stress", key)
        else:  # any other target: labelled by its own name
            keys.setdefault(name, key)
    return keys


def _find_options(paths: Sequence[str]) -> Optional[str]:
    for path in paths:
        folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        for _ in range(4):
            for name in ("options_restart.yaml", "options.yaml"):
                candidate = os.path.join(folder, name)
                if os.path.exists(candidate):
                    return candidate
            folder = os.path.dirname(folder)
    return None


def resolve_label_keys(energy_key, forces_key, stress_key, options, search) -> Dict[str, str]:
    keys: Dict[str, str] = {}
    options = options or _find_options(search)
    if options:
        try:
            keys.update(label_keys_from_options(options))
        except Exception as error:  # noqa: BLE001
            warnings.warn(f"cannot read label keys from {options}: {error}", stacklevel=2)
    for what, value in (("energy", energy_key), ("forces", forces_key), ("stress", stress_key)):
        if value is not None:
            keys[what] = value
    return {k: v for k, v in keys.items() if v}


# --------------------------------------------------------------------------------------
# symmon layers
# --------------------------------------------------------------------------------------
def analyze_layers(model: str, structures: str, output: str = "layers.h5", *,
                   modules=None, l_max: int = 4, degree=None, weights: str = "epoch",
                   device=None, chunk_size: Optional[int] = None, max_memory_gb: float = 2.0,
                   index: str = ":", label_keys=None, overwrite: bool = False,
                   figure: bool = True, progress: bool = True) -> Dict:
    """Spectra of one checkpoint's modules; writes ``output`` and ``<stem>.png``."""
    from ...adapters.registry import orbit_model_for

    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"{output!r} exists; pass --overwrite to replace it")
    atoms_list = read_structures(structures, index)
    with Ranks.from_environment(rank_device(device)) as ranks:
        orbit_model = orbit_model_for(model, device=torch_device(ranks.device if
                                      ranks.distributed else device),
                                      chunk_size=chunk_size, weights=weights,
                                      needs=("layer_hooks",))
        grid, names = analysis_grid(l_max, degree), orbit_model.resolve_modules(modules)
        parts = PartialResults(output, ranks, _settings(model, structures, index, l_max,
                                                        grid, names, weights, label_keys))
        values = evaluate_items(
            range(len(atoms_list)), lambda i: analyze_structure(
                orbit_model, atoms_list[i], names, grid, l_max, label_keys, max_memory_gb),
            parts, progress=progress, desc="symmon", unit="structure")
        if ranks.is_main:
            analysis = combine(list(values.values()), l_max, grid)
            epoch = orbit_model.info.get("epoch")
            write_layers_file(output, analysis, model=os.path.abspath(model),
                              structures=os.path.abspath(structures), weights=weights,
                              epoch=-1 if epoch is None else int(epoch),
                              label_keys=json.dumps(label_keys or {}))
        parts.clear()
    if not ranks.is_main:
        return {}
    result = read_layers_file(output)
    if figure:
        result["figure"] = plot_layers(
            result, os.path.splitext(output)[0] + ".png",
            title=f"{os.path.basename(model)} (epoch {orbit_model.info.get('epoch')}, "
            f"{weights} weights), {len(atoms_list)} structures")
    return result


def _settings(model, structures, index, l_max, grid, names, weights, label_keys) -> dict:
    """What must match for a restarted analysis to reuse partial results."""
    from ...io.files import file_sha256

    return {"model": file_sha256(model), "structures": file_sha256(structures), "index": index,
            "l_max": int(l_max), "degree": int(grid.degree), "modules": list(names),
            "weights": weights, "label_keys": label_keys or {}}


# --------------------------------------------------------------------------------------
# symmon checkpoints
# --------------------------------------------------------------------------------------
def find_checkpoints(inputs: Sequence[str]) -> List[Tuple[int, str]]:
    """``(epoch, path)`` of every ``model_<epoch>.ckpt`` in run directories / files."""
    found: Dict[int, str] = {}
    for item in inputs:
        if os.path.isdir(item):
            paths = [p for p in glob.glob(os.path.join(item, "**", "*.ckpt"), recursive=True)
                     if _CKPT.search(os.path.basename(p))]
            if not paths:
                raise FileNotFoundError(f"no model_<epoch>.ckpt checkpoints under {item!r} "
                                        "(train with checkpoint_interval: 1)")
        elif os.path.isfile(item):
            paths = [item]
        else:
            raise FileNotFoundError(f"{item!r} is neither a checkpoint nor a run directory")
        for path in paths:
            match = _CKPT.search(os.path.basename(path))
            epoch = int(match.group(1)) if match else _epoch_inside(path)
            if epoch in found and found[epoch] != path:
                newer = max(found[epoch], path, key=os.path.getmtime)
                warnings.warn(f"two checkpoints for epoch {epoch}: {found[epoch]} and {path}; "
                              f"using the newer {newer}", stacklevel=2)
                path = newer
            found[epoch] = path
    return sorted(found.items())


def _epoch_inside(path: str) -> int:
    import metatomic.torch  # noqa: F401
    import torch

    checkpoint = torch.load(path, weights_only=False, map_location="cpu")
    epoch = checkpoint.get("epoch") if isinstance(checkpoint, dict) else None
    if epoch is None:
        raise ValueError(f"cannot tell the epoch of {path!r} (not model_<epoch>.ckpt and no "
                         "'epoch' entry)")
    return int(epoch)


def analyze_checkpoints(inputs: Sequence[str], structures: str, output: str = "training.h5",
                        *, modules=None, l_max: int = 4, degree=None, weights: str = "epoch",
                        device=None, chunk_size: Optional[int] = None, max_memory_gb: float = 2.0,
                        index: str = ":", label_keys=None, every: int = 1,
                        overwrite: bool = False, figures: bool = True,
                        progress: bool = True, log=print) -> Dict:
    """Layer spectra, eps and RMSE of every checkpoint; resumable (see
    :mod:`symmon.io.analysis`)."""

    checkpoints = find_checkpoints(inputs)
    if every > 1:
        checkpoints = [c for i, c in enumerate(checkpoints)
                       if i % every == 0 or i == len(checkpoints) - 1]
    atoms_list = read_structures(structures, index)
    settings = json.dumps({"l_max": int(l_max), "degree": int(degree or 2 * l_max),
                           "modules": list(modules or []), "weights": weights,
                           "structures": os.path.abspath(structures), "index": index,
                           "label_keys": label_keys or {}}, sort_keys=True)
    with Ranks.from_environment(rank_device(device)) as ranks:
        if ranks.is_main:
            _prepare_training_file(output, settings, overwrite)
        ranks.barrier()
        done = complete_epochs(output)
        todo = [(e, p) for e, p in checkpoints if e not in done]
        skipped = len(checkpoints) - len(todo)
        if skipped and ranks.is_main:
            log(f"symmon checkpoints: {skipped} checkpoint(s) already in {output}, skipped")
        _analyze_epochs(todo, atoms_list, output, ranks, modules=modules, l_max=l_max,
                        degree=degree, weights=weights, device=device,
                        chunk_size=chunk_size, max_memory_gb=max_memory_gb,
                        label_keys=label_keys, progress=progress,
                        settings=json.loads(settings))
    if not ranks.is_main:
        return {}
    result = read_training(output)
    result["skipped"] = skipped
    result["analysed"] = [e for e, _ in todo]
    if figures and result["epochs"]:
        result["figures"] = write_training_figures(result, output)
    return result


def _prepare_training_file(output: str, settings: str, overwrite: bool) -> None:
    """Create (or check and clean) the checkpoints file: incomplete epochs are redone."""
    if overwrite and os.path.exists(output):
        os.remove(output)
        shutil.rmtree(output + ".parts", ignore_errors=True)
    prepare_training_file(output, settings)


def _analyze_epochs(todo, atoms_list, output, ranks, *, modules, l_max, degree, weights,
                    device, chunk_size, max_memory_gb, label_keys, progress, settings):
    """Every (checkpoint, structure) of ``todo``, each rank its share (kept in
    ``output.parts/`` as it finishes); rank 0 writes each epoch's group from the records
    of all ranks, in structure order."""
    from ...adapters.registry import orbit_model_for

    grid = analysis_grid(l_max, degree)
    items = [(epoch, i) for epoch, _ in todo for i in range(len(atoms_list))]
    paths = dict(todo)
    parts = PartialResults(output, ranks, settings)
    bar = _bar(len(items), "checkpoints x structures", progress and ranks.is_main)
    loaded = (None, None, None)
    for epoch, i in parts.mine(items):
        if loaded[0] != epoch:  # items are epoch-major: each rank loads each model once
            model = orbit_model_for(paths[epoch], device=torch_device(
                ranks.device if ranks.distributed else device), chunk_size=chunk_size,
                weights=weights, needs=("layer_hooks",))
            loaded = (epoch, model, model.resolve_modules(modules))
        parts.add((epoch, i), analyze_structure(loaded[1], atoms_list[i], loaded[2], grid,
                                                l_max, label_keys, max_memory_gb))
        bar.update(ranks.world_size)
    bar.close()
    ranks.barrier()
    if ranks.is_main:
        for epoch, path in todo:
            analysis = combine([parts.load((epoch, i)) for i in range(len(atoms_list))],
                               l_max, grid)
            write_epoch(output, epoch, analysis, path=os.path.abspath(path), weights=weights)
    parts.clear()


def read_training(output: str) -> Dict:
    """``{"epochs", "columns", "spectra": {module: (n_epochs, n_cols) aggregate},
    "mean": {...}, "outputs": {name: {eps_rms, relative_mean, rmse, rmse_symmetrized}}}``.

    A module missing at some epoch has NaN rows there.
    """
    analyses = read_epochs(output)
    epochs = [e for e, _ in analyses]
    result = {"epochs": epochs, "columns": analyses[0][1]["columns"] if analyses else [],
              "spectra": {}, "mean": {}, "outputs": {}, "per_epoch": dict(analyses)}
    names: List[str] = []
    outputs: List[str] = []
    for _, analysis in analyses:
        names += [n for n in analysis["modules"] if n not in names]
        outputs += [n for n in analysis["outputs"] if n not in outputs]
    n_cols = len(result["columns"])
    for name in names:
        for statistic, target in (("aggregate", result["spectra"]), ("mean", result["mean"])):
            target[name] = np.array([a["modules"][name][statistic] if name in a["modules"]
                                     else np.full(n_cols, np.nan) for _, a in analyses])
    for name in outputs:
        result["outputs"][name] = {
            key: np.array([float(a["outputs"][name][key]) if name in a["outputs"]
                           else np.nan for _, a in analyses])
            for key in ("eps_rms", "relative_mean", "rmse", "rmse_symmetrized")}
    return result


def write_training_figures(result: Dict, output: str) -> List[str]:
    folder = figures_dir(output)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for index, (name, spectra) in enumerate(result["spectra"].items()):
        paths.append(plot_module_epochs(
            name, result["epochs"], spectra, result["columns"],
            os.path.join(folder, f"{index:02d}_{safe_filename(name)}.png")))
    if result["outputs"]:
        paths.append(plot_output_metrics(result["epochs"], result["outputs"],
                                         os.path.join(folder, "eps_rmse.png")))
    last = result["per_epoch"][result["epochs"][-1]]
    paths.append(plot_layers(last, os.path.join(folder, "last_epoch_layers.png"),
                             title=f"epoch {result['epochs'][-1]}"))
    return paths


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _bar(total, unit, enabled):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit=" " + unit.split()[0], desc="symmon", dynamic_ncols=True)


def format_table(result: Dict, statistic: str = "aggregate") -> str:
    columns = result["columns"]
    width = max([len(n) for n in result["modules"]] + [6]) + 9
    lines = [f"{'module':<{width}}" + "".join(f"{c:>10}" for c in columns)]
    for name, entry in result["modules"].items():
        label = f"{name} [{entry['sample_kind'][0]}]"
        lines.append(f"{label:<{width}}" + "".join(f"{v:10.2e}" for v in entry[statistic]))
    for name, entry in result["outputs"].items():
        lines.append(f"{name}: eps_rms={entry['eps_rms']:.3e} relative={entry['relative_mean']:.3e}"
                     f" rmse={entry['rmse']:.3e} rmse_sym={entry['rmse_symmetrized']:.3e}")
    return "\n".join(lines)

