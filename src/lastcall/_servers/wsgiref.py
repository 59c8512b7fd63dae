"""The stdlib's ``wsgiref.simple_server`` (``lastcall.wsgiref.make_server`` is the face).

What wsgiref does on its own, and what this module changes:

* ``WSGIServer`` is ``http.server.HTTPServer``, a ``socketserver.TCPServer``:
  ``serve_forever`` answers one connection at a time on the thread that
  called it, unless the class mixes in ``socketserver.ThreadingMixIn`` (a
  thread per connection). It has no stop of its own: SIGTERM ends the
  process mid-request, and what waits in the listen backlog is reset.
* Here the drain takes what the backlog holds, shuts the listening socket
  (new connections refused, never accepted and reset), ends the accept
  loop, and has the **serving thread** answer what it took: an app written
  for wsgiref's single thread (a ``sqlite3`` connection made at import, say)
  is never called from another. Then it waits for the connections in
  flight, closing those still waiting for their first byte.
* wsgiref refuses hop-by-hop headers from the app (an ``AssertionError``,
  every response a 500): ``LastCallMiddleware`` sends it none
  (``lastcall.wsgi``).

The class ``make_server`` builds puts ``TrackedServer`` in front of the
user's server class and overrides only documented ``socketserver`` and
``wsgiref`` methods (``serve_forever``, ``finish_request``, ``get_app``).
Two undocumented names of ``Lib/socketserver.py`` are used, the same on
every Python lastcall supports: ``BaseServer.shutdown_request`` (a connection taken from
the backlog whose handling failed is closed as socketserver closes it) and
``StreamRequestHandler.connection``. The stdlib has no version gate; the
tests run on the Python versions CI runs.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, ClassVar

from lastcall._integration import Integration
from lastcall._servers.drain import drain
from lastcall._servers.inflight import CountedRequests, has_input
from lastcall._servers.listener import take_backlog

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

    from lastcall._coordinator import Coordinator

__all__ = ("TrackedServer", "WsgirefAdapter")

Address = Any  # socketserver's client address: a (host, port) pair for TCP


class _Served:
    """What the drain needs to know of one server."""

    def __init__(self) -> None:
        self.requests = CountedRequests()  # connections being handled, on any thread
        # Each open connection, and whether its request is being answered
        # (False until the request line and headers are read).
        self.connections: dict[socket.socket, bool] = {}
        self.current = threading.local()  # .connection: the one this thread handles
        self.lock = threading.Lock()  # serving and taken change together
        self.serving = False  # in serve_forever: what the drain takes is answered there
        self.taken: list[tuple[socket.socket, Address]] = []  # from the backlog, to answer
        self.loop_ended = threading.Event()  # not serving, and what was taken answered
        self.loop_ended.set()


class TrackedServer:
    """Put in front of a wsgiref server class: what lastcall needs to drain it.

    ``coordinator`` is set on the class by ``lastcall.wsgiref.make_server``.
    """

    coordinator: Coordinator
    install_options: ClassVar[dict[str, Any]] = {}  # for install(): lastcall.django's settings
    lastcall_name: ClassVar[str] = "wsgiref"  # in the log and the report (Django: runserver)

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401  # socketserver's
        self.lastcall_served = _Served()
        self.lastcall_drains = False
        super().__init__(*args, **kwargs)

    def drain_on_stop(self) -> None:
        """Register the drain of this server in the coordinator's ``drain`` phase, once."""
        if self.lastcall_drains:
            return
        self.lastcall_drains = True
        self.coordinator.on_shutdown(
            functools.partial(drain, WsgirefAdapter(self), self.coordinator),
            phase="drain",
            name=f"{self.lastcall_name}: stop accepting, finish requests in flight",
        )

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve until the drain ends the loop; then answer what it took from the backlog."""
        if threading.current_thread() is threading.main_thread():
            # Our handlers back in front of any set since (runserver --noreload: installed here).
            Integration(self.coordinator).ensure_installed(**self.install_options)
        self.drain_on_stop()
        served = self.lastcall_served
        with served.lock:
            served.serving = True
            served.loop_ended.clear()
        try:
            super().serve_forever(poll_interval)  # type: ignore[misc]
        finally:
            with served.lock:
                served.serving = False
                taken, served.taken = served.taken, []
            try:
                _answer(self, taken)
            finally:
                served.loop_ended.set()

    def finish_request(self, request: socket.socket, client_address: Address) -> None:
        """One connection, on the thread that handles it: counted until it is answered."""
        served = self.lastcall_served
        served.connections[request] = False
        served.current.connection = request
        try:
            with served.requests:
                super().finish_request(request, client_address)  # type: ignore[misc]
        finally:
            served.connections.pop(request, None)
            served.current.connection = None

    def get_app(self) -> WSGIApplication | None:
        """Called once a request's headers are read: from now on the connection is answering."""
        served = self.lastcall_served
        connection = getattr(served.current, "connection", None)
        if connection in served.connections:
            served.connections[connection] = True
        app: WSGIApplication | None = super().get_app()  # type: ignore[misc]
        return app


def _answer(server: Any, taken: list[tuple[socket.socket, Address]]) -> None:  # noqa: ANN401
    """Answer connections taken from the backlog, as socketserver answers one it accepted."""
    while taken:
        connection, address = taken.pop(0)
        try:
            server.process_request(connection, address)
        except Exception:  # socketserver's own policy: log it, go on
            server.handle_error(connection, address)
            server.shutdown_request(connection)


class WsgirefAdapter:
    """The drain's questions for one wsgiref server."""

    name = "wsgiref"

    def __init__(self, server: TrackedServer) -> None:
        self._server: Any = server  # a WSGIServer too
        self._served = server.lastcall_served
        self.name = server.lastcall_name

    def prestop_delay(self) -> float:
        """The core's pre_stop phase has kept serving already."""
        return 0.0

    def close_door(self) -> int:
        """Take the backlog, stop listening, end the accept loop; the serving thread answers."""
        server, served = self._server, self._served
        taken = take_backlog(server.socket)  # refused from now on; wakes the loop
        with served.lock:
            serving = served.serving
            if serving:
                served.taken.extend(taken)
        if not serving:  # not in serve_forever (yet, or any more): answer them here
            _answer(server, taken)
            return len(taken)
        # shutdown() waits for the loop to end, which waits for the request in hand.
        threading.Thread(target=server.shutdown, name="lastcall-wsgiref-stop", daemon=True).start()
        return len(taken)

    def in_flight(self) -> int:
        """Connections being handled, and those taken from the backlog not yet begun."""
        return self._served.requests.count + len(self._served.taken)

    def wait_idle(self, timeout: float) -> bool:
        """Until the loop has ended (if it ran) and every connection is answered."""
        served = self._served
        deadline = time.monotonic() + timeout
        if not served.loop_ended.wait(timeout):
            return False
        return served.requests.wait_idle(max(0.0, deadline - time.monotonic()))

    def close_idle(self) -> None:
        """Connections still waiting for their first byte: their handlers read EOF and end."""
        for connection, answering in list(self._served.connections.items()):
            if not answering and not has_input(connection):
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RD)

    def cancel(self) -> int:
        """A request being answered cannot be cancelled: it is left, as wsgiref leaves it."""
        return self.in_flight()
