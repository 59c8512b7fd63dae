"""aiohttp: the adapter the drain runs through (``lastcall.aiohttp.LastCall`` is the face).

aiohttp's own stop (``web.run_app``'s ``GracefulExit`` on SIGTERM or SIGINT;
``GunicornWebWorker``'s, which clears ``alive``) closes its sites at once and
then waits for its handlers: no pre-stop window, and what the listen backlog
holds is reset as the socket closes. Both handlers are added with
``loop.add_signal_handler``; they are taken off the loop at start-up (asyncio's wake-up fd goes with
the last of them: ``wake_on_signals`` sets one the loop reads, so a signal
another thread takes still wakes it), and the SIGTERM one is run when the
drain begins, once the door is closed:

1. the door (``lastcall._servers.asgi.AsyncioDoor``, as for uvicorn): the
   backlog is handed to aiohttp's own protocol factory and served; new
   connections are refused;
2. aiohttp's own stop then runs as it always does: its sites stop, idle
   keep-alive connections close, ``on_shutdown`` runs (where apps close their
   WebSockets), and it waits for the handlers;
3. the drain waits for the requests ``LastCall``'s middleware counts; at the
   end of the budget they are cancelled, an open WebSocket told 1001 first.

Tested with aiohttp 3.9 to 3.14 (``versions.AIOHTTP``). Undocumented parts
used: asyncio's ``loop._signal_handlers`` (``take_loop_signal``, in
``lastcall._servers.hypercorn``) and ``Server._protocol_factory`` (the door);
``aiohttp/worker.py``'s ``GunicornWebWorker.wsgi`` (the app, or a coroutine
function making it), ``loop``, its SIGTERM handler and ``_notify_waiter_done``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import os
import signal
from typing import TYPE_CHECKING, Any

from lastcall._servers import versions
from lastcall._servers.asgi import DRAIN_BUDGET_SPENT
from lastcall._servers.hypercorn import take_loop_signal

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Collection

    from aiohttp import web

    from lastcall._servers.asgi import AsyncioDoor

__all__ = (
    "TESTED",
    "AiohttpServer",
    "serves_aiohttp",
    "take_server_signals",
    "take_worker_signals",
    "wake_on_signals",
    "worker_app",
)

TESTED = versions.AIOHTTP

_DOOR_WAIT = 5.0  # at most, for the loop to close the door (it is one callback)
_AFTER_CANCEL = 0.15  # after cancelling what overran, for the handlers to end (and say 1001)


class AiohttpServer:
    """The drain's questions, answered on aiohttp's event loop."""

    name = "aiohttp"

    def __init__(  # noqa: PLR0917  # LastCall's own state, handed over once
        self,
        loop: asyncio.AbstractEventLoop,
        live: Collection[asyncio.Task[Any]],
        idle: threading.Event,
        door: AsyncioDoor,
        stop: Callable[[], object] | None,
        full_stop: Callable[[], bool],
        worker_prestop: float,
    ) -> None:
        self.loop = loop
        self._live = live
        self._idle = idle
        self._door = door
        self._stop = stop
        self._full_stop = full_stop
        # A gunicorn worker: the delay on a full stop only (a worker recycled alone has siblings).
        self._worker_prestop = worker_prestop
        self.told = False  # aiohttp's own stop was begun

    def prestop_delay(self) -> float:
        """A worker's own delay, on a full stop only; else the core's pre_stop phase did it."""
        return self._worker_prestop if self._worker_prestop and self._full_stop() else 0.0

    def close_door(self) -> int:
        """Close the door on the loop, then begin aiohttp's own stop there."""
        if not self.loop.is_running():
            return 0
        closing = asyncio.run_coroutine_threadsafe(
            self._door.close(refuse=self._full_stop()), self.loop
        )
        taken = 0
        with contextlib.suppress(concurrent.futures.TimeoutError):
            taken = closing.result(_DOOR_WAIT)
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop)
            self.told = True
        return taken

    def in_flight(self) -> int:
        """Requests and WebSockets in the middleware's count."""
        return len(self._live)

    def wait_idle(self, timeout: float) -> bool:
        """Until the middleware counts nothing in flight."""
        return self._idle.wait(timeout)

    def close_idle(self) -> None:
        """Nothing: aiohttp's own stop closes idle keep-alive connections, and busy ones after."""

    def cancel(self) -> int:
        """Cancel the handlers still running; the middleware tells a WebSocket 1001 first."""
        count = len(self._live)
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self._cancel_in_flight)
            self._idle.wait(_AFTER_CANCEL)
        return count

    def _cancel_in_flight(self) -> None:
        for task in list(self._live):
            task.cancel(DRAIN_BUDGET_SPENT)


