"""Close logs cleanly on SIGTERM, SIGHUP and SIGINT (what batch schedulers and Ctrl-C send).

While at least one registered writer is open, a handler is installed for each
of the three signals (in the main thread only, and not for a signal that was
ignored).  On a signal it closes every registered writer (flush + close: no
buffered step is lost), puts the previous handlers back and lets the signal
take its previous course: the previous Python handler is called (SIGINT:
KeyboardInterrupt), or the default action runs (the process ends with that
signal, as the scheduler expects).  When the last writer closes normally the
previous handlers are restored, so a program embedding the writer keeps its own.

A signal arriving while a writer is inside ``flush`` is held until that flush
is complete (a half-written flush is never closed).
"""

from __future__ import annotations

import os
import signal
import threading
import warnings

SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP", "SIGINT") if hasattr(signal, n))

_writers: list = []   # open writers that asked for signal handling
_previous: dict = {}  # signal -> handler it replaced
_held: list = []      # (signum, frame) received while a writer was busy


def register(writer) -> None:
    """Close ``writer`` (``writer.close_for_signal()``) on the signals above."""
    if threading.current_thread() is not threading.main_thread():
        warnings.warn("symmon log: signal handlers are installed only from the main thread; "
                      "this log is not closed on SIGTERM/SIGHUP/SIGINT", RuntimeWarning,
                      stacklevel=3)
        return
    if not _writers:
        _install()
    _writers.append(writer)


def unregister(writer) -> None:
    if writer in _writers:
        _writers.remove(writer)
        if not _writers:
            _restore()


def deliver_held() -> None:
    """Called by a writer when it leaves ``flush``: handle a signal that came meanwhile."""
    if _held and not any(w.busy for w in _writers):
        _handle(*_held.pop())


def _install() -> None:
    for sig in SIGNALS:
        previous = signal.getsignal(sig)
        if previous is signal.SIG_IGN or previous is None:  # ignored / set outside Python
            continue
        _previous[sig] = previous
        signal.signal(sig, _handle)


def _restore() -> None:
    for sig, previous in list(_previous.items()):
        if signal.getsignal(sig) is _handle:  # never clobber a handler set after ours
            signal.signal(sig, previous)
        del _previous[sig]


def _handle(signum, frame) -> None:
    if any(w.busy for w in _writers):
        _held.append((signum, frame))
        return
    previous = _previous.get(signum, signal.SIG_DFL)
    for writer in list(_writers):
        writer.close_for_signal(signal.Signals(signum).name)
    _writers.clear()
    _restore()
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
