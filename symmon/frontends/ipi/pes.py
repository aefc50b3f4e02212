"""i-PI PES file: symmon's monitored model, evaluated inside i-PI (or i-pi-py_driver).

Use it with ``<ffdirect>`` (no socket, no client process)::

    <ffdirect name='symmon'>
      <pes> custom </pes>
      <pes_path> /path/to/symmon/frontends/ipi/pes.py </pes_path>   <!-- symmon ipi --pes-path -->
      <parameters> {template: init.xyz, model: emt, log: run.h5, every: 1} </parameters>
    </ffdirect>

or as a socket client: ``i-pi-py_driver -m custom -P $(symmon ipi --pes-path) -u -a NAME
-o template=init.xyz,model=emt,log=run.h5``.

Parameters (``<parameters>`` keys / ``-o`` keywords): ``template`` (required, structure
file with the atoms in i-PI's order; its species are used), ``model`` (``emt`` or a
metatomic ``.pt`` path; default ``emt``), ``log`` (HDF5 log, default none),
``overwrite``, ``non_conservative``, ``threads`` (torch threads, default 1), ``device``,
``chunk_size``, ``position_tolerance``, ``readout`` (purified readout file, with
``mode: purified``), and every :class:`~symmon.monitoring.options.MonitorOptions` field
under its own name (``every``, ``l_max``, ``thresholds: forces=0.05;energy=0.1``, ...;
text forms in :mod:`symmon.frontends.ipi.options`). i-PI passes ``verbosity`` too;
unknown keywords are refused.

i-PI gives the cell as column vectors in bohr and positions in bohr, and wants energy in
hartree, forces in hartree/bohr, the virial in hartree and a string of extras (JSON with
the fixed key set ``symmon.frontends.ipi.EXTRAS_KEYS``, in ASE units).
"""

import json

import numpy as np

try:
    from ipi.pes.dummy import Dummy_driver
except ImportError:  # pragma: no cover - used without i-PI installed
    class Dummy_driver:  # noqa: N801 - mirrors i-PI's base class
        def __init__(self, verbose=False, *args, **kwargs):
            self.verbose, self.args, self.kwargs = verbose, args, kwargs
            self.check_parameters()

        def check_parameters(self):
            pass

        def __call__(self, cell, pos):
            if isinstance(cell, list):
                return [self.compute_structure(c, p) for c, p in zip(cell, pos)]
            return self.compute_structure(cell, pos)

__DRIVER_NAME__ = "symmon"
__DRIVER_CLASS__ = "SymmonDriver"

#: the PES's own keywords (the monitor options come from MonitorOptions)
PES_KEYWORDS = ("template", "model", "log", "overwrite", "non_conservative", "threads",
                "device", "chunk_size", "position_tolerance", "readout")
_IPI_KWARGS = ("verbosity",)


def _text(value):
    return None if value in (None, "", "none", "None") else str(value)


class SymmonDriver(Dummy_driver):
    """A ``SymmetryMonitor``-wrapped model as an i-PI PES (see the module docstring)."""

    def __init__(self, template=None, model="emt", log=None, overwrite=False,
                 non_conservative=False, threads=1, device=None, chunk_size=None,
                 position_tolerance=None, readout=None, verbose=False, *args, **kwargs):
        from symmon.frontends.ipi.options import option_names, options_from_keywords

        if template is None:
            raise ValueError("the symmon PES needs template=<structure file with the atoms "
                             "in i-PI's order>")
        self.options = options_from_keywords(kwargs)
        unknown = sorted(set(kwargs) - set(_IPI_KWARGS))
        if unknown or args:
            raise ValueError(f"unknown symmon PES parameters {unknown or list(args)}; known: "
                             + ", ".join(PES_KEYWORDS + tuple(option_names())))
        self.template, self.model = str(template), str(model)
        self.log, self.readout, self.device = _text(log), _text(readout), _text(device)
        self.overwrite, self.non_conservative = overwrite, non_conservative
        self.threads, self.chunk_size = threads, chunk_size
        self.position_tolerance = position_tolerance
        super().__init__(verbose, **kwargs)

    def check_parameters(self):
        from symmon.frontends.ipi.evaluator import (DEFAULT_POSITION_TOLERANCE,
                                                    MonitoredEvaluator, make_base_calculator,
                                                    read_template, set_threads)
        from symmon.frontends.ipi.options import as_bool

        set_threads(int(self.threads) if self.threads not in (None, "") else None)
        template = read_template(self.template)
        base = make_base_calculator(self.model, as_bool(self.non_conservative), self.device)
        tolerance = (DEFAULT_POSITION_TOLERANCE if self.position_tolerance in (None, "")
                     else float(self.position_tolerance))
        options = dict(self.options)
        if as_bool(self.overwrite):
            options["log_mode"] = "overwrite"
        self.evaluator = MonitoredEvaluator(
            template, base, log=self.log,
            metadata={"ipi_route": "pes", "ipi_model": self.model},
            position_tolerance=tolerance, template_name=self.template, device=self.device,
            readout=self.readout, chunk_size=None if self.chunk_size in (None, "")
            else int(self.chunk_size), **options)
        try:  # close (flush) the log when i-PI exits, also on a soft exit
            from ipi.utils.softexit import softexit

            softexit.register_function(self.evaluator.close)
        except ImportError:  # pragma: no cover
            pass

    def compute_structure(self, cell, pos):
        from ase import units

        cell = np.asarray(cell, dtype=np.float64).reshape(3, 3).T * units.Bohr  # rows, A
        pos = np.asarray(pos, dtype=np.float64).reshape(-1, 3) * units.Bohr
        energy, forces, virial, extras = self.evaluator.evaluate(pos, cell)
        # same conversions as ase.calculators.socketio.IPIProtocol.sendforce
        pot = np.float64(energy / units.Ha)
        force = np.ascontiguousarray(forces * (units.Bohr / units.Ha), dtype=np.float64)
        vir = np.ascontiguousarray(virial.T / units.Ha, dtype=np.float64)
        return pot, force, vir, json.dumps(extras, allow_nan=True)
