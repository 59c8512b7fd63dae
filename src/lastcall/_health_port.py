"""Health on a port of its own (``LASTCALL_HEALTH_PORT``): probes that always get an answer.

The ``/livez`` and ``/readyz`` the middlewares answer share the app's
listener and workers: with every sync worker busy, or once the listener has
closed for the drain, a probe gets no answer and an orchestrator may kill a
healthy process. This small listener runs on a daemon thread of its own, so
it answers whatever the workers do, until the process is gone.

Why ``socketserver`` and a dozen lines of HTTP rather than ``http.server``:
the standard library, one thread per probe, nothing to install, and probes
are few and tiny; ``http.server`` would bring ``http.client``, ``email`` and
``ssl`` with it, about 8 MiB of resident memory in every process for two
fixed answers (``benchmarks/core.py``, figure f). Loopback by default (kubelet probes a pod
on its own address: set ``LASTCALL_HEALTH_HOST=0.0.0.0`` there).

Under a master with workers (gunicorn's arbiter, ``uvicorn --workers``'s
supervisor) one listener serves the whole service, in the master: it is
up before any worker, knows when the stop begins, and outlives every
worker. It takes ``LASTCALL_HEALTH_PORT`` out of the environment the
workers inherit, so none of them tries to bind the port too
(``serve_for_workers``).
"""

from __future__ import annotations

import json
import os
import socketserver
import sys

from lastcall._threads import start_daemon

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see _hooks)
if TYPE_CHECKING:
    from collections.abc import Callable

    from lastcall._config import Settings

    # ("ready" | "starting" | "not_ready" | "stopping", reason): Coordinator.readiness
    Readiness = Callable[[], tuple[str, str | None]]


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
_MAX_HEADERS = 100  # lines read after the request line, at most; the rest is not looked at


class HealthServer(socketserver.ThreadingTCPServer):
    """``/livez`` (200 while the process lives) and ``/readyz`` (what ``readiness()`` says)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, readiness: Readiness, host: str, port: int) -> None:
        self.readiness = readiness
        super().__init__((host, port), _Probe)

    def start(self) -> None:
        start_daemon(self.serve_forever, "lastcall-health")

    def handle_error(self, request: object, client_address: object) -> None:
        """A probe that hung up or sent nothing in time: nothing to say about it."""


class _Probe(socketserver.StreamRequestHandler):
    server: HealthServer
    timeout = 5.0  # seconds a client may take to send its request

    def handle(self) -> None:
        words = self.rfile.readline(1024).split()
        for _ in range(_MAX_HEADERS):  # read the headers, so closing does not reset the client
            if self.rfile.readline(8192).strip() == b"":
                break
        method, target = [*words, b"", b""][:2]
        path = target.split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            self._answer(405, {"status": "method not allowed"}, method)
        elif path == b"/livez":
            self._answer(200, {"status": "alive"}, method)
        elif path == b"/readyz":
            status, reason = self.server.readiness()
            body: dict[str, object] = {"status": status}
            if reason:
                body["reason"] = reason
            self._answer(200 if status == "ready" else 503, body, method)
        else:
            self._answer(404, {"status": "not found", "paths": ["/livez", "/readyz"]}, method)

    def _answer(self, code: int, body: dict[str, object], method: bytes) -> None:
        data = json.dumps(body).encode()
        head = (
            f"HTTP/1.1 {code} {_REASONS[code]}\r\n"
            "Content-Type: application/json\r\n"
            "Cache-Control: no-store\r\n"
            f"Content-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n"
        )
        self.wfile.write(head.encode() + (b"" if method == b"HEAD" else data))


def start(readiness: Readiness, host: str, port: int) -> HealthServer:
    """Bind now (an error names the port at start-up), then answer on a daemon thread."""
    try:
        server = HealthServer(readiness, host, port)
    except OSError as exc:
        error = OSError(
            f"LASTCALL_HEALTH_PORT={port}: cannot listen on {host}:{port} ({exc.strerror}); "
            "choose a free port"
        )
        error.errno = exc.errno  # EADDRINUSE: maybe a sibling worker has it (the coordinator)
        raise error from None
    server.start()
    return server


def a_sibling_may_serve_it() -> bool:
    """A worker of a multiprocessing supervisor lastcall is not in (plain ``uvicorn --workers``).

    Each such worker tries the port; the first one serves it, the others must
    still start (an error in the ASGI lifespan start-up makes uvicorn run the
    app without it, silently).
    """
    multiprocessing = sys.modules.get("multiprocessing")
    return multiprocessing is not None and multiprocessing.parent_process() is not None


def serve_for_workers(readiness: Readiness, settings: Settings) -> HealthServer | None:
    """In a master: the one listener for every worker; the workers it starts will not bind one.

    None when ``LASTCALL_HEALTH_PORT`` is unset. Workers are started after
    this (forked or spawned), so the environment they get lacks the port.
    """
    if settings.health_port is None:
        return None
    server = start(readiness, settings.health_host, settings.health_port)
    os.environ.pop("LASTCALL_HEALTH_PORT", None)
    # A forked worker must not hold the port open: were the master killed, probes
    # would queue there unanswered instead of being refused.
    os.register_at_fork(after_in_child=server.socket.close)
    return server
