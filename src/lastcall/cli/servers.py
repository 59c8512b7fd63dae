"""The servers a drill can run an app under, and what each needs installed.

Adding a server is one entry here: the package that must be importable, the
extra that installs it, the lastcall integration module it needs, and how
to start it (``command``). An entry without a command is known by name, so
``--server`` can say what is missing instead of "no such server".
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass(frozen=True)
class Launch:
    """What a server command needs to know."""

    app: str
    port: int
    plain: bool
    error_file: str


def _werkzeug(*, reload: bool) -> Callable[[Launch], list[str]]:
    def command(launch: Launch) -> list[str]:
        argv = [sys.executable, "-m", "lastcall.cli.runner", launch.app, "--port", str(launch.port)]
        argv += ["--error-file", launch.error_file]
        return argv + ["--reload"] * reload + ["--plain"] * launch.plain

    return command


@dataclass(frozen=True)
class Server:
    """One way to serve the app.

    ``reloader``: a watcher parent whose child serves, so the parent and the
    child can be stopped separately.
    """

    name: str
    package: str
    extra: str
    integration: str
    reloader: bool = False
    command: Callable[[Launch], list[str]] | None = None

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


SERVERS: dict[str, Server] = {
    server.name: server
    for server in (
        Server(
            "werkzeug",
            "flask",
            "flask",
            "lastcall.servers.werkzeug",
            command=_werkzeug(reload=False),
        ),
        Server(
            "werkzeug-reload",
            "flask",
            "flask",
            "lastcall.servers.werkzeug",
            reloader=True,
            command=_werkzeug(reload=True),
        ),
        Server("gunicorn", "gunicorn", "gunicorn", "lastcall.gunicorn"),
        Server("waitress", "waitress", "waitress", "lastcall.waitress"),
        Server("uvicorn", "uvicorn", "uvicorn", "lastcall.asgi"),
        Server("hypercorn", "hypercorn", "hypercorn", "lastcall.asgi"),
    )
}


def installed() -> list[Server]:
    """The servers this machine can drill, in the order the matrix shows them."""
    return [server for server in SERVERS.values() if server.missing() is None]
