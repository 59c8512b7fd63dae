"""tornado: the adapter the drain runs through (``lastcall.tornado.LastCall`` is the face).

tornado has no graceful stop: ``HTTPServer.stop()`` closes the listening
sockets (what their backlog holds is reset) and ``close_all_connections()``
closes every connection at once, requests in flight or not (tornado#1791).
So each step is done here, on the IOLoop's thread:

* **the door**: tornado's accept handlers come off the loop, the backlog is
  taken and handed to the server as tornado's own accept would, then the
  socket stops listening and ``stop()`` closes it;
* **in flight**: each request, from its headers to its response written
  (``HTTP1Connection._finish_future``, which resolves when the response is
  flushed, or the connection closed or detached), through a wrapper around
  the server's ``start_request``; a WebSocket then counts until it is closed;
  a response begun while stopping carries ``Connection: close``;
* **idle keep-alive connections** (tornado keeps them an hour by default)
  are closed as they fall idle;
* **what overran**: a request's connection is closed, a WebSocket is sent
  close code 1001 (going away).

When the loop dies instead (an unhandled exception or ``sys.exit`` raised on
its thread, which ``asyncio.run``'s teardown answers by cancelling every
request), the door is closed at once and the loop turns on until nothing is
in flight, within the drain budget, before the exception goes on its way,
as ``lastcall._servers.asgi`` does for uvicorn (asyncio's ``_run_once``).

Tested with tornado 6.3 to 6.6 (``versions.TORNADO``). Undocumented parts
used: ``tornado/tcpserver.py``'s ``TCPServer._sockets``, ``_handlers`` and
``_handle_connection``; ``tornado/httpserver.py``'s ``HTTPServer._connections``;
``tornado/http1connection.py``'s ``HTTP1Connection._finish_future`` and
``_disconnect_on_finish``; the handler a request went to, from
``tornado/routing.py``'s ``_RoutingDelegate.delegate`` and ``tornado/web.py``'s
``_HandlerDelegate.handler`` (``delegate`` of ``tornado/httpserver.py``'s
``_ProxyAdapter`` with ``xheaders``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from typing import TYPE_CHECKING, Any

from tornado import httputil
from tornado.websocket import WebSocketHandler

from lastcall._log import logger
from lastcall._servers import versions
from lastcall._servers.inflight import has_input, in_report
from lastcall._servers.listener import take_backlog

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from tornado.httpserver import HTTPServer
    from tornado.ioloop import IOLoop

    from lastcall._stoptoken import StopToken

__all__ = ("TESTED", "TornadoServer")

TESTED = versions.TORNADO

_GOING_AWAY = 1001  # the WebSocket close code for a server going down (RFC 6455, 7.4.1)
_ON_LOOP_WAIT = 5.0  # at most, for the loop to run one of the drain's steps
_POLL = 0.02  # seconds between looks at what is still in flight


class _Request:
    """One request in flight: what it is, since when, on which connection, to which handler."""

    __slots__ = ("began", "connection", "delegate", "method", "path")

    def __init__(self, method: str, path: str, connection: Any, delegate: Any) -> None:  # noqa: ANN401
        self.method = method
        self.path = path
        self.connection = connection  # tornado's HTTP1ServerConnection
        self.delegate = delegate
        self.began = time.monotonic()

    def handler(self) -> Any:  # noqa: ANN401  # a tornado RequestHandler, or None
        """The ``RequestHandler`` the app's router made for this request, if any."""
        inner = self.delegate
        for _ in range(2):  # _ProxyAdapter (xheaders) -> _RoutingDelegate -> _HandlerDelegate
            inner = getattr(inner, "delegate", None)
            handler = getattr(inner, "handler", None)
            if handler is not None:
                return handler
        return None


