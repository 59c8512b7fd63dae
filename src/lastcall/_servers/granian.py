"""granian: how its worker is told to stop once lastcall's drain begins, and its master's end.

granian is a Python supervisor around Rust workers. Each worker process
(``granian/server/mp.py``) loads the app, makes a ``WorkerSignal`` (Rust)
and hands it to the Rust server; ``granian/_signals.py`` sets it from the
worker's SIGTERM and SIGINT handlers. Set, the Rust accept loop stops and
drops its listening socket (each worker binds its own, ``SO_REUSEPORT``),
the connections are shut down gracefully (hyper's ``graceful_shutdown``:
what is in flight finishes, idle keep-alive connections close), and once
every connection has ended the ASGI lifespan shutdown is sent. Measured on
granian 2.8.9 as shipped: no pre-stop window, no bound on the wait (its
``--workers-kill-timeout`` is off by default), and the master exits 0.

* **The worker** (``--interface asgi``): at lifespan start-up, which granian
  runs after installing its handlers, the ``WorkerSignal`` is found in the
  frame of granian's worker function (its local ``shutdown_event``) and its
  handlers are taken off the loop: lastcall's run instead (readiness red,
  pre-stop delay while still serving), and the signal is set when the drain
  begins. That is the only moment: granian's handlers are on the loop, where
  uvloop (granian's default when installed) keeps them out of Python's reach,
  and the Rust server names its listening socket nowhere.
* **The WSGI worker** (``--interface wsgi``, under ``python -m
  lastcall.granian`` only: plain granian gives a WSGI app no moment between
  installing its handlers and serving): the worker function is replaced by
  one that has ``set_sync_signals`` hand back granian's signal with lastcall's
  handlers in place of granian's; the drain waits on what the app's
  ``lastcall.wsgi.LastCallMiddleware`` counts (a WSGI thread cannot be
  cancelled: the stop goes on at the budget's end). Its main thread then
  waits for the server's end in ``threading.Event().wait()``, which only a
  signal delivered to that thread interrupts; the kernel may hand SIGTERM
  to one of the Rust server's threads instead, whose C handler only marks
  it for the main thread, and the stop would never begin (granian's master
  waiting for that worker forever). That wait is made in steps
  (``_MainThreadEvent``): the handler runs at the next one.
* **The door**: the Rust listener is found in ``/proc/self/fd`` (every
  listening socket of the worker but lastcall's health port), and before the
  signal is set it admits no new handshake; the Rust accept loop takes what
  is queued before it looks at the signal (a ``biased`` select,
  ``src/workers.rs``), then drops the socket: a new client's SYN is dropped,
  sent again a second later, and refused.
* **The master** handles the signal in Python (``granian/server/common.py``:
  SIGTERM to each worker, ``join`` with no timeout, exit 0), so ``python -m
  lastcall.granian`` ends it by the signal instead, as for hypercorn.

Tested with granian 2.8 (``versions.GRANIAN``). Undocumented: the local
``shutdown_event`` of the ASGI worker functions and ``callback`` of the WSGI
one in ``granian/server/mp.py``, ``MPServer._spawn_wsgi_worker`` (replaced),
``granian/_signals.py``'s ``set_sync_signals`` (wrapped, in the worker), and the
``threading`` that ``granian/server/mp.py`` makes the WSGI worker's ``evp`` with. The
free-threaded build runs workers as threads (``granian/server/mt.py``), and
``--interface asginl`` and ``rsgi`` give the app no moment at all: not adapted.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import multiprocessing
import os
import signal
import socket
import sys
import threading
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lastcall
from lastcall._integration import Integration
from lastcall._log import logger
from lastcall._servers import versions
from lastcall._servers.drain import drain
from lastcall._servers.listener import admit_no_more_to, listening

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable
    from types import FrameType

    from lastcall._coordinator import Coordinator
    from lastcall.wsgi import LastCallMiddleware

__all__ = ("TESTED", "hold_worker_signal", "hold_wsgi_workers", "run_ended_loop")

TESTED = versions.GRANIAN
_WORKER_FILE = ("granian", "server", "mp.py")


def hold_worker_signal(
    loop: asyncio.AbstractEventLoop, coordinator: Coordinator
) -> Callable[[], None] | None:
    """In granian's worker, take its stop signal off ``loop``; how to stop it, or None.

    Called from the lifespan start-up granian runs in its worker function
    (``_spawn_asgi_lifespan_worker``), which holds the ``WorkerSignal`` as
    ``shutdown_event``; anywhere else, None and nothing is touched.
    """
    if "granian" not in sys.modules:
        return None
    frame: FrameType | None = sys._getframe(1)  # noqa: SLF001  # the worker function is up here
    while frame is not None:
        if Path(frame.f_code.co_filename).parts[-3:] == _WORKER_FILE:
            worker_signal = frame.f_locals.get("shutdown_event")
            if worker_signal is not None:
                break
        frame = frame.f_back
    else:
        return None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)  # granian/_signals.py set_loop_signals added them

    def stop() -> None:
        """No new handshake on granian's listener; then granian's own stop."""
        admit_no_more_to(_granian_listeners(coordinator.health_address))
        worker_signal.set()

    return stop


def run_ended_loop(loop: asyncio.AbstractEventLoop, coordinator: Coordinator) -> bool:
    """Run granian's worker loop again, on a thread, until the stop is done, if it had ended.

    ``sys.exit()`` (or an exception uvloop does not catch) on the worker's main thread
    ends granian's ``loop.run_until_complete`` (``granian/server/mp.py``), and nothing runs
    the loop again (no ``asyncio.run`` teardown): the requests in flight on it, the lifespan
    shutdown and async hooks would wait for it in vain. The stop then begins at the
    worker's exit, on its main thread, while the Rust server still serves what it holds.
    Whether the loop had ended.
    """
    if loop.is_running() or loop.is_closed():
        return False
    running = threading.Event()
    loop.call_soon_threadsafe(running.set)
    threading.Thread(target=loop.run_forever, name="lastcall-granian-loop", daemon=True).start()

    def stop_it(_report: object) -> None:
        loop.call_soon_threadsafe(loop.stop)

    coordinator.when_done(stop_it)
    running.wait(_LOOP_START_WAIT)
    return True


def _granian_listeners(health: tuple[str, int] | None) -> dict[int, int]:
    """Granian's listening sockets in this worker (all but lastcall's health port), by inode.

    granian 2.8 binds one per worker in Rust; before, the master's, inherited (which a
    Python socket object of granian's holds too, in the worker's copy of the master).
    """
    found = {}
    for inode, fd in listening().items():
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
            address = sock.getsockname()
            if health is None or not isinstance(address, tuple) or address[1] != health[1]:
                found[inode] = fd
    return found


# ---------------------------------------------------------------- python -m lastcall.granian, WSGI

_LOOP_START_WAIT = 1.0  # seconds, at most, for the loop run again to take its first turn
_WSGI_WORKER = "_spawn_wsgi_worker"  # granian/server/mp.py, MPServer's WSGI worker function
_MAIN_THREAD_STEP = 0.1  # seconds: at most this late, a stop signal another thread took begins
_original_worker: list[Callable[..., None]] = []


def hold_wsgi_workers() -> None:
    """Have each WSGI worker granian spawns hold its stop for lastcall's drain.

    granian hands the worker function to each worker process it spawns, pickled
    by name where it spawns rather than forks: replaced here by
    :func:`_run_wsgi_worker`, it runs first in the worker and the original follows.
    """
    server = importlib.import_module("granian.server.mp").MPServer
    if not _original_worker:
        _original_worker.append(getattr(server, _WSGI_WORKER))
        setattr(server, _WSGI_WORKER, staticmethod(_run_wsgi_worker))


def _run_wsgi_worker(*args: Any, **kwargs: Any) -> None:  # noqa: ANN401  # granian's
    """Granian's WSGI worker function, whose ``set_sync_signals`` holds the stop for lastcall."""
    signals = importlib.import_module("granian._signals")
    original = (
        _original_worker[0]
        if _original_worker
        else getattr(importlib.import_module("granian.server.mp").MPServer, _WSGI_WORKER)
    )  # spawned: granian's own, imported afresh
    signals.set_sync_signals = functools.partial(_hold_sync_signals, signals.set_sync_signals)  # type: ignore[attr-defined]
    original(*args, **kwargs)


