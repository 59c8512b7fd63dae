"""Health on a port of its own (``LASTCALL_HEALTH_PORT``): probes that always get an answer.

The ``/livez`` and ``/readyz`` the middlewares answer share the app's
listener and workers: with every sync worker busy, or once the listener has
closed for the drain, a probe gets no answer and an orchestrator may kill a
healthy process. This small listener runs on a daemon thread of its own, so
it answers whatever the workers do, until the process is gone.

Why ``http.server``: the standard library, one thread per probe, nothing to
install; probes are few and tiny. Loopback by default (kubelet probes a pod
on its own address: set ``LASTCALL_HEALTH_HOST=0.0.0.0`` there).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see _hooks)
if TYPE_CHECKING:
    from lastcall._coordinator import Coordinator


class HealthServer(ThreadingHTTPServer):
    """``/livez`` (200 while the process lives) and ``/readyz`` (the coordinator's readiness)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, coordinator: Coordinator, host: str, port: int) -> None:
        self.coordinator = coordinator
        super().__init__((host, port), _Probe)

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, name="lastcall-health", daemon=True).start()


class _Probe(BaseHTTPRequestHandler):
    server: HealthServer

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/livez":
            self._answer(200, {"status": "alive"})
        elif self.path.split("?", 1)[0] == "/readyz":
            status, reason = self.server.coordinator.readiness()
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


def start(coordinator: Coordinator, host: str, port: int) -> HealthServer:
    """Bind now (an error names the port at start-up), then answer on a daemon thread."""
    try:
        server = HealthServer(coordinator, host, port)
    except OSError as exc:
        raise OSError(
            f"LASTCALL_HEALTH_PORT={port}: cannot listen on {host}:{port} ({exc.strerror}); "
            "choose a free port"
        ) from None
    server.start()
    return server
