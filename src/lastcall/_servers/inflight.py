"""The requests a server adapter sees in flight, to name them in the report if the drain runs out.

For servers whose own hooks say when a request begins and ends (gunicorn's
``pre_request``/``post_request``, waitress's task): one dict insert and one
pop per request, each atomic in CPython, so no lock on the hot path.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ("RequestsInFlight", "in_report")


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