def _hold_sync_signals(set_sync_signals: Callable[[], Any]) -> Any:  # noqa: ANN401  # granian's
    """Granian's worker signal, set when lastcall's drain begins, not by granian's handlers.

    Called by the WSGI worker function once it loaded the app (its local
    ``callback``); an app in no ``lastcall.wsgi.LastCallMiddleware`` keeps
    granian's own stop, said in one line.
    """
    from lastcall.wsgi import middlewares_in  # noqa: PLC0415  # imports lastcall's core

    app = sys._getframe(1).f_locals.get("callback")  # noqa: SLF001
    layers = middlewares_in(app)
    if not layers:
        logger.warning("%r is in no lastcall.wsgi.LastCallMiddleware: granian stops it alone", app)
        return set_sync_signals()
    worker_signal = set_sync_signals()  # granian's kind of signal (2.5: WorkerSignalSync)
    for sig in (signal.SIGINT, signal.SIGTERM):  # its handlers set it at once: lastcall's instead
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    coordinator = lastcall.default
    worker = _WsgiWorker(layers[0], worker_signal, coordinator)
    coordinator.on_shutdown(phase="drain", name="granian drain")(
        functools.partial(drain, worker, coordinator)
    )
    Integration(coordinator).ensure_installed()
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid is not None:
        Integration(coordinator).stop_when_parent_dies(
            parent.pid, f"granian's master {parent.pid} died"
        )
    # granian/server/mp.py, the WSGI worker function: ``evp = threading.Event()`` once this
    # returns, then ``evp.wait()`` on the main thread until the server has stopped.
    importlib.import_module("granian.server.mp").threading = _THREADING  # type: ignore[attr-defined]
    TESTED.check()
    return worker_signal


