"""Werkzeug's development server (``app.run()``, ``flask run``), with and without the reloader.

What Werkzeug 3.1 does on its own, and what this module changes:

* Request threads are daemons that nobody waits for, so whatever is in
  flight when the process ends is cut off. Here the ``drain`` phase stops
  the accept loop and waits for the request threads, within the grace.
* New connections must be refused, not queued and reset. Closing our file
  descriptor is not enough while another thread is still polling it, or
  under the reloader, where parent and child share the listening socket:
  ``shutdown(SHUT_RDWR)`` on the socket itself stops it listening for every
  holder at once. On a code-change reload it must keep listening instead,
  so that the next child accepts what arrived in between.
* The reloader parent imports the app too, yet the app's resources live in
  the serving child. The parent runs none of the app's hooks
  (``Integration.stand_aside``), passes SIGTERM/SIGINT/SIGHUP on to the
  child as SIGTERM (a terminal's Ctrl-C has already reached the child, so
  for SIGINT after 0.5 s; a second SIGINT would mean "force"), and then
  ends by the signal it was sent (``lastcall._servers.reloader``, shared with
  Django's runserver). It logs one line when the child died without
  running its shutdown.
* Werkzeug's reloader sets ``SIGTERM -> sys.exit(0)`` in the child after
  the app was imported; the child takes its signals back once it serves
  and watches its parent, stopping gracefully if
  the parent dies instead of serving on as an orphan.

Everything hooks in through a few patched methods, installed once by
``enable()``; see ``_patch``. Tested with Werkzeug 2.3 to 3.1
(``versions.WERKZEUG``); each undocumented part is named where it is used.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

from lastcall._integration import Integration
from lastcall._servers import reloader, versions
from lastcall._servers.drain import drain
from lastcall._servers.inflight import CountedRequests, has_input
from lastcall._servers.listener import take_backlog

if TYPE_CHECKING:
    from werkzeug._reloader import ReloaderLoop
    from werkzeug.serving import BaseWSGIServer

    from lastcall._coordinator import Coordinator

__all__ = ("enable",)


_reloading = threading.Event()  # set in a child that is stopping for a code change


class _Served:
    """What this process knows of one server it runs."""

    def __init__(self) -> None:
        self.requests = CountedRequests()
        self.thread: threading.Thread | None = threading.current_thread()
        # Each open connection, and the path of the request being answered on
        # it (None between requests: HTTP/1.1 keep-alive, its thread waits to read).
        self.connections: dict[socket.socket, str | None] = {}


class _State:
    """The integration in this process: set by enable(), read by the patches."""

    coordinator: Coordinator | None = None
    install_options: ClassVar[dict[str, Any]] = {}
    patched = False
    drain_registered = False
    servers: ClassVar[weakref.WeakKeyDictionary[BaseWSGIServer, _Served]] = (
        weakref.WeakKeyDictionary()
    )


def enable(coordinator: Coordinator, install_options: dict[str, Any] | None = None) -> None:
    """Make Werkzeug's server in this process stop the lastcall way; idempotent.

    ``install_options`` go to ``coordinator.install()`` once the server
    starts serving (on the main thread: without the reloader, where
    ``serve_forever`` runs; in a reloader child, where its file watcher runs).
    """
    if _State.coordinator is not None:
        return  # a second app in this process: its server is drained the same way
    _State.coordinator = coordinator
    _State.install_options = install_options or {}
    versions.WERKZEUG.check()
    if not _State.patched:
        _patch()
        _State.patched = True
    if os.environ.get("WERKZEUG_RUN_MAIN") == "true":
        reloader.in_child(coordinator, "the reloader parent died")


def _coordinator() -> Coordinator:
    coordinator = _State.coordinator
    assert coordinator is not None  # noqa: S101  # enable() sets it before any patch runs
    return coordinator


# ---------------------------------------------------------------- the drain


def _drain() -> None:
    """The drain hook: every server this process runs, through the one drain sequence."""
    coordinator = _coordinator()
    drain(WerkzeugAdapter(list(_State.servers.items()), final=not _reloading.is_set()), coordinator)


class WerkzeugAdapter:
    """The drain's questions for the Werkzeug servers of this process.

    ``final`` is false for a code-change reload: the socket, shared with the
    reloader parent, keeps listening for the next child.
    """

    name = "werkzeug"

    def __init__(self, servers: list[tuple[BaseWSGIServer, _Served]], *, final: bool) -> None:
        self._servers = servers
        self._final = final

    def prestop_delay(self) -> float:
        """The core's pre_stop phase has kept serving already."""
        return 0.0

    def close_door(self) -> int:
        """Serve the backlog, stop listening (for every holder), end the accept loops."""
        return sum(_stop_accepting(s, served, final=self._final) for s, served in self._servers)

    def in_flight(self) -> int:
        """Request threads still running."""
        return sum(served.requests.count for _, served in self._servers)

    def wait_idle(self, timeout: float) -> bool:
        """Until every request thread has finished."""
        deadline = time.monotonic() + timeout
        return all(
            served.requests.wait_idle(max(0.0, deadline - time.monotonic()))
            for _, served in self._servers
        )

    def close_idle(self) -> None:
        """End keep-alive connections waiting for a next request: their threads read EOF."""
        for _, served in self._servers:
            for connection, path in list(served.connections.items()):
                if path is None and not has_input(connection):
                    with contextlib.suppress(OSError):
                        connection.shutdown(socket.SHUT_RD)

    def cancel(self) -> int:
        """A request thread cannot be cancelled: it is left, a daemon, as Werkzeug leaves it."""
        return self.in_flight()


