"""Run the symmetry monitor under an i-PI server.

Two routes, same physics and the same diagnostics:

* **socket client** (``symmon ipi ...`` / :func:`run_client`, :mod:`.client`): answers
  i-PI's force requests with the monitored model and returns the diagnostics as JSON
  "extras";
* **in-process** (``<ffdirect><pes>custom</pes><pes_path>...``): the PES file
  :mod:`.pes` (``symmon ipi --pes-path`` prints its path).

Both go through :class:`MonitoredEvaluator` (:mod:`.evaluator`), which owns the
template structure, checks what i-PI sends against it, builds the extras and its
monitor (:func:`symmon.monitoring.build.build_monitor`).  The monitor's command-line
flags and PES keywords are generated from
:class:`~symmon.monitoring.options.MonitorOptions` (:mod:`.options`); the command line
is :mod:`.cli`.

Units: i-PI talks atomic units on the wire (bohr, hartree); everything here, the
HDF5 log and the extras are in ASE units (angstrom, eV, eV/angstrom, eV/angstrom^3).
"""

from .cli import add_ipi_arguments, pes_path, run_ipi
from .client import (DEFAULT_TIMEOUT, ServerGone, ServerSilent, check_address, connect,
                     run_client, shard_log_path)
from .evaluator import (DEFAULT_POSITION_TOLERANCE, EXTRAS_KEYS, MonitoredEvaluator,
                        StructureMismatch, encode_extras, make_base_calculator,
                        read_template, set_threads)

__all__ = ["DEFAULT_POSITION_TOLERANCE", "DEFAULT_TIMEOUT", "EXTRAS_KEYS",
           "MonitoredEvaluator", "ServerGone", "ServerSilent", "StructureMismatch",
           "add_ipi_arguments", "check_address", "connect", "encode_extras",
           "make_base_calculator", "pes_path", "read_template", "run_client", "run_ipi",
           "set_threads", "shard_log_path"]