class _MainThreadEvent(threading.Event):
    """What granian's WSGI worker's main thread waits on until the server has stopped.

    Python runs a signal's handler on the main thread only, when it runs
    bytecode; a signal the kernel delivers to another thread does not wake it
    from a lock. Waiting in steps, it runs the handler at the next one.
    """

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is not None:
            return super().wait(timeout)
        while not super().wait(_MAIN_THREAD_STEP):
            pass
        return True


_THREADING = types.SimpleNamespace(Event=_MainThreadEvent)  # all mp.py takes from threading


class _WsgiWorker:
    """The drain's answers in a granian WSGI worker: the middleware counts, granian stops."""

    def __init__(
        self,
        middleware: LastCallMiddleware,
        worker_signal: Any,  # noqa: ANN401  # granian's WorkerSignal
        coordinator: Coordinator,
    ) -> None:
        self.name = f"granian worker {os.getpid()}"
        self._middleware = middleware
        self._signal = worker_signal
        self._coordinator = coordinator

    def prestop_delay(self) -> float:
        return 0.0  # the core's pre_stop phase kept serving

    def close_door(self) -> int:
        """No new handshake on granian's listener; then granian's own stop (it takes the queue)."""
        admit_no_more_to(_granian_listeners(self._coordinator.health_address))
        self._signal.set()
        return 0

    def in_flight(self) -> int:
        return self._middleware.in_flight

    def wait_idle(self, timeout: float) -> bool:
        return self._middleware.wait_idle(timeout)

    def close_idle(self) -> None:
        """Granian closes idle keep-alive connections itself once stopped."""

    def cancel(self) -> int:
        return 0  # a WSGI request runs on a thread of granian's: nothing can cancel it
