"""Is APP a WSGI or an ASGI app? Found once, up front, by importing it in a process of its own.

A server of the wrong kind would otherwise find out only once started (a
gunicorn worker that cannot serve an ASGI app, restarted until the
start-up timeout), and a matrix only after its first cells. The app is
imported as the servers import it (``lastcall.cli.runner.load``), in a
child process, so nothing the import does stays in the drill's own
process; what that child starts is ended with it (``cli/cleanup.py``).

``python -m lastcall.cli.appkind APP`` prints ``wsgi`` or ``asgi``, or
the one line saying what is wrong with APP and exits 2.
"""

from __future__ import annotations

import os
import subprocess
import sys

from lastcall.cli import cleanup, runner

WSGI, ASGI = "wsgi", "asgi"


class AppKindError(Exception):
    """APP cannot be served as asked: one line, the fix included."""


def probe(spec: str, timeout: float) -> str:
    """``wsgi`` or ``asgi``: what APP is, found by importing it in a child process."""
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
    if done.returncode == 0 and kind and kind[-1] in (WSGI, ASGI):
        return kind[-1]
    said = done.stderr.decode(errors="replace").strip().splitlines()
    last = said[-1].removeprefix("lastcall drill: ") if said else "no output"
    if done.returncode == runner.BAD_INPUT:
        raise AppKindError(last)
    raise AppKindError(
        f"APP {spec!r} ended its import with status {done.returncode}; its last line: {last}"
    )


def mismatch(spec: str, kind: str, server: str, *, asgi_server: bool) -> str | None:
    """Why ``server`` cannot serve an app of ``kind``, in the runner's own words; None if it can."""
    if kind == ASGI and not asgi_server:
        return (
            f"APP {spec!r} is an ASGI app; {server} serves WSGI apps: use --server uvicorn "
            "or --server hypercorn"
        )
    if kind == WSGI and asgi_server:
        return (
            f"APP {spec!r} is a WSGI app; {server} serves ASGI apps (async callables taking "
            "scope, receive and send): use --server werkzeug, gunicorn or waitress for a WSGI app"
        )
    return None


def check(spec: str, server: str, timeout: float) -> str:
    """APP's kind, once ``server`` (a known one) is found able to serve it."""
    from lastcall.cli.servers import SERVERS  # noqa: PLC0415  # beside the drill only

    kind = probe(spec, timeout)
    reason = mismatch(spec, kind, server, asgi_server=SERVERS[server].asgi)
    if reason:
        raise AppKindError(reason)
    return kind


def main() -> None:
    """Print what APP is; or its one line, and exit 2."""
    spec = sys.argv[1]
    try:
        app = runner.load(spec)
        if not runner.is_asgi(app):
            runner.check_wsgi(spec, app)  # not an app at all: the same line the servers give
    except runner.BadInputError as exc:
        runner.fail(None, str(exc))
    sys.stdout.write((ASGI if runner.is_asgi(app) else WSGI) + "\n")


if __name__ == "__main__":
    main()
