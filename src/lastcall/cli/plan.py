"""What a drill is asked to do: the :class:`Plan`, the stops it knows, and what cannot be drilled.

Everything here is checked before anything starts (``Plan.check``), so bad
input is one line (:class:`DrillError`, exit status 2), never a traceback
from the middle of a drill.
"""

from __future__ import annotations

import shlex
import signal
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from lastcall.cli import inputs
from lastcall.cli.clients import Ask
from lastcall.cli.servers import SERVERS

KILLS = ("KILL", "KILL-PARENT", "KILL-CHILD", "OS-EXIT")  # never clean, whatever survives
STOPS = ("TERM", "INT", "HUP", "KILL", "KILL-PARENT", "KILL-CHILD", "OS-EXIT", "EXCEPTION", "EXIT")
SIGNALS = {  # the stops sent as a signal, and which
    "TERM": signal.SIGTERM,
    "INT": signal.SIGINT,
    "HUP": signal.SIGHUP,
    "KILL": signal.SIGKILL,
    "KILL-PARENT": signal.SIGKILL,
    "KILL-CHILD": signal.SIGKILL,
}
IN_PROCESS = {"OS-EXIT": "os-exit", "EXCEPTION": "exception", "EXIT": "exit"}
STOP_WORDS = {
    "TERM": "SIGTERM",
    "INT": "SIGINT",
    "HUP": "SIGHUP",
    "KILL": "SIGKILL",
    "KILL-PARENT": "SIGKILL to the parent (reloader, master)",
    "KILL-CHILD": "SIGKILL to the serving process",
    "OS-EXIT": "os._exit in a request",
    "EXCEPTION": "unhandled exception",
    "EXIT": "normal exit",
}


class DrillError(Exception):
    """Bad input: one line saying what is wrong and how to fix it (exit status 2)."""


class NotAStopError(DrillError):
    """The stop asked for does not apply to what the command started (no parent to kill)."""


