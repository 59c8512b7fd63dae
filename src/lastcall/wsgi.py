"""Server-neutral WSGI middleware: requests in flight, and health that tells the truth.

A graceful stop only loses nothing if traffic stops arriving *before* the
server stops accepting it. So the two health endpoints disagree on purpose
during a stop:

* ``/readyz`` goes red (503) the moment ``coordinator.stopping`` is set, in
  the ``pre_stop`` phase, while the listener is still open and every request
  is still served: a load balancer polling it stops routing here first, and
  ``LASTCALL_PRESTOP_DELAY`` gives it time to notice.
* ``/livez`` stays green (200) for as long as the process can answer: a
  draining process is alive, and an orchestrator that read "not alive" would
  kill it mid-drain, which is the very loss this avoids.

While stopping, every response also carries ``Connection: close``, so a
keep-alive client opens its next request elsewhere instead of reusing a
connection that is about to go. (Werkzeug honours it; gunicorn drops
hop-by-hop headers from the app, and waitress and ``wsgiref`` reject them
outright, so it is not sent there.) Under a server adapter
(``lastcall._servers``), which counts requests and closes connections its
server's own way, the middleware only answers the health paths: see
``count_with``.

The in-flight count is what the ``drain`` phase waits on (``wait_idle``). A
request counts from the moment it enters until the server closes its
response iterable, so a streamed response counts until its last chunk has
been sent, not merely until the view returned. Health requests are not
counted: they never touch the app. What is still in flight when the drain
budget runs out is listed in the report (method, path, seconds in flight).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import lastcall
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
from lastcall._servers.inflight import in_report

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from lastcall import Coordinator

__all__ = ("LastCallMiddleware",)

# Servers that refuse hop-by-hop headers from the app (PEP 3333) and close
# connections their own way while stopping: waitress, wsgiref.
_NO_CONNECTION_HEADER = ("waitress", "WSGIServer/")
_monotonic = time.monotonic


class LastCallMiddleware(HealthPaths):
    """Wrap a WSGI app: count its requests in flight and answer ``/livez`` and ``/readyz``.

    ``coordinator`` defaults to ``lastcall.default``; a path of ``None``
    switches that endpoint off (its requests go to the app). The paths are
    kept as ``livez_path`` and ``readyz_path`` so a framework integration can
    check them against its own routes.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        coordinator: Coordinator | None = None,
        livez_path: str | None = "/livez",
        readyz_path: str | None = "/readyz",
    ) -> None:
        if not callable(app):
            raise TypeError(f"LastCallMiddleware needs a WSGI callable as app; got {app!r}")
        if coordinator is None:
            coordinator = lastcall.default
        elif not isinstance(coordinator, lastcall.Coordinator):
            raise TypeError(f"coordinator must be a lastcall.Coordinator; got {coordinator!r}")
        check_paths(livez_path, readyz_path)
        self._app = app
        self._stopping = coordinator.stopping
        self._coordinator = coordinator
        self._livez_path = livez_path
        self._readyz_path = readyz_path
        # The responses in flight. set.add and set.discard are atomic, so the
        # hot path takes no lock, and a second close() cannot count twice.
        self._live: set[_Response] = set()
        self._waiters = 0  # wait_idle() callers: only then does the last request out notify
        self._idle = threading.Condition(threading.Lock())
        self._server_counts: Callable[[], int] | None = None
        Integration(coordinator).list_requests_with(self.requests_in_flight)

    def count_with(self, in_flight: Callable[[], int]) -> None:
        """Leave counting to the server: responses then pass through unwrapped.

        For a server adapter that knows its requests in flight and closes its
        connections itself while stopping (``lastcall._servers``): the
        per-request cost drops to two string compares. ``in_flight()`` is what
        ``/readyz`` and ``in_flight`` report from then on.
        """
        self._server_counts = in_flight

    @property
    def in_flight(self) -> int:
        """Requests entered and not yet finished, as this middleware or the server counts them."""
        server_counts = self._server_counts
        return len(self._live) if server_counts is None else server_counts()

    def requests_in_flight(self) -> list[dict[str, Any]]:
        """The requests this middleware counts in flight: method, path, seconds so far."""
        now = _monotonic()
        return [
            in_report(
                response.environ.get("REQUEST_METHOD", ""),
                response.environ.get("PATH_INFO", ""),
                response.began,
                now,
            )
            for response in list(self._live)
        ]

    def wait_idle(self, timeout: float) -> bool:
        """Block until no request is in flight (True) or ``timeout`` seconds pass (False)."""
        with self._idle:
            self._waiters += 1
            try:
                return self._idle.wait_for(lambda: not self._live, timeout)
            finally:
                self._waiters -= 1

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Health paths first (cheap string compares), then the app, counted."""
        path = environ.get("PATH_INFO", "")
        if path == self._readyz_path:
            return self._readyz(environ, start_response)
        if path == self._livez_path:
            return _json(environ, start_response, "200 OK", ALIVE)
        if self._server_counts is not None:
            return self._app(environ, start_response)
        response = _Response(self, start_response, environ)
        self._live.add(response)
        try:
            response.iterable = self._app(environ, response.start_response)
        except BaseException:
            response.close()
            raise
        return response

    def _readyz(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if not self._stopping.is_set():
            not_ready = not_ready_body(self._coordinator)
            if not_ready is None:
                return _json(environ, start_response, "200 OK", READY)
            return _json(environ, start_response, "503 Service Unavailable", not_ready)
        body = stopping_body(self.in_flight)
        return _json(environ, start_response, "503 Service Unavailable", body)

    def notify_idle(self) -> None:
        """The last response out wakes ``wait_idle``.

        A waiter counts itself in under the lock before it checks, so either it
        sees the set empty or the last response out sees it waiting: no wake-up is lost.
        """
        with self._idle:
            self._idle.notify_all()


class _Response:
    """The app's response, counted in flight until the server closes it.

    Iterating hands out the app's own iterator, so chunks pass through at no
    cost; ``close()`` closes the app's iterable, then leaves, once.
    """

    __slots__ = ("_middleware", "_start_response", "began", "environ", "iterable")

    def __init__(
        self,
        middleware: LastCallMiddleware,
        start_response: StartResponse,
        environ: WSGIEnvironment,
    ) -> None:
        self._middleware: LastCallMiddleware | None = middleware  # None once closed
        self._start_response = start_response
        self.environ = environ  # method and path, should the report list it
        self.began = _monotonic()
        self.iterable: Iterable[bytes] = ()

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
        /,
    ) -> Callable[[bytes], object]:
        """Checked when the headers go out, so a request begun before the stop closes too."""
        middleware = self._middleware
        if (
            middleware is not None
            and middleware._stopping.is_set()  # noqa: SLF001
            and not self.environ.get("SERVER_SOFTWARE", "").startswith(_NO_CONNECTION_HEADER)
        ):
            headers = [(k, v) for k, v in headers if k.lower() != "connection"]
            headers.append(("Connection", "close"))
        return self._start_response(status, headers, exc_info)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.iterable)

    def close(self) -> None:
        middleware = self._middleware
        if middleware is None:
            return
        self._middleware = None
        try:
            close = getattr(self.iterable, "close", None)
            if close is not None:
                close()
        finally:
            live = middleware._live  # noqa: SLF001
            live.discard(self)
            if not live and middleware._waiters:  # noqa: SLF001
                middleware.notify_idle()


def _json(
    environ: WSGIEnvironment, start_response: StartResponse, status: str, body: bytes
) -> list[bytes]:
    start_response(status, [*HEADERS, ("Content-Length", str(len(body)))])
    return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


def middlewares_in(app: object) -> list[LastCallMiddleware]:
    """The ``LastCallMiddleware`` layers a server's app reaches, for ``count_with``.

    Itself, a Flask app's ``wsgi_app``, and what each of ours wraps.
    """
    found: list[LastCallMiddleware] = []
    seen: set[int] = set()
    while app is not None and id(app) not in seen:
        seen.add(id(app))
        if isinstance(app, LastCallMiddleware):
            found.append(app)
            app = app._app  # noqa: SLF001  # our own class
        else:
            app = getattr(app, "wsgi_app", None)
    return found
