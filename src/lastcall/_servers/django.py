"""Django's development server (``manage.py runserver``), with and without the autoreloader.

What Django does on its own, and what this module changes:

* runserver's server (``django/core/servers/basehttp.py``, wsgiref's
  ``WSGIServer`` with ``socketserver.ThreadingMixIn``) runs each connection
  on a daemon thread nobody waits for: what is in flight when the process
  ends is cut off. Here it runs under ``_servers.wsgiref.TrackedServer``,
  whose drain serves the listen backlog, stops listening (new connections
  refused), ends the accept loop and waits for the connection threads,
  closing idle keep-alive connections, as under ``lastcall.wsgiref``.
* The autoreloader (``django/utils/autoreload.py``) sets ``SIGTERM ->
  sys.exit(0)`` in both processes, and its parent runs the child with
  ``subprocess.run``, which SIGKILLs the child on any exception in the
  parent: a SIGTERM or Ctrl-C to the process the user started killed the
  process that holds the app's resources. Here the parent runs none of the
  app's hooks (``Integration.stand_aside``: settings and ``AppConfig.ready()``
  run in both processes), passes SIGTERM/SIGINT/SIGHUP on to the child as
  SIGTERM, and then ends by the signal it was sent; the child takes the signals
  on its main thread (the app runs on ``django-main-thread``) and stops if
  its parent dies, instead of serving on as an orphan.
* Unlike Werkzeug's, Django's reloader parent never binds the port: each
  child binds it anew, so shutting the socket is right for a code-change
  reload too.

The reloader parent's plumbing (signals passed on, the child's "clean"
message, ending like the child) is shared with Werkzeug's, in
``lastcall._servers.reloader``. Tested with ``versions.DJANGO``; each
undocumented part of Django is named where it is used.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

from lastcall import _signals
from lastcall._integration import Integration
from lastcall._log import logger
from lastcall._servers import reloader, versions
from lastcall._servers.wsgiref import TrackedServer

if TYPE_CHECKING:
    from collections.abc import Callable

    from lastcall._coordinator import Coordinator

__all__ = ("enable",)

_THREAD = "django-main-thread"  # django/utils/autoreload.py: start_django's thread for the app
_OFF_MAIN_HINT = (
    "Django's runserver runs the project's code on 'django-main-thread'; add "
    '"lastcall.django" to INSTALLED_APPS instead, which installs lastcall on the main '
    "thread, and put its options in settings.LASTCALL_*"
)


class _State:
    """The integration in this process: set by enable(), read by the patches."""

    coordinator: Coordinator | None = None
    install_options: ClassVar[dict[str, Any]] = {}
    patched = False


def enable(coordinator: Coordinator, install_options: dict[str, Any] | None = None) -> None:
    """Make runserver in this process stop the lastcall way; idempotent.

    Called from ``AppConfig.ready()`` in every process that sets Django up;
    patching costs nothing where runserver never runs (gunicorn, uvicorn).
    ``install_options`` go to ``coordinator.install()`` on the main thread
    once runserver serves (or, in a reloader child, starts the app's thread).
    """
    if _State.coordinator is not None:
        return
    _State.coordinator = coordinator
    _State.install_options = install_options or {}
    versions.DJANGO.check()
    _signals.OFF_MAIN_HINTS[_THREAD] = _OFF_MAIN_HINT
    if not _State.patched:
        _patch()
        _State.patched = True
    from django.utils import autoreload  # noqa: PLC0415  # only with Django in use

    if os.environ.get(autoreload.DJANGO_AUTORELOAD_ENV) == "true":
        reloader.in_child(coordinator, "the autoreloader parent died")


def wrap_asgi_handler(coordinator: Coordinator, install_options: dict[str, Any]) -> None:
    """Have ``get_asgi_application()`` return Django's handler inside lastcall's ASGI middleware.

    So the project's own ``asgi.py`` gets the lifespan, the drain and the hooks
    under uvicorn, hypercorn or gunicorn's UvicornWorker, as a wrapped app does.
    ``get_asgi_application()`` (``django/core/asgi.py``) runs ``django.setup()``,
    which calls this from ``AppConfig.ready()``, and then builds the handler
    by its module-level name ``ASGIHandler``: that name becomes a factory.
    """
    from django.core import asgi as core_asgi  # noqa: PLC0415  # only with Django in use

    handler_class = core_asgi.ASGIHandler
    if getattr(handler_class, "lastcall_wrapped", False):
        return

    def asgi_handler() -> Any:  # noqa: ANN401  # lastcall.asgi.LastCallMiddleware
        from lastcall.asgi import LastCallMiddleware  # noqa: PLC0415  # asyncio, for ASGI only

        middleware = LastCallMiddleware(handler_class(), coordinator=coordinator)
        middleware.install_with(install_options)
        return middleware

    asgi_handler.lastcall_wrapped = True  # type: ignore[attr-defined]
    core_asgi.ASGIHandler = asgi_handler


def _coordinator() -> Coordinator:
    coordinator = _State.coordinator
    assert coordinator is not None  # noqa: S101  # enable() sets it before any patch runs
    return coordinator


def _install() -> None:
    Integration(_coordinator()).ensure_installed(**_State.install_options)


# ---------------------------------------------------------------- patches


def _patch() -> None:
    """Put lastcall's wsgiref server under runserver; wrap what its reloader goes through.

    From ``django/core/management/commands/runserver.py``: ``Command.server_cls``
    (Django's ``WSGIServer``, a wsgiref one, which ``basehttp.run()`` mixes
    ``socketserver.ThreadingMixIn`` into) becomes that class under
    ``_servers.wsgiref.TrackedServer``, the same drain as ``lastcall.wsgiref``.
    From ``django/core/servers/basehttp.py``: ``ServerHandler.run`` (one call
    per request, so a keep-alive connection between requests counts as
    idle). From ``django/utils/autoreload.py``: ``restart_with_reloader``
    (the parent) and ``start_django`` (the child's main thread), both looked
    up as module globals by ``run_with_reloader``.
    """
    from django.core.management.commands import runserver  # noqa: PLC0415  # Django in use
    from django.core.servers import basehttp  # noqa: PLC0415
    from django.utils import autoreload  # noqa: PLC0415

    server_cls = runserver.Command.server_cls
    runserver.Command.server_cls = type(
        server_cls.__name__,
        (TrackedServer, server_cls),
        {
            "coordinator": _coordinator(),
            "install_options": _State.install_options,
            "lastcall_name": "runserver",
        },
    )
    original_run = basehttp.ServerHandler.run
    original_start_django = autoreload.start_django

    def run(self: basehttp.ServerHandler, application: Callable[..., Any]) -> None:
        # django/core/servers/basehttp.py: WSGIRequestHandler.handle_one_request sets it
        handler = getattr(self, "request_handler", None)
        # Lib/socketserver.py, StreamRequestHandler.setup: the handler's socket
        connection = getattr(handler, "connection", None)
        served = getattr(getattr(handler, "server", None), "lastcall_served", None)
        if served is None or connection not in served.connections:
            original_run(self, application)
            return
        served.connections[connection] = True
        try:
            original_run(self, application)
        finally:
            served.connections[connection] = False

    def start_django(
        reloader: object, main_func: Callable[..., object], *args: object, **kwargs: object
    ) -> None:
        # The child's main thread: run_with_reloader set SIGTERM -> sys.exit(0),
        # dropped here rather than chained, before the app's thread starts.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _install()
        original_start_django(reloader, main_func, *args, **kwargs)

    basehttp.ServerHandler.run = run
    autoreload.start_django = start_django
    autoreload.restart_with_reloader = _restart_with_reloader


# ---------------------------------------------------------------- reloader parent


def _restart_with_reloader() -> NoReturn:
    """The reloader parent: Django's child command line, lastcall's ``reloader.run_children``.

    Replaces ``autoreload.restart_with_reloader``, whose ``subprocess.run``
    SIGKILLs the child when the parent's SIGTERM handler raises SystemExit.
    """
    from django.utils import autoreload  # noqa: PLC0415

    Integration(_coordinator()).stand_aside("Django's autoreloader child runs the app's hooks")
    # django/utils/autoreload.py: the child's command line, and the variable that marks it
    args = autoreload.get_child_arguments()
    reloader.run_children(
        lambda: (args, {autoreload.DJANGO_AUTORELOAD_ENV: "true"}),
        lambda line: logger.warning("%s", line),
        name="autoreloader",
    )
