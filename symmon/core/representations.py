"""How model outputs transform under O(3): back-transformation to the input frame.

An element ``Q`` (``det Q = -1`` for improper ones) maps positions ``x -> x Q^T``.
A model output evaluated on the transformed input, ``f(Q x)``, is brought back
to the input frame by ``rho(Q)^{-1}``:

=================  ===========================  ===================  ===============
kind               law ``f(Qx) = rho(Q) f(x)``  back-transform       irreps
=================  ===========================  ===================  ===============
scalar             ``e``                        ``e'``               (0,+1)
pseudoscalar       ``det Q e``                  ``det Q e'``         (0,-1)
vector             ``v Q^T`` (rows)             ``v' Q``             (1,+1)
pseudovector       ``det Q v Q^T``              ``det Q v' Q``       (1,-1)
tensor             ``Q T Q^T``                  ``Q^T T' Q``         (0,+1)+(1,-1)+(2,+1)
symmetric_tensor   ``Q S Q^T``                  ``Q^T S' Q``         (0,+1)+(2,+1)
feature            unknown                      none (spectrum only)  —
=================  ===========================  ===================  ===============

One stress convention: a ``symmetric_tensor`` output is symmetrised, ``(S + S^T)/2``,
before anything is measured (:meth:`Representation.canonical`), so the non-symmetric
strain derivative of a metatomic model and ASE's symmetric Voigt stress give the same
``eps``, spectrum and average; use ``tensor`` to keep an antisymmetric part.
A suffix ``_per_atom`` (``_per_point``, ``_per_edge``, ``_per_token``) names the same
law with one object per sample: ``"vector_per_atom"`` is ``vector`` (:func:`parse_kind`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

from .irreps import Irrep

BackTransform = Callable[[object, object, object], object]


# The laws are written with ``@``, ``reshape`` and ``swapaxes`` only, so they act alike
# on torch tensors and NumPy arrays (the monitor's few-copy orbits stay in NumPy).

def _identity(values, matrices, determinants):
    return values


def _pseudoscalar(values, matrices, determinants):
    return values * _per_element(determinants, values)


def _vector(values, matrices, determinants):
    """``v' Q`` for every element: ``(K, ..., 3) -> (K, ..., 3)``."""
    rows = values.reshape(values.shape[0], math.prod(values.shape[1:-1]), 3)
    return (rows @ matrices).reshape(values.shape)


def _pseudovector(values, matrices, determinants):
    return _vector(values, matrices, determinants) * _per_element(determinants, values)


def _tensor(values, matrices, determinants):
    """``Q^T T' Q`` for every element: ``(K, ..., 3, 3) -> (K, ..., 3, 3)``."""
    blocks = values.reshape(values.shape[0], math.prod(values.shape[1:-2]), 3, 3)
    q = matrices[:, None]
    return (q.swapaxes(-1, -2) @ blocks @ q).reshape(values.shape)


def _symmetric_tensor(values, matrices, determinants):
    return _tensor(_symmetrised(values), matrices, determinants)


def _symmetrised(values):
    return (values + values.swapaxes(-1, -2)) / 2


def _per_element(factors, like):
    """``(K,)`` factors shaped to broadcast over ``like``'s trailing axes."""
    return factors.reshape((-1,) + (1,) * (like.ndim - 1))


@dataclass(frozen=True)
class Representation:
    """A transformation law for one output.

    :param name: identifier used throughout symmon (``"vector"``, ...)
    :param item_shape: trailing shape of one transforming object
    :param targets: irreps an exactly equivariant output occupies (``None``
        for features, whose law is unknown)
    """

    name: str
    item_shape: Tuple[int, ...]
    targets: Optional[Tuple[Irrep, ...]]
    _back: Optional[BackTransform]

    @property
    def has_law(self) -> bool:
        """False for ``feature``: no equivariance error is defined."""
        return self._back is not None

    def check_shape(self, orbit_values: torch.Tensor) -> None:
        n_item = len(self.item_shape)
        if n_item and tuple(orbit_values.shape[orbit_values.ndim - n_item:]) != self.item_shape:
            raise ValueError(
                f"a {self.name} output must end with shape {self.item_shape}, "
                f"got orbit values of shape {tuple(orbit_values.shape)}"
            )

    def canonical(self, orbit_values: torch.Tensor) -> torch.Tensor:
        """The values measured: ``(S + S^T)/2`` for ``symmetric_tensor``, else unchanged."""
        if self.name == "symmetric_tensor":
            self.check_shape(orbit_values)
            return _symmetrised(orbit_values)
        return orbit_values

    def back_transform(self, orbit_values, matrices, determinants):
        """``rho(Q_k)^{-1} f(Q_k x)`` for values of shape ``(K, ..., *item_shape)``
        (torch tensors, or NumPy arrays, all three of one kind)."""
        if self._back is None:
            raise ValueError("a 'feature' output has no transformation law; only its "
                             "character spectrum is defined")
        self.check_shape(orbit_values)
        if orbit_values.shape[0] != matrices.shape[0]:
            raise ValueError(f"got {orbit_values.shape[0]} orbit samples for "
                             f"{matrices.shape[0]} group elements")
        return self._back(orbit_values, matrices, determinants)


_S, _P = Irrep(0, 1), Irrep(0, -1)
REPRESENTATIONS = {
    r.name: r
    for r in (
        Representation("scalar", (), (_S,), _identity),
        Representation("pseudoscalar", (), (_P,), _pseudoscalar),
        Representation("vector", (3,), (Irrep(1, 1),), _vector),
        Representation("pseudovector", (3,), (Irrep(1, -1),), _pseudovector),
        Representation("tensor", (3, 3), (_S, Irrep(1, -1), Irrep(2, 1)), _tensor),
        Representation("symmetric_tensor", (3, 3), (_S, Irrep(2, 1)), _symmetric_tensor),
        Representation("feature", (), None, None),
    )
}


SAMPLE_SUFFIXES = ("_per_point", "_per_atom", "_per_edge", "_per_token")


def parse_kind(kind) -> Tuple[Representation, int]:
    """``"vector_per_atom"`` -> (vector representation, sample_dims=1); plain kinds -> 0."""
    if isinstance(kind, str):
        for suffix in SAMPLE_SUFFIXES:
            if kind.endswith(suffix):
                return _lookup(kind[: -len(suffix)], kind), 1
    return _lookup(kind, kind), 0


def get_representation(kind) -> Representation:
    """Look up a :class:`Representation` by name, ``_per_atom``-style names included."""
    return parse_kind(kind)[0]


def _lookup(name, spelled) -> Representation:
    if isinstance(name, Representation):
        return name
    try:
        return REPRESENTATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown output kind {spelled!r}; expected one of "
                         f"{sorted(REPRESENTATIONS)} (optionally with a suffix such as "
                         "'_per_atom')") from None
