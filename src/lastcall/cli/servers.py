"""The servers a drill can run an app under, and what each needs installed.

Adding a server is one entry in ``SERVERS``: the package that must be
importable, the extra that installs it, the lastcall integration module it
needs, the kind of app it serves (``kind``: the demo has a twin of each,
``launch.DEMOS``), and how to start it (``command``), plain or with lastcall. An entry without a
command is known by name, so ``--server`` can say what is missing instead
of "no such server". Each server is started as its users start it, with one
worker where it has workers (so "the serving process" is one process), and
its own graceful timeout set to the drill's grace, as an operator would.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lastcall.cli.runner import HOST

if TYPE_CHECKING:
    from collections.abc import Callable

_SPARE_THREADS = 4  # beyond the requests in flight: the drill's control and probe requests


@dataclass(frozen=True)
class Launch:
    """What a server command needs to know."""

    app: str
    port: int
    plain: bool
    error_file: str
    requests: int = 16
    grace: float = 10.0
    workers: int = 1

    @property
    def threads(self) -> int:
        """Threads for a threaded server: every request in flight, and the drill's own."""
        return self.requests + _SPARE_THREADS


def _runner(server: str, *, reload: bool = False) -> Callable[[Launch], list[str]]:
    """Werkzeug and waitress: ``lastcall.cli.runner`` serves the app itself."""

    def command(launch: Launch) -> list[str]:
        argv = [sys.executable, "-m", "lastcall.cli.runner", launch.app, "--port", str(launch.port)]
        argv += ["--server", server, "--error-file", launch.error_file]
        if server == "waitress":
            argv += ["--threads", str(launch.threads)]
        return argv + ["--reload"] * reload + ["--plain"] * launch.plain

    return command


def _gunicorn(*, gthread: bool) -> Callable[[Launch], list[str]]:
    def command(launch: Launch) -> list[str]:
        argv = [sys.executable, "-m", "gunicorn", "-b", f"{HOST}:{launch.port}"]
        argv += ["-w", str(launch.workers)]
        if gthread:
            argv += ["-k", "gthread", "--threads", str(launch.threads)]
        # lastcall.gunicorn keeps 1 s of graceful_timeout back for the worker to exit.
        argv += ["--graceful-timeout", f"{launch.grace + 1:g}"]
        if not launch.plain:
            argv += ["-c", "python:lastcall.gunicorn"]
        return [*argv, "lastcall.cli.runner:wsgi()"]

    return command


def _loop(server: str) -> Callable[[Launch], list[str]]:
    """For aiohttp and tornado: ``lastcall.cli.loops`` serves the app as their users do."""

    def command(launch: Launch) -> list[str]:
        argv = [sys.executable, "-m", "lastcall.cli.loops", launch.app, "--server", server]
        argv += ["--port", str(launch.port), "--grace", f"{launch.grace:g}"]
        return [*argv, "--error-file", launch.error_file] + ["--plain"] * launch.plain

    return command


def _uvicorn(launch: Launch) -> list[str]:
    argv = [sys.executable, "-m", "uvicorn", "--factory", "lastcall.cli.runner:asgi"]
    argv += ["--host", HOST, "--port", str(launch.port)]
    return [*argv, "--timeout-graceful-shutdown", f"{launch.grace:g}"]


def _granian(launch: Launch) -> list[str]:
    # lastcall's face for granian: its master ends by the signal (plain granian's exits 0)
    module = "granian" if launch.plain else "lastcall.granian"
    argv = [sys.executable, "-m", module, "--interface", "asgi", "--factory"]
    argv += ["--host", HOST, "--port", str(launch.port), "--workers", str(launch.workers)]
    # Off by default (a worker is waited for for ever): the drill's grace, as an operator would.
    argv += ["--workers-kill-timeout", f"{launch.grace + 1:g}"]
    return [*argv, "lastcall.cli.runner:asgi"]


def _daphne(launch: Launch) -> list[str]:
    # daphne has no graceful timeout to set, and imports an attribute (no factories).
    argv = [sys.executable, "-m", "daphne", "-b", HOST, "-p", str(launch.port)]
    return [*argv, "lastcall.cli.served:application"]


def _grpc(launch: Launch) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "lastcall.cli.grpc_runner",
        launch.app,
        "--port",
        str(launch.port),
    ]
    argv += ["--threads", str(launch.threads), "--error-file", launch.error_file]
    return argv + ["--plain"] * launch.plain


