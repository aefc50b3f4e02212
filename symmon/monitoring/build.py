"""A :class:`~symmon.monitoring.monitor.Monitor` of a model with checked options: the
one constructor every front-end (ASE calculator, i-PI client and PES) uses."""

from __future__ import annotations

from ..adapters.registry import calculator_for
from .monitor import Monitor
from .options import MonitorOptions
from .source import ModelSource


def build_monitor(base, log=None, *, readout=None, device=None, chunk_size=None,
                  extra_specs=None, warm_up=True, options: MonitorOptions) -> Monitor:
    """``Monitor(ModelSource(base), options)``; ``base``: an ASE calculator (an
    instance), or a model, model file or entry point its family has a calculator for
    (:func:`symmon.adapters.registry.calculator_for`); ``readout``: the purified readout
    file of ``mode="purified"``."""
    if isinstance(base, type):
        raise ValueError(f"the model to monitor is the class {base.__name__}, not a "
                         f"calculator: pass an instance, e.g. {base.__name__}()")
    base = calculator_for(base, device=device)
    source = ModelSource(base, device=device, chunk_size=chunk_size)
    if options.mode == "purified":
        readout = _load_readout(readout, source)
    return Monitor(source, options, log=log, readout=readout if options.mode == "purified"
                   else None, extra_specs=extra_specs, warm_up=warm_up)


def _load_readout(readout, source):
    if readout is None:
        raise ValueError("mode='purified' needs readout=<file written by symmon purify>")
    if not source.orbit_model.has_features:
        raise ValueError("mode='purified' needs a metatomic model (its last-layer "
                         f"features); the base calculator is {type(source.base).__name__}")
    from ..io.readout import load_readout

    return load_readout(readout, source.orbit_model)
