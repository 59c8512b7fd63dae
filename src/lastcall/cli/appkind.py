"""What kind of app is APP (WSGI, ASGI, aiohttp, tornado)? Found once, up front, by importing it.

A server of the wrong kind would otherwise find out only once started (a
gunicorn worker that cannot serve an ASGI app, restarted until the
start-up timeout), and a matrix only after its first cells. The app is
imported as the servers import it (``lastcall.cli.runner.load``), in a
child process, so nothing the import does stays in the drill's own
process; what that child starts is ended with it (``cli/cleanup.py``).

``python -m lastcall.cli.appkind APP`` prints its kind (``wsgi``, ``asgi``,
``aiohttp``, ``tornado``: a server's ``kind`` in ``servers.py``), or the one
line saying what is wrong with APP and exits 2.
"""

from __future__ import annotations

import os
import subprocess
import sys

from lastcall.cli import cleanup, runner

WSGI, ASGI = "wsgi", "asgi"
# A framework's own application, served by its own server: (module, kind).
FRAMEWORKS = (("aiohttp.web", "aiohttp"), ("tornado.web", "tornado"))
KINDS = (WSGI, ASGI, *(kind for _, kind in FRAMEWORKS))
_NAMED = {
    WSGI: "a WSGI app",
    ASGI: "an ASGI app",
    "aiohttp": "an aiohttp app",
    "tornado": "a tornado app",
}
_SERVED = {
    WSGI: "WSGI apps",
    ASGI: "ASGI apps (async callables taking scope, receive and send)",
    "aiohttp": "aiohttp apps (an aiohttp.web.Application)",
    "tornado": "tornado apps (a tornado.web.Application)",
    "grpc": "the demo's gRPC service only (yours: --cmd '...' --grpc-method ...)",
}


class AppKindError(Exception):
    """APP cannot be served as asked: one line, the fix included."""


def probe(spec: str, timeout: float) -> str:
    """APP's kind (one of ``KINDS``), found by importing it in a child process."""
    mark = cleanup.new_mark()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LASTCALL_")}
    env[cleanup.OWNER] = mark
    try:
        done = subprocess.run(  # noqa: S603  # this interpreter, this module, the user's APP
            [sys.executable, "-m", "lastcall.cli.appkind", spec],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=env,
            timeout=timeout,
            start_new_session=True,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise AppKindError(
            f"APP {spec!r} took over {timeout:g} s to import; give it longer with "
            "--start-timeout, or check what its import waits for"
        ) from None
    finally:
        cleanup.end(mark)
    kind = done.stdout.decode(errors="replace").strip().splitlines()
    if done.returncode == 0 and kind and kind[-1] in KINDS:
        return kind[-1]
    said = done.stderr.decode(errors="replace").strip().splitlines()
    last = said[-1].removeprefix("lastcall drill: ") if said else "no output"
    if done.returncode == runner.BAD_INPUT:
        raise AppKindError(last)
    raise AppKindError(
        f"APP {spec!r} ended its import with status {done.returncode}; its last line: {last}"
    )


def named(kind: str) -> str:
    """``a WSGI app``, ``an aiohttp app``...: the kind in words."""
    return _NAMED[kind]


def mismatch(spec: str, kind: str, server: str, *, serves: str) -> str | None:
    """Why ``server`` (serving ``serves`` apps) cannot serve APP of ``kind``; None if it can."""
    if kind == serves:
        return None
    from lastcall.cli.servers import SERVERS  # noqa: PLC0415  # beside the drill only

    others = [name for name, s in SERVERS.items() if s.kind == kind and s.command is not None]
    fix = (
        f"use --server {', '.join(others[:-1])}{' or ' if others[:-1] else ''}{others[-1]}"
        if others
        else "no server here serves it"
    )
    return f"APP {spec!r} is {_NAMED[kind]}; {server} serves {_SERVED[serves]}: {fix}"


def check(spec: str, server: str, timeout: float) -> str:
    """APP's kind, once ``server`` (a known one) is found able to serve it."""
    from lastcall.cli.servers import SERVERS  # noqa: PLC0415  # beside the drill only

    kind = probe(spec, timeout)
    reason = mismatch(spec, kind, server, serves=SERVERS[server].kind)
    if reason:
        raise AppKindError(reason)
    return kind


def main() -> None:
    """Print what APP is; or its one line, and exit 2."""
    spec = sys.argv[1]
    try:
        app = runner.load(spec)
        kind = kind_of(app)
        if kind == WSGI:
            runner.check_wsgi(spec, app)  # not an app at all: the same line the servers give
    except runner.BadInputError as exc:
        runner.fail(None, str(exc))
    sys.stdout.write(kind + "\n")


def kind_of(app: object) -> str:
    """A framework's application (by its class, if the app imported it), else WSGI or ASGI."""
    for module, kind in FRAMEWORKS:
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(app, loaded.Application):
            return kind
    return ASGI if runner.is_asgi(app) else WSGI


if __name__ == "__main__":
    main()
