"""waitress, with the graceful stop it lacks: ``lastcall.waitress.serve(app, **options)``.

The same signature as ``waitress.serve``. On SIGTERM, SIGINT or SIGHUP
(``LASTCALL_SIGNALS``), through ``lastcall.install()``:

1. ``/readyz`` goes red (``LastCallMiddleware`` wraps the app) and the
   server keeps serving for ``LASTCALL_PRESTOP_DELAY`` seconds;
2. the drain hook, on waitress's own loop thread, takes every connection
   still queued in the listen backlog, then closes the listening sockets,
   so new connections are refused rather than accepted and dropped;
3. requests in flight, and those on the connections just taken, are
   served (and their connections closed after them); connections that are
   idle are closed; the drain ends when no connection is left, or when
   the grace period (``LASTCALL_GRACE``) runs out;
4. the other hooks run, and the process ends as the core's rules say
   (death by the signal, or ``LASTCALL_EXIT_CODE``).

A second SIGINT ends the process at once. waitress's loop runs on the
calling thread, which must be the main thread (signal handlers live there).

From the command line, ``python -m lastcall.waitress`` takes exactly
``waitress-serve``'s options and serves through ``serve`` above::

    python -m lastcall.waitress --listen=127.0.0.1:8080 --threads=8 --call flaskr:create_app
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
from typing import TYPE_CHECKING, Any

import lastcall
from lastcall._config import resolve, settings_or_exit
from lastcall._integration import Integration
from lastcall._servers import waitress as adapter
from lastcall._servers.drain import drain
from lastcall._servers.inflight import RequestsInFlight
from lastcall.wsgi import LastCallMiddleware, middlewares_in

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ("main", "serve")


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
    adapter.TESTED.check()
    if not quiet:
        logging.basicConfig()  # as waitress.serve does; idempotent
    server = make_server(middleware, **kw)
    health = (middleware.livez_path, middleware.readyz_path)
    requests = RequestsInFlight()
    adapter.adapt_tasks(server, coordinator.stopping, requests, health)
    Integration(coordinator).list_requests_with(requests.listing)
    Integration(coordinator).ensure_installed()
    waitress = adapter.WaitressAdapter(server)
    for layer in middlewares_in(middleware):
        layer.count_with(functools.partial(waitress.requests_in_flight, health))
    coordinator.on_shutdown(phase="drain", name="waitress drain")(
        functools.partial(drain, waitress, coordinator)
    )
    if not quiet:
        server.print_listen("Serving on http://{}:{}")
    try:
        adapter.run(server)
    except (SystemExit, KeyboardInterrupt):
        waitress.loop_died()  # waitress's run() returns on these too; the drain runs at exit
    except BaseException:
        waitress.loop_died()
        raise
    else:
        waitress.loop_died()


def main(argv: list[str] | None = None) -> int:
    """``waitress-serve``, serving through :func:`serve`: waitress's own parser, help and errors."""
    settings_or_exit()  # before waitress starts, in one line
    args = sys.argv[1:] if argv is None else argv
    return adapter.run_cli(["python -m lastcall.waitress", *args], serve)


if __name__ == "__main__":
    sys.exit(main())
