"""Against a label: how far a prediction, and its orbit average, are from the reference.

For one output of one structure with label ``y``, the lab-frame prediction ``f(x)`` and
the orbit average ``<f>(x)`` (the symmetrised prediction, ``EquivarianceError.mean``),
:func:`label_error` gives the squared deviations per component, float64 whatever the
model's dtype:

    ``squared = (f(x) - y)^2``,   ``squared_averaged = (<f>(x) - y)^2``.

Front-ends reduce them in their own convention: ``symmon eval`` per structure in the
quantity's per-atom normalisation (``sqrt(sum) * Quantity.per_atom_factor(N)``),
``symmon layers`` as the RMSE over every component of every structure.

Why the averaged prediction matters: over the orbit of ``x`` the mean squared error of
``f`` is that of ``<f>`` plus ε² (the orbit variance), so ``<f>`` is never worse on
randomly oriented inputs, and ε bounds the error of ``f`` from below there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _float64(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


@dataclass(frozen=True)
class LabelError:
    """Squared deviations from a label, per component (the prediction's shape)."""

    squared: np.ndarray
    squared_averaged: np.ndarray

    @property
    def distance(self) -> float:
        """``||f(x) - y||`` summed over every component."""
        return float(np.sqrt(self.squared.sum()))

    @property
    def distance_averaged(self) -> float:
        """``||<f>(x) - y||`` summed over every component."""
        return float(np.sqrt(self.squared_averaged.sum()))


def label_error(prediction, averaged, label) -> LabelError:
    """:class:`LabelError` of the lab-frame ``prediction`` and the orbit ``averaged``
    one against ``label`` (reshaped to the prediction's shape: a 3x3 stress label may
    come as 9 numbers).

    >>> label_error([1.0, 2.0], [1.0, 1.0], [1.0, 1.0]).distance
    1.0
    """
    prediction, averaged = _float64(prediction), _float64(averaged)
    label = _float64(label).reshape(prediction.shape)
    return LabelError((prediction - label) ** 2, (averaged - label) ** 2)
