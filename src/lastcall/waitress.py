"""waitress, with the graceful stop it lacks: ``lastcall.waitress.serve(app, **options)``.

The same signature as ``waitress.serve``. On SIGTERM, SIGINT or SIGHUP
(``LASTCALL_SIGNALS``), through ``lastcall.install()``:

1. ``/readyz`` goes red (``LastCallMiddleware`` wraps the app) and the
   server keeps serving for ``LASTCALL_PRESTOP_DELAY`` seconds;
2. the drain hook, on waitress's own loop thread, takes every connection
   still queued in the listen backlog, then closes the listening sockets,
   so new connections are refused rather than accepted and dropped;
3. requests in flight, and those on the connections just taken, are
   served (responses carry ``Connection: close``); connections that are
   idle are closed; the drain ends when no connection is left, or when
   the grace period (``LASTCALL_GRACE``) runs out;
4. the other hooks run, and the process ends as the core's rules say
   (death by the signal, or ``LASTCALL_EXIT_CODE``).

A second SIGINT ends the process at once. waitress's loop runs on the
calling thread, which must be the main thread (signal handlers live there).
"""

from __future__ import annotations

import importlib
import logging
import select
import threading
import time
from typing import TYPE_CHECKING, Any, TypeAlias

import lastcall
from lastcall._config import resolve
from lastcall._report import logger
from lastcall._servers import versions
from lastcall.wsgi import LastCallMiddleware

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ("serve",)

# waitress objects (servers, channels): untyped, reached by duck typing
Waitress: TypeAlias = Any

_POLL = 0.05  # seconds between looks at the connections left


def serve(app: WSGIApplication, **kw: Any) -> None:  # noqa: ANN401  # waitress's options
    """Serve ``app`` with waitress until a stop signal; then stop as described above."""
    server_module = importlib.import_module("waitress.server")
    make_server = kw.pop("_server", server_module.create_server)  # waitress's test shims
    quiet = kw.pop("_quiet", False)
    kw.pop("_profile", None)
    middleware = LastCallMiddleware(app)  # refuses a non-callable app, in one line
    coordinator = lastcall.default
    if not coordinator.installed:
        resolve()  # a bad LASTCALL_* setting (a pre-stop delay that leaves no drain) fails here
    versions.WAITRESS.check()
    if not quiet:
        logging.basicConfig()  # as waitress.serve does; idempotent
    server = make_server(_without_connection_header(middleware), **kw)
    _close_connections_while_stopping(server)
    coordinator.ensure_installed()
    drain = _Drain(server, coordinator)
    coordinator.on_shutdown(phase="drain", name="waitress drain")(drain)
    if not quiet:
        server.print_listen("Serving on http://{}:{}")
    try:
        _run(server)
    except (SystemExit, KeyboardInterrupt):
        drain.loop_died()
        # waitress's run() returns on these too; the drain runs at interpreter exit.
    except BaseException:
        drain.loop_died()
        raise
    else:
        drain.loop_died()


def _run(server: Waitress) -> None:
    """The ``run()`` of waitress (waitress/server.py), without its ``task_dispatcher.shutdown()``.

    That waits up to 5 s for the request threads while the listening socket
    still queues new connections; here the door closes first (``loop_died``).
    """
    server.asyncore.loop(
        timeout=server.adj.asyncore_loop_timeout,
        map=_socket_map(server),
        use_poll=server.adj.asyncore_use_poll,
    )


def _socket_map(server: Waitress) -> dict[int, Waitress]:
    """The dispatchers waitress's loop serves: ``map``, or a single server's ``_map``."""
    socket_map: dict[int, Waitress] = getattr(server, "map", None) or server._map  # noqa: SLF001  # waitress/wasyncore.py dispatcher
    return socket_map


