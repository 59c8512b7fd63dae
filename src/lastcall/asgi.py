r"""ASGI middleware for uvicorn, hypercorn, granian: health that tells the truth, a stop in order.

``LastCallMiddleware(app)`` wraps any ASGI 3 app (FastAPI, Starlette,
Quart ...). It answers ``/livez`` and ``/readyz`` like its WSGI twin
(``lastcall.wsgi``): readiness goes red (503) the moment the stop begins
while liveness stays green; responses sent while stopping carry
``Connection: close``; requests (and WebSockets) count as in flight from
the moment they enter until the app returns.

How the stop runs, and who does what
------------------------------------
Everything happens in the coordinator's one stop sequence, on its
dispatcher thread, while the server's event loop keeps running:

1. ``pre_stop``: ``lastcall.stopping`` is set (readiness red, long-lived
   responses see it), then ``LASTCALL_PRESTOP_DELAY`` seconds pass while the
   server **still accepts and serves**, so a load balancer notices first.
2. ``drain``: only now is the server told to stop, through its own
   mechanism: it stops accepting and finishes what it holds. The drain is
   bounded by the grace period even when the server's own timeout is unset
   (uvicorn waits forever by default): what is still running when the
   budget ends is cancelled, as uvicorn's own timeout would.
3. ``workers``, ``cleanup``, ``final``: the hooks. Async hooks run on the
   **server's own loop** (``Coordinator.use_loop``), so they can close
   clients bound to it. The app's own lifespan shutdown (FastAPI's
   ``lifespan``, Starlette's ``on_shutdown``) is one of these hooks, in
   ``final``, so it runs after every ``cleanup`` hook, whenever that was
   registered.
4. The coordinator ends the process as for any stop: a SIGTERM ends it by
   SIGTERM (status 143) unless ``LASTCALL_EXIT_CODE`` is set, and each hook
   runs once. Nothing is left for ``atexit`` to run twice.

Working with the servers' signal handling
-----------------------------------------
These servers stop accepting the moment they see SIGTERM, which leaves no
pre-stop window, so at lifespan start-up (which each runs on the main
thread, after installing its handlers) the middleware steps in front:
the server's own stop is kept and run when the drain begins. How, per
server, is in ``lastcall._servers.uvicorn``, ``.hypercorn`` and
``.granian`` (whose Rust listener is closed its own way there); the door
(backlog served, new connections refused, for hypercorn's master too) in
``lastcall._servers.asgi``. Nothing is adapted
when the middleware is built, only once a server runs it: a module may
build a wrapped app it does not serve. gunicorn's ``-k asgi`` starts it
earlier, in gunicorn's own hook, on the worker's loop (``serve_on``). With
``hypercorn.asyncio.serve(..., shutdown_trigger=middleware.shutdown_trigger)``
nothing is taken: the trigger simply returns when the drain begins.

A **worker whose master died** (SIGKILL, OOM) notices within 0.2 s
(``Integration.stop_when_parent_dies``) and stops as if told to,
instead of serving as an orphan. Where the server
cannot be told to stop, the drain waits for the requests in flight.

Whatever began the stop, a lifespan shutdown that arrives while the
process is still running starts it too, so a server's own reasons to stop
(``--limit-max-requests``, a reload) run the hooks as well.

Long-lived responses
--------------------
An SSE generator or a WebSocket loop should end on its own when the stop
begins, rather than be cancelled at the end of the drain::

    async def events():
        while not await lastcall.stopping.wait_async(1.0):
            yield "data: tick\n\n"

The token is also in the lifespan state, so per request it is
``request.state.lastcall_stopping`` (Starlette, FastAPI) or
``scope["state"]["lastcall_stopping"]``.

What the drain budget cuts short still ends the way its client expects:
as the task is cancelled, a WebSocket the app accepted and never closed is
sent close code 1001 (going away), so its client reconnects elsewhere
instead of seeing a dropped connection; a ``text/event-stream`` response
(SSE) gets a clean end (its final empty body) after the last event sent.
Other responses are left cut: a download ended cleanly would look
complete. Only what is cancelled pays for this, and the HTTP requests
among it are listed in the report (method, path, seconds in flight).
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import lastcall
from lastcall import systemd
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
from lastcall._hooks import is_coroutine_function
from lastcall._integration import Integration
from lastcall._log import logger
from lastcall._servers import daphne, granian, hypercorn, uvicorn
from lastcall._servers.asgi import DRAIN_BUDGET_SPENT, AsgiServer, AsyncioDoor
from lastcall._servers.drain import drain
from lastcall._servers.inflight import in_report
from lastcall._signals import SignalHandlers
from lastcall._stoptoken import resolve_future

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    from lastcall import Coordinator
    from lastcall._stoptoken import StopToken

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]
    ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

__all__ = ("LastCallMiddleware",)

_SERVER_STARTED_POLL = 0.02
_SERVER_STARTED_WAIT = 10.0
_GOING_AWAY = 1001  # the WebSocket close code for a server going down (RFC 6455, 7.4.1)
_LAST_WORD_WAIT = 1.0  # at most, for the server to send a cancelled exchange's last message
_monotonic = time.monotonic


class LastCallMiddleware(HealthPaths):
    """Wrap an ASGI app: health endpoints, requests in flight, and the stop in order.

    ``coordinator`` defaults to ``lastcall.default``. A path of ``None``
    switches that endpoint off. ``drain_timeout`` caps the drain; by default
    it is what the grace period leaves after the pre-stop delay, less a
    reserve for the hooks (``Integration.drain_budget``).
    ``take_signals=False`` leaves the server's signal handling alone (no
    pre-stop window; the stop begins with the lifespan shutdown).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        coordinator: Coordinator | None = None,
        livez_path: str | None = "/livez",
        readyz_path: str | None = "/readyz",
        drain_timeout: float | None = None,
        take_signals: bool = True,
    ) -> None:
        if isinstance(app, LastCallMiddleware):
            raise TypeError(
                "LastCallMiddleware: this app is one already (lastcall.django wraps what "
                "get_asgi_application() returns); wrap an app once"
            )
        if not callable(app) or not is_coroutine_function(app):
            hint = " (a WSGI app? use lastcall.wsgi.LastCallMiddleware)" if callable(app) else ""
            raise TypeError(
                "LastCallMiddleware needs an ASGI 3 app, an async callable taking "
                f"(scope, receive, send); got {app!r}{hint}"
            )
        if coordinator is None:
            coordinator = lastcall.default
        elif not isinstance(coordinator, lastcall.Coordinator):
            raise TypeError(f"coordinator must be a lastcall.Coordinator; got {coordinator!r}")
        check_paths(livez_path, readyz_path)
        if not coordinator.installed:
            resolve()  # a bad LASTCALL_* setting fails here, at start-up, in one line
        if drain_timeout is not None and (
            isinstance(drain_timeout, bool)
            or not isinstance(drain_timeout, (int, float))
            or not drain_timeout > 0
        ):
            raise ValueError(
                f"drain_timeout must be a positive number of seconds; got {drain_timeout!r}"
            )
        self._app = app
        self._coordinator = coordinator
        self._stopping = coordinator.stopping
        self._livez_path = livez_path
        self._readyz_path = readyz_path
        self._drain_timeout = drain_timeout
        self._take_signals = take_signals
        # What is in flight, by the task serving it; touched on the loop's thread only.
        self._live: dict[asyncio.Task[Any], _Exchange] = {}
        self._idle = threading.Event()  # set while nothing is in flight; waited on by the drain
        self._idle.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server_stop: Callable[[], object] | None = None
        self._granian_loop: asyncio.AbstractEventLoop | None = None  # granian's worker's
        self._server: object = None  # uvicorn's Server, when its handler was found
        self._drain_began = threading.Event()  # for shutdown_trigger
        self._server_drained = threading.Event()  # the server sent the lifespan shutdown
        self._started = False
        self._adapter: AsgiServer | None = None
        self._hypercorn_worker = False  # known at start-up: nothing is adapted before
        self._listeners: Callable[[], list[Any]] = list
        self._close_idle: Callable[[], object] | None = None
        self._close_listeners: Callable[[bool], int] | None = None
        self._writing: Callable[[], bool] | None = None  # daphne's: Twisted holds writes
        self._master_stopping: Callable[[], bool] | None = None
        self._worker_prestop = 0.0
        self._install_options: dict[str, Any] = {}
        daphne.when_serving(self, self._serve_under_daphne)

    def install_with(self, options: dict[str, Any]) -> None:
        """For integrations: the options ``install()`` gets at start-up (Django's settings)."""
        self._install_options = options

    def share_listeners(self, master_stopping: Callable[[], bool], prestop: float = 0.0) -> None:
        """A master and sibling workers hold our listening sockets (gunicorn's UvicornWorker).

        ``master_stopping()`` says whether they all stop too: only then is the
        socket shut for everyone, and only then does the worker keep serving
        for ``prestop`` seconds first; a worker recycled alone does neither.
        """
        self._master_stopping = master_stopping
        self._worker_prestop = prestop

    def serve_on(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        stop: Callable[[], object] | None,
        listeners: Callable[[], list[Any]],
        close_idle: Callable[[], object] | None = None,
    ) -> None:
        """For integrations that run the server themselves (gunicorn's ``-k asgi``): start now.

        ``loop`` is the server's, not yet running; ``stop()`` begins the
        server's own graceful stop, which ends by sending the lifespan
        shutdown (None: the server is not told, and the drain waits for what
        the middleware counts); ``listeners()`` gives its asyncio servers, for
        the door; ``close_idle()``, run on the loop while the drain waits,
        closes the keep-alive connections idle now (None: the server does).
        The server's own handlers must be off the stop signals: lastcall's
        are installed here unless they already are.
        """
        self._server_stop = stop
        self._listeners = listeners
        self._close_idle = close_idle
        self._start(loop)

    def _serve_under_daphne(
        self, loop: asyncio.AbstractEventLoop, door: daphne.TwistedDoor
    ) -> None:
        """Daphne sends no lifespan: start as its reactor runs; the drain waits on our count."""
        # Hooks of a phase run last registered first: this one after the drain's.
        self._coordinator.on_shutdown(phase="drain", name="daphne's writes")(door.flush)
        self._close_listeners = door.close
        self._writing = door.writing
        self.serve_on(loop, stop=None, listeners=list, close_idle=door.close_idle)

    def wrap_inner(self, wrapper: Callable[[ASGIApp], ASGIApp]) -> None:
        """Wrap the app inside this middleware (``lastcall drill`` puts its slow requests there)."""
        self._app = wrapper(self._app)

    async def shutdown_trigger(self) -> None:
        """Returns when the drain begins: ``hypercorn.asyncio.serve(..., shutdown_trigger=)``."""
        if self._drain_began.is_set():
            return
        began: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._server_stop = functools.partial(resolve_future, began)
        await began

    # ------------------------------------------------------------ requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Health paths first, then the app, counted; the lifespan is ours to run."""
        kind = scope["type"]
        if kind == "http":
            path = scope.get("path", "")
            if path == self._readyz_path:
                await self._readyz(scope, send)
                return
            if path == self._livez_path:
                await _json(scope, send, 200, ALIVE)
                return
            await self._counted(scope, receive, send)
        elif kind == "websocket":
            await self._counted(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self._app(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        live = self._live
        if task is None:  # not inside a task: nothing to count or cancel
            await self._app(scope, receive, send)
            return
        exchange = _Exchange(scope, send, self._stopping)
        live[task] = exchange
        self._idle.clear()
        try:
            if scope["type"] == "websocket":
                await self._app(scope, exchange.websocket_receive(receive), exchange.send)
            else:
                await self._app(scope, receive, exchange.send)
        except asyncio.CancelledError as cancelled:
            if await exchange.last_word() and cancelled.args == (DRAIN_BUDGET_SPENT,):
                # Ended as its client expects, by the drain's own cancel: for the server,
                # this exchange is over, not an error of the app to log with a traceback.
                if sys.version_info >= (3, 11):
                    task.uncancel()
                return
            raise
        finally:
            live.pop(task, None)
            if not live:
                self._idle.set()

    def requests_in_flight(self) -> list[dict[str, Any]]:
        """The HTTP requests in flight: method, path, seconds so far (for the report)."""
        now = _monotonic()
        return [
            in_report(
                exchange.scope.get("method", ""),
                exchange.scope.get("path", ""),
                exchange.began,
                now,
            )
            for exchange in list(self._live.values())
            if exchange.scope["type"] == "http"
        ]

    async def _readyz(self, scope: Scope, send: Send) -> None:
        if not self._stopping.is_set():
            Integration(self._coordinator).serving()  # a request answered here: the server serves
            not_ready = not_ready_body(self._coordinator)
            await _json(scope, send, 200 if not_ready is None else 503, not_ready or READY)
            return
        body = stopping_body(len(self._live))
        await _json(scope, send, 503, body)

    # ------------------------------------------------------------ lifespan

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app's lifespan as a sub-protocol, with ours around it."""
        loop = asyncio.get_running_loop()
        message = await receive()
        if message["type"] != "lifespan.startup":
            raise RuntimeError(f"expected lifespan.startup from the server, got {message['type']}")
        if isinstance(scope.get("state"), dict):
            scope["state"]["lastcall_stopping"] = self._stopping
        Integration(self._coordinator).expect_serving()  # /readyz: starting, until _serving
        app = _AppLifespan(self._app, scope)
        answer = await app.exchange(message)
        if answer is not None and answer["type"] == "lifespan.startup.failed":
            await send(answer)
            return
        if answer is not None:  # the app runs a lifespan of its own: its shutdown is a hook
            self._coordinator.on_shutdown(phase="final", name="the app's lifespan shutdown")(
                app.shut_down
            )
        self._start(loop)
        await send({"type": "lifespan.startup.complete"})
        ready = loop.create_task(self._serving())

        await receive()  # lifespan.shutdown: the server has drained
        self._server_drained.set()
        if not self._stopping.is_set():
            self._coordinator.trigger("the server began its own shutdown")
        finished: asyncio.Future[None] = loop.create_future()

        def done(_report: object) -> None:
            loop.call_soon_threadsafe(resolve_future, finished)

        self._coordinator.when_done(done)
        if self._coordinator.report is None:
            await finished  # the coordinator usually ends the process before this returns
        ready.cancel()
        app.close()
        await send({"type": "lifespan.shutdown.complete"})

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Once the app has started: hooks, signals, parent watch, one warning if misconfigured."""
        if self._started:
            return
        self._started = True
        self._loop = loop
        # Only the middleware the server runs adapts it, now that it does: a
        # wrapped twin the server never serves changes nothing.
        self._hypercorn_worker = hypercorn.hold_worker_trigger(
            self._coordinator, self.shutdown_trigger
        )
        self._adapter = AsgiServer(
            loop,
            self._live,
            self._idle,
            self._server_drained,
            stop_server=lambda: self._server_stop,
            full_stop=self._full_stop,
            budget=Integration(self._coordinator).drain_budget,
            worker_prestop=self._worker_prestop,
            close_idle=self._close_idle,
            close_listeners=self._close_listeners,
            writing=self._writing,
        )
        self._guard = loop.create_task(self._refuse_when_loop_dies(self._adapter.door))
        coordinator = self._coordinator
        coordinator.use_loop(loop)
        coordinator.on_shutdown(phase="drain", name="asgi drain")(self._drain)
        Integration(coordinator).list_requests_with(self.requests_in_flight)
        systemd.attach(coordinator)
        if self._take_signals and threading.current_thread() is threading.main_thread():
            self._take_server_signals(loop)
        self._watch_parent()
        under_supervisor = uvicorn.supervisor_stopping()  # python -m lastcall.uvicorn --workers
        if under_supervisor is not None:
            self.share_listeners(under_supervisor)
        for server, tested in (
            ("uvicorn", uvicorn.TESTED),
            ("hypercorn", hypercorn.TESTED),
            ("granian", granian.TESTED),
            ("daphne", daphne.TESTED),
        ):
            if server in sys.modules:
                tested.check()

    def _take_server_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        """Keep the server's stop signal handler for the drain; put lastcall's in front."""
        coordinator = self._coordinator
        held = granian.hold_worker_signal(loop, coordinator)
        self._granian_loop = loop if held is not None else None
        self._server_stop = self._server_stop or held
        for sig in coordinator.settings.signals:
            owner = getattr(signal.getsignal(sig), "__self__", None)
            if isinstance(owner, SignalHandlers):
                continue  # already lastcall's
            run = hypercorn.take_loop_signal(loop, sig)
            if run is not None:
                self._server_stop = self._server_stop or run
                continue
            taken = uvicorn.take_signal(sig)
            if taken is not None and self._server_stop is None:
                self._server_stop, self._server = taken
        Integration(coordinator).ensure_installed(**self._install_options)
        logger.debug("lastcall handles the stop signals; the server is told when the drain begins")

    def _watch_parent(self) -> None:
        """A worker whose master died stops, instead of serving on as an orphan."""
        parent = multiprocessing.parent_process()
        if parent is not None and parent.pid is not None:
            Integration(self._coordinator).stop_when_parent_dies(
                parent.pid, f"the server's master process {parent.pid} died"
            )

    async def _refuse_when_loop_dies(self, door: AsyncioDoor) -> None:
        """Wait for ever; cancelled as the loop winds down, refuse new connections."""
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError as cancelled:
            # What ended the loop, if an exception did: a hypercorn worker that
            # exits with status 0 is replaced, and its successor needs the socket.
            ending = cancelled.__context__
            replaced = isinstance(ending, SystemExit) and ending.code in (0, None)
            if not (self._hypercorn_worker and replaced):
                door.refuse_now()
            raise

    def _full_stop(self) -> bool:
        """Whether no other process will accept on our listening sockets after us.

        True in a single process, and in hypercorn's worker, whose master stops
        when a worker ends by a stop of lastcall's; a uvicorn worker
        (``--workers N``) may be one of several restarted in turn.
        """
        if self._master_stopping is not None:
            return self._master_stopping()
        return self._hypercorn_worker or multiprocessing.parent_process() is None

    async def _serving(self) -> None:
        """Once the server listens (uvicorn says when; others soon after): ready, everywhere.

        ``/readyz`` leaves ``starting``; systemd gets ``READY=1``; lastcall's
        ``uvicorn --workers`` supervisor is told this worker serves.
        """
        server = self._server
        deadline = time.monotonic() + _SERVER_STARTED_WAIT
        while server is not None and not uvicorn.started(server):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(_SERVER_STARTED_POLL)
        if self._stopping.is_set():
            return
        Integration(self._coordinator).serving()
        uvicorn.note_serving()
        if os.environ.get("NOTIFY_SOCKET"):
            systemd.ready()

    # ------------------------------------------------------------ the stop (dispatcher side)

    def _drain(self) -> None:
        """The drain hook: the one drain sequence, on this server."""
        self._drain_began.set()
        if self._adapter is not None:
            loop = self._granian_loop
            if loop is not None and granian.run_ended_loop(loop, self._coordinator):
                self._adapter.loop_dying()  # granian's worker returned: nothing new is served
            # What uvloop hid from the door: uvicorn's servers, or an integration's.
            self._adapter.door.adopt([*uvicorn.listeners(self._server), *self._listeners()])
            drain(self._adapter, self._coordinator, budget=self._drain_timeout)


class _Exchange:
    """One request or WebSocket in flight: what it is, since when, and what it left open.

    ``send`` passes the app's messages on, adding ``Connection: close`` to a
    response begun while stopping, and notes what is open (a response begun
    and not ended, a WebSocket accepted and not closed) so that a cancelled
    exchange can be ended the way its client expects (``last_word``).
    """

    __slots__ = ("_send", "_stopping", "began", "open", "scope")

    def __init__(self, scope: Scope, send: Send, stopping: StopToken) -> None:
        self.scope = scope
        self._send = send
        self._stopping = stopping
        self.began = _monotonic()
        self.open: Message | None = None  # http.response.start or websocket.accept, until ended

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if not message.get("more_body", False):
                self.open = None
        elif kind == "http.response.start":
            if self._stopping.is_set():
                headers = [
                    (k, v) for k, v in message.get("headers", ()) if k.lower() != b"connection"
                ]
                headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            self.open = message
        elif kind == "websocket.accept":
            self.open = message
        elif kind == "websocket.close":
            self.open = None
        await self._send(message)

    def websocket_receive(self, receive: Receive) -> Receive:
        """``receive``, noting a client that closed (nothing is left to tell it)."""

        async def noting_receive() -> Message:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.open = None
            return message

        return noting_receive

    async def last_word(self) -> bool:
        """Cancelled: 1001 to an open WebSocket, a clean end to an SSE stream; whether sent."""
        opened = self.open
        if opened is None:
            return False
        if opened["type"] == "websocket.accept":
            last: Message = {"type": "websocket.close", "code": _GOING_AWAY, "reason": ""}
        elif _is_event_stream(opened):
            last = {"type": "http.response.body", "body": b"", "more_body": False}
        else:
            return False
        self.open = None
        try:
            await asyncio.wait_for(self._send(last), _LAST_WORD_WAIT)
        except Exception as exc:  # the client may be gone: nothing to tell
            logger.debug("could not end a cancelled %s cleanly: %r", self.scope["type"], exc)
            return False
        return True


def _is_event_stream(start: Message) -> bool:
    return any(
        name.lower() == b"content-type" and value.lower().startswith(b"text/event-stream")
        for name, value in start.get("headers", ())
    )


class _AppLifespan:
    """The wrapped app's lifespan call, fed and read through queues of our own."""

    def __init__(self, app: ASGIApp, scope: Scope) -> None:
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Future[None] = asyncio.ensure_future(
            app(scope, self._to_app.get, self._from_app.put)
        )

    async def exchange(self, message: Message) -> Message | None:
        """Give the app ``message``; its answer, or None once its lifespan call ended."""
        await self._to_app.put(message)
        getter = asyncio.ensure_future(self._from_app.get())
        either: set[asyncio.Future[Any]] = {getter, self._task}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
        if not self._task.cancelled() and self._task.exception() is not None:
            logger.debug("the app does not handle the lifespan: %r", self._task.exception())
        return None

    async def shut_down(self) -> None:
        answer = await self.exchange({"type": "lifespan.shutdown"})
        if answer is not None and answer["type"] == "lifespan.shutdown.failed":
            raise RuntimeError(answer.get("message") or "the app sent lifespan.shutdown.failed")

    def close(self) -> None:
        if not self._task.done():
            self._task.cancel()


async def _json(scope: Scope, send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *((name.lower().encode(), value.encode()) for name, value in HEADERS),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send(
        {"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body}
    )
