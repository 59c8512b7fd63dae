"""aiohttp, stopped in order: ``LastCall(app)`` before ``web.run_app(app)``.

::

    app = web.Application()
    app.add_routes(routes)
    LastCall(app)
    web.run_app(app)

Or under gunicorn, with the worker's own settings and lastcall's hooks::

    gunicorn app:app -k aiohttp.GunicornWebWorker -c python:lastcall.gunicorn

(there ``LastCall(app)`` is done for you if the app did not). On SIGTERM or
SIGINT (``LASTCALL_SIGNALS``), through ``lastcall.install()``:

1. ``/readyz`` answers 503 (``/livez`` stays 200; both answered by a
   middleware put first in the app's), and the app keeps serving for
   ``LASTCALL_PRESTOP_DELAY`` seconds; responses carry ``Connection: close``;
2. the connections the listen backlog holds are taken and served, and the
   listening socket is shut: new connections are refused, not reset; then
   aiohttp's own stop runs as it always does (its sites stop, idle
   keep-alive connections close, ``on_shutdown`` runs, where apps close
   their WebSockets);
3. requests in flight, and WebSocket handlers, finish within the drain
   budget (the grace, ``LASTCALL_GRACE``, less the pre-stop delay and what
   the hooks after the drain keep); those still running then are
   cancelled, an open WebSocket first sent close code 1001 (going away), and
   the requests named in the report;
4. lastcall's hooks run, async ones on aiohttp's loop; the app's
   ``on_cleanup`` (and ``cleanup_ctx``) comes last, in the ``final`` phase;
   the process ends by the signal (or ``LASTCALL_EXIT_CODE``). A second Ctrl-C
   ends it at once.

aiohttp's ``shutdown_timeout`` (60 s by default; gunicorn's worker sets 95 %
of ``--graceful-timeout``) still cancels handlers on its own if it is the
shorter. Nothing is adapted until the app starts (its ``on_startup``), in
the process and on the loop that serve it. How it is done, and which parts
of aiohttp it relies on: ``lastcall._servers.aiohttp``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

import lastcall
from lastcall._config import resolve
from lastcall._health import (
    ALIVE,
    HEADERS,
    READY,
    HealthPaths,
    check_paths,
    not_ready_body,
    stopping_body,
)
from lastcall._integration import Integration
from lastcall._log import logger
from lastcall._servers import aiohttp as adapter
from lastcall._servers.asgi import AsyncioDoor
from lastcall._servers.drain import drain
from lastcall._servers.inflight import in_report

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ("LastCall",)

_GOING_AWAY = 1001  # the WebSocket close code for a server going down (RFC 6455, 7.4.1)
# At most, for a cancelled WebSocket's close: the frame goes out at once, but once aiohttp's
# own stop has begun it reads nothing more (aiohttp/web_protocol.py, data_received), so the
# client's reply never arrives; the wait then ends by closing the connection.
_LAST_WORD_WAIT = 0.1


class _Exchange:
    """One request in flight: what it is, since when, and its WebSocket if it opened one."""

    __slots__ = ("began", "method", "path", "ws")

    def __init__(self, method: str, path: str) -> None:
        self.method = method
        self.path = path
        self.began = time.monotonic()
        self.ws: web.WebSocketResponse | None = None

    async def last_word(self) -> None:
        """Cancelled while stopping: close code 1001 to a WebSocket still open."""
        ws = self.ws
        if ws is None or ws.closed:
            return
        try:
            await asyncio.wait_for(
                ws.close(code=_GOING_AWAY, message=b"going away"), _LAST_WORD_WAIT
            )
        except Exception as exc:  # the client may be gone: nothing to tell
            logger.debug("could not close a cancelled WebSocket cleanly: %r", exc)


class LastCall(HealthPaths):
    """lastcall's stop for one ``aiohttp.web.Application``; make it before the app runs."""

    _key: web.AppKey[LastCall] = web.AppKey("lastcall", object)  # type: ignore[arg-type]

    def __init__(
        self,
        app: web.Application,
        *,
        livez_path: str | None = "/livez",
        readyz_path: str | None = "/readyz",
    ) -> None:
        if not isinstance(app, web.Application):
            raise TypeError(f"LastCall() takes an aiohttp.web.Application, not {app!r}")
        if app.frozen:
            raise RuntimeError("LastCall(app) must come before the app runs (web.run_app(app))")
        if self._key in app:
            raise RuntimeError("LastCall(app) was called on this app already; once is enough")
        check_paths(livez_path, readyz_path)
        coordinator = self._coordinator = lastcall.default
        if not coordinator.installed:
            resolve()  # a bad LASTCALL_* setting fails here, before the server starts
        self.app = app
        self._livez_path = livez_path
        self._readyz_path = readyz_path
        self._stopping = coordinator.stopping
        # What is in flight, by the task serving it; touched on the loop's thread only.
        self._live: dict[asyncio.Task[Any], _Exchange] = {}
        self._idle = threading.Event()  # set while nothing is in flight; the drain waits on it
        self._idle.set()
        self._server: adapter.AiohttpServer | None = None
        self._released: asyncio.Event | None = None  # on_cleanup may go on (the final phase)
        self._cleanup_held = False  # aiohttp reached on_cleanup during lastcall's stop
        self._main_done = threading.Event()  # the task that runs the app has ended
        # Set by lastcall.gunicorn in a GunicornWebWorker (in_gunicorn_worker).
        self._worker_stop: Callable[[], object] | None = None
        self._full_stop: Callable[[], bool] = lambda: True
        self._worker_prestop = 0.0
        app[self._key] = self
        app.middlewares.insert(0, web.middleware(functools.partial(LastCall._middleware, self)))
        app.on_response_prepare.append(self._note_websocket)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.insert(0, self._hold_cleanup)  # before cleanup_ctx's and the app's own

    @classmethod
    def of(cls, app: web.Application) -> LastCall:
        """The app's ``LastCall``, made now if the app has none."""
        return app[cls._key] if cls._key in app else cls(app)

    def in_gunicorn_worker(
        self, stop: Callable[[], object] | None, full_stop: Callable[[], bool], prestop: float
    ) -> None:
        """For ``lastcall.gunicorn``: the worker's own stop, whether all stop, its delay."""
        self._worker_stop = stop
        self._full_stop = full_stop
        self._worker_prestop = prestop

    # ------------------------------------------------------------ on aiohttp's loop

    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        path = request.path
        if path == self._livez_path:
            return web.Response(body=ALIVE, headers=HEADERS)
        if path == self._readyz_path:
            return self._readyz()
        task = asyncio.current_task()
        if task is None:  # pragma: no cover  # aiohttp runs each handler in a task
            return await handler(request)
        exchange = self._live[task] = _Exchange(request.method, path)
        self._idle.clear()
        try:
            response = await handler(request)
        except asyncio.CancelledError:
            if self._stopping.is_set():
                await exchange.last_word()
            raise
        finally:
            del self._live[task]
            if not self._live:
                self._idle.set()
        if self._stopping.is_set() and not response.prepared:
            response.force_close()  # Connection: close, then the connection ends
        return response

    def _readyz(self) -> web.Response:
        if self._stopping.is_set():
            return web.Response(status=503, body=stopping_body(len(self._live)), headers=HEADERS)
        not_ready = not_ready_body(self._coordinator)
        if not_ready is not None:
            return web.Response(status=503, body=not_ready, headers=HEADERS)
        return web.Response(body=READY, headers=HEADERS)

    async def _note_websocket(self, _request: web.Request, response: web.StreamResponse) -> None:
        """``on_response_prepare``: a WebSocket's handshake goes out; note it for a last word."""
        task = asyncio.current_task()
        if isinstance(response, web.WebSocketResponse) and task in self._live:
            self._live[task].ws = response

    async def _on_startup(self, _app: web.Application) -> None:
        """In the process and on the loop that serve the app: take the stop."""
        loop = asyncio.get_running_loop()
        coordinator = self._coordinator
        Integration(coordinator).expect_serving()
        adapter.TESTED.check()
        stop = self._worker_stop
        if threading.current_thread() is threading.main_thread():
            stop = adapter.take_server_signals(loop, coordinator.settings.signals) or stop
            Integration(coordinator).ensure_installed()
            adapter.wake_on_signals(loop)
        elif not coordinator.installed:
            logger.warning(
                "aiohttp runs off the main thread: call lastcall.install() on the main thread "
                "for lastcall to see the stop signals"
            )
        coordinator.use_loop(loop)
        door = AsyncioDoor(loop, listening=Integration(coordinator).serving)
        if "create_server" not in getattr(loop, "__dict__", {}):  # uvloop: the door sees nothing
            Integration(coordinator).serving()
        self._server = adapter.AiohttpServer(
            loop, self._live, self._idle, door, stop, self._full_stop, self._worker_prestop
        )
        self._released = asyncio.Event()
        main = asyncio.current_task()
        if main is not None:  # run_app's task, or the gunicorn worker's: it ends last
            main.add_done_callback(lambda _: self._main_done.set())
        coordinator.on_shutdown(phase="drain", name="aiohttp drain")(
            functools.partial(drain, self._server, coordinator)
        )
        coordinator.on_shutdown(phase="final", name="aiohttp on_cleanup")(self._let_cleanup_run)
        Integration(coordinator).list_requests_with(self.requests_in_flight)

    async def _hold_cleanup(self, _app: web.Application) -> None:
        """``on_cleanup``, first: during lastcall's stop, wait for its ``final`` phase."""
        if self._coordinator.state == "stopping" and self._released is not None:
            self._cleanup_held = True
            await self._released.wait()

    # ------------------------------------------------------------ the stop (dispatcher side)

    def _let_cleanup_run(self) -> None:
        """The final hook: the app's ``on_cleanup`` runs, and aiohttp ends; wait for that.

        Not if aiohttp was never told to stop and is not stopping on its own (the
        app's runner took no signal): it would not end.
        """
        server, released = self._server, self._released
        if server is None or released is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed already
            server.loop.call_soon_threadsafe(released.set)
        if server.told or self._cleanup_held:
            self._main_done.wait(self._coordinator.time_left())

    def requests_in_flight(self) -> list[dict[str, Any]]:
        """The HTTP requests in flight: method, path, seconds so far (for the report)."""
        now = time.monotonic()
        return [
            in_report(exchange.method, exchange.path, exchange.began, now)
            for exchange in list(self._live.values())
            if exchange.ws is None
        ]