@dataclass(frozen=True)
class Plan:
    """What to drill: ``app`` under ``server``, or ``cmd`` as given; neither: the demo app.

    ``expect``: the status a served request gets (None: any 2xx).
    """

    app: str | None = None
    cmd: str | None = None
    server: str = "werkzeug"
    stop: str = "TERM"
    requests: int = 16
    request_seconds: float = 1.0
    stop_after: float = 0.25
    grace: float = 10.0
    prestop_delay: float = 0.0
    workers: int = 1
    plain: bool = False
    port: int | None = None
    ask: Ask = field(default_factory=Ask)
    expect: int | None = None
    start_timeout: float = 15.0

    @property
    def demo(self) -> bool:
        """Whether the drill runs the built-in demo app."""
        return self.app is None and self.cmd is None

    @property
    def where(self) -> str:
        """The server, or ``command`` for ``--cmd``: a matrix row's first cell."""
        return "command" if self.cmd is not None else self.server

    @property
    def name(self) -> str:
        """The app, as tables and progress lines name it."""
        return self.cmd or self.app or "the demo app"

    @property
    def grpc(self) -> bool:
        """Whether the drill makes RPCs (``--grpc-method``, the gRPC demo), not HTTP requests."""
        if self.cmd is not None:
            return self.ask.grpc_method is not None
        server = SERVERS.get(self.server)
        return server is not None and server.kind == "grpc"

    @property
    def rpc_request(self) -> bytes:
        """``--data`` (JSON) as ``--grpc-method``'s request message; checked by ``check``."""
        from lastcall.cli import grpc_client  # noqa: PLC0415  # only where grpcio is installed

        try:
            return grpc_client.request_bytes(self.ask.grpc_method or "", self.ask.body, Path.cwd())
        except grpc_client.GrpcInputError as exc:
            raise DrillError(str(exc)) from None

    def expected(self, fate: str) -> bool:
        """Whether a request with this fate was served: the status ``--expect`` names, or a 2xx.

        An RPC: ``OK``.
        """
        if self.grpc:
            return fate == "OK"
        if self.expect is not None:
            return fate == str(self.expect)
        return fate.isdigit() and 200 <= int(fate) < 300  # noqa: PLR2004

    @property
    def variant(self) -> str:
        """``plain`` or ``lastcall``, for tables."""
        return "plain" if self.plain else "lastcall"

    @property
    def kills(self) -> bool:
        """A process of the app is ended where no code of its own can run: never a clean stop."""
        return self.stop in KILLS

    def check(self) -> None:
        """Refuse, in one line, what cannot be drilled."""
        if self.requests < 1 or self.request_seconds < 0 or self.grace <= 0:
            raise DrillError("--requests must be at least 1, --request-seconds >= 0, --grace > 0")
        try:
            inputs.check_ask(self.ask)
        except inputs.InputError as exc:
            raise DrillError(str(exc)) from None
        if self.cmd is not None:
            self._check_cmd()
            return
        server = SERVERS.get(self.server)
        if server is None:
            raise DrillError(f"unknown server {self.server!r}; choose one of {', '.join(SERVERS)}")
        self._check_grpc(server.kind)
        if self.stop not in STOPS:
            raise DrillError(f"unknown stop {self.stop!r}; choose one of {', '.join(STOPS)}")
        missing = server.missing()
        if missing:
            raise DrillError(missing)
        why_not = server.why_not(self.stop)
        if why_not and self.stop == "KILL-PARENT":
            with_parent = ", ".join(name for name, s in SERVERS.items() if s.parent)
            raise DrillError(
                f"--stop KILL-PARENT needs a server with a parent process; {why_not}: "
                f"use --server with one of {with_parent}, or --stop KILL"
            )
        if why_not:
            raise DrillError(f"--stop {self.stop} is not a stop on {self.server}: {why_not}")
        if self.workers > 1 and not server.workers:
            with_workers = ", ".join(name for name, s in SERVERS.items() if s.workers)
            raise DrillError(
                f"{self.server} has no workers to count; --workers goes with {with_workers}"
            )

    def _check_grpc(self, kind: str) -> None:
        """RPCs to a server the drill starts: the demo's, with the demo's request only."""
        if self.ask.grpc_method is not None:
            raise DrillError(
                "--grpc-method goes with --cmd, the command that starts your gRPC server; "
                "--server grpc drills the demo's service"
            )
        if kind == "grpc" and self.app is not None:
            raise DrillError(
                f"--server grpc serves the demo's service only; for {self.app}, give the "
                "command that starts it: --cmd '...' --grpc-method /package.Service/Method"
            )

    def _check_cmd(self) -> None:
        if self.app is not None:
            raise DrillError("give APP or --cmd, not both: --cmd starts the app its own way")
        if self.stop in IN_PROCESS:
            raise DrillError(
                f"--stop {self.stop} needs the drill's routes in front of the app, which --cmd "
                "cannot put there: give APP instead, or stop it with a signal"
            )
        try:
            argv = shlex.split(self.cmd or "")
        except ValueError as exc:
            raise DrillError(
                f"--cmd cannot be split into words ({exc}); check its quotes"
            ) from None
        if not argv:
            raise DrillError("--cmd is empty; give the command that starts the app")
        if self.ask.grpc_method is not None:
            _ = self.rpc_request  # the method found, the request made: one line if not
        if "{port}" not in (self.cmd or "") and self.port is None:
            raise DrillError(
                "--cmd has no {port}: write {port} where the command takes its port "
                "(e.g. --bind 127.0.0.1:{port}), or give the port it uses with --port"
            )

    def argv(self, port: int) -> list[str]:
        """``--cmd`` as the words run, ``{port}`` and ``{python}`` filled in; no shell."""
        words = shlex.split(self.cmd or "")
        return [w.replace("{port}", str(port)).replace("{python}", sys.executable) for w in words]


# Servers that serve one request at a time, as the drill starts them, and why.
_ONE_AT_A_TIME = {"gunicorn": "gunicorn's sync workers serve one request at a time each"}
_FITTED = (4, 0.5)  # requests, seconds each: 2 s in series


def fit(plan: Plan, *, given: bool) -> tuple[Plan, str | None]:
    """Defaults that can be clean on the plan's server, and a note when they were changed.

    Requests given on the command line are kept; the note then says why
    they cannot all be served within the grace.
    """
    why = _ONE_AT_A_TIME.get(plan.server) if plan.cmd is None else None
    in_series = -(-plan.requests // plan.workers) * plan.request_seconds  # rounds up
    if why is None or in_series < plan.grace:
        return plan, None
    if given:
        return plan, (
            f"{why}: {plan.requests} requests of {plan.request_seconds:g} s take {in_series:g} s, "
            f"beyond the {plan.grace:g} s grace, so those still queued will be dropped"
        )
    requests, seconds = _FITTED
    fitted = replace(plan, requests=requests, request_seconds=seconds)
    return fitted, (
        f"{why}: the defaults changed to fit, {requests} requests of {seconds:g} s "
        f"(not {plan.requests} of {plan.request_seconds:g} s, {in_series:g} s in series, "
        f"beyond the {plan.grace:g} s grace)"
    )
