"""Run the symmetry monitor under an i-PI server.

Two routes, same physics and the same diagnostics:

* **socket client** (``symmon ipi ...`` / :func:`run_client`): a client built on
  ASE's :class:`ase.calculators.socketio.SocketClient` protocol object that answers
  i-PI's force requests with ``SymmetryMonitor(base)`` and returns the diagnostics
  as JSON "extras";
* **in-process** (``<ffdirect><pes>custom</pes><pes_path>...``): the PES file
  ``symmon/frontends/ipi_pes.py`` (``symmon ipi --pes-path`` prints its path).

Both go through :class:`MonitoredEvaluator`, which owns the template structure,
checks what i-PI sends against it and builds the extras.

Units: i-PI talks atomic units on the wire (bohr, hartree); everything here, the
HDF5 log and the extras are in ASE units (angstrom, eV, eV/angstrom, eV/angstrom^3).
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from ..monitoring.options import parse_every
from ..monitoring.schema import EXTRAS, OBSERVABLES
from .calculator import make_monitor

#: Keys of the JSON extras returned to i-PI with *every* force (NaN where a value was
#: not computed on this call): i-PI raises KeyError if a key named in a trajectory's
#: ``extra_type`` is missing at any step.
#: ``symmon_step`` is this client's call counter (= the log's step), ``monitored`` 1 if the
#: diagnostics were computed on this call; the others are the rows of
#: :data:`symmon.monitoring.schema.OBSERVABLES` marked ``extras`` (per-atom ones as lists
#: of n_atoms values; units as in the log).
EXTRAS_KEYS = ("symmon_step", "monitored") + EXTRAS
#: Warn when i-PI's first structure is farther than this (angstrom, per atom, minimum
#: image) from the template: the template's atom order probably differs from i-PI's.
DEFAULT_POSITION_TOLERANCE = 0.5
#: Seconds the socket client waits for the next message of the server before it gives up.
DEFAULT_TIMEOUT = 600.0


class StructureMismatch(ValueError):
    """i-PI sent a structure that does not match the template (atom count)."""


# ---------------------------------------------------------------------------- helpers
def set_threads(threads: Optional[int]) -> None:
    """Limit torch (intra-op) threads; ``None`` or 0 leaves torch's default."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 0):
        raise ValueError(f"threads must be an integer >= 0 (0: torch's default), got "
                         f"{threads!r}")
    if not threads:
        return
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.set_num_threads(int(threads))
    try:
        torch.set_num_interop_threads(int(threads))
    except RuntimeError:  # already set, or parallel work already started
        pass


def make_base_calculator(model: str, non_conservative: bool = False,
                         device: Optional[str] = None):
    """``"emt"`` -> ASE's EMT; a model file or entry point -> its family's calculator
    (a metatomic ``.pt`` -> ``MetatomicCalculator``)."""
    if str(model).lower() == "emt":
        from ase.calculators.emt import EMT

        return EMT()
    from ..adapters.registry import calculator_for

    try:
        return calculator_for(model, device=device, non_conservative=bool(non_conservative))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{error} (use a model file, a Python entry point "
                                "'module:function', or 'emt' for ASE's EMT)") from None


def shard_log_path(log: str, shard) -> str:
    """``run.h5`` + shard ``3`` -> ``run.client-3.h5`` (``None``: ``log`` unchanged)."""
    if shard is None or shard == "":
        return os.fspath(log)
    path = Path(log)
    suffix = path.suffix or ".h5"
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return str(path.with_name(f"{stem}.client-{shard}{suffix}"))


