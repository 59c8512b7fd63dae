"""The process ``lastcall drill`` starts: the app, its server, and the drill's controls.

Werkzeug and waitress are served from here: ``python -m lastcall.cli.runner
APP --port N [--server waitress] [--reload] [--plain]`` (Werkzeug's reloader
re-runs that same command for its child). gunicorn, uvicorn and hypercorn
are started by their own command lines and import the app from here
instead, through the factories :func:`wsgi` and :func:`asgi`, which read
the same choices from ``LASTCALL_DRILL_*`` variables. Either way the app is
imported, lastcall is applied the way a user would apply it on that server
unless ``--plain``, and in front of it sits :class:`DrillControl` (or its
ASGI twin), the drill's own instruments, the same for both variants.
Anything wrong with the input is one line in the error file and exit status
2, before the app serves.

Standard library, the servers and lastcall only: this must run where the
drill's extra (click, rich, httpx) is not installed.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
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
from types import FunctionType
from typing import TYPE_CHECKING, Any, NoReturn, cast

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, MutableMapping
    from types import FrameType, ModuleType

    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    Scope = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
    Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
    AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HOST = "127.0.0.1"
CONTROL = "/_drill/"
DELAY_HEADER = "HTTP_X_LASTCALL_DRILL_DELAY"
BAD_INPUT = 2
_GUNICORN_BOOT_ERROR = 3
_RAISE_WAIT = 2.0
_RAISE_TRIES = 3  # uvloop runs signal handlers inside a callback: every try is swallowed
_RAISE_SETTLE = 0.2  # seconds for the loop's exception handler to say it caught the raise
# What the factories read (set by the drill); the first three mirror runner's arguments.
ENV_APP = "LASTCALL_DRILL_APP"
ENV_PLAIN = "LASTCALL_DRILL_PLAIN"
ENV_ERROR_FILE = "LASTCALL_DRILL_ERROR_FILE"
ENV_SERVER = "LASTCALL_DRILL_SERVER"
# A file each delayed request appends a byte to as it enters: a count that every
# process of the app adds to, readable while every worker is busy.
ENV_ENTERED = "LASTCALL_DRILL_ENTERED"
# A file the drill creates once it sent the stop: a delayed request lasts its seconds and, on
# a machine so busy that they were up first, until then, so that it is in flight at the stop.
ENV_STOPPED = "LASTCALL_DRILL_STOPPED"
_HOLD_POLL = 0.01
_HOLD_MOST = 30.0  # seconds past its own: the drill has given up by then


ASGI_DELAY_HEADER = b"x-lastcall-drill-delay"


class BadInputError(Exception):
    """Something about APP or the port that the user must fix; one line."""


class UnhandledError(BaseException):
    """The drill's unhandled exception.

    A BaseException, so that no ``except Exception`` on its way up
    (socketserver's request loop has one) can swallow it.
    """


class Controls:
    """What the drill's instruments share, on every server: the in-process stops, and the count."""

    def __init__(self) -> None:
        self._entered_file = os.environ.get(ENV_ENTERED)
        self._stopped_file = os.environ.get(ENV_STOPPED)
        self._pending: BaseException | None = None
        self._raising = threading.Event()
        self._logged = threading.Event()  # the loop's exception handler saw the raise
        self._loop: asyncio.AbstractEventLoop | None = None  # an ASGI server's, on the main thread
        signal.signal(signal.SIGUSR1, self._raise_pending)

    def _raise_pending(self, signum: int, frame: FrameType | None) -> None:  # noqa: ARG002
        if self._pending is not None:
            self._raising.set()
            raise self._pending

    def _entered(self) -> None:
        if self._entered_file:
            with Path(self._entered_file).open("ab") as out:
                out.write(b".")

    def _stop_pending(self, held_until: float) -> bool:
        """Whether a delayed request, its own seconds up, still waits for the drill's stop."""
        waiting = self._stopped_file is not None and not Path(self._stopped_file).exists()
        return waiting and time.monotonic() < held_until

    def _act(self, action: str) -> bytes:
        """Do what ``/_drill/<action>`` asks, on whichever thread serves it; the answer's body."""
        if action == "os-exit":
            os._exit(0)
        answer: dict[str, object] = {"pid": os.getpid()}
        if action in ("exception", "exit"):
            self._pending = (
                UnhandledError("lastcall drill: an unhandled exception, as asked")
                if action == "exception"
                else SystemExit(0)
            )
            main = threading.main_thread().ident
            for _ in range(_RAISE_TRIES):
                if main is None:
                    break
                self._raising.clear()
                self._logged.clear()
                signal.pthread_kill(main, signal.SIGUSR1)
                # Answer once it is raised, so the drill's clock starts with the stop itself.
                self._raising.wait(_RAISE_WAIT)
                answer["swallowed"] = self._swallowed()
                if not answer["swallowed"]:
                    break
        return json.dumps(answer).encode()

    def _swallowed(self) -> bool:
        """Whether the raise landed inside an asyncio callback, which logs it and runs on.

        Raised while the loop waits for I/O, it ends the loop (and the server);
        raised while a callback runs, asyncio hands everything but ``SystemExit``
        and ``KeyboardInterrupt`` to the loop's exception handler (ours, see
        ``_watch_loop``) and runs on. Whether the loop still runs says nothing:
        the loop a raise ended runs again in ``asyncio.run``'s teardown.
        """
        return self._loop is not None and self._logged.wait(_RAISE_SETTLE)

    def _watch_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Put a handler before the loop's exception handler that notes our raise."""
        if self._loop is loop:
            return
        self._loop = loop
        previous = loop.get_exception_handler()

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            try:
                if previous is None:
                    loop.default_exception_handler(context)
                else:
                    previous(loop, context)
            finally:  # once it is logged, so that a next raise cannot land in the logging
                if context.get("exception") is self._pending is not None:
                    self._logged.set()

        loop.set_exception_handler(handler)

    async def answer(self, action: str) -> bytes:
        """``/_drill/<action>`` on an event loop: on a thread, as a WSGI server's would be.

        The raise of an in-process stop is aimed at the loop's thread.
        """
        self._watch_loop(asyncio.get_running_loop())
        return await asyncio.to_thread(self._act, action)

    def hold_thread(self, delay: float) -> None:
        """A delayed request on a server's thread: counted, its seconds, then until the stop."""
        self._entered()
        time.sleep(delay)
        held_until = time.monotonic() + _HOLD_MOST
        while self._stop_pending(held_until):
            time.sleep(_HOLD_POLL)

    async def hold(self, delay: float) -> None:
        """A delayed request on an event loop: counted, its seconds, then until the stop."""
        self._entered()
        await asyncio.sleep(delay)
        held_until = time.monotonic() + _HOLD_MOST
        while self._stop_pending(held_until):  # noqa: ASYNC110  # a file, from another process
            await asyncio.sleep(_HOLD_POLL)


class DrillControl(Controls):
    """The drill's instruments, outermost: state, the in-process stops, slow requests.

    * ``/_drill/state``: this process's pid.
    * ``/_drill/os-exit``: ``os._exit(0)`` inside a request.
    * ``/_drill/exception`` and ``/_drill/exit``: an unhandled exception, or
      ``sys.exit(0)``, raised on the main thread (where a server's own loop
      runs) by a signal aimed at that thread.
    * A request carrying ``X-Lastcall-Drill-Delay: S`` counts itself in the
      entered file and sleeps S seconds (and, if the drill has not sent its
      stop by then, until it has) before the app sees it, so any app has
      requests in flight at the stop.
    """

    def __init__(self, app: WSGIApplication) -> None:
        super().__init__()
        self._app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Controls first, then the app, delayed if asked."""
        path: str = environ.get("PATH_INFO", "")
        if path.startswith(CONTROL):
            body = self._act(path.removeprefix(CONTROL))
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        delay = environ.get(DELAY_HEADER)
        if delay:
            self.hold_thread(float(delay))
        return self._app(environ, start_response)


class AsgiDrillControl(Controls):
    """:class:`DrillControl` for an ASGI app; the lifespan passes through to the app."""

    def __init__(self, app: AsgiApp) -> None:
        super().__init__()
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Controls first, then the app, delayed if asked."""
        path: str = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith(CONTROL):
            body = await self.answer(path.removeprefix(CONTROL))
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        delay = dict(scope.get("headers", ())).get(ASGI_DELAY_HEADER)
        if delay:
            await self.hold(float(delay))
        await self._app(scope, receive, send)


# What a bare module or package is searched for, in order, as ``flask --app`` does.
APP_NAMES = ("app", "application")
FACTORY_NAMES = ("create_app", "make_app")


def load(spec: str) -> object:
    """The app ``spec`` names, in any of the forms gunicorn and ``flask --app`` accept.

    * ``module:attribute`` or ``path/to/file.py:attribute``: that object;
    * ``module:factory()`` or ``module:factory('prod', debug=False)``: what the
      factory returns (literal arguments only, as gunicorn accepts);
    * ``module`` or ``path/to/file.py``: its ``app`` or ``application``, else
      what its ``create_app()`` or ``make_app()`` returns.
    """
    target, _, attribute = spec.partition(":")
    module = _import(spec, target)
    if attribute:
        name, call = _parse_attribute(spec, attribute)
        if not hasattr(module, name):
            raise BadInputError(
                f"APP {spec!r}: {target} has no attribute {name}; {_what_it_has(module)}"
            )
        found = getattr(module, name)
        if call is None and _is_factory(found):
            call = ((), {})  # a function that takes no arguments: called, as flask --app does
        return _call_factory(spec, found, *call) if call else found
    for name in APP_NAMES:
        if hasattr(module, name):
            return getattr(module, name)
    for name in FACTORY_NAMES:
        if callable(getattr(module, name, None)):
            return _call_factory(f"{target}:{name}()", getattr(module, name), (), {})
    searched = ", ".join([*APP_NAMES, *(f"{name}()" for name in FACTORY_NAMES)])
    raise BadInputError(f"APP {spec!r}: {target} has none of {searched}; {_what_it_has(module)}")


def _import(spec: str, target: str) -> ModuleType:
    is_file = target.endswith(".py")
    if is_file and not Path(target).is_file():
        raise BadInputError(f"APP {spec!r}: there is no file {target}")
    try:
        return _import_file(Path(target)) if is_file else _import_module(target)
    except ModuleNotFoundError as exc:
        raise BadInputError(
            f"APP {spec!r} cannot be imported ({exc}); run the drill from the directory "
            "that holds it, or give the path of its .py file"
        ) from None
    except Exception as exc:
        raise BadInputError(
            f"APP {spec!r} failed while being imported: {type(exc).__name__}: {exc}"
        ) from None


def _parse_attribute(
    spec: str, attribute: str
) -> tuple[str, tuple[tuple[Any, ...], dict[str, Any]] | None]:
    """``name`` -> (name, None); ``name(1, x='a')`` -> (name, ((1,), {'x': 'a'}))."""
    try:
        expression = ast.parse(attribute.strip(), mode="eval").body
        if isinstance(expression, ast.Name):
            return expression.id, None
        if isinstance(expression, ast.Call) and isinstance(expression.func, ast.Name):
            args = tuple(ast.literal_eval(arg) for arg in expression.args)
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in expression.keywords if kw.arg}
            if len(kwargs) == len(expression.keywords):
                return expression.func.id, (args, kwargs)
    except (SyntaxError, ValueError):
        pass
    raise BadInputError(
        f"APP {spec!r}: {attribute!r} is neither a name nor a call with literal arguments; "
        "write module:app or module:create_app('arg', key=1)"
    )


