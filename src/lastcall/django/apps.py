"""The ``lastcall.django`` app: its settings, its middleware first, runserver made to drain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

import lastcall
from lastcall._config import resolve
from lastcall._health import check_paths
from lastcall._servers import django as django_server

__all__ = ("LastCallConfig", "Options", "options")

MIDDLEWARE = "lastcall.django.middleware.LastCallMiddleware"


@dataclass(frozen=True)
class Options:
    """The project's ``LASTCALL_*`` settings, checked once."""

    install: dict[str, Any]  # for Coordinator.install(): grace, prestop_delay, report
    livez_path: str | None
    readyz_path: str | None
    close_db: bool


def options() -> Options:
    """Read and check ``settings.LASTCALL_*``; a wrong one is one ImproperlyConfigured line."""
    install: dict[str, Any] = {
        "grace": getattr(settings, "LASTCALL_GRACE", None),
        "prestop_delay": getattr(settings, "LASTCALL_PRESTOP_DELAY", None),
        "report": getattr(settings, "LASTCALL_REPORT", None),
    }
    for name, value in install.items():
        if name == "report" and value is not None and not isinstance(value, str):
            raise ImproperlyConfigured(
                f"settings.LASTCALL_REPORT must be a path (str) or None; got {value!r}"
            )
        try:
            resolve(**{name: value})
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(f"settings.LASTCALL_{name.upper()}: {exc}") from None
    livez = getattr(settings, "LASTCALL_LIVEZ_PATH", "/livez")
    readyz = getattr(settings, "LASTCALL_READYZ_PATH", "/readyz")
    try:
        check_paths(livez, readyz)
    except ValueError as exc:
        message = str(exc).replace("livez_path", "settings.LASTCALL_LIVEZ_PATH")
        message = message.replace("readyz_path", "settings.LASTCALL_READYZ_PATH")
        raise ImproperlyConfigured(message) from None
    close_db = getattr(settings, "LASTCALL_CLOSE_DB", True)
    if not isinstance(close_db, bool):
        raise ImproperlyConfigured(
            f"settings.LASTCALL_CLOSE_DB must be True or False; got {close_db!r}"
        )
    return Options(install, livez, readyz, close_db)


class LastCallConfig(AppConfig):  # type: ignore[misc]  # Django ships no types
    """Runs once per process that sets Django up, before any request handler is built."""

    name = "lastcall.django"
    label = "lastcall"
    verbose_name = "lastcall"

    def ready(self) -> None:
        """Check the settings, middleware first, DB cleanup registered, runserver patched."""
        checked = options()
        middleware = [m for m in settings.MIDDLEWARE if m != MIDDLEWARE]
        settings.MIDDLEWARE = [MIDDLEWARE, *middleware]
        coordinator = lastcall.default
        if checked.close_db:
            coordinator.on_shutdown(
                _close_db_connections, phase="cleanup", name="django: close database connections"
            )
        django_server.enable(coordinator, checked.install)
        django_server.wrap_asgi_handler(coordinator, checked.install)


def _close_db_connections() -> None:
    """``connections.close_all()``: the connections the hook's thread holds.

    Django's connections belong to a thread (or an async context); those of
    request threads are closed by Django itself at the end of each request
    (``request_finished``) unless ``CONN_MAX_AGE`` keeps them, and the
    server's threads end with the process. This closes what the stop's own
    thread and hooks opened, and is where a project's own pool closing goes.
    """
    from django.db import connections  # noqa: PLC0415  # only once the stop runs

    connections.close_all()