def _without_connection_header(app: WSGIApplication) -> WSGIApplication:
    """Drop the middleware's ``Connection: close``: waitress rejects hop-by-hop headers.

    (It answers 500 instead.) The same request still closes its connection:
    see ``_close_connections_while_stopping``.
    """

    def start_without(
        start_response: StartResponse,
    ) -> StartResponse:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:  # noqa: ANN401
            kept = [(k, v) for k, v in headers if k.lower() != "connection"]
            return start_response(status, kept, exc_info)

        return start

    def wrapped(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return app(environ, start_without(start_response))

    return wrapped


def _close_connections_while_stopping(server: Waitress) -> None:
    """A response that begins once the stop has begun closes its connection, waitress's way."""
    stopping = lastcall.default.stopping
    for each in _servers_of(server):
        channel_class = each.channel_class
        task_class = channel_class.task_class
        build = task_class.build_response_header

        def build_response_header(task: Waitress, build: Any = build) -> Any:  # noqa: ANN401
            if stopping.is_set() and not task.close_on_finish:
                task.set_close_on_finish()  # "Connection: close", then close after the response
            return build(task)

        closing_task = type(
            "LastCallTask", (task_class,), {"build_response_header": build_response_header}
        )
        each.channel_class = type("LastCallChannel", (channel_class,), {"task_class": closing_task})


def _servers_of(server: Waitress) -> list[Waitress]:
    """One server, or the several a MultiSocketServer holds in its map."""
    if hasattr(server, "accepting"):
        return [server]
    return [d for d in server.map.values() if hasattr(d, "active_channels")]


class _Drain:
    """The drain hook: runs on a lastcall thread, acts on waitress's loop thread."""

    def __init__(self, server: Waitress, coordinator: lastcall.Coordinator) -> None:
        self._server = server
        self._servers = _servers_of(server)
        self._coordinator = coordinator
        # Set once waitress's loop has ended (an exception or exit on its thread):
        # no loop is left to hand work to, so the drain turns the loop itself.
        self.loop_ended = threading.Event()
        self._door_closed = False

    def loop_died(self) -> None:
        """On the loop's thread, as its loop ends: close the door now, not at exit.

        Until the process is gone the socket would queue new connections that
        nobody accepts, and they would be reset. What the backlog holds is taken
        as channels, which the drain serves by turning the loop.
        """
        self.loop_ended.set()
        if not self._door_closed:
            taken = self._close_door()
            logger.warning(
                "waitress's loop ended; stopped accepting, %d connection(s) taken from the "
                "backlog are served at exit",
                taken,
            )

    def __call__(self) -> None:
        # Bounded by drain_budget(), so the hooks after this one keep their time.
        deadline = time.monotonic() + self._coordinator.drain_budget()
        if not self._door_closed:
            taken = self._on_loop(self._close_door, deadline)
            logger.info(
                "waitress stopped accepting; serving %s connection(s) taken from the backlog",
                taken,
            )
        while (left := self._on_loop(self._close_idle, deadline)) != 0:
            if time.monotonic() >= deadline:
                logger.warning("waitress: %s connection(s) still open; going on", left)
                return
            if self.loop_ended.is_set():
                self._turn_loop()
            else:
                time.sleep(_POLL)
        logger.info("waitress drained: no connection left")

    def _turn_loop(self) -> None:
        """One turn of waitress's loop, for the loop that ended: the responses go out."""
        server = self._server
        server.asyncore.loop(
            timeout=_POLL, map=_socket_map(server), use_poll=server.adj.asyncore_use_poll, count=1
        )

    def _on_loop(self, func: Callable[[], int], deadline: float) -> int | None:
        """Run ``func`` on waitress's loop thread (its trigger); None if it did not run in time."""
        if self.loop_ended.is_set():
            return func()
        done = threading.Event()
        result: list[int] = []

        def thunk() -> None:
            try:
                result.append(func())
            finally:
                done.set()

        self._servers[0].trigger.pull_trigger(thunk)
        done.wait(max(0.0, deadline - time.monotonic()))
        return result[0] if result else None

    def _close_door(self) -> int:
        """Take what the backlog holds as channels, then close the listening sockets."""
        self._door_closed = True
        taken = 0
        for server in self._servers:
            while True:
                try:
                    pair = server.accept()
                except OSError:
                    break
                if pair is None:
                    break  # EAGAIN: the backlog is empty
                conn, addr = pair
                try:
                    server.set_socket_options(conn)
                except OSError:
                    conn.close()
                    continue
                address = server.fix_addr(addr)
                server.channel_class(server, conn, address, server.adj, map=server._map)  # noqa: SLF001
                taken += 1
            server.accepting = False
            server.del_channel()
            server.socket.close()  # not server.close(): that closes the trigger we still use
        return taken

    def _close_idle(self) -> int:
        """Mark idle connections to close; return how many connections are left."""
        left = 0
        for server in self._servers:
            for channel in list(server.active_channels.values()):
                left += 1
                busy = (
                    channel.requests
                    or channel.request is not None
                    or channel.total_outbufs_len
                    or channel.will_close
                    or channel.close_when_flushed
                    or _has_input(channel.socket)
                )
                if not busy:
                    channel.will_close = True  # the loop closes it on its next turn
        return left


def _has_input(sock: Waitress) -> bool:
    """Bytes (or the client's close) waiting to be read: a request on its way."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return bool(readable)