def _call_factory(
    spec: str, factory: object, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> object:
    if not callable(factory):
        raise BadInputError(
            f"APP {spec!r}: {spec.partition(':')[2]} calls a {type(factory).__name__!r}, "
            "which is not a factory; name the object without parentheses"
        )
    try:
        app = factory(*args, **kwargs)
    except TypeError as exc:
        raise BadInputError(f"APP {spec!r}: the factory cannot be called so: {exc}") from None
    except Exception as exc:
        raise BadInputError(
            f"APP {spec!r}: the factory raised {type(exc).__name__}: {exc}"
        ) from None
    if app is None:
        raise BadInputError(f"APP {spec!r}: the factory returned None; it must return the app")
    return app


def _what_it_has(module: ModuleType) -> str:
    """What the module does define that could be an app: the fix is to name one."""
    candidates = sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and callable(value)
        and (
            getattr(value, "__module__", None) == module.__name__  # its own functions, classes
            or not isinstance(value, type | FunctionType)  # app objects made from imported types
        )
    )
    if not candidates:
        return "it defines no callable: point APP at the module that creates the app"
    shown = ", ".join(candidates[:6]) + (", ..." if len(candidates) > 6 else "")  # noqa: PLR2004
    return f"it defines {shown}: name the app as module:NAME, or a factory as module:NAME()"


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