def _stop_accepting(server: BaseWSGIServer, served: _Served, *, final: bool) -> int:
    taken = 0
    if final:
        # Stops the socket listening for every process holding it, and wakes
        # the accept loop at once (closing our fd alone would do neither).
        taken = _serve_backlog(server)
    serving = served.thread
    if serving is not None and serving is not threading.current_thread():
        server.shutdown()  # returns once serve_forever's loop has ended
    return taken


def _serve_backlog(server: BaseWSGIServer) -> int:
    """Take what already waits in the listen backlog, stop listening, serve what was taken."""
    backlog = take_backlog(server.socket)
    for connection, address in backlog:
        server.process_request(connection, address)
    return len(backlog)


# ---------------------------------------------------------------- patches


def _patch() -> None:  # noqa: C901, PLR0915  # one wrapper per patched method, kept together
    """Wrap the few Werkzeug methods every path goes through.

    ``flask run`` binds ``run_simple`` at import, so the server classes,
    not ``run_simple``, are what both entry points share. From
    ``werkzeug/serving.py``: ``BaseWSGIServer.serve_forever`` and
    ``server_close``, ``ThreadedWSGIServer.process_request_thread``,
    ``WSGIRequestHandler.run_wsgi``; from the private ``werkzeug/_reloader.py``:
    ``ReloaderLoop.__enter__`` and ``restart_with_reloader`` (and, elsewhere
    here, ``_get_args_for_reloading`` and ``werkzeug/_internal.py``'s ``_log``).
    """
    from werkzeug import _reloader, serving  # noqa: PLC0415  # only with Werkzeug in use

    base = serving.BaseWSGIServer
    original_serve = base.serve_forever
    original_close = base.server_close
    original_request = serving.ThreadedWSGIServer.process_request_thread
    original_run_wsgi = serving.WSGIRequestHandler.run_wsgi
    original_enter = _reloader.ReloaderLoop.__enter__
    original_restart = _reloader.ReloaderLoop.restart_with_reloader

    def serve_forever(self: BaseWSGIServer, poll_interval: float = 0.5) -> None:
        if threading.current_thread() is threading.main_thread():
            _install()
        if not _State.drain_registered:  # once a server runs here: under gunicorn, never
            _State.drain_registered = True
            _coordinator().on_shutdown(
                _drain, phase="drain", name="werkzeug: stop accepting, finish requests in flight"
            )
        served = _State.servers[self] = _Served()
        try:
            original_serve(self, poll_interval)
        finally:
            served.thread = None

    def server_close(self: BaseWSGIServer) -> None:
        # Also called from __init__ (before serving) and again from
        # serve_forever's finally; a code-change reload is the case to catch.
        if self in _State.servers:
            _closing(self, sys.exc_info()[1])
        original_close(self)

    def process_request_thread(
        self: serving.ThreadedWSGIServer,
        request: socket.socket,
        client_address: tuple[str, int],
    ) -> None:
        served = _State.servers.get(self)
        if served is None:  # not started through serve_forever: nothing to drain
            original_request(self, request, client_address)
            return
        served.connections[request] = None
        try:
            with served.requests:
                original_request(self, request, client_address)
        finally:
            served.connections.pop(request, None)

    def run_wsgi(self: serving.WSGIRequestHandler) -> None:
        # self.connection: Lib/socketserver.py, StreamRequestHandler.setup
        served = _State.servers.get(self.server)
        if served is None or self.connection not in served.connections:
            original_run_wsgi(self)
            return
        served.connections[self.connection] = self.path
        try:
            original_run_wsgi(self)
        finally:
            served.connections[self.connection] = None

    def __enter__(self: ReloaderLoop) -> ReloaderLoop:  # noqa: N807
        # The child's main thread, just after Werkzeug set SIGTERM -> sys.exit(0),
        # which is dropped here rather than chained.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _install()
        return original_enter(self)

    def restart_with_reloader(self: ReloaderLoop) -> int:
        if _State.coordinator is None:  # pragma: no cover  # enable() always sets it
            return original_restart(self)
        return _restart_with_reloader(self)

    base.serve_forever = serve_forever  # type: ignore[method-assign]
    base.server_close = server_close  # type: ignore[method-assign,assignment]
    serving.ThreadedWSGIServer.process_request_thread = process_request_thread  # type: ignore[method-assign,assignment]
    serving.WSGIRequestHandler.run_wsgi = run_wsgi  # type: ignore[method-assign]
    _reloader.ReloaderLoop.__enter__ = __enter__  # type: ignore[method-assign]
    _reloader.ReloaderLoop.restart_with_reloader = restart_with_reloader  # type: ignore[method-assign]


