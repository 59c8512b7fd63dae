"""The stdlib's wsgiref server, with the graceful stop it lacks: ``lastcall.wsgiref.make_server``.

The same call as ``wsgiref.simple_server.make_server``; the server it
returns stops, on SIGTERM, SIGINT or SIGHUP (``LASTCALL_SIGNALS``), the way
every server does under lastcall:

1. ``/readyz`` goes red (``LastCallMiddleware`` wraps the app, unless it
   already does) and the server keeps serving for ``LASTCALL_PRESTOP_DELAY``
   seconds;
2. the drain takes what the listen backlog holds, stops listening (new
   connections are refused) and ends ``serve_forever``'s loop; the thread
   that ran it answers what was taken, so a single-threaded server stays
   single-threaded;
3. requests in flight finish, within the grace period (``LASTCALL_GRACE``);
4. the other hooks run, and the process ends as the core's rules say
   (death by the signal, or ``LASTCALL_EXIT_CODE``).

``make_server`` installs lastcall's signal handlers when it runs on the
main thread (as ``lastcall.install()`` with the ``LASTCALL_*`` settings,
unless the app called it already); elsewhere, call ``lastcall.install()``
on the main thread yourself. A second SIGINT ends the process at once.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import lastcall
from lastcall._config import resolve
from lastcall._integration import Integration
from lastcall._servers.wsgiref import TrackedServer
from lastcall.wsgi import LastCallMiddleware, middlewares_in

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ("make_server",)


def make_server(
    host: str,
    port: int,
    app: WSGIApplication,
    server_class: type[WSGIServer] = WSGIServer,
    handler_class: type[WSGIRequestHandler] = WSGIRequestHandler,
) -> WSGIServer:
    """Create a wsgiref server for ``app`` on ``host:port`` that stops as described above.

    ``server_class`` may be any subclass of ``wsgiref.simple_server.WSGIServer``,
    such as one that mixes in ``socketserver.ThreadingMixIn``.
    """
    if not (isinstance(server_class, type) and issubclass(server_class, WSGIServer)):
        raise TypeError(
            "server_class must be wsgiref.simple_server.WSGIServer or a subclass of it; "
            f"got {server_class!r}"
        )
    if not middlewares_in(app):
        app = LastCallMiddleware(app)  # refuses a non-callable app, in one line
    if not lastcall.default.installed:
        resolve()  # a bad LASTCALL_* setting (a pre-stop delay that leaves no drain) fails here
    tracked: type[WSGIServer] = type(
        server_class.__name__, (TrackedServer, server_class), {"coordinator": lastcall.default}
    )
    server = tracked((host, port), handler_class)
    server.set_app(app)
    server.drain_on_stop()  # type: ignore[attr-defined]  # TrackedServer's
    if threading.current_thread() is threading.main_thread():
        Integration(
            lastcall.default
        ).ensure_installed()  # the port is open: a SIGTERM from now on is a stop
    return server