def is_asgi(app: object) -> bool:
    """An async callable (scope, receive, send), as ASGI servers take; else a WSGI app."""
    call = getattr(app, "__call__", None)  # noqa: B004  # the method, to see if it is async
    return inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(call)


def check_wsgi(spec: str, app: object, server: str = "Werkzeug") -> WSGIApplication:
    """Refuse what a WSGI server cannot serve, saying what it is instead."""
    if is_asgi(app):
        raise BadInputError(
            f"APP {spec!r} is an ASGI app; {server} serves WSGI apps: use --server uvicorn "
            "or --server hypercorn"
        )
    try:
        inspect.signature(app).bind({}, None)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BadInputError(
            f"APP {spec!r} is {type(app).__name__!r}, not a WSGI app (a callable taking "
            f"environ and start_response); "
            f"{_factory_hint(spec, app) or 'name the app object as module:attribute'}"
        ) from None
    return app  # type: ignore[return-value]


def _is_factory(found: object) -> bool:
    """A plain function that can be called with no arguments (not an app: apps take some)."""
    if not inspect.isfunction(found) or inspect.iscoroutinefunction(found):
        return False
    try:
        inspect.signature(found).bind()
    except TypeError:
        return False
    return True


def _factory_hint(spec: str, app: object) -> str | None:
    """The fix when APP names a factory (or class) that needs arguments; None otherwise."""
    target, _, attribute = spec.partition(":")
    if (
        attribute
        and not attribute.endswith(")")
        and (inspect.isfunction(app) or inspect.isclass(app))
    ):
        return f"if it makes the app, call it: '{target}:{attribute}(...)' with its arguments"
    return None