def take_server_signals(
    loop: asyncio.AbstractEventLoop, signals: Collection[int]
) -> Callable[[], object] | None:
    """Aiohttp's stop handlers off the loop, before lastcall's go in; the SIGTERM one to run.

    ``web.run_app`` adds ``_raise_graceful_exit`` for SIGINT and SIGTERM
    (``aiohttp/web_runner.py``, ``BaseRunner.setup``): left on the loop, it
    would still run beside lastcall's handler, through the loop's wake-up fd.
    """
    taken = {sig: take_loop_signal(loop, sig) for sig in {signal.SIGTERM, *signals}}
    return taken[signal.SIGTERM] or next((run for run in taken.values() if run), None)


def wake_on_signals(loop: asyncio.AbstractEventLoop) -> None:
    """Have a signal any thread of this process takes wake ``loop``: its handler then runs.

    Python runs a signal's handler on the main thread, between two bytecodes;
    the kernel may hand the signal to another thread (asyncio's executor, which
    ``asyncio.to_thread`` and ``getaddrinfo`` start), and a loop waiting for I/O
    on the main thread is then not woken: the stop would begin at the next
    connection, or never. asyncio wakes its loop through ``signal.set_wakeup_fd``
    while it handles a signal, and drops that with its last handler (taken by
    ``take_server_signals``): a pipe the loop reads is set instead, unless
    someone's wake-up fd is still there. Main thread only.
    """
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)  # positional only
    os.set_blocking(write_end, False)  # positional only
    previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    if previous != -1:  # it wakes its own already
        signal.set_wakeup_fd(previous)
        os.close(read_end)
        os.close(write_end)
        return

    def read() -> None:
        with contextlib.suppress(OSError):
            os.read(read_end, 4096)

    loop.add_reader(read_end, read)


# ---------------------------------------------------------------- gunicorn's aiohttp worker


def serves_aiohttp(worker: Any) -> bool:  # noqa: ANN401  # gunicorn's
    """Whether ``worker`` is aiohttp's ``GunicornWebWorker`` (or its uvloop subclass)."""
    return any(cls.__module__ == "aiohttp.worker" for cls in type(worker).__mro__)


def take_worker_signals(worker: Any) -> Callable[[], object] | None:  # noqa: ANN401  # gunicorn's
    """The worker's SIGTERM and SIGINT handlers off its loop (not running yet); its SIGTERM one.

    ``GunicornWebWorker.init_signals`` adds them with ``loop.add_signal_handler``:
    SIGTERM clears ``alive`` (its loop then stops its sites, waits for its
    handlers and cleans up), SIGINT quits at once. Its SIGQUIT (quick
    shutdown), SIGUSR1, SIGWINCH and SIGABRT handlers stay.
    """
    handle_exit = take_server_signals(worker.loop, (signal.SIGINT,))
    if handle_exit is None:
        return None
    # GunicornWebWorker._run sees ``alive`` cleared at its next notify, up to a second
    # later; its ``_notify_waiter_done`` (aiohttp/worker.py, 3.9 to 3.14) ends that wait now.
    wake: Callable[[], object] = getattr(worker, "_notify_waiter_done", lambda: None)

    def stop() -> None:
        handle_exit()
        wake()

    return stop


def worker_app(worker: Any, adapt: Callable[[web.Application], object]) -> bool:  # noqa: ANN401
    """Have ``adapt`` see the app the worker serves: now, or as its factory makes it.

    ``GunicornWebWorker._run`` serves ``worker.wsgi``: an ``Application``, or a
    coroutine function returning one (or an ``AppRunner``, whose ``app`` it
    serves). False, and nothing done, if it is neither.
    """
    from aiohttp import web  # noqa: PLC0415  # an aiohttp worker only

    app = worker.wsgi
    if isinstance(app, web.Application):
        adapt(app)
        return True
    if not inspect.iscoroutinefunction(app):
        return False

    @functools.wraps(app)
    async def make_app() -> Any:  # noqa: ANN401  # what the factory returns
        made = await app()
        adapt(made.app if isinstance(made, web.AppRunner) else made)
        return made

    worker.wsgi = make_app
    return True