def _closing(server: BaseWSGIServer, exc: BaseException | None) -> None:
    """A served server closes: for a code-change reload, or as the process ends."""
    if isinstance(exc, SystemExit) and exc.code == reloader.RELOAD_EXIT_CODE:
        _reloading.set()
        _coordinator().shutdown(reason="reloader: code changed, restarting")
    elif exc is not None:
        # Ending on an exception or sys.exit: take what the backlog holds (the loop
        # no longer accepts), then stop listening for every holder now (a reloader
        # parent too), or new connections queue and are reset at exit.
        _serve_backlog(server)


def _install() -> None:
    Integration(_coordinator()).ensure_installed(**_State.install_options)


# ---------------------------------------------------------------- reloader parent


def _restart_with_reloader(loop: ReloaderLoop) -> NoReturn:
    """The reloader parent: Werkzeug's child command line, lastcall's ``reloader.run_children``."""
    from werkzeug import _reloader  # noqa: PLC0415

    Integration(_coordinator()).stand_aside("the Werkzeug reloader's children run the app's hooks")

    def next_child() -> tuple[list[str], dict[str, str]]:
        _werkzeug_log("info", f" * Restarting with {loop.name}")
        # werkzeug/_reloader.py: the command line of the process, as Werkzeug restarts it
        args: list[str] = _reloader._get_args_for_reloading()  # noqa: SLF001
        return args, {"WERKZEUG_RUN_MAIN": "true"}

    reloader.run_children(next_child, lambda line: _werkzeug_log("warning", f" * lastcall: {line}"))


def _werkzeug_log(level: str, message: str) -> None:
    """Log through Werkzeug's own logger, so the reloader's lines look alike."""
    from werkzeug._internal import _log  # noqa: PLC0415

    _log(level, message)
