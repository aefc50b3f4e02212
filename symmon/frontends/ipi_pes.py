"""The i-PI PES file's former path (inputs that name it keep working): the PES is
:mod:`symmon.frontends.ipi.pes` (``symmon ipi --pes-path``)."""

from symmon.frontends.ipi.pes import SymmonDriver  # noqa: F401

__DRIVER_NAME__ = "symmon"
__DRIVER_CLASS__ = "SymmonDriver"
