"""The Flask extension: health endpoints, requests in flight, and a dev server that drains.

::

    from flask import Flask
    from lastcall.flask import LastCall

    app = Flask(__name__)
    LastCall(app)            # or: lastcall = LastCall(); lastcall.init_app(app)

The extension wraps ``app.wsgi_app`` in :class:`lastcall.wsgi.LastCallMiddleware`
and, when the app is served by Werkzeug's development server (``app.run()``,
``flask run``, with or without the reloader), makes that server stop the
lastcall way (see :mod:`lastcall._servers.werkzeug`). Signal handlers are
taken only when that server starts serving, never at import: under
gunicorn or waitress the server's own integration owns the signals.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import lastcall
from lastcall._config import resolve
from lastcall._servers import werkzeug as werkzeug_server
from lastcall.wsgi import LastCallMiddleware

if TYPE_CHECKING:
    from flask import Flask

    from lastcall import Coordinator

__all__ = ("LastCall",)

_UNSET: Any = object()


class LastCall:
    """Graceful shutdown for a Flask app.

    Configuration is read in ``init_app`` from ``app.config``; the defaults
    are put there with ``setdefault`` so they are visible, and keyword
    arguments given here replace those defaults. ``None`` for a timing key
    means "the ``LASTCALL_*`` environment variable, else lastcall's default".

    ==========================  =========  ======================================
    key                         default    meaning
    ==========================  =========  ======================================
    ``LASTCALL_GRACE``          ``None``   seconds for the whole stop (25)
    ``LASTCALL_PRESTOP_DELAY``  ``None``   seconds to keep serving once /readyz is red (0)
    ``LASTCALL_REPORT``         ``None``   path of the JSON report, ``{pid}`` expands
    ``LASTCALL_LIVEZ_PATH``     "/livez"   liveness endpoint; ``None`` switches it off
    ``LASTCALL_READYZ_PATH``    "/readyz"  readiness endpoint; ``None`` switches it off
    ==========================  =========  ======================================
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        coordinator: Coordinator | None = None,
        grace: float | None = _UNSET,
        prestop_delay: float | None = _UNSET,
        report: str | None = _UNSET,
        livez_path: str | None = _UNSET,
        readyz_path: str | None = _UNSET,
    ) -> None:
        self._coordinator = coordinator or lastcall.default
        self._defaults = {
            key: value
            for key, value in (
                ("LASTCALL_GRACE", grace),
                ("LASTCALL_PRESTOP_DELAY", prestop_delay),
                ("LASTCALL_REPORT", report),
                ("LASTCALL_LIVEZ_PATH", livez_path),
                ("LASTCALL_READYZ_PATH", readyz_path),
            )
            if value is not _UNSET
        }
        self._middlewares: weakref.WeakKeyDictionary[Flask, LastCallMiddleware] = (
            weakref.WeakKeyDictionary()
        )
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Wrap the app, check its configuration, and prepare the dev server."""
        if "lastcall" in app.extensions:
            raise RuntimeError(
                "lastcall is already registered on this Flask app; "
                "import and use that LastCall instance instead of making another"
            )
        config = app.config
        defaults = {
            "LASTCALL_GRACE": None,
            "LASTCALL_PRESTOP_DELAY": None,
            "LASTCALL_REPORT": None,
            "LASTCALL_LIVEZ_PATH": "/livez",
            "LASTCALL_READYZ_PATH": "/readyz",
            **self._defaults,
        }
        for key, value in defaults.items():
            config.setdefault(key, value)
        options = {
            "grace": config["LASTCALL_GRACE"],
            "prestop_delay": config["LASTCALL_PRESTOP_DELAY"],
            "report": config["LASTCALL_REPORT"],
        }
        for name, value in options.items():
            try:
                resolve(**{name: value})
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"app.config['LASTCALL_{name.upper()}']: {exc}") from None
        middleware = LastCallMiddleware(
            app.wsgi_app,
            coordinator=self._coordinator,
            livez_path=config["LASTCALL_LIVEZ_PATH"],
            readyz_path=config["LASTCALL_READYZ_PATH"],
        )
        _check_routes(app, middleware)
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions["lastcall"] = self
        self._middlewares[app] = middleware
        werkzeug_server.enable(self._coordinator, options)

    def middleware(self, app: Flask) -> LastCallMiddleware:
        """The middleware wrapping ``app`` (its ``in_flight`` count, its health paths)."""
        try:
            return self._middlewares[app]
        except KeyError:
            raise RuntimeError(
                "this Flask app is not set up with lastcall; did you forget to call init_app(app)?"
            ) from None


def _check_routes(app: Flask, middleware: LastCallMiddleware) -> None:
    """Refuse health paths that would hide routes the app already has."""
    for path, key in (
        (middleware.livez_path, "LASTCALL_LIVEZ_PATH"),
        (middleware.readyz_path, "LASTCALL_READYZ_PATH"),
    ):
        if path is None:
            continue
        for rule in app.url_map.iter_rules():
            if rule.rule == path:
                raise ValueError(
                    f"the app's route {path!r} ({rule.endpoint}) collides with lastcall's "
                    f"health endpoint; set app.config[{key!r}] to another path, or None"
                )
