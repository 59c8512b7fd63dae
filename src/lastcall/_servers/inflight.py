"""The requests a server adapter sees in flight: counted, waited for, named in the report.

* ``RequestsInFlight``: for servers whose own hooks say when a request
  begins and ends (gunicorn's ``pre_request``/``post_request``, waitress's
  task), method, path and start, to name them if the drain runs out: one
  dict insert and one pop per request, each atomic in CPython, so no lock
  on the hot path.
* ``CountedRequests``: the request threads of a ``socketserver`` server
  (Werkzeug's, wsgiref's, runserver's), to wait until none is left.
* ``has_input``: whether an idle keep-alive connection has a request on its way.
"""

from __future__ import annotations

import select
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import socket

__all__ = ("CountedRequests", "RequestsInFlight", "has_input", "in_report")


def in_report(method: str, path: str, began: float, now: float) -> dict[str, Any]:
    """One request in flight as the report's ``requests`` lists it (times from ``monotonic``)."""
    return {"method": method, "path": path, "seconds": round(now - began, 3)}


class RequestsInFlight:
    """Method, path and start of each request in flight, by a key the adapter chooses."""

    def __init__(self) -> None:
        self._live: dict[int, tuple[str, str, float]] = {}

    def __len__(self) -> int:
        return len(self._live)

    def began(self, key: int, method: str, path: str) -> None:
        self._live[key] = (method, path, time.monotonic())

    def ended(self, key: int) -> None:
        self._live.pop(key, None)

    def listing(self) -> list[dict[str, Any]]:
        """The requests in flight: method, path, seconds so far (``list_requests_with``)."""
        now = time.monotonic()
        return [
            in_report(method, path, began, now) for method, path, began in list(self._live.values())
        ]


def has_input(connection: socket.socket) -> bool:
    """Bytes (or the client's close) waiting to be read: a request on its way."""
    try:
        readable, _, _ = select.select([connection], [], [], 0)
    except (OSError, ValueError):
        return False
    return bool(readable)


class CountedRequests:
    """The request threads of one server, counted exactly, to wait until none is left."""

    def __init__(self) -> None:
        self._count = 0
        self._cond = threading.Condition()

    def __enter__(self) -> None:
        with self._cond:
            self._count += 1

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._count -= 1
            if not self._count:
                self._cond.notify_all()

    @property
    def count(self) -> int:
        return self._count

    def wait_idle(self, timeout: float | None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._count, timeout)