def every_argument(text: str):
    """argparse type of ``--every auto|N``."""
    import argparse

    try:
        return parse_every(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_thresholds(items) -> Dict[str, float]:
    """``["forces=0.05"]`` -> ``{"forces": 0.05}`` (checked by the monitor's options)."""
    thresholds = {}
    for item in items:
        quantity, _, limit = item.partition("=")
        try:
            thresholds[quantity.strip()] = float(limit)
        except ValueError:
            raise ValueError(f"--threshold {item!r}: expected QUANTITY=LIMIT, e.g. "
                             "forces=0.05") from None
    return thresholds


def pes_path() -> str:
    """Path of the i-PI PES file for ``<ffdirect>`` / ``i-pi-py_driver -m custom -P``."""
    return str(Path(__file__).with_name("ipi_pes.py").resolve())


def _as_bool(value) -> bool:
    if isinstance(value, str):
        if value.strip().lower() in ("true", "1", "yes", "on"):
            return True
        if value.strip().lower() in ("false", "0", "no", "off", "", "none"):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    return bool(value)


def _request_id_spec():
    from ..io.log import ObservableSpec

    return {"ipi_request_id": ObservableSpec(
        (), "1", "i-PI request id of this force call (bead index with one force "
        "component; -1 if unknown)", dtype="int64")}


# ---------------------------------------------------------------------------- evaluator
class MonitoredEvaluator:
    """Template structure + :class:`~symmon.monitoring.monitor.Monitor`: one force call
    from i-PI at a time, each logged with its i-PI request id (``ipi_request_id``: the
    bead index when the system has one force component; -1 when unknown, the
    ``<ffdirect>`` route).

    :param template: ASE ``Atoms`` listing the atoms in i-PI's order (its species are
        used: the i-PI protocol does not transmit species)
    :param monitor_options: keyword arguments of :class:`SymmetryMonitor`
    """

    def __init__(self, template, base, *, log=None, metadata=None,
                 position_tolerance: float = DEFAULT_POSITION_TOLERANCE,
                 template_name: str = "template", **monitor_options):
        self.atoms = template.copy()
        self.atoms.calc = None
        self.template_positions = template.get_positions()
        self.template_cell = template.cell.array.copy()
        self.template_name = template_name
        self.position_tolerance = float(position_tolerance)
        meta = {"ipi_template": template_name,
                "ipi_template_formula": template.get_chemical_formula()}
        meta.update(metadata or {})
        self.monitor = make_monitor(base, log, metadata=meta, extra_specs=_request_id_spec(),
                                    **monitor_options)
        self.last_values: Dict[str, object] = {}
        self.periodic = bool(all(self.atoms.pbc))
        self.n_calls = 0

    # -- checks
    def check_structure(self, positions: np.ndarray, cell: np.ndarray) -> None:
        """Refuse a wrong atom count; on the first call warn if far from the template."""
        n_template = len(self.atoms)
        if len(positions) != n_template:
            raise StructureMismatch(
                f"i-PI sent {len(positions)} atoms but the template {self.template_name} "
                f"has {n_template}: the template must list the same atoms, in the same "
                "order, as i-PI's initial structure")
        if self.n_calls == 0 and self.position_tolerance > 0:
            distance = self._distance_to_template(positions, cell)
            if distance > self.position_tolerance:
                warnings.warn(
                    f"the first structure from i-PI is up to {distance:.3g} angstrom away "
                    f"from the template {self.template_name} (tolerance "
                    f"{self.position_tolerance:g}): check that the template lists the atoms "
                    "in i-PI's order -- symmon uses the template's species. (Expected when "
                    "this client joins a running simulation.)", RuntimeWarning,
                    stacklevel=3)

    def _distance_to_template(self, positions, cell) -> float:
        """Largest per-atom distance, compared in fractional coordinates (i-PI may
        rotate the cell into its standard orientation), minimum image if periodic."""
        cell = np.asarray(cell, dtype=float)
        try:
            if not self.periodic or abs(np.linalg.det(cell)) < 1e-12 \
                    or abs(np.linalg.det(self.template_cell)) < 1e-12:
                raise np.linalg.LinAlgError
            frac_new = np.linalg.solve(cell.T, np.asarray(positions).T).T
            frac_old = np.linalg.solve(self.template_cell.T, self.template_positions.T).T
        except np.linalg.LinAlgError:
            delta = np.asarray(positions) - self.template_positions
            return float(np.max(np.linalg.norm(delta, axis=1)))
        delta = frac_new - frac_old
        delta -= np.round(delta)
        return float(np.max(np.linalg.norm(delta @ cell, axis=1)))

    # -- evaluation
    def evaluate(self, positions: np.ndarray, cell: np.ndarray, request_id: int = -1):
        """Energy (eV), forces (eV/angstrom), virial (eV, 3x3) and the extras dict of
        one structure (positions and cell rows in angstrom)."""
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
        self.check_structure(positions, cell)
        atoms = self.atoms
        atoms.cell[:] = cell
        atoms.positions[:] = positions
        step = int(self.monitor.step)
        returned, self.last_values = self.monitor.calculate(
            atoms, {"ipi_request_id": int(request_id)})  # every request is a fresh step
        energy = float(returned["energy"])
        forces = np.array(returned["forces"], dtype=np.float64)
        if self.periodic:
            virial = -atoms.get_volume() * np.asarray(returned["stress"])
        else:
            virial = np.zeros((3, 3))
        self.n_calls += 1
        return energy, forces, virial, self.extras(step)

    def extras(self, step: int) -> Dict[str, object]:
        """The fixed key set :data:`EXTRAS_KEYS` of the last calculation (NaN: not
        computed on this call)."""
        values = self.last_values
        out: Dict[str, object] = {"symmon_step": step,
                                  "monitored": int("n_elements" in values)}
        for name in EXTRAS:
            value = values.get(name)
            if not OBSERVABLES[name].per_atom:
                out[name] = math.nan if value is None else float(value)
            else:
                out[name] = (np.asarray(value, dtype=float).reshape(-1).tolist()
                             if value is not None else [math.nan] * len(self.atoms))
        return out

    def close(self) -> None:
        self.monitor.close()


def encode_extras(extras: Dict[str, object]) -> str:
    """JSON text of the extras (NaN written as ``NaN``, which Python's json, and so
    i-PI, reads back)."""
    return json.dumps(extras, allow_nan=True)


def read_template(path: str):
    """The last structure of ``path`` (as ``ase.io.read``), refused with one sentence
    when the file is missing, empty or unreadable."""
    from ..adapters.base import validate_atoms
    from ..adapters.labels import read_structures

    template = read_structures(path, index=-1, what="template structure")[0]
    try:
        validate_atoms(template)
    except ValueError as error:
        raise ValueError(f"template structure {path!r}: {error}") from None
    return template


# ---------------------------------------------------------------------------- socket client
def _socket_client_class():
    from ase.calculators.socketio import IPIProtocol, SocketClient, SocketClosed

    class SymmonSocketClient(SocketClient):
        """ASE's socket client serving an :class:`MonitoredEvaluator`.

        Unlike ``SocketClient.irun`` it sends the JSON extras with the forces and
        reports ``NEEDINIT`` after each force so that i-PI's INIT message tells it the
        request (bead) id of the next structure. Serial only (no MPI broadcast).
        """

        def serve(self, evaluator: MonitoredEvaluator) -> int:
            protocol: IPIProtocol = self.protocol
            state = "NEEDINIT"
            request_id = -1
            result = None
            try:
                while True:
                    try:
                        msg = protocol.recvmsg()
                    except SocketClosed:
                        msg = "EXIT"  # the server went away: stop cleanly
                    if msg == "EXIT":
                        return evaluator.n_calls
                    if msg == "STATUS":
                        protocol.sendmsg(state)
                    elif msg == "INIT":
                        rid, _ = protocol.recvinit()
                        request_id = int(np.asarray(rid).reshape(-1)[0])
                        state = "READY"
                    elif msg == "POSDATA":
                        if state != "READY":
                            raise RuntimeError(f"i-PI sent POSDATA in state {state}")
                        cell, _icell, positions = protocol.recvposdata()
                        result = evaluator.evaluate(positions, cell, request_id)
                        state = "HAVEDATA"
                    elif msg == "GETFORCE":
                        if state != "HAVEDATA":
                            raise RuntimeError(f"i-PI sent GETFORCE in state {state}")
                        energy, forces, virial, extras = result
                        payload = np.frombuffer(encode_extras(extras).encode("utf-8"),
                                                dtype=np.byte)
                        protocol.sendforce(energy, forces, virial, morebytes=payload)
                        state, result = "NEEDINIT", None
                    else:
                        raise RuntimeError(f"unexpected i-PI message {msg!r}")
            finally:
                self.close()

    return SymmonSocketClient


def check_address(unix: Optional[str], host: str, port) -> None:
    """One of a unix socket name or an inet port (an integer 1-65535), not both."""
    if unix is None and port is None:
        raise ValueError("give a unix socket name (--unix) or a port (--port)")
    if unix is not None and port is not None:
        raise ValueError("give either --unix or --host/--port, not both")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                             or not 1 <= port <= 65535):
        raise ValueError(f"port {port!r} is not a TCP port: give an integer from 1 to 65535 "
                         "(the <port> of i-PI's <ffsocket mode='inet'>)")
    if unix is not None and not str(unix).strip():
        raise ValueError("the unix socket name is empty: give i-PI's <address>")
    if port is not None and not str(host).strip():
        raise ValueError("the host is empty: give the i-PI server's host name")


