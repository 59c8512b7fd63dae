"""tornado, stopped in order: ``LastCall(server)`` for an ``HTTPServer``.

::

    async def main():
        server = make_app().listen(8888)  # app.listen() returns the HTTPServer
        LastCall(server)
        await asyncio.Event().wait()

    asyncio.run(main())

Or ``LastCall(server)`` before ``IOLoop.current().start()``; on the main
thread, in the process that serves (not across ``fork_processes``). On
SIGTERM or SIGINT (``LASTCALL_SIGNALS``), through ``lastcall.install()``:

1. ``/readyz`` answers 503 (``/livez`` stays 200; both added in front of a
   ``tornado.web.Application``'s routes), and the server keeps serving for
   ``LASTCALL_PRESTOP_DELAY`` seconds; responses carry ``Connection: close``;
2. the connections the listen backlog holds are taken and served, and the
   listening socket is shut: new connections are refused, not reset;
3. requests in flight finish within the drain budget (the grace,
   ``LASTCALL_GRACE``, less the pre-stop delay and what the hooks after the
   drain keep), idle keep-alive connections are closed; WebSockets count
   too; what still runs then has its connection closed, a WebSocket is sent
   close code 1001 (going away), and the requests are named in the report;
4. lastcall's hooks run, async ones on tornado's loop, and the process ends
   by the signal (or ``LASTCALL_EXIT_CODE``). A second Ctrl-C ends it at once.

How it is done, and which parts of tornado it relies on:
``lastcall._servers.tornado``.
"""

from __future__ import annotations

import functools

from tornado import web
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.routing import PathMatches

import lastcall
from lastcall._config import resolve
from lastcall._health import (
    ALIVE,
    HEADERS,
    READY,
    check_paths,
    not_ready_body,
    stopping_body,
)
from lastcall._integration import Integration
from lastcall._servers import tornado as adapter
from lastcall._servers.drain import drain

__all__ = ("LastCall",)


class LastCall:
    """lastcall's stop for one tornado ``HTTPServer`` (what ``Application.listen`` returns)."""

    def __init__(
        self,
        server: HTTPServer,
        *,
        livez_path: str | None = "/livez",
        readyz_path: str | None = "/readyz",
    ) -> None:
        if not isinstance(server, HTTPServer):
            hint = " (app.listen() returns one)" if isinstance(server, web.Application) else ""
            raise TypeError(f"LastCall() takes a tornado HTTPServer{hint}, not {server!r}")
        check_paths(livez_path, readyz_path)
        coordinator = lastcall.default
        if not coordinator.installed:
            resolve()  # a bad LASTCALL_* setting fails here, in one line
        adapter.TESTED.check()
        ioloop = IOLoop.current()
        self.server = server
        self._adapter = adapter.TornadoServer(
            server,
            ioloop,
            coordinator.stopping,
            (livez_path, readyz_path),
            Integration(coordinator).drain_budget,
        )
        app = server.request_callback
        if isinstance(app, web.Application):
            _add_health(app, self._adapter, livez_path, readyz_path)
        Integration(coordinator).ensure_installed()
        coordinator.use_loop(ioloop.asyncio_loop)  # type: ignore[attr-defined]  # AsyncIOLoop's
        coordinator.on_shutdown(phase="drain", name="tornado drain")(
            functools.partial(drain, self._adapter, coordinator)
        )
        Integration(coordinator).list_requests_with(self._adapter.listing)


def _add_health(
    app: web.Application,
    server: adapter.TornadoServer,
    livez_path: str | None,
    readyz_path: str | None,
) -> None:
    """``/livez`` and ``/readyz`` ahead of the app's own routes (and of its host rules)."""
    router = app.default_router
    rules = [
        (PathMatches(path), handler, {"server": server})
        for path, handler in ((livez_path, _Livez), (readyz_path, _Readyz))
        if path is not None
    ]
    router.add_rules(rules)
    for _ in rules:
        router.rules.insert(0, router.rules.pop())


class _Health(web.RequestHandler):
    def initialize(self, server: adapter.TornadoServer) -> None:
        self.server = server

    def answer(self, status: int, body: bytes) -> None:
        self.set_status(status)
        for name, value in HEADERS:
            self.set_header(name, value)
        self.finish(body)

    def head(self) -> None:
        self.get()

    def get(self) -> None:
        raise NotImplementedError


class _Livez(_Health):
    def get(self) -> None:
        self.answer(200, ALIVE)


class _Readyz(_Health):
    def get(self) -> None:
        coordinator = lastcall.default
        if coordinator.stopping.is_set():
            self.answer(503, stopping_body(self.server.in_flight()))
            return
        not_ready = not_ready_body(coordinator)
        self.answer(503 if not_ready else 200, not_ready or READY)
