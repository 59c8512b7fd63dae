"""The watchdog: a stop that began ends the process within the grace, whatever happens.

The coordinator ends the process itself when the stop is done. This is what
ends it when the coordinator cannot: the dispatcher stuck in a log handler
whose pipe nobody reads, a hook holding a lock the exit path needs, a main
thread inside a C call, gevent's hub blocked by a hook that never yields.

What it is, and why:

* ``faulthandler.dump_traceback_later(seconds, exit=True)``. Its timer is a
  C thread that waits on a lock with a timeout and then calls ``_exit(1)``.
  It needs neither the GIL nor any Python lock, logs nothing, and is a real
  OS thread under gevent (which patches Python's ``threading``, not C).
* Not a Python thread: CPython 3.12.0 and 3.12.1 refuse to start one once
  the interpreter is finalizing, which is exactly when an at-exit stop runs;
  faulthandler's C thread still starts there (tested on 3.10 to 3.13).
* Not ``signal.alarm``: a Python handler for SIGALRM runs on the main thread,
  which may be the stuck one, and its default action would take the app's
  own use of SIGALRM.
* Its traceback dump goes to ``/dev/null``: stderr may be the stalled pipe.
* What it costs: it ends the process with status 1, not by the signal that
  began the stop, and it replaces any ``dump_traceback_later`` the app set
  (there is one per process). It is armed only for stops that end the
  process, never for ``shutdown()``.
* Arming starts that C thread, and a process at its pids limit (a full
  container, or a flood of connections to a port with a thread each) has
  none to give. The stop then goes on without it, and the bound falls back
  to ``setitimer``: SIGALRM, left at its default action, ends the process
  (status 142) with no thread, no GIL and no lock. Only if the app uses
  SIGALRM or the real-time timer itself is the stop left to its own budgets.
  Either way ``arm`` says what happened, for the report.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal

MARGIN = 2.0
"""Seconds past the grace before the watchdog ends the process: the coordinator's own
ending (waking the main thread, at most 1 s) comes first."""

_devnull: int | None = None


def prepare() -> int:
    """Open the dump's ``/dev/null`` ahead of need (at ``install()``), once per process."""
    global _devnull  # noqa: PLW0603  # one descriptor for the life of the process
    if _devnull is None:
        _devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    return _devnull


def arm(grace: float) -> str | None:
    """End the process if it is still alive ``grace + MARGIN`` seconds from now.

    Returns None, or what the stop goes on without, in words, for the report.
    """
    devnull = prepare()
    try:
        # A grace of centuries: faulthandler cannot count that far, nor need it.
        with contextlib.suppress(OverflowError):
            faulthandler.dump_traceback_later(grace + MARGIN, exit=True, file=devnull)
    except RuntimeError as exc:  # "unable to start watchdog thread"
        problem = f"the watchdog's thread could not start ({exc})"
        free = signal.getsignal(signal.SIGALRM) == signal.SIG_DFL
        if free and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0):
            signal.setitimer(signal.ITIMER_REAL, grace + MARGIN)
            return f"{problem}: SIGALRM ends the process at grace + {MARGIN:g} s instead"
        return f"{problem}, and the app uses SIGALRM: only the stop's budgets bound it"
    return None