def check_seconds(name: str, seconds) -> float:
    """A non-negative finite number of seconds."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(seconds, bool) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a non-negative number of seconds, got {seconds!r}")
    return value


class ServerSilent(ConnectionError):
    """No message from the i-PI server within the receive timeout."""


def connect(unix: Optional[str] = None, host: str = "localhost",
            port: Optional[int] = None, wait: float = 60.0, log=None,
            timeout: Optional[float] = None):
    """Connect to the i-PI server, retrying for ``wait`` seconds while it starts;
    ``timeout``: seconds any later receive may wait for the server (``None``/0: forever)."""
    from ase.parallel import DummyMPI

    cls = _socket_client_class()
    deadline = time.monotonic() + max(0.0, float(wait))
    while True:
        try:
            return cls(host=host, port=port, unixsocket=unix, log=log, comm=DummyMPI(),
                       timeout=timeout or None)
        except (FileNotFoundError, ConnectionRefusedError, socket.gaierror) as error:
            if time.monotonic() >= deadline:
                where = f"unix socket {unix!r}" if unix else f"{host}:{port}"
                raise ConnectionError(f"could not connect to the i-PI server at {where} "
                                      f"within {wait:g} s: {error}") from error
            time.sleep(0.2)


def run_client(model: str, structure: str, *, unix: Optional[str] = None,
               host: str = "localhost", port: Optional[int] = None,
               log: Optional[str] = None, shard=None, overwrite: bool = False,
               non_conservative: bool = False, threads: Optional[int] = 1,
               device: Optional[str] = None, connect_wait: float = 60.0,
               position_tolerance: float = DEFAULT_POSITION_TOLERANCE,
               timeout: float = DEFAULT_TIMEOUT, **monitor_options) -> int:
    """Serve i-PI force requests with the monitored model until i-PI says EXIT.

    ``timeout``: seconds to wait for each message of the server (0: forever); a silent
    server raises :class:`ServerSilent` (the log is closed first).
    Returns the number of force calls served.
    """
    check_address(unix, host, port)
    connect_wait = check_seconds("the connect wait", connect_wait)
    timeout = check_seconds("the receive timeout", timeout)
    set_threads(threads)
    template = read_template(structure)
    base = make_base_calculator(model, non_conservative=non_conservative, device=device)
    log_path = shard_log_path(log, shard) if log else None
    metadata = {"ipi_route": "socket", "ipi_client": None if shard is None else str(shard),
                "ipi_pid": os.getpid(), "ipi_hostname": socket.gethostname(),
                "ipi_address": f"unix:{unix}" if unix else f"{host}:{port}",
                "ipi_model": str(model)}
    evaluator = MonitoredEvaluator(
        template, base, log=log_path, metadata=metadata,
        log_mode="overwrite" if overwrite else "create",
        position_tolerance=position_tolerance, template_name=structure,
        device=device, **monitor_options)
    try:
        client = connect(unix=unix, host=host, port=port, wait=connect_wait,
                         timeout=timeout)
        return client.serve(evaluator)
    except TimeoutError:  # socket.timeout: the server said nothing for `timeout` s
        raise ServerSilent(f"no message from the i-PI server for {timeout:g} s; is it "
                           "still running? (--timeout sets the wait)") from None
    finally:
        evaluator.close()


# ---------------------------------------------------------------------------- command line
def add_ipi_arguments(parser) -> None:
    """Arguments of ``symmon ipi``."""
    parser.description = (
        "Connect to an i-PI server and answer its force requests with "
        "SymmetryMonitor(model); diagnostics go to the HDF5 log and back to i-PI as JSON "
        "extras (keys: " + ", ".join(EXTRAS_KEYS) + "). See docs/ipi.md.")
    parser.add_argument("--pes-path", action="store_true",
                        help="print the path of symmon's i-PI PES file (for <ffdirect> or "
                        "i-pi-py_driver -m custom -P) and exit")
    parser.add_argument("--model", help="metatomic .pt model, or 'emt' for ASE's EMT")
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
    parser.add_argument("--overwrite", action="store_true", help="replace an existing log")
    parser.add_argument("--every", type=every_argument, default="auto", metavar="auto|N",
                        help="auto (default, as SymmetryMonitor): monitor as often as the "
                        "--overhead budget allows (timing-dependent); N: every n-th force "
                        "call (reproducible)")
    parser.add_argument("--overhead", type=float, default=None,
                        help="with --every auto: the monitor's allowed extra time as a "
                        "fraction of the unmonitored calls' (default 0.05: 5 %% slower)")
    parser.add_argument("--random-rotations", type=int, default=3,
                        help="random rotations per monitored call (default 3)")
    parser.add_argument("--full-every", type=int, default=0,
                        help="exact quadrature + spectra every n calls (default 0: never)")
    parser.add_argument("--l-max", type=int, default=4, help="spectra up to l_max (default 4)")
    parser.add_argument("--mode", choices=("monitor", "average", "purified", "random_frame"),
                        default="monitor", help="return the base predictions (monitor), "
                        "their O(3) average, a purified readout's (needs --readout), or the "
                        "prediction in one random O(3) frame per call (random_frame)")
    parser.add_argument("--readout", default=None,
                        help="purified readout file written by symmon purify (--mode purified)")
    parser.add_argument("--threshold", action="append", default=[], metavar="Q=LIMIT",
                        help="problem limit of the relative eps of quantity Q (energy, "
                        "forces, stress), e.g. forces=0.05; repeatable")
    parser.add_argument("--on-violation", choices=("warn", "raise", "average"),
                        default="warn", help="what to do on a step graded problem")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flush-every", type=int, default=50,
                        help="flush the log every n monitored calls (default 50; and every 10 s)")
    parser.add_argument("--non-conservative", action="store_true",
                        help="use the model's direct (non-conservative) forces and stress")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of this client (default 1; 0: torch's default)")
    parser.add_argument("--device", default=None, help="torch device of the model")
    parser.add_argument("--connect-wait", type=float, default=60.0,
                        help="seconds to keep retrying while the server starts (default 60)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="give up (exit code 3) when the server sends nothing for this "
                        "long (default %(default)g; 0: wait forever)")
    parser.add_argument("--position-tolerance", type=float,
                        default=DEFAULT_POSITION_TOLERANCE,
                        help="warn if i-PI's first structure is farther than this (angstrom) "
                        "from the template (default %(default)s; 0: no check)")


def run_ipi(args) -> int:
    """``symmon ipi``."""
    import sys

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
    try:
        calls = run_client(
            args.model, args.structure, unix=args.unix, host=args.host, port=args.port,
            log=args.log, shard=shard, overwrite=args.overwrite,
            non_conservative=args.non_conservative, threads=args.threads,
            device=args.device, connect_wait=args.connect_wait,
            position_tolerance=args.position_tolerance, timeout=args.timeout,
            every=args.every, overhead=args.overhead,
            random_rotations=args.random_rotations, full_every=args.full_every,
            l_max=args.l_max, mode=args.mode, seed=args.seed, flush_every=args.flush_every,
            readout=args.readout, thresholds=parse_thresholds(args.threshold) or None,
            on_violation=args.on_violation)
    except ConnectionError as error:
        print(f"symmon ipi: error: {error}", file=sys.stderr)
        return 3
    where = shard_log_path(args.log, shard) if args.log else "no log"
    print(f"symmon ipi: i-PI finished; served {calls} force calls ({where})",
          file=sys.stderr)
    return 0
