"""A stand-in for :class:`symmon.monitoring.source.ModelSource` over an analytic model.

It exposes what :class:`~symmon.monitoring.monitor.Monitor` uses of a source and
evaluates, for every stack of O(3) elements, the model on the copies ``x Q^T`` of the
structure: no ASE calculator, no torch model, exact numbers. The model is a harmonic
well around the centroid, ``E = sum_i |r_i - c|^2`` and ``F_i = -2 (r_i - c)``
(exactly O(3)-equivariant), plus an optional constant lab-frame force, which breaks
the symmetry: its back-transformed value ``Q^T f`` averages to zero over O(3).
"""

import numpy as np
import torch

from symmon.monitoring.source import BaseValues


class FakeSource:
    model_dtype = torch.float64
    nc_forces = nc_stress = False
    path = "analytic harmonic well (tests)"
    orbit_model = None

    def __init__(self, lab_force=(0.0, 0.0, 0.0), nan_at_call=None):
        self.lab_force = np.asarray(lab_force, dtype=np.float64)
        self.nan_at_call = nan_at_call  # NaN in the orbit of this evaluate call
        self.calls = 0
        self.base = self  # named in messages and metadata

    # -- the ModelSource surface the monitor uses --------------------------------------
    def quantities(self, atoms):
        return ("energy", "forces")

    def not_monitored(self, atoms):
        return []

    def keep_on_device(self, features):
        pass

    def warm_up(self, n_copies, features):
        return 0.0

    def free_specs(self):
        return {}

    def evaluate(self, atoms, quantities, frames, *, base=True, features=()):
        self.calls += 1
        stacks = {name: self.model(np.einsum("ni,kji->knj", atoms.positions, matrices))
                  for name, matrices in frames.items()}
        if self.calls == self.nan_at_call and "grid" in stacks:
            stacks["grid"]["forces"][0, 0, 0] = float("nan")
        return (self.plain(atoms, quantities) if base else None), stacks

    def plain(self, atoms, quantities):
        values = self.model(atoms.positions[None])
        predictions = {q: values[q][0].numpy() for q in quantities}
        return BaseValues(predictions, predictions["forces"])

    # -- the model ---------------------------------------------------------------------
    def model(self, positions):
        """``(K, N, 3)`` positions -> energy ``(K,)`` and forces ``(K, N, 3)``."""
        centred = positions - positions.mean(axis=1, keepdims=True)
        return {"energy": torch.from_numpy((centred ** 2).sum(axis=(1, 2))),
                "forces": torch.from_numpy(-2 * centred + self.lab_force)}
