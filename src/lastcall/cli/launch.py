"""What a drill runs: the app, under a server from ``servers.py`` or as ``--cmd`` gives it.

The app starts in a session of its own, with the drill's mark in its
environment (``cli/cleanup.py``), on a free port (another one if that was
taken meanwhile), and counts as started once it answers and, with workers,
once they all hold the listening socket. The drill's stop is sent to it
here, by signal or, for the stops a process does to itself, through the
drill's routes in front of the app (``cli/runner.py``); :meth:`App.end`
ends whatever it started, however the drill ended.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import time
from typing import TYPE_CHECKING

import httpx

from lastcall.cli import cleanup, runner
from lastcall.cli.plan import IN_PROCESS, SIGNALS, DrillError, NotAStopError
from lastcall.cli.processes import serving_processes
from lastcall.cli.servers import SERVERS, Launch

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable
    from pathlib import Path

    from lastcall.cli.plan import Plan

DEMOS = {  # (the server's kind, plain) -> the demo app; one twin per kind
    ("wsgi", False): "lastcall.cli.demo_app:app",
    ("wsgi", True): "lastcall.cli.demo_plain:app",
    ("asgi", False): "lastcall.cli.demo_asgi:app",
    ("asgi", True): "lastcall.cli.demo_asgi_plain:app",
    ("aiohttp", False): "lastcall.cli.demo_aiohttp:app",
    ("aiohttp", True): "lastcall.cli.demo_aiohttp_plain:app",
    ("tornado", False): "lastcall.cli.demo_tornado:app",
    ("tornado", True): "lastcall.cli.demo_tornado_plain:app",
    ("grpc", False): "lastcall.cli.demo_grpc:handler",
    ("grpc", True): "lastcall.cli.demo_grpc_plain:handler",
}
_PORT_TRIES = 3
_LOOK_EVERY = 0.1  # seconds between two looks at a starting app
_WORKERS_STEADY = 0.3  # seconds a --cmd app's serving processes stay the same: all booted
_CONTROL_TIMEOUT = 10.0  # an in-process stop answers once raised (or found swallowed)
_MAY_BE_REPLACED = ("HUP", "KILL-CHILD")  # stops a master may answer by replacing workers


class App:
    """The app one drill runs; ``wait`` sleeps, raising if the drill is cancelled meanwhile.

    ``directory`` is the drill's: the app's log, its reports and the files
    the drill's routes count requests in.
    """

    def __init__(
        self,
        plan: Plan,
        directory: Path,
        progress: Callable[[str], None],
        wait: Callable[[float], None],
    ) -> None:
        self.plan = plan
        self._dir = directory
        self._progress = progress
        self._wait = wait
        self.mark = cleanup.new_mark()  # in every process the app starts: see cli/cleanup.py
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0  # the process the drill started
        self.port: int | None = None

    def start(self) -> tuple[int, int]:
        """Start the app on a free port (another, if a free one was taken meanwhile).

        Returns the port, and the pid of the process that answered first.
        """
        plan = self.plan
        for attempt in range(_PORT_TRIES):
            port = plan.port or _free_port()
            try:
                serving = self._launch(port)
            except DrillError as exc:
                if plan.port or "will not open" not in str(exc) or attempt == _PORT_TRIES - 1:
                    raise
            else:
                self._until_workers_up(port)
                self._check_answer(port)
                return port, serving
        raise AssertionError  # pragma: no cover  # the loop returns or raises

    def end(self) -> None:
        """End every process the app started: its session, daemons and ``setsid`` children too."""
        proc = self.proc
        # The session only while its leader is not reaped: its pid may be another's after.
        cleanup.end(self.mark, None if proc is None else proc.pid, self.port)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()

    def marked(self) -> set[int]:
        """Every live process carrying the drill's mark: daemons and ``setsid`` children too."""
        return cleanup.started_by(self.mark)

    def end_left_behind(self) -> None:
        """End what still runs after the grace (SIGKILL, by PID), before the exit status is read."""
        cleanup.end(self.mark, self.leader, self.port)

    def exit_status(self, timeout: float) -> int:
        """The exit status of the process the drill started, once it is reaped."""
        assert self.proc is not None  # noqa: S101
        status = self.proc.wait(timeout)
        self.proc = None
        return status

    def serving(self, answered: int) -> list[int]:
        """Every process serving now (workers boot one by one, so looked for at the stop).

        The process that answered first; with it, the others found holding the
        listening socket, if that search found it too (else it is not to be trusted).
        """
        assert self.port is not None  # noqa: S101
        found = serving_processes(self.leader, self.port)
        if answered not in found:
            return [answered]
        return [answered, *(pid for pid in found if pid != answered)]

    def refuse_if_replaced(self, workers: list[int], alive: set[int]) -> None:
        """With ``--cmd``: a SIGHUP that reloaded, a killed worker replaced, is no stop.

        What the command runs decides it (gunicorn and hypercorn reload on
        SIGHUP, and gunicorn's master replaces a worker that dies), so it is
        seen, not assumed: the process the drill started still runs (is in
        ``alive``), and a process not among ``workers``, those serving at the
        stop, now holds the listening socket.
        """
        plan = self.plan
        if plan.cmd is None or plan.stop not in _MAY_BE_REPLACED or self.leader not in alive:
            return
        assert self.port is not None  # noqa: S101  # started
        new = sorted(set(serving_processes(self.leader, self.port)) - {*workers, self.leader})
        if new:
            raise NotAStopError(
                f"--stop {plan.stop} is not a stop for this command: pid {self.leader} kept "
                f"running and pid {', '.join(map(str, new))} now serves in place of pid "
                f"{', '.join(map(str, workers))} (a reload, or a worker replaced)"
            )

    def send_stop(self, serving: int, control: Callable[[str, float], httpx.Response]) -> None:
        """The plan's stop: a signal, or ``control`` asking the drill's route to stop in-process."""
        stop = self.plan.stop
        leader = self.leader
        if stop == "KILL-PARENT" and serving == leader:
            raise NotAStopError(
                f"--stop KILL-PARENT: pid {leader} serves on its own, with no parent process "
                "apart from it; use --stop KILL"
            )
        if stop in IN_PROCESS:
            with contextlib.suppress(httpx.HTTPError, ValueError):  # os._exit takes the connection
                if control(IN_PROCESS[stop], _CONTROL_TIMEOUT).json().get("swallowed"):
                    raise NotAStopError(
                        f"--stop {stop} is not a stop for this app: its event loop caught the "
                        "exception raised on the main thread, logged it and served on (uvloop "
                        "runs signal handlers inside a callback); stop it with a signal"
                    )
            return
        pid = serving if stop == "KILL-CHILD" else leader
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, SIGNALS[stop])

    # ------------------------------------------------------------ starting

    def _ask(self, client: httpx.Client, timeout: float) -> httpx.Response:
        """One request as the clients ask it (``--method``, ``--path``...)."""
        ask = self.plan.ask
        return client.request(
            ask.method, ask.path, headers=dict(ask.headers), content=ask.body, timeout=timeout
        )

    def _launch(self, port: int) -> int:
        plan = self.plan
        error_file = self._dir / "error.txt"
        try:
            runner.check_port(port)  # a server's own failure to bind can take seconds
        except runner.BadInputError as exc:
            raise DrillError(str(exc)) from None
        env = {k: v for k, v in os.environ.items() if not k.startswith("LASTCALL_")}
        self.port = port
        env.update(
            {cleanup.OWNER: self.mark},
            PYTHONUNBUFFERED="1",
            LASTCALL_REPORT=str(self._dir / "report-{pid}.json"),
            LASTCALL_GRACE=str(plan.grace),
            LASTCALL_PRESTOP_DELAY=str(plan.prestop_delay),
        )
        if plan.cmd is not None:
            argv = plan.argv(port)
            env["PORT"] = str(port)
            self._progress(f"starting {shlex.join(argv)}")
        else:
            argv = self._server_argv(port, error_file, env)
            self._progress(f"starting {plan.name} ({plan.variant}) on {plan.server}, port {port}")
        self.proc = cleanup.start(argv, env, self._dir / "app.log")
        self.leader = self.proc.pid
        self._progress(f"started pid {self.leader} (its own session)")
        return self._until_answering(port, error_file)

    def _server_argv(self, port: int, error_file: Path, env: dict[str, str]) -> list[str]:
        """The server's command line for APP or the demo, and what the runner reads."""
        plan = self.plan
        server = SERVERS[plan.server]
        app = plan.app or DEMOS[server.kind, plan.plain]
        assert server.command is not None  # noqa: S101  # Plan.check() refused servers without one
        env.update(
            {
                runner.ENV_APP: app,
                runner.ENV_PLAIN: "1" if plan.plain else "0",
                runner.ENV_ERROR_FILE: str(error_file),
                runner.ENV_SERVER: plan.server,
                runner.ENV_ENTERED: str(self._dir / "entered"),
                runner.ENV_STOPPED: str(self._dir / "stopped"),
            },
            LASTCALL_DEMO_DB=str(self._dir / "demo.db"),
            LASTCALL_DEMO_EVENTS=str(self._dir / "hooks.jsonl"),
        )
        launch = Launch(
            app, port, plan.plain, str(error_file), plan.requests, plan.grace, plan.workers
        )
        return server.command(launch)

    def _until_answering(self, port: int, error_file: Path) -> int:
        """Until the app answers; the serving process's pid (the drill's route says, or /proc)."""
        proc = self.proc
        assert proc is not None  # noqa: S101
        plan = self.plan
        deadline = time.monotonic() + plan.start_timeout
        with httpx.Client(base_url=f"http://{runner.HOST}:{port}", timeout=1.0) as client:
            while True:
                status = proc.poll()
                if status is not None:
                    self.proc = None
                    left = cleanup.end(self.mark, proc.pid, port)
                    raise DrillError(self._why_it_ended(status, error_file, left))
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    if plan.grpc:
                        answered = self._rpc_answered(port)
                        if answered is not None:
                            return answered
                    elif plan.cmd is None:
                        response = client.get("/_drill/state")
                        if response.status_code == 200:  # noqa: PLR2004
                            return int(response.json()["pid"])
                    else:
                        self._ask(client, max(1.0, deadline - time.monotonic()))
                        return serving_processes(proc.pid, port)[0]
                if time.monotonic() > deadline:
                    where = f"http://{runner.HOST}:{port}{plan.ask.path if plan.cmd else ''}"
                    fix = (
                        "check that COMMAND listens on {port} at 127.0.0.1"
                        if plan.cmd
                        else "check that it starts on its own (python -c 'import ...')"
                    )
                    raise DrillError(
                        f"the app did not answer on {where} within {plan.start_timeout:g} s; "
                        f"{fix}, or give it longer with --start-timeout"
                    )
                self._wait(0.05)

    def _until_workers_up(self, port: int) -> None:
        """Until every worker holds the listening socket: they boot one by one.

        With APP, as many as ``--workers``; with ``--cmd`` (which says how many
        in its own words), until the serving processes have stayed the same a while.
        """
        plan = self.plan
        if plan.cmd is None and plan.workers == 1:
            return
        deadline = time.monotonic() + plan.start_timeout
        found = serving_processes(self.leader, port)
        steady_since = time.monotonic()
        while time.monotonic() < deadline:
            if plan.cmd is None and len(found) >= plan.workers:
                return
            if plan.cmd is not None and time.monotonic() - steady_since >= _WORKERS_STEADY:
                return
            self._wait(_LOOK_EVERY)
            now = serving_processes(self.leader, port)
            if now != found:
                found, steady_since = now, time.monotonic()

    def _rpc_answered(self, port: int) -> int | None:
        """gRPC: the serving pid once the demo's control RPC, or the server, answers; else None."""
        from lastcall.cli import grpc_client  # noqa: PLC0415  # only where grpcio is installed

        if self.plan.cmd is None:
            return grpc_client.state(port, 1.0)
        fate, _ = grpc_client.call(
            port, self.plan.ask.grpc_method or "", self.plan.rpc_request, 1.0
        )
        return (
            None if fate in ("refused", "UNAVAILABLE") else serving_processes(self.leader, port)[0]
        )

    def _check_answer(self, port: int) -> None:
        """Before any stop: does ``--path`` answer as a served request must? If not, exit 2."""
        plan = self.plan
        if plan.demo:
            return
        if plan.grpc:
            from lastcall.cli import grpc_client  # noqa: PLC0415

            method = plan.ask.grpc_method or ""
            fate, _ = grpc_client.call(port, method, plan.rpc_request, plan.start_timeout)
            if fate != "OK":
                raise DrillError(
                    f"{plan.ask} ended {fate} before any stop, not OK: check --grpc-method and "
                    "the request in --data"
                )
            self._progress(f"{plan.ask} answers OK")
            return
        with httpx.Client(base_url=f"http://{runner.HOST}:{port}") as client:
            try:
                status = self._ask(client, plan.start_timeout).status_code
            except httpx.HTTPError as exc:
                raise DrillError(f"{plan.ask} failed before any stop ({exc})") from None
        if not plan.expected(str(status)):
            wanted = f"{plan.expect}" if plan.expect is not None else "a 2xx"
            raise DrillError(
                f"{plan.ask} answered {status} before any stop, not {wanted}: pick a --path "
                f"that answers, or --expect {status}"
            )
        self._progress(f"{plan.ask} answers {status}")

    def _why_it_ended(self, status: int, error_file: Path, left: list[int]) -> str:
        if error_file.exists():
            return error_file.read_text(encoding="utf-8").strip()
        if left and self.plan.cmd is not None:
            pids = ", ".join(map(str, left))
            return (
                f"the command exited with status {status} before it answered and left pid {pids} "
                "running (ended by the drill): it put the app in the background; run it in the "
                "foreground (no --daemon, no '&')"
            )
        log = (self._dir / "app.log").read_text(encoding="utf-8", errors="replace").strip()
        last = log.splitlines()[-1] if log else "no output"
        return f"the app exited with status {status} before it answered; its last line: {last}"


def _free_port() -> int:
    """A port on 127.0.0.1 free now (another process may take it before the app does)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
