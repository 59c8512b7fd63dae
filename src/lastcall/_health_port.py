"""Health on a port of its own (``LASTCALL_HEALTH_PORT``): probes that always get an answer.

The ``/livez`` and ``/readyz`` the middlewares answer share the app's
listener and workers: with every sync worker busy, or once the listener has
closed for the drain, a probe gets no answer and an orchestrator may kill a
healthy process. This small listener runs on a daemon thread of its own, so
it answers whatever the workers do, until the process is gone.

Why ``http.server``: the standard library, one thread per probe, nothing to
install; probes are few and tiny. Loopback by default (kubelet probes a pod
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
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see _hooks)
if TYPE_CHECKING:
    from collections.abc import Callable

    from lastcall._config import Settings

    # ("ready" | "starting" | "not_ready" | "stopping", reason): Coordinator.readiness
    Readiness = Callable[[], tuple[str, str | None]]


class HealthServer(ThreadingHTTPServer):
    """``/livez`` (200 while the process lives) and ``/readyz`` (what ``readiness()`` says)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, readiness: Readiness, host: str, port: int) -> None:
        self.readiness = readiness
        super().__init__((host, port), _Probe)

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, name="lastcall-health", daemon=True).start()


class _Probe(BaseHTTPRequestHandler):
    server: HealthServer

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/livez":
            self._answer(200, {"status": "alive"})
        elif self.path.split("?", 1)[0] == "/readyz":
            status, reason = self.server.readiness()
            body: dict[str, object] = {"status": status}
            if reason:
                body["reason"] = reason
            self._answer(200 if status == "ready" else 503, body)
        else:
            self._answer(404, {"status": "not found", "paths": ["/livez", "/readyz"]})

    do_HEAD = do_GET  # noqa: N815  # the name http.server looks up

    def _answer(self, code: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002  # the base's name
        """Probes every few seconds would fill the log: say nothing."""


def start(readiness: Readiness, host: str, port: int) -> HealthServer:
    """Bind now (an error names the port at start-up), then answer on a daemon thread."""
    try:
        server = HealthServer(readiness, host, port)
    except OSError as exc:
        raise OSError(
            f"LASTCALL_HEALTH_PORT={port}: cannot listen on {host}:{port} ({exc.strerror}); "
            "choose a free port"
        ) from None
    server.start()
    return server


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
