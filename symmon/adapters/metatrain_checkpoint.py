"""Loading a metatrain checkpoint as the eager ``torch.nn.Module`` (so hooks can be placed).

By default the checkpoint's *epoch* weights (``model_state_dict``,
``context="restart"``) are used; ``mtt export`` and ``metatrain.utils.io.load_model``
use the *best* weights (``best_model_state_dict``) instead — pass ``weights="best"``
for those. The model is converted to the requested dtype and put in eval mode (so
the scaler and the composition model are applied).
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Optional

import torch


def checkpoint_epoch(path, checkpoint: Optional[dict] = None) -> Optional[int]:
    """The epoch of a checkpoint: from ``model_<epoch>.ckpt`` or the checkpoint itself."""
    match = re.search(r"model_(\d+)\.ckpt$", os.fspath(path))
    if match:
        return int(match.group(1))
    if checkpoint is not None and checkpoint.get("epoch") is not None:
        return int(checkpoint["epoch"])
    return None


def _read_checkpoint(path: pathlib.Path) -> dict:
    try:
        checkpoint = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"cannot read {str(path)!r} as a metatrain checkpoint: {error}") \
            from error
    if not isinstance(checkpoint, dict) or "architecture_name" not in checkpoint:
        raise ValueError(f"{str(path)!r} is not a metatrain checkpoint (no "
                         "'architecture_name'); exported .pt models have no hooks to "
                         "place: use the .ckpt file")
    return checkpoint


def load_metatrain_checkpoint(path, *, weights: str = "epoch", dtype=torch.float64,
                              device="cpu"):
    """The eager model of a metatrain checkpoint, in eval mode, and the checkpoint's info.

    :param weights: ``"epoch"`` (the weights at the epoch the checkpoint was written,
        ``context="restart"``) or ``"best"`` (the best validation weights, what
        ``mtt export`` uses)
    :return: ``(model, info)``; ``info`` has ``path``, ``epoch``, ``best_epoch``,
        ``weights``, ``architecture``
    """
    import metatomic.torch  # noqa: F401  (registers the TorchScript classes pickled in it)

    from ..extras import require

    require("metatrain", "metatrain", "a metatrain checkpoint (.ckpt)")
    from metatrain.utils.io import model_from_checkpoint

    path = pathlib.Path(os.fspath(path))
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if weights not in ("epoch", "best"):
        raise ValueError(f"weights must be 'epoch' or 'best', got {weights!r}")
    checkpoint = _read_checkpoint(path)
    info = {"path": str(path), "epoch": checkpoint_epoch(path, checkpoint),
            "best_epoch": checkpoint.get("best_epoch"), "weights": weights,
            "architecture": checkpoint["architecture_name"]}
    if weights == "epoch" and checkpoint.get("model_state_dict") is None:
        raise ValueError(f"{str(path)!r} holds no epoch weights (model_state_dict); it "
                         "was probably slimmed for export; use weights='best'")
    context = "restart" if weights == "epoch" else "export"
    model = model_from_checkpoint(checkpoint, context=context)
    model = model.to(dtype=dtype, device=device)
    model.eval()
    return model, info
