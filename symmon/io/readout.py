"""Readout files of ``symmon purify``: a fitted correction ``f + A phi`` (HDF5).

Layout (one file, one target of one model)::

    attrs: format="symmon-readout", version=1, target, feature (the model's
           last-layer-feature output), lambda, intercept, symmon_version,
           model_sha256 (of the .pt file it was fitted on; "" when unknown)
    matrix (m, d)          A, acting on phi in each copy's frame (d includes the
                           intercept column when ``intercept``)
    scan (n_rows, n_cols)  the lambda scan (optional); attrs: columns

Files are written to a temporary name and renamed, so a crash leaves no file or a
complete one. :func:`load_readout` refuses a readout fitted for another model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from ..core.outputs import output
from ..core.purification import apply_correction, apply_correction_torch
from .files import file_sha256, write_through

__all__ = ["Readout", "load_readout"]

FORMAT = "symmon-readout"


@dataclass
class Readout:
    """A fitted correction ``f + A phi`` for one target of one model."""

    target: str
    feature: str
    matrix: np.ndarray
    lam: float
    intercept: bool
    model_sha256: Optional[str] = None
    table: List[Dict[str, float]] = field(default_factory=list)
    #: the matrix as a float64 tensor per device (built at the first correction there)
    _matrices: Dict[object, object] = field(default_factory=dict, repr=False, compare=False)

    @property
    def kind(self) -> str:
        return output(self.target).kind

    @property
    def per_atom(self) -> bool:
        return output(self.target).per_atom

    def correct(self, outputs, features) -> np.ndarray:
        """Corrected outputs of one structure or of an orbit (any leading axes)."""
        return apply_correction(outputs, features, self.matrix, self.kind, self.per_atom,
                                self.intercept)

    def correct_torch(self, outputs, features):
        """:meth:`correct` in torch where ``features`` are (e.g. on the model's device,
        never copied to the host), returned on ``outputs``' device, float64."""
        matrix = self._matrices.get(features.device)
        if matrix is None:
            matrix = self._matrices[features.device] = torch.as_tensor(
                self.matrix, dtype=torch.float64, device=features.device)
        return apply_correction_torch(outputs, features, matrix, self.kind, self.per_atom,
                                      self.intercept)

    def save(self, path) -> None:
        """Write the readout whole or not at all."""
        write_through(path, self._write)

    def _write(self, tmp) -> None:
        import h5py

        from .. import __version__

        with h5py.File(tmp, "w") as f:
            f.attrs.update({"format": FORMAT, "version": 1, "target": self.target,
                            "feature": self.feature, "lambda": self.lam,
                            "intercept": self.intercept, "symmon_version": __version__,
                            "model_sha256": self.model_sha256 or ""})
            f["matrix"] = self.matrix
            if self.table:
                columns = [k for k in self.table[0] if k != "matrix"]
                f["scan"] = np.array([[row[c] for c in columns] for row in self.table])
                f["scan"].attrs["columns"] = columns

    @classmethod
    def load(cls, path) -> "Readout":
        import h5py

        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("format") != FORMAT:
                    raise ValueError(f"{os.fspath(path)!r} is not a symmon readout file")
                return cls(str(f.attrs["target"]), str(f.attrs["feature"]), f["matrix"][()],
                           float(f.attrs["lambda"]), bool(f.attrs["intercept"]),
                           str(f.attrs["model_sha256"]) or None)
        except OSError as error:
            raise ValueError(f"cannot read readout file {os.fspath(path)!r}: {error}") from None

    def check_model(self, orbit_model) -> None:
        """Refuse a readout fitted for another model."""
        sha = file_sha256(getattr(orbit_model, "model_path", None))
        if self.model_sha256 and sha and sha != self.model_sha256:
            raise ValueError(f"readout was fitted for a different model (sha256 "
                             f"{self.model_sha256[:12]}…, this model {sha[:12]}…)")
        if self.feature not in orbit_model.available_outputs:
            raise ValueError(f"the model has no output {self.feature!r} needed by the readout")


def load_readout(path, orbit_model) -> Readout:
    """Load a readout for the monitor's purified mode, checking it fits the model."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"readout file {os.fspath(path)!r} does not exist")
    readout = Readout.load(path)
    readout.check_model(orbit_model)
    return readout
