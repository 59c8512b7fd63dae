"""What the WSGI and ASGI middlewares share: the health endpoints' paths and bodies.

Both answer ``/livez`` and ``/readyz`` the same way (see ``lastcall.wsgi`` for
why they disagree during a stop); only how a response is sent differs.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sized

    from lastcall import Coordinator

ALIVE = json.dumps({"status": "alive"}).encode()
READY = json.dumps({"status": "ready"}).encode()
HEADERS = (
    ("Content-Type", "application/json"),
    ("Cache-Control", "no-store"),
)


def stopping_body(in_flight: int) -> bytes:
    """The 503 body of ``/readyz`` once the stop has begun."""
    return json.dumps({"status": "stopping", "in_flight": in_flight}).encode()


def not_ready_body(coordinator: Coordinator) -> bytes | None:
    """The 503 body while not stopping but not ready (``set_not_ready``, starting); else None."""
    status, reason = coordinator.readiness()
    if status in ("ready", "stopping"):
        return None
    return json.dumps(
        {"status": status, "reason": reason} if reason else {"status": status}
    ).encode()


def check_paths(livez_path: str | None, readyz_path: str | None) -> None:
    """Refuse paths a request could never match, or one path for both endpoints."""
    for name, path in (("livez_path", livez_path), ("readyz_path", readyz_path)):
        if path is not None and (not isinstance(path, str) or not path.startswith("/")):
            raise ValueError(f"{name} must be a path starting with '/', or None; got {path!r}")
    if livez_path is not None and livez_path == readyz_path:
        raise ValueError(f"livez_path and readyz_path must differ; both are {livez_path!r}")


class HealthPaths:
    """The read-only face both middlewares show a framework integration."""

    _livez_path: str | None
    _readyz_path: str | None
    _live: Sized

    @property
    def livez_path(self) -> str | None:
        """Where liveness is answered, or None if the app gets that path."""
        return self._livez_path

    @property
    def readyz_path(self) -> str | None:
        """Where readiness is answered, or None if the app gets that path."""
        return self._readyz_path

    @property
    def in_flight(self) -> int:
        """Requests entered and not yet finished (see the middleware for when that is)."""
        return len(self._live)