def _hypercorn(launch: Launch) -> list[str]:
    # lastcall's face for hypercorn: its master ends by the signal (plain hypercorn's exits 0)
    module = "hypercorn" if launch.plain else "lastcall.hypercorn"
    argv = [sys.executable, "-m", module, "lastcall.cli.runner:asgi()"]
    argv += ["-b", f"{HOST}:{launch.port}", "--workers", str(launch.workers)]
    return [*argv, "--graceful-timeout", f"{launch.grace:g}"]


_IN_THE_WORKER = ("KILL-CHILD", "OS-EXIT", "EXCEPTION", "EXIT")
_WORKER_REPLACED = "gunicorn's master starts a new worker when one dies: nothing stops"
_HYPERCORN_REPLACED = (
    "hypercorn's master starts a new worker when one exits with status 0: nothing stops"
)


@dataclass(frozen=True)
class Server:
    """One way to serve the app.

    ``parent``: a parent process (a reloader, a master) stays while a child
    serves, so the parent and the child can be stopped separately.
    ``kind``: the apps it serves: ``wsgi``, ``asgi``, or its own framework's
    (``aiohttp``, ``tornado``, ``grpc``: the demo's service only); the demo has a twin of each.
    ``workers``: it takes ``--workers N`` (one by default).
    ``not_a_stop``: the stops that do not end this server, and why.
    """

    name: str
    package: str
    extra: str
    integration: str
    parent: bool = False
    kind: str = "wsgi"
    workers: bool = False
    command: Callable[[Launch], list[str]] | None = None
    not_a_stop: dict[str, str] = field(default_factory=dict)

    def missing(self) -> str | None:
        """Why this server cannot be drilled here, in one line with the fix; None if it can."""
        if importlib.util.find_spec(self.package) is None:
            return f"{self.name} is not installed: pip install 'lastcall[{self.extra}]'"
        if self.command is None or importlib.util.find_spec(self.integration) is None:
            return (
                f"this lastcall cannot drill {self.name} yet (it has no {self.integration}); "
                "use --server werkzeug or werkzeug-reload"
            )
        return None

    def why_not(self, stop: str) -> str | None:
        """Why ``stop`` cannot be drilled on this server; None if it can."""
        if stop == "KILL-PARENT" and not self.parent:
            return f"{self.name} runs in one process, with no parent to kill"
        return self.not_a_stop.get(stop)


SERVERS: dict[str, Server] = {
    server.name: server
    for server in (
        Server(
            "werkzeug",
            "flask",
            "flask",
            "lastcall._servers.werkzeug",
            command=_runner("werkzeug"),
        ),
        Server(
            "werkzeug-reload",
            "flask",
            "flask",
            "lastcall._servers.werkzeug",
            parent=True,
            command=_runner("werkzeug", reload=True),
        ),
        *(
            Server(
                name,
                "gunicorn",
                "gunicorn",
                "lastcall.gunicorn",
                parent=True,
                workers=True,
                command=_gunicorn(gthread=name.endswith("gthread")),
                not_a_stop={
                    "HUP": "gunicorn reloads on SIGHUP (new workers): nothing stops",
                    **dict.fromkeys(_IN_THE_WORKER, _WORKER_REPLACED),
                },
            )
            for name in ("gunicorn", "gunicorn-gthread")
        ),
        Server(
            "waitress", "waitress", "waitress", "lastcall.waitress", command=_runner("waitress")
        ),
        Server("uvicorn", "uvicorn", "uvicorn", "lastcall.asgi", kind="asgi", command=_uvicorn),
        Server(
            "hypercorn",
            "hypercorn",
            "hypercorn",
            "lastcall.asgi",
            parent=True,
            kind="asgi",
            workers=True,
            command=_hypercorn,
            not_a_stop={
                "HUP": "hypercorn restarts its workers on SIGHUP: nothing stops",
                **dict.fromkeys(("OS-EXIT", "EXIT"), _HYPERCORN_REPLACED),
            },
        ),
        Server(
            "granian",
            "granian",
            "granian",
            "lastcall.granian",
            parent=True,
            kind="asgi",
            workers=True,
            command=_granian,
            not_a_stop={"HUP": "granian reloads its workers on SIGHUP: nothing stops"},
        ),
        Server("daphne", "daphne", "daphne", "lastcall.asgi", kind="asgi", command=_daphne),
        *(
            Server(name, name, name, f"lastcall.{name}", kind=name, command=_loop(name))
            for name in ("aiohttp", "tornado")
        ),
        Server("grpc", "grpc_health", "grpc", "lastcall.grpc", kind="grpc", command=_grpc),
    )
}


def installed() -> list[Server]:
    """The servers this machine can drill, in the order the matrix shows them."""
    return [server for server in SERVERS.values() if server.missing() is None]