class TornadoServer:
    """The drain's questions, answered on tornado's IOLoop."""

    name = "tornado"

    def __init__(
        self,
        server: HTTPServer,
        ioloop: IOLoop,
        stopping: StopToken,
        health: tuple[str | None, ...],
        budget: Callable[[], float],
    ) -> None:
        self._server = server
        self._ioloop = ioloop
        self._stopping = stopping
        self._health = health
        self._requests: dict[int, _Request] = {}  # by id() of their HTTP1Connection
        self._websockets: set[WebSocketHandler] = set()
        self._fresh: set[int] = set()  # id() of connections taken from the backlog, no request yet
        self._door_closed = False
        original: Callable[[object, httputil.HTTPConnection], httputil.HTTPMessageDelegate]
        original = server.start_request
        adapter = self

        def start_request(
            server_conn: object, request_conn: httputil.HTTPConnection
        ) -> httputil.HTTPMessageDelegate:
            return _Counted(adapter, original(server_conn, request_conn), server_conn, request_conn)

        server.start_request = start_request  # type: ignore[method-assign]  # this server only
        self._finish_in_flight_if_the_loop_dies(budget)

    def _finish_in_flight_if_the_loop_dies(self, budget: Callable[[], float]) -> None:
        """An exception ending the loop on its thread: close the door, finish what is in flight.

        asyncio's ``_run_once`` (``Lib/asyncio/base_events.py``, one turn of
        ``run_forever``, looked up on each turn) is wrapped on this loop; when a
        turn raises, the door is shut at once and the loop turns on until
        nothing is in flight, within ``budget``; then the exception goes on. A
        loop without ``_run_once`` (uvloop) is left as it is.
        """
        loop = getattr(self._ioloop, "asyncio_loop", None)
        run_once = getattr(loop, "_run_once", None)
        if run_once is None:
            return

        def run_once_or_finish() -> None:
            try:
                run_once()
            except BaseException:
                loop._run_once = run_once  # type: ignore[union-attr]  # noqa: SLF001  # once
                if self.in_flight():
                    taken = 0 if self._door_closed else self._close_door()
                    logger.warning(
                        "tornado's loop is ending: stopped accepting (%d taken from the backlog); "
                        "finishing %d request(s) in flight first",
                        taken,
                        self.in_flight(),
                    )
                    deadline = time.monotonic() + budget()
                    while self.in_flight() and time.monotonic() < deadline:
                        run_once()
                raise

        with contextlib.suppress(AttributeError):
            loop._run_once = run_once_or_finish  # type: ignore[union-attr]  # noqa: SLF001

    # ------------------------------------------------------------ counting (on the loop)

    def began(self, request_conn: Any, request: _Request) -> None:  # noqa: ANN401
        """Headers read: in flight until the response is written (or the connection ends)."""
        self._fresh.discard(id(request.connection))
        if request.path in self._health:
            return
        key = id(request_conn)
        self._requests[key] = request
        if self._stopping.is_set():
            request_conn._disconnect_on_finish = True  # noqa: SLF001  # "Connection: close"
        finished = request_conn._finish_future  # noqa: SLF001  # tornado/http1connection.py
        finished.add_done_callback(lambda _: self._ended(key))

    def _ended(self, key: int) -> None:
        request = self._requests.pop(key, None)
        handler = request.handler() if request is not None else None
        if isinstance(handler, WebSocketHandler) and _open(handler):
            self._websockets.add(handler)  # upgraded: the connection was detached

    def listing(self) -> list[dict[str, Any]]:
        """The HTTP requests in flight: method, path, seconds so far (for the report)."""
        now = time.monotonic()
        return [in_report(r.method, r.path, r.began, now) for r in list(self._requests.values())]

    # ------------------------------------------------------------ the drain (dispatcher)

    def prestop_delay(self) -> float:
        """The core's pre_stop phase has kept serving already."""
        return 0.0

    def close_door(self) -> int:
        """Take the backlog as tornado's accept would, then stop listening; how many taken."""
        if self._door_closed:
            return 0
        return self._on_loop(self._close_door) or 0

    def in_flight(self) -> int:
        """Requests, WebSockets not closed, connections taken whose request is not read yet."""
        websockets = sum(1 for ws in list(self._websockets) if _open(ws))
        fresh = sum(1 for c in self._connections() if id(c) in self._fresh)
        return len(self._requests) + websockets + fresh

    def wait_idle(self, timeout: float) -> bool:
        """Until nothing is in flight."""
        deadline = time.monotonic() + timeout
        while self.in_flight():
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)
        return True

    def close_idle(self) -> None:
        """Close the keep-alive connections that carry no request now."""
        self._on_loop(self._close_idle)

    def cancel(self) -> int:
        """Close what is left: a request's connection; a WebSocket with 1001 first."""
        return self._on_loop(self._cancel) or 0

    # ------------------------------------------------------------ on the loop's thread

    def _on_loop(self, func: Callable[[], int]) -> int | None:
        """Run ``func`` on the IOLoop (its ``add_callback``); None if it did not run in time."""
        done: concurrent.futures.Future[int] = concurrent.futures.Future()

        def thunk() -> None:
            try:
                done.set_result(func())
            except BaseException as exc:
                done.set_exception(exc)

        try:
            self._ioloop.add_callback(thunk)
        except RuntimeError:  # the loop is closed: nothing left to serve
            return None
        with contextlib.suppress(concurrent.futures.TimeoutError):
            return done.result(_ON_LOOP_WAIT)
        return None

    def _close_door(self) -> int:
        self._door_closed = True
        server: Any = self._server
        taken = 0
        before = {id(c) for c in self._connections()}
        for fd, sock in list(server._sockets.items()):  # noqa: SLF001  # tornado/tcpserver.py
            remove = server._handlers.get(fd)  # noqa: SLF001  # the accept handler
            if remove is not None:
                remove()  # tornado accepts no more; stop() below removes it again, harmlessly
            for conn, address in take_backlog(sock):
                server._handle_connection(conn, address)  # noqa: SLF001  # as its accept does
                taken += 1
        server.stop()
        self._fresh = {id(c) for c in self._connections()} - before
        return taken

    def _connections(self) -> list[Any]:
        """The server's open HTTP connections (``HTTP1ServerConnection``), WebSockets aside."""
        return list(self._server._connections)  # noqa: SLF001  # tornado/httpserver.py

    def _close_idle(self) -> int:
        busy = {id(r.connection) for r in list(self._requests.values())} | self._fresh
        for connection in self._connections():
            stream = connection.stream
            if id(connection) not in busy and not has_input(stream.socket):
                stream.close()
        return 0

    def _cancel(self) -> int:
        cancelled = 0
        for request in list(self._requests.values()):
            request.connection.stream.close()  # the handler sees on_connection_close
            cancelled += 1
        for connection in self._connections():
            if id(connection) in self._fresh:  # taken from the backlog; its request never came
                connection.stream.close()
                cancelled += 1
        for ws in list(self._websockets):
            if _open(ws):
                ws.close(_GOING_AWAY, "going away")
                cancelled += 1
        return cancelled


def _open(ws: WebSocketHandler) -> bool:
    connection = ws.ws_connection
    return connection is not None and not connection.is_closing()


class _Counted(httputil.HTTPMessageDelegate):
    """The server's delegate for one request, telling the adapter when it begins."""

    def __init__(
        self,
        adapter: TornadoServer,
        delegate: httputil.HTTPMessageDelegate,
        server_conn: object,
        request_conn: httputil.HTTPConnection,
    ) -> None:
        self._adapter = adapter
        self.delegate = delegate
        self._server_conn = server_conn
        self._request_conn = request_conn

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        if isinstance(start_line, httputil.RequestStartLine):
            path = start_line.path.partition("?")[0]
            request = _Request(start_line.method, path, self._server_conn, self.delegate)
            self._adapter.began(self._request_conn, request)
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()
