"""The socket client: i-PI's wire protocol (through ASE's ``IPIProtocol``), connection
retries while the server starts, a receive timeout, and one sentence for a server that
goes silent or away.

i-PI talks atomic units on the wire (bohr, hartree); ASE's protocol object converts,
so everything here is in ASE units (angstrom, eV).
"""

from __future__ import annotations

import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from .evaluator import (DEFAULT_POSITION_TOLERANCE, MonitoredEvaluator, encode_extras,
                        make_base_calculator, read_template, set_threads)

#: Seconds the socket client waits for the next message of the server before it gives up.
DEFAULT_TIMEOUT = 600.0
#: ASE's socket client connects unix sockets at this prefix + the name (i-PI's address)
UNIX_PREFIX = "/tmp/ipi_"
#: longest AF_UNIX path (sun_path holds 108 bytes, the last one a NUL)
MAX_UNIX_PATH = 107


class ServerSilent(ConnectionError):
    """No message from the i-PI server within the receive timeout."""


class ServerGone(ConnectionError):
    """The i-PI server closed the connection in the middle of a force call."""


def shard_log_path(log: str, shard) -> str:
    """``run.h5`` + shard ``3`` -> ``run.client-3.h5`` (``None``: ``log`` unchanged)."""
    if shard is None or shard == "":
        return os.fspath(log)
    path = Path(log)
    suffix = path.suffix or ".h5"
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return str(path.with_name(f"{stem}.client-{shard}{suffix}"))


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
    if unix is not None and len(os.fsencode(UNIX_PREFIX + str(unix))) > MAX_UNIX_PATH:
        longest = MAX_UNIX_PATH - len(UNIX_PREFIX)
        raise ValueError(f"--unix {unix!r} is too long: the socket {UNIX_PREFIX}{unix} "
                         f"exceeds the {MAX_UNIX_PATH}-byte limit of unix socket paths; "
                         f"give i-PI and symmon a name of at most {longest} characters")
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


def _socket_client_class():
    from ase.calculators.socketio import IPIProtocol, SocketClient, SocketClosed

    class SymmonSocketClient(SocketClient):
        """ASE's socket client serving a :class:`MonitoredEvaluator`.

        Unlike ``SocketClient.irun`` it sends the JSON extras with the forces and
        reports ``NEEDINIT`` after each force so that i-PI's INIT message tells it the
        request (bead) id of the next structure. Serial only (no MPI broadcast).
        """

        def serve(self, evaluator: MonitoredEvaluator) -> int:
            try:
                return self._serve(evaluator)
            except (BrokenPipeError, ConnectionResetError):
                raise ServerGone(
                    f"the i-PI server closed the connection during a force call, after "
                    f"{evaluator.n_calls} served (it exited or crashed: see its output)"
                    ) from None
            finally:
                self.close()

        def _serve(self, evaluator: MonitoredEvaluator) -> int:
            protocol: IPIProtocol = self.protocol
            state = "NEEDINIT"
            request_id = -1
            result = None
            while True:
                try:
                    msg = protocol.recvmsg()
                except SocketClosed:
                    msg = "EXIT"  # the server went away between calls: stop cleanly
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

    return SymmonSocketClient


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
               timeout: float = DEFAULT_TIMEOUT, readout=None, chunk_size=None,
               announce=None, **monitor_options) -> int:
    """Serve i-PI force requests with the monitored model until i-PI says EXIT.

    ``timeout``: seconds to wait for each message of the server (0: forever); a silent
    server raises :class:`ServerSilent`, one that closes the connection during a force
    call :class:`ServerGone` (the log is closed first, every served call in it).
    ``monitor_options``: :class:`~symmon.monitoring.options.MonitorOptions` fields;
    ``overwrite`` is ``log_mode="overwrite"``.  ``announce(text)`` is told where the
    client connected and how long it waits.  Returns the number of force calls served.
    """
    check_address(unix, host, port)
    connect_wait = check_seconds("the connect wait", connect_wait)
    timeout = check_seconds("the receive timeout", timeout)
    if overwrite:
        if monitor_options.get("log_mode", "overwrite") != "overwrite":
            raise ValueError(f"--overwrite contradicts --log-mode "
                             f"{monitor_options['log_mode']}; give one of them")
        monitor_options["log_mode"] = "overwrite"
    set_threads(threads)
    template = read_template(structure)
    base = make_base_calculator(model, non_conservative=non_conservative, device=device)
    log_path = shard_log_path(log, shard) if log else None
    where = f"unix:{unix}" if unix else f"{host}:{port}"
    metadata = {"ipi_route": "socket", "ipi_client": None if shard is None else str(shard),
                "ipi_pid": os.getpid(), "ipi_hostname": socket.gethostname(),
                "ipi_address": where, "ipi_model": str(model)}
    evaluator = MonitoredEvaluator(
        template, base, log=log_path, metadata=metadata,
        position_tolerance=position_tolerance, template_name=structure, device=device,
        readout=readout, chunk_size=chunk_size, **monitor_options)
    try:
        client = connect(unix=unix, host=host, port=port, wait=connect_wait,
                         timeout=timeout)
        if announce is not None:
            wait = f"waits up to {timeout:g} s" if timeout else "waits without limit"
            announce(f"connected to the i-PI server at {where}; {wait} for each of its "
                     "messages (--timeout)")
        return client.serve(evaluator)
    except TimeoutError:  # socket.timeout: the server said nothing for `timeout` s
        raise ServerSilent(f"no message from the i-PI server for {timeout:g} s; is it "
                           "still running? (--timeout sets the wait)") from None
    finally:
        evaluator.close()


def say(text: str) -> None:
    print(f"symmon ipi: {text}", file=sys.stderr, flush=True)
