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
"""

from __future__ import annotations

import contextlib
import faulthandler
import os

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


def arm(grace: float) -> None:
    """End the process with status 1 if it is still alive ``grace + MARGIN`` seconds from now."""
    devnull = prepare()
    # A grace of centuries: faulthandler cannot count that far, nor need it.
    with contextlib.suppress(OverflowError):
        faulthandler.dump_traceback_later(grace + MARGIN, exit=True, file=devnull)
