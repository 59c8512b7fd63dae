"""The process ``lastcall drill`` starts: the app, its server, and the drill's controls.

Run as ``python -m lastcall.cli.runner APP --port N [--reload] [--plain]``
(Werkzeug's reloader re-runs that same command for its child). It imports
the app, applies lastcall to it unless ``--plain`` (``LastCall`` for a Flask
app that lacks it, else ``LastCallMiddleware`` and the Werkzeug
integration), and serves it on 127.0.0.1. In front of the app sits
:class:`DrillControl`, the drill's own instruments, the same for both
variants. Anything wrong with the input is one line in ``--error-file`` and
exit status 2, before a socket is opened.

Standard library, Werkzeug and lastcall only: this must run where the
drill's extra (click, rich, httpx) is not installed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, cast

if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import FrameType, ModuleType

    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

HOST = "127.0.0.1"
CONTROL = "/_drill/"
DELAY_HEADER = "HTTP_X_LASTCALL_DRILL_DELAY"
BAD_INPUT = 2
_RAISE_WAIT = 2.0


class BadInputError(Exception):
    """Something about APP or the port that the user must fix; one line."""


class UnhandledError(BaseException):
    """The drill's unhandled exception.

    A BaseException, so that no ``except Exception`` on its way up
    (socketserver's request loop has one) can swallow it.
    """


class DrillControl:
    """The drill's instruments, outermost: state, the in-process stops, slow requests.

    * ``/_drill/state``: this process's pid and how many delayed requests
      have entered, so the drill knows when all are in flight.
    * ``/_drill/os-exit``: ``os._exit(0)`` inside a request.
    * ``/_drill/exception`` and ``/_drill/exit``: an unhandled exception, or
      ``sys.exit(0)``, raised on the main thread (where a server's own loop
      runs) by a signal aimed at that thread.
    * A request carrying ``X-Lastcall-Drill-Delay: S`` sleeps S seconds
      before the app sees it, so any app can have requests in flight.
    """

    def __init__(self, app: WSGIApplication) -> None:
        self._app = app
        self._entered = 0
        self._lock = threading.Lock()
        self._pending: BaseException | None = None
        self._raising = threading.Event()
        signal.signal(signal.SIGUSR1, self._raise_pending)

    def _raise_pending(self, signum: int, frame: FrameType | None) -> None:  # noqa: ARG002
        if self._pending is not None:
            self._raising.set()
            raise self._pending

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Controls first, then the app, delayed if asked."""
        path: str = environ.get("PATH_INFO", "")
        if path.startswith(CONTROL):
            return self._control(path.removeprefix(CONTROL), start_response)
        delay = environ.get(DELAY_HEADER)
        if delay:
            with self._lock:
                self._entered += 1
            time.sleep(float(delay))
        return self._app(environ, start_response)

    def _control(self, action: str, start_response: StartResponse) -> list[bytes]:
        if action == "os-exit":
            os._exit(0)
        if action in ("exception", "exit"):
            self._pending = (
                UnhandledError("lastcall drill: an unhandled exception, as asked")
                if action == "exception"
                else SystemExit(0)
            )
            main = threading.main_thread().ident
            if main is not None:
                signal.pthread_kill(main, signal.SIGUSR1)
                # Answer once it is raised, so the drill's clock starts with the stop itself.
                self._raising.wait(_RAISE_WAIT)
        body = json.dumps({"pid": os.getpid(), "entered": self._entered}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]


def load(spec: str) -> object:
    """Import ``module:attribute`` or ``path/to/file.py[:attribute]`` (default: app)."""
    target, _, attribute = spec.partition(":")
    is_file = target.endswith(".py")
    if is_file and not Path(target).is_file():
        raise BadInputError(f"APP {spec!r}: there is no file {target}")
    try:
        module = _import_file(Path(target)) if is_file else _import_module(target)
    except ModuleNotFoundError as exc:
        raise BadInputError(
            f"APP {spec!r} cannot be imported ({exc}); run the drill from the directory "
            "that holds it, or give the path of its .py file"
        ) from None
    except Exception as exc:
        raise BadInputError(
            f"APP {spec!r} failed while being imported: {type(exc).__name__}: {exc}"
        ) from None
    names = [attribute] if attribute else ["app", "application"]
    for name in names:
        if hasattr(module, name):
            return getattr(module, name)
    raise BadInputError(
        f"APP {spec!r}: {target} has no attribute {' or '.join(names)}; "
        "name the app object as module:attribute"
    )


def _import_file(path: Path) -> ModuleType:
    """Import a .py file by path, its directory first on sys.path (as ``python file.py``)."""
    path = path.resolve()
    sys.path.insert(0, str(path.parent))
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    if module_spec is None or module_spec.loader is None:
        raise ImportError(f"{path} is not a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[path.stem] = module
    module_spec.loader.exec_module(module)
    return module


def _import_module(name: str) -> ModuleType:
    """Import a module as ``flask --app`` would: the current directory first."""
    sys.path.insert(0, str(Path.cwd()))
    return importlib.import_module(name)


def check_wsgi(spec: str, app: object) -> WSGIApplication:
    """Refuse what Werkzeug cannot serve, saying what it is instead."""
    call = getattr(app, "__call__", None)  # noqa: B004  # the method, to see if it is async
    if inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(call):
        raise BadInputError(
            f"APP {spec!r} is an ASGI app; Werkzeug serves WSGI apps: use --server uvicorn "
            "or --server hypercorn"
        )
    try:
        inspect.signature(app).bind({}, None)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BadInputError(
            f"APP {spec!r} is {type(app).__name__!r}, not a WSGI app (a callable taking "
            "environ and start_response); name the app object as module:attribute"
        ) from None
    return app  # type: ignore[return-value]


def with_lastcall(app: WSGIApplication) -> WSGIApplication:
    """Apply lastcall the way a user would: the Flask extension, else the middleware."""
    import lastcall  # noqa: PLC0415  # not in --plain runs
    from lastcall.servers import werkzeug as werkzeug_server  # noqa: PLC0415
    from lastcall.wsgi import LastCallMiddleware  # noqa: PLC0415

    flask = sys.modules.get("flask")
    if flask is not None and isinstance(app, flask.Flask):
        if "lastcall" not in app.extensions:
            from lastcall.flask import LastCall  # noqa: PLC0415

            LastCall(app)
        return cast("WSGIApplication", app)
    werkzeug_server.enable(lastcall.default)
    return LastCallMiddleware(app)


def check_port(port: int) -> None:
    """Fail with the fix before serving, rather than with Werkzeug's exit 1."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as exc:
            raise BadInputError(
                f"port {port} will not open on {HOST} ({exc.strerror}); "
                "give another --port, or leave it out for a free one"
            ) from None


def fail(error_file: str | None, message: str) -> NoReturn:
    """Say what is wrong in one line, where the drill reads it, and exit 2."""
    if error_file:
        Path(error_file).write_text(message + "\n", encoding="utf-8")
    sys.stderr.write(f"lastcall drill: {message}\n")
    sys.exit(BAD_INPUT)


def main(argv: list[str] | None = None) -> None:
    """Check the input, apply lastcall unless ``--plain``, serve until stopped."""
    parser = argparse.ArgumentParser(prog="python -m lastcall.cli.runner")
    parser.add_argument("app")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--reload", action="store_true")
    parser.add_argument("--plain", action="store_true", help="serve the app without lastcall")
    parser.add_argument("--error-file")
    args = parser.parse_args(argv)
    try:
        app = check_wsgi(args.app, load(args.app))
        if not args.plain:
            app = with_lastcall(app)
        if os.environ.get("WERKZEUG_RUN_MAIN") != "true":  # the reloader child inherits it
            check_port(args.port)
    except BadInputError as exc:
        fail(args.error_file, str(exc))
    from werkzeug.serving import run_simple  # noqa: PLC0415

    flask = sys.modules.get("flask")
    if flask is not None and isinstance(app, flask.Flask):
        app.wsgi_app = DrillControl(app.wsgi_app)
    else:
        app = DrillControl(app)
    run_simple(HOST, args.port, app, use_reloader=args.reload, threaded=True)


if __name__ == "__main__":
    main()