def check_asgi(spec: str, app: object, server: str) -> AsgiApp:
    """Refuse what an ASGI server cannot serve, saying what it is instead."""
    if is_asgi(app):
        return app  # type: ignore[return-value]
    hint = _factory_hint(spec, app)
    if hint:
        raise BadInputError(f"APP {spec!r} is {type(app).__name__!r}, not an ASGI app; {hint}")
    kind = "a WSGI app" if callable(app) else f"{type(app).__name__!r}, not an ASGI app"
    raise BadInputError(
        f"APP {spec!r} is {kind}; {server} serves ASGI apps (async callables taking scope, "
        "receive and send): use --server werkzeug, gunicorn or waitress for a WSGI app"
    )


def with_lastcall(app: WSGIApplication, *, werkzeug: bool = True) -> WSGIApplication:
    """Apply lastcall the way a user would: the Flask extension, else the middleware.

    On gunicorn and waitress (``werkzeug`` false) the integration wraps a
    plain WSGI app in the middleware itself.
    """
    import lastcall  # noqa: PLC0415  # not in --plain runs
    from lastcall._servers import werkzeug as werkzeug_server  # noqa: PLC0415
    from lastcall.wsgi import LastCallMiddleware  # noqa: PLC0415

    flask = sys.modules.get("flask")
    if flask is not None and isinstance(app, flask.Flask):
        if "lastcall" not in app.extensions:
            from lastcall.flask import LastCall  # noqa: PLC0415

            LastCall(app)
        return cast("WSGIApplication", app)
    if not werkzeug:
        return app
    werkzeug_server.enable(lastcall.default)
    return LastCallMiddleware(app)


def with_control(app: WSGIApplication) -> WSGIApplication:
    """Put :class:`DrillControl` in front; inside a Flask app, so it stays a Flask app."""
    flask = sys.modules.get("flask")
    if flask is not None and isinstance(app, flask.Flask):
        app.wsgi_app = DrillControl(app.wsgi_app)
        return cast("WSGIApplication", app)
    return DrillControl(app)


