"""Readiness: what ``/readyz`` says, and the listener that says it on a port of its own.

``starting`` until an integration says the server serves, ``not_ready`` while
the app says so (shedding load), ``stopping`` from the moment a stop begins,
whatever else was said, ``ready`` otherwise.
"""

from __future__ import annotations

import errno
import sys

from lastcall._log import logger

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see _hooks)
if TYPE_CHECKING:
    from collections.abc import Callable

    from lastcall._config import Settings
    from lastcall._health_port import HealthServer
    from lastcall._stoptoken import StopToken


class Readiness:
    """One coordinator's readiness; read by ``/readyz`` on any thread, without a lock."""

    def __init__(self, stopping: StopToken) -> None:
        self._stopping = stopping
        self._not_ready: str | None = None
        # An integration said it will call serving(), or gave a test that says when it serves.
        self._starting: bool | Callable[[], bool] = False
        self._health: HealthServer | None = None

    def set_not_ready(self, reason: str) -> None:
        if not isinstance(reason, str) or not reason:
            raise TypeError(f"set_not_ready() needs a reason, like 'shedding load', not {reason!r}")
        self._not_ready = reason

    def set_ready(self) -> None:
        self._not_ready = None

    def expect_serving(self, until: Callable[[], bool] | None = None) -> None:
        self._starting = until or True

    def serving(self) -> None:
        self._starting = False

    def state(self) -> tuple[str, str | None]:
        """``("ready" | "starting" | "not_ready" | "stopping", reason)``."""
        if self._stopping.is_set():
            return "stopping", None
        if self._not_ready is not None:
            return "not_ready", self._not_ready
        starting = self._starting
        if starting and (starting is True or not starting()):
            return "starting", None
        self._starting = False
        return "ready", None

    def start_listener(self, settings: Settings) -> None:
        """``LASTCALL_HEALTH_PORT``'s listener, once; a port a sibling worker holds is a warning."""
        if settings.health_port is None or self._health is not None:
            return
        from lastcall import _health_port  # noqa: PLC0415  # sockets only when asked for

        host, port = settings.health_host, settings.health_port
        try:
            self._health = _health_port.start(self.state, host, port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or not _health_port.a_sibling_may_serve_it():
                raise
            # A Dramatiq or Celery worker process has no port of its own to answer on.
            hint = (
                "; this one answers probes on the app's port only (with `uvicorn --workers`, "
                "start `python -m lastcall.uvicorn` instead: its supervisor serves the port "
                "for all)"
                if "uvicorn" in sys.modules
                else ": the probes are answered there, none by this process"
            )
            logger.warning(
                "LASTCALL_HEALTH_PORT=%d: %s:%d is taken, by a sibling worker most likely%s",
                port,
                host,
                port,
                hint,
            )

    @property
    def address(self) -> tuple[str, int] | None:
        if self._health is None:
            return None
        host, port = self._health.server_address[:2]
        return str(host), int(port)

    def after_fork(self) -> None:
        """A forked child: the parent's start-up and its listener's thread are not here."""
        self._starting = False
        if self._health is not None:  # the parent answers
            self._health.forget()
            self._health = None
