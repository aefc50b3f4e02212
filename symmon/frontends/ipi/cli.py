"""``symmon ipi``: the socket client on the command line.  Its own flags (address,
model, log, timeouts) are written here; the monitor's flags are generated from
:class:`~symmon.monitoring.options.MonitorOptions` (:mod:`.options`)."""

from __future__ import annotations

import os

from .client import DEFAULT_TIMEOUT, run_client, say, shard_log_path
from .evaluator import DEFAULT_POSITION_TOLERANCE, EXTRAS_KEYS
from .options import add_monitor_arguments, options_from_arguments

#: exit status when the server went silent, away, or could not be reached
EXIT_SERVER = 3
#: exit status after Ctrl-C (128 + SIGINT, as a shell reports it)
EXIT_INTERRUPTED = 130


def pes_path() -> str:
    """Path of the i-PI PES file for ``<ffdirect>`` / ``i-pi-py_driver -m custom -P``."""
    from . import pes

    return os.path.realpath(pes.__file__)


def add_ipi_arguments(parser) -> None:
    """Arguments of ``symmon ipi``."""
    parser.description = (
        "Connect to an i-PI server and answer its force requests with "
        "SymmetryMonitor(model); diagnostics go to the HDF5 log and back to i-PI as JSON "
        "extras (keys: " + ", ".join(EXTRAS_KEYS) + "). The client waits at most "
        f"--timeout seconds (default {DEFAULT_TIMEOUT:g}) for each message of the server. "
        "See docs/ipi.md.")
    parser.add_argument("--pes-path", action="store_true",
                        help="print the path of symmon's i-PI PES file (for <ffdirect> or "
                        "i-pi-py_driver -m custom -P) and exit")
    parser.add_argument("--model", help="a model file (metatomic .pt, a torch.save'd Orb or "
                        "MACE model), a Python entry point module:function returning a "
                        "calculator or model, or 'emt' for ASE's EMT")
    parser.add_argument("--structure", help="template structure with the atoms in i-PI's "
                        "order (its species are used; the protocol sends positions only)")
    parser.add_argument("--unix", default=None, metavar="NAME",
                        help="unix socket name (i-PI's <address>; the socket is /tmp/ipi_NAME)")
    parser.add_argument("--host", default="localhost", help="i-PI host (inet sockets)")
    parser.add_argument("--port", type=int, default=None, help="i-PI port (inet sockets)")
    parser.add_argument("--log", default=None, help="HDF5 log (default: no log)")
    parser.add_argument("--shard", nargs="?", const="pid", default=None, metavar="ID",
                        help="one log per client: --log run.h5 --shard ID writes "
                        "run.client-ID.h5 (bare --shard: ID = process id)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing log (--log-mode overwrite)")
    parser.add_argument("--readout", default=None,
                        help="purified readout file written by symmon purify (--mode purified)")
    parser.add_argument("--non-conservative", action="store_true",
                        help="use the model's direct (non-conservative) forces and stress")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of this client (default 1; 0: torch's default)")
    parser.add_argument("--device", default=None, help="torch device of the model")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="transformed copies per batched model call (metatomic models; "
                        "default 32 on CPU, 256 on GPUs)")
    parser.add_argument("--connect-wait", type=float, default=60.0,
                        help="seconds to keep retrying while the server starts (default 60)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="give up (exit code 3) when the server sends nothing for this "
                        "long (default %(default)g s; 0: wait forever)")
    parser.add_argument("--position-tolerance", type=float,
                        default=DEFAULT_POSITION_TOLERANCE,
                        help="warn if i-PI's first structure is farther than this (angstrom) "
                        "from the template (default %(default)s; 0: no check)")
    add_monitor_arguments(parser)


def run_ipi(args) -> int:
    """``symmon ipi``: 0 when i-PI said EXIT, 3 when the server went silent or away,
    130 after Ctrl-C (the log closed in every case)."""
    if args.pes_path:
        print(pes_path())
        return 0
    missing = [flag for flag, value in (("--model", args.model),
                                        ("--structure", args.structure)) if not value]
    if args.unix is None and args.port is None:
        missing.append("--unix or --port")
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    if args.shard is not None and not args.log:
        raise ValueError("--shard needs --log")
    shard = str(os.getpid()) if args.shard == "pid" else args.shard
    where = shard_log_path(args.log, shard) if args.log else "no log"
    try:
        calls = run_client(
            args.model, args.structure, unix=args.unix, host=args.host, port=args.port,
            log=args.log, shard=shard, overwrite=args.overwrite,
            non_conservative=args.non_conservative, threads=args.threads,
            device=args.device, connect_wait=args.connect_wait,
            position_tolerance=args.position_tolerance, timeout=args.timeout,
            readout=args.readout, chunk_size=args.chunk_size, announce=say,
            **options_from_arguments(args))
    except ConnectionError as error:
        say(f"error: {error} ({where})")
        return EXIT_SERVER
    except KeyboardInterrupt:
        say(f"interrupted (Ctrl-C); the log is closed ({where})")
        return EXIT_INTERRUPTED
    say(f"i-PI finished; served {calls} force calls ({where})")
    return 0