def check_port(port: int) -> None:
    """Fail with the fix before serving, rather than with the server's own exit."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as exc:
            raise BadInputError(
                f"port {port} will not open on {HOST} ({exc.strerror}); "
                "give another --port, or leave it out for a free one"
            ) from None


def fail(error_file: str | None, message: str, status: int = BAD_INPUT) -> NoReturn:
    """Say what is wrong in one line, where the drill reads it, and exit 2 (or ``status``)."""
    if error_file:
        Path(error_file).write_text(message + "\n", encoding="utf-8")
    sys.stderr.write(f"lastcall drill: {message}\n")
    sys.exit(status)


# ---------------------------------------------------------------- servers that import the app


def wsgi() -> WSGIApplication:
    """The app for gunicorn (``'lastcall.cli.runner:wsgi()'``), as ``LASTCALL_DRILL_*`` say.

    With lastcall, gunicorn's integration (``-c python:lastcall.gunicorn``)
    does the rest; plain, gunicorn serves the app as it is.
    """
    spec, plain, error_file, server = _from_environment()
    try:
        app = check_wsgi(spec, load(spec), server)
        if not plain:
            app = with_lastcall(app, werkzeug=False)
    except BadInputError as exc:
        # gunicorn's master halts on a worker's boot error (gunicorn/arbiter.py,
        # WORKER_BOOT_ERROR) instead of starting one worker after another.
        fail(error_file, str(exc), _GUNICORN_BOOT_ERROR)
    return with_control(app)


def asgi() -> AsgiApp:
    """The app for uvicorn (``--factory``) and hypercorn (``'...:asgi()'``).

    With lastcall, the app is wrapped in ``lastcall.asgi.LastCallMiddleware``
    unless it already is; plain, it is served as it is.
    """
    spec, plain, error_file, server = _from_environment()
    try:
        app = check_asgi(spec, load(spec), server)
        if plain:
            return AsgiDrillControl(app)
        from lastcall.asgi import LastCallMiddleware  # noqa: PLC0415  # not in --plain runs

        if not isinstance(app, LastCallMiddleware):
            return LastCallMiddleware(AsgiDrillControl(app))
    except BadInputError as exc:
        fail(error_file, str(exc))
    # Inside the app's own middleware, so a delayed request is one lastcall counts in flight
    # (the ASGI middleware counts requests itself; WSGI servers count theirs).
    app.wrap_inner(AsgiDrillControl)
    return app


def _from_environment() -> tuple[str, bool, str | None, str]:
    environ = os.environ
    plain = environ.get(ENV_PLAIN) == "1"
    return environ[ENV_APP], plain, environ.get(ENV_ERROR_FILE), environ.get(ENV_SERVER, "")


# ---------------------------------------------------------------- Werkzeug and waitress


def main(argv: list[str] | None = None) -> None:
    """Check the input, apply lastcall unless ``--plain``, serve until stopped."""
    parser = argparse.ArgumentParser(prog="python -m lastcall.cli.runner")
    parser.add_argument("app")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server", choices=("werkzeug", "waitress"), default="werkzeug")
    parser.add_argument("--threads", type=int, default=8, help="waitress's threads")
    parser.add_argument("--reload", action="store_true")
    parser.add_argument("--plain", action="store_true", help="serve the app without lastcall")
    parser.add_argument("--error-file")
    args = parser.parse_args(argv)
    werkzeug = args.server == "werkzeug"
    try:
        app = check_wsgi(args.app, load(args.app), "Werkzeug" if werkzeug else "waitress")
        if not args.plain:
            app = with_lastcall(app, werkzeug=werkzeug)
        if os.environ.get("WERKZEUG_RUN_MAIN") != "true":  # the reloader child inherits it
            check_port(args.port)
    except BadInputError as exc:
        fail(args.error_file, str(exc))
    app = with_control(app)
    if werkzeug:
        from werkzeug.serving import run_simple  # noqa: PLC0415

        # The stat reloader, not watchdog's (installed beside mkdocs, say): watchdog's
        # inotify queue overflows while several drills run at once, its observer thread
        # then takes seconds to stop, and the child's main thread ends by waiting for it.
        # The drill measures the stop, not the reloader's choice of watcher.
        run_simple(
            HOST, args.port, app, use_reloader=args.reload, reloader_type="stat", threaded=True
        )
        return
    # Plain: waitress.serve as shipped; else lastcall's, which takes the same arguments.
    module = importlib.import_module("waitress" if args.plain else "lastcall.waitress")
    module.serve(app, host=HOST, port=args.port, threads=args.threads)


if __name__ == "__main__":
    main()
