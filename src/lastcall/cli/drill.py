"""One drill: start the app, put requests in flight, stop it one way, record what everyone saw.

The app runs in a session of its own (``lastcall.cli.runner``), so every
process it starts can be found again by session id and ended by PID. What
is recorded comes from outside the app wherever possible (the clients'
fates, the processes seen in ``/proc``, the rows in the demo's SQLite file)
and, for which process ran which hook, from the apps' own JSON reports
(``LASTCALL_REPORT``) or, for the plain ``atexit`` demo, the lines its hooks
append to an events file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

# httpx imports httpcore only when its first Client is made, and a matrix makes its first
# ones on several drill threads at once: a SIGTERM to the drill, raised on the main thread
# in the middle of that import, left the drill threads waiting on its module lock for ever
# (the matrix never ended). Imported here, once, before any drill thread runs.
import httpcore  # noqa: F401
import httpx

from lastcall import PHASES, Report
from lastcall.cli import cleanup, inputs, runner
from lastcall.cli.cleanup import session_processes
from lastcall.cli.clients import Ask, Load, RequestRecord
from lastcall.cli.servers import SERVERS, Launch

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

DEMOS = {  # (asgi, plain) -> the demo app
    (False, False): "lastcall.cli.demo_app:app",
    (False, True): "lastcall.cli.demo_plain:app",
    (True, False): "lastcall.cli.demo_asgi:app",
    (True, True): "lastcall.cli.demo_asgi_plain:app",
}
KILLS = ("KILL", "KILL-PARENT", "KILL-CHILD", "OS-EXIT")  # never clean, whatever survives
STOPS = ("TERM", "INT", "HUP", "KILL", "KILL-PARENT", "KILL-CHILD", "OS-EXIT", "EXCEPTION", "EXIT")
_SIGNALS = {
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
WRITES_BEFORE = 4  # demo orders acknowledged before the stop: what a lost flush loses
_POLL = 0.02
_WORKERS_STEADY = 0.3  # seconds a --cmd app's serving processes stay the same: all booted
_FULL_SCAN_EVERY = 10  # samples: the known processes every _POLL, every process now and then
_PROBE_INTERVAL = 0.1
_MAX_PROBES = 40
_EXIT_MARGIN = 1.0  # beyond the grace, before a process still running counts as left behind
_PORT_TRIES = 3
_CONTROL_TIMEOUT = 10.0  # an in-process stop answers once raised (or found swallowed)
_REPLACED_EVERY = 0.3  # seconds: how often a --cmd app is looked at for a reload
_MAY_BE_REPLACED = ("HUP", "KILL-CHILD")  # stops a master may answer by replacing workers
_MOST_PER_CLIENT = 200  # a --cmd client's requests before the stop: traffic stays bounded


class DrillError(Exception):
    """Bad input: one line saying what is wrong and how to fix it (exit status 2)."""


class NotAStopError(DrillError):
    """The stop asked for does not apply to what the command started (no parent to kill)."""


class CancelledError(Exception):
    """The drill was asked to stop (Ctrl-C in a matrix run)."""


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

    def expected(self, fate: str) -> bool:
        """Whether a request with this fate was served: the status ``--expect`` names, or a 2xx."""
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


@dataclass
class HookRecord:
    """One hook that ran: where, when (drill clock) and how it went."""

    name: str
    phase: str | None
    pid: int
    role: str
    started: float
    ended: float
    outcome: str


@dataclass
class ProcessRecord:
    """One process of the app's session, as seen in /proc."""

    pid: int
    ppid: int
    role: str
    first_seen: float
    gone: float
    exit_status: int | None = None
    left_behind: bool = False


@dataclass
class Result:
    """Everything one drill saw. Times are seconds on the drill's clock (0: first request)."""

    plan: Plan
    port: int
    leader: int
    serving: int
    workers: list[int]
    stop_sent: float
    ended: float
    exit_status: int | None
    stop_seconds: float | None
    requests: list[RequestRecord] = field(default_factory=list)
    hooks: list[HookRecord] = field(default_factory=list)
    phases: list[tuple[str, float]] = field(default_factory=list)
    processes: list[ProcessRecord] = field(default_factory=list)
    acknowledged: int | None = None
    stored: int | None = None
    hooks_known: bool = True  # False: a plain user app, or a --cmd app that wrote no report
    warnings: list[str] = field(default_factory=list)  # the app's log's last warning lines
    directory: str | None = None  # where the app's log and reports were kept, if they were

    @property
    def in_flight(self) -> list[RequestRecord]:
        """The requests in flight when the stop was sent."""
        return [r for r in self.requests if r.kind == "in flight"]

    @property
    def served(self) -> int:
        """How many of those got the expected status (``--expect``, else a 2xx)."""
        return sum(self.plan.expected(r.fate) for r in self.in_flight)

    @property
    def dropped(self) -> int:
        """Requests in flight at the stop that got no answer (reset or timed out)."""
        return sum(r.fate in ("reset", "timed out") for r in self.in_flight)

    @property
    def refused(self) -> int:
        """Requests in flight at the stop whose connection was refused."""
        return sum(r.fate == "refused" for r in self.in_flight)

    @property
    def late_lost(self) -> int:
        """New connections after the stop that were accepted and then lost (reset, timed out)."""
        return sum(r.kind == "late" and r.fate in ("reset", "timed out") for r in self.requests)

    @property
    def failed(self) -> int:
        """Requests in flight at the stop answered, but not with the expected status (a 503)."""
        return len(self.in_flight) - self.served - self.dropped - self.refused

    @property
    def abrupt(self) -> bool:
        """The serving process was ended where no code of its own can run."""
        serving_is_leader = self.serving == self.leader
        return self.plan.stop in ("KILL-CHILD", "OS-EXIT") or (
            self.plan.stop == "KILL" and serving_is_leader
        )

    @property
    def clean(self) -> bool:
        """Nothing went wrong, and no process was killed (a kill is never a clean stop)."""
        return not self.plan.kills and not self.failures()

    @property
    def lost(self) -> int | None:
        """Writes acknowledged to clients but not in SQLite; None for a user's app."""
        if self.acknowledged is None or self.stored is None:
            return None
        return max(0, self.acknowledged - self.stored)

    @property
    def left_behind(self) -> list[int]:
        """Processes still running after the grace (ended by the drill)."""
        return [p.pid for p in self.processes if p.left_behind]

    @property
    def serving_role(self) -> str:
        """The role of the process that served: where hooks belong."""
        return "server" if self.serving == self.leader else "child"

    def hooks_where(self) -> str:
        """``child``, ``parent``, ``child+parent``, ``server``, ``none`` or ``unknown``."""
        if not self.hooks_known:
            return "unknown"
        roles = sorted(
            {h.role for h in self.hooks}, key=["server", "child", "parent", "other"].index
        )
        return "+".join(roles) or "none"

    def failures(self) -> dict[str, str]:
        """What went worse than this way of stopping allows, by column; empty when clean.

        A process killed by SIGKILL or ``os._exit`` can run nothing: what it
        held is lost with it, so only what happens around it counts then.
        """
        found: dict[str, str] = {}
        if not self.in_flight:
            found["in flight"] = (
                "no request was in flight at the stop: make them last longer (--request-seconds; "
                "with --cmd, a slower --path) or stop sooner (--stop-after)"
            )
        abrupt = self.abrupt
        lost = [f"{self.dropped} dropped"] if self.dropped else []
        lost += [f"{self.failed} answered otherwise"] if self.failed else []
        if lost and not abrupt:
            drain_ok = any(h.phase == "drain" and h.outcome == "ok" for h in self.hooks)
            found["dropped"] = f"requests in flight: {', '.join(lost)}" + (
                ", although the drain hook reported ok" if drain_ok else ""
            )
        if self.late_lost and not abrupt:
            found["late"] = f"{self.late_lost} new connections accepted and then lost"
        hooks = self._hook_problems()
        if hooks:
            found["hooks"] = "; ".join(hooks)
        if self.left_behind:
            pids = ", ".join(map(str, self.left_behind))
            found["orphans"] = (
                f"it did not stop: pid {pids} still running after the grace (ended by the drill)"
                if self.leader in self.left_behind
                else f"left behind, still running: pid {pids} (ended by the drill)"
            )
        if self.lost and not abrupt:
            found["lost"] = f"{self.lost} acknowledged writes lost"
        if self.stop_seconds is not None and self.stop_seconds > self.plan.grace:
            found["stop"] = f"took {self.stop_seconds:.1f} s, over the {self.plan.grace:g} s grace"
        ends_by = self.ends_by
        if ends_by is not None and self.exit_status not in (None, 128 + ends_by):
            name = signal.Signals(ends_by).name
            found["exit"] = (
                f"the process it started exited {self.exit_status}, not by {name} "
                f"({128 + ends_by}): a supervisor cannot tell it stopped as asked"
            )
        return found

    @property
    def ends_by(self) -> int | None:
        """The signal the process the drill started should die by: a graceful stop's own."""
        if self.plan.stop not in ("TERM", "INT", "HUP") or self.left_behind:
            return None
        return _SIGNALS[self.plan.stop]

    def problems(self) -> list[str]:
        """The failures, in words."""
        return list(self.failures().values())

    def _hook_problems(self) -> list[str]:
        found = []
        elsewhere = sorted({h.pid for h in self.hooks if h.role != self.serving_role})
        if elsewhere:
            found.append(
                "hooks ran in pid "
                + ", ".join(f"{pid} ({self._role(pid)})" for pid in elsewhere)
                + ", which does not hold the app's work"
            )
        runs = [(h.pid, h.name) for h in self.hooks]
        twice = sorted({name for pid, name in runs if runs.count((pid, name)) > 1})
        if twice:
            found.append(f"hooks ran more than once: {', '.join(twice)}")
        if self.hooks_known and not self.hooks and not self.abrupt:
            found.append("no shutdown hook ran")
        return found

    def _role(self, pid: int) -> str:
        return next((p.role for p in self.processes if p.pid == pid), "other")

    def verdict(self) -> str:
        """The one line: ``clean stop: 16/16 requests served, 0 refused, ...``."""
        problems = self.problems()
        head = "clean stop" if not problems else "unclean stop"
        if not problems and self.plan.kills:
            head = (
                "abrupt stop, not clean (nothing can run in a process ended this way)"
                if self.abrupt
                else "not a clean stop (no kill is one), though what served stopped cleanly"
            )
        parts = [f"{self.served}/{len(self.in_flight)} requests served", f"{self.refused} refused"]
        if self.dropped:
            parts.append(f"{self.dropped} dropped")
        if self.failed:
            statuses = sorted(
                {
                    r.fate
                    for r in self.in_flight
                    if r.fate.isdigit() and not self.plan.expected(r.fate)
                }
            )
            parts.append(f"{self.failed} answered {'/'.join(statuses)}")
        if self.lost is not None:
            parts.append(f"{self.lost} lost writes")
        parts.append(self._hooks_phrase())
        if self.left_behind:
            left = len(self.left_behind)
            parts.append(f"{left} {'process' if left == 1 else 'processes'} left behind")
        elif self.stop_seconds is not None:
            parts.append(f"{self.stop_seconds:.2f} s")
        line = f"{head}: {', '.join(parts)}"
        return f"{line} ({'; '.join(problems)})" if problems else line

    def _hooks_phrase(self) -> str:
        if not self.hooks_known:
            return "hooks unknown (no lastcall report)"
        pids = sorted({h.pid for h in self.hooks})
        if not pids:
            return "no hooks ran"
        runs = [(h.pid, h.name) for h in self.hooks]
        once = len(set(runs)) == len(runs)
        if len(pids) == 1 and once:
            role = self._role(pids[0])
            where = "" if role in ("server", "child") else f", the {role}"
            return f"hooks ran once in pid {pids[0]}{where}"
        if once and {self._role(pid) for pid in pids} == {"child"}:
            return f"hooks ran once in each serving process (pid {', '.join(map(str, pids))})"
        return "hooks ran in " + " and ".join(f"pid {pid} ({self._role(pid)})" for pid in pids)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: every field, plus the judgements."""
        data = asdict(self)
        body = self.plan.ask.body
        data["plan"]["ask"]["body"] = None if body is None else body.decode(errors="replace")
        data["plan"]["path"] = self.plan.ask.path  # where it was before --method and the rest
        data.update(
            served=self.served,
            dropped=self.dropped,
            refused=self.refused,
            late_lost=self.late_lost,
            failed=self.failed,
            abrupt=self.abrupt,
            clean=self.clean,
            lost_writes=self.lost,
            left_behind=self.left_behind,
            hooks_where=self.hooks_where(),
            problems=self.problems(),
            verdict=self.verdict(),
        )
        return data


# ---------------------------------------------------------------- processes


class ProcessWatch:
    """Samples the app's session: when each process went (every 20 ms), and new ones.

    Reading every process's stat takes milliseconds, and a matrix runs eight
    drills at once: the processes known are looked at every 20 ms, the whole
    machine every 10th time, for processes the app has started since.
    """

    def __init__(self, sid: int, now: Callable[[], float]) -> None:
        self._sid = sid
        self._now = now
        self.seen: dict[int, list[float]] = {}  # pid -> [ppid, first seen, seen gone]
        self.alive: set[int] = set()
        self._stop = threading.Event()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="drill-ps", daemon=True)
        self._thread.start()

    def _sample(self, *, known_only: bool = False) -> None:
        current = session_processes(self._sid, self.alive if known_only else None)
        now = self._now()  # after the scan: a process gone from it was gone by now
        for pid, ppid in current.items():
            self.seen.setdefault(pid, [ppid, now, now])[2] = now + _POLL
        for pid in self.alive - set(current):
            self.seen[pid][2] = now
        self.alive = set(current)

    def _run(self) -> None:
        samples = 0
        while not self._stop.wait(_POLL):
            samples += 1
            self._sample(known_only=samples % _FULL_SCAN_EVERY != 0)

    def close(self) -> None:
        """Stop sampling, after one last look."""
        self._stop.set()
        self._thread.join()
        self._sample()


# ---------------------------------------------------------------- the drill


class Drill:
    """One run of a plan. ``run()`` returns the result and leaves no process behind.

    ``directory`` keeps the drill's files (the app's log and lastcall reports)
    there; without it they go to a temporary directory, removed afterwards.
    """

    def __init__(
        self,
        plan: Plan,
        progress: Callable[[str], None] = lambda _: None,
        cancel: threading.Event | None = None,
        directory: Path | None = None,
    ) -> None:
        plan.check()
        self.plan = plan
        self._progress = progress
        self._cancel = cancel or threading.Event()
        self._keep = directory
        self._dir = Path()
        self._proc: subprocess.Popen[bytes] | None = None
        self._leader = 0
        self._port: int | None = None
        self._mark = cleanup.new_mark()  # in every process the app starts: see cli/cleanup.py
        self._workers: list[int] = []  # every process that serves (gunicorn -w 4: four)
        self._clock = time.time()

    def _now(self) -> float:
        return time.time() - self._clock

    def _wait(self, seconds: float) -> None:
        if self._cancel.wait(max(0.0, seconds)):
            raise CancelledError

    def run(self) -> Result:
        """Drill once; raises ``DrillError`` for bad input, always ends every process."""
        if self._keep is not None:
            self._keep.mkdir(parents=True, exist_ok=True)
        prefix = f"{self.plan.where}-{self.plan.stop}-{self.plan.variant}-".lower()
        self._dir = Path(tempfile.mkdtemp(prefix=prefix, dir=self._keep))
        try:
            port, serving = self._start()
            return self._drill(port, serving)
        finally:
            self._end()
            if self._keep is None:
                shutil.rmtree(self._dir, ignore_errors=True)

    def _end(self) -> None:
        """End every process the app started: its session, daemons and ``setsid`` children too."""
        proc = self._proc
        # The session only while its leader is not reaped: its pid may be another's after.
        cleanup.end(self._mark, None if proc is None else proc.pid, self._port)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()

    # ------------------------------------------------------------ start

    def _start(self) -> tuple[int, int]:
        """Start the app on a free port (another, if a free one was taken meanwhile)."""
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

    def _launch(self, port: int) -> int:
        plan = self.plan
        error_file = self._dir / "error.txt"
        try:
            runner.check_port(port)  # a server's own failure to bind can take seconds
        except runner.BadInputError as exc:
            raise DrillError(str(exc)) from None
        env = {k: v for k, v in os.environ.items() if not k.startswith("LASTCALL_")}
        self._port = port
        env.update(
            {cleanup.OWNER: self._mark},
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
            argv = self._runner_argv(port, error_file, env)
            self._progress(f"starting {plan.name} ({plan.variant}) on {plan.server}, port {port}")
        with (self._dir / "app.log").open("wb") as log:
            try:
                self._proc = subprocess.Popen(  # noqa: S603  # the user's own command; no shell
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                raise DrillError(
                    f"--cmd cannot start {argv[0]!r} ({exc.strerror}); give a program on PATH "
                    "or its path, and write sh -c '...' for a shell"
                ) from None
        self._leader = self._proc.pid
        self._progress(f"started pid {self._leader} (its own session)")
        return self._wait_until_answering(port, error_file)

    def _runner_argv(self, port: int, error_file: Path, env: dict[str, str]) -> list[str]:
        """The server's command line for APP or the demo, and what the runner reads."""
        plan = self.plan
        server = SERVERS[plan.server]
        app = plan.app or DEMOS[server.asgi, plan.plain]
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

    def _wait_until_answering(self, port: int, error_file: Path) -> int:
        """Until the app answers; the serving process's pid (the drill's route says, or /proc)."""
        proc = self._proc
        assert proc is not None  # noqa: S101
        plan = self.plan
        deadline = time.monotonic() + plan.start_timeout
        with httpx.Client(base_url=f"http://{runner.HOST}:{port}", timeout=1.0) as client:
            while True:
                status = proc.poll()
                if status is not None:
                    self._proc = None
                    left = cleanup.end(self._mark, proc.pid, port)
                    raise DrillError(self._why_it_ended(status, error_file, left))
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    if plan.cmd is None:
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

    def _ask(self, client: httpx.Client, timeout: float) -> httpx.Response:
        ask = self.plan.ask
        return client.request(
            ask.method, ask.path, headers=dict(ask.headers), content=ask.body, timeout=timeout
        )

    def _check_answer(self, port: int) -> None:
        """Before any stop: does ``--path`` answer as a served request must? If not, exit 2."""
        plan = self.plan
        if plan.demo:
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

    # ------------------------------------------------------------ load and stop

    def _drill(self, port: int, serving: int) -> Result:
        plan = self.plan
        proc = self._proc
        assert proc is not None  # noqa: S101
        self._progress(f"pid {serving} serves on http://127.0.0.1:{port}")
        timeout = plan.request_seconds + plan.grace + 5
        self._clock = time.time()  # the timeline starts with the first request
        load = Load(
            port,
            clock=self._clock,
            timeout=timeout,
            workers=WRITES_BEFORE + plan.requests + _MAX_PROBES,
            ask=plan.ask,
            write=plan.demo,
        )
        watch = ProcessWatch(proc.pid, self._now)
        stopping = threading.Event()
        try:
            for future in [load.send("before") for _ in range(WRITES_BEFORE)]:
                future.result(timeout)
            for _ in range(plan.requests):
                if plan.cmd is None:
                    load.send("in flight", plan.request_seconds)
                else:
                    load.keep_sending("in flight", stopping, _MOST_PER_CLIENT)
            self._until_in_flight(port, load)
            self._progress(
                f"{plan.requests} requests in flight"
                if plan.cmd is None
                else f"{plan.requests} clients asking {plan.ask} again as soon as answered"
            )
            self._wait(plan.stop_after)
            self._workers = self._serving(port, serving)
            stopping.set()
            stop_sent = self._now()
            self._send_stop(load, proc.pid, serving)
            (self._dir / "stopped").touch()  # delayed requests still held may now end
            self._progress(f"sent {STOP_WORDS[plan.stop]}; opening new connections meanwhile")
            self._probe_until_gone(load, watch, stop_sent, port)
            left = sorted(watch.alive | cleanup.started_by(self._mark))  # daemons too
            if left:
                self._progress(f"still running after the grace: pid {left}; ending them")
                cleanup.end(self._mark, proc.pid, port)
            status = proc.wait(timeout)
            self._proc = None
            watch.close()
            records = load.results(timeout)
        finally:
            stopping.set()
            watch.close()
            load.close()
        return self._result(port, serving, stop_sent, status, left, records, watch)

    def _until_workers_up(self, port: int) -> None:
        """Until every worker holds the listening socket: they boot one by one.

        With APP, as many as ``--workers``; with ``--cmd`` (which says how many
        in its own words), until the serving processes have stayed the same a while.
        """
        plan = self.plan
        if plan.cmd is None and plan.workers == 1:
            return
        deadline = time.monotonic() + plan.start_timeout
        found = serving_processes(self._leader, port)
        steady_since = time.monotonic()
        while time.monotonic() < deadline:
            if plan.cmd is None and len(found) >= plan.workers:
                return
            if plan.cmd is not None and time.monotonic() - steady_since >= _WORKERS_STEADY:
                return
            self._wait(_POLL * 5)
            now = serving_processes(self._leader, port)
            if now != found:
                found, steady_since = now, time.monotonic()

    def _serving(self, port: int, answered: int) -> list[int]:
        """Every process serving now (workers boot one by one, so looked for at the stop).

        The process that answered first; with it, the others found holding the
        listening socket, if that search found it too (else it is not to be trusted).
        """
        found = serving_processes(self._leader, port)
        if answered not in found:
            return [answered]
        return [answered, *(pid for pid in found if pid != answered)]

    def _until_in_flight(self, port: int, load: Load) -> None:
        """Until every request has entered the app or waits, accepted by the kernel, in the backlog.

        A server with fewer threads than requests (a sync worker has one)
        leaves the rest queued: in flight to the client, not yet to the app.
        With ``--cmd``, until as many were answered or are open at once.
        """
        entered = self._dir / "entered"
        deadline = time.monotonic() + self.plan.start_timeout
        while time.monotonic() < deadline:
            if self.plan.cmd is None:
                inside = entered.stat().st_size if entered.exists() else 0
                taken = inside + listen_backlog(port)
            else:
                taken = max(load.answered - WRITES_BEFORE, open_connections(port))
            if taken >= self.plan.requests:
                return
            self._wait(_POLL)
        raise DrillError(
            f"the app did not take {self.plan.requests} requests at once within "
            f"{self.plan.start_timeout:g} s; try fewer --requests"
        )

    def _send_stop(self, load: Load, leader: int, serving: int) -> None:
        stop = self.plan.stop
        if stop == "KILL-PARENT" and serving == leader:
            raise NotAStopError(
                f"--stop KILL-PARENT: pid {leader} serves on its own, with no parent process "
                "apart from it; use --stop KILL"
            )
        if stop in IN_PROCESS:
            with contextlib.suppress(httpx.HTTPError, ValueError):  # os._exit takes the connection
                if load.control(IN_PROCESS[stop], _CONTROL_TIMEOUT).json().get("swallowed"):
                    raise NotAStopError(
                        f"--stop {stop} is not a stop for this app: its event loop caught the "
                        "exception raised on the main thread, logged it and served on (uvloop "
                        "runs signal handlers inside a callback); stop it with a signal"
                    )
            return
        pid = serving if stop == "KILL-CHILD" else leader
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, _SIGNALS[stop])

    def _probe_until_gone(
        self, load: Load, watch: ProcessWatch, stop_sent: float, port: int
    ) -> None:
        """New connections through the drain, until every process is gone or the grace is up."""
        until = stop_sent + self.plan.grace + _EXIT_MARGIN
        probes = 0
        # Not in the very instant of the stop: a connection made then races the signal
        # itself (the server may see either first), which measures the race, not the drain.
        next_probe = stop_sent + _PROBE_INTERVAL / 2
        next_look = stop_sent + _REPLACED_EVERY
        while watch.alive and self._now() < until:
            if probes < _MAX_PROBES and self._now() >= next_probe:
                load.send("late")
                probes += 1
                next_probe += _PROBE_INTERVAL
            if self._now() >= next_look:
                self._refuse_if_replaced(watch, port)
                next_look += _REPLACED_EVERY
            self._wait(_POLL)

    def _refuse_if_replaced(self, watch: ProcessWatch, port: int) -> None:
        """With ``--cmd``: a SIGHUP that reloaded, a killed worker replaced, is no stop.

        What the command runs decides it (gunicorn and hypercorn reload on
        SIGHUP, and gunicorn's master replaces a worker that dies), so it is
        seen, not assumed: the process the drill started still runs, and a
        process that was not serving at the stop now holds the listening socket.
        """
        plan = self.plan
        if plan.cmd is None or plan.stop not in _MAY_BE_REPLACED or self._leader not in watch.alive:
            return
        new = sorted(set(serving_processes(self._leader, port)) - {*self._workers, self._leader})
        if new:
            raise NotAStopError(
                f"--stop {plan.stop} is not a stop for this command: pid {self._leader} kept "
                f"running and pid {', '.join(map(str, new))} now serves in place of pid "
                f"{', '.join(map(str, self._workers))} (a reload, or a worker replaced)"
            )

    # ------------------------------------------------------------ what happened

    def _result(  # noqa: PLR0917  # what the drill gathered, handed over once
        self,
        port: int,
        serving: int,
        stop_sent: float,
        status: int,
        left: list[int],
        records: list[RequestRecord],
        watch: ProcessWatch,
    ) -> Result:
        plan = self.plan
        leader = self._leader
        roles = {leader: "parent", **dict.fromkeys(self._workers, "child")}
        if leader == serving:
            roles = {leader: "server"}
        exit_status = 128 - status if status < 0 else status
        processes = [
            ProcessRecord(
                pid,
                int(ppid),
                roles.get(pid, "other"),
                first,
                last,
                exit_status if pid == leader else None,
                left_behind=pid in left,
            )
            for pid, (ppid, first, last) in sorted(watch.seen.items())
        ]
        processes += [  # outside the session: a daemon, a setsid child
            ProcessRecord(pid, 0, "other", stop_sent, stop_sent, left_behind=True)
            for pid in left
            if pid not in watch.seen
        ]
        ended = max([stop_sent, *(p.gone for p in processes)])
        classify(records, stop_sent)
        result = Result(
            plan=plan,
            port=port,
            leader=leader,
            serving=serving,
            workers=self._workers,
            stop_sent=stop_sent,
            ended=ended,
            exit_status=exit_status,
            stop_seconds=None if left else ended - stop_sent,
            requests=records,
            processes=processes,
        )
        self._read_hooks(result, roles)
        result.warnings = warnings_in(self._dir / "app.log")
        result.directory = str(self._dir) if self._keep is not None else None
        if plan.cmd is not None or (plan.plain and not plan.demo):
            # Unless it writes a lastcall report, an app's own atexit handlers are not seen.
            result.hooks_known = any(self._dir.glob("report-*.json"))
        if plan.demo:
            result.acknowledged = sum(plan.expected(r.fate) for r in records)
            result.stored = self._stored_rows()
        return result

    def _read_hooks(self, result: Result, roles: dict[int, str]) -> None:
        """Hooks from each process's lastcall report; the plain demo's from its events file."""
        reports = [
            Report.from_dict(json.loads(path.read_text(encoding="utf-8")))
            for path in sorted(self._dir.glob("report-*.json"))
        ]
        for report in reports:
            role = roles.get(report.pid, "other")
            at = report.started_at - self._clock
            phase_at = {PHASES[0]: at}  # the stop begins with pre_stop, hooks or not
            for phase in PHASES:
                for hook in (h for h in report.hooks if h.phase == phase):  # in the order run
                    phase_at.setdefault(phase, at)
                    ended = at + hook.duration
                    result.hooks.append(
                        HookRecord(hook.name, phase, report.pid, role, at, ended, hook.outcome)
                    )
                    at = ended
                if phase == PHASES[0]:
                    at += self.plan.prestop_delay
            if report.pid == result.serving:
                result.phases = sorted(phase_at.items(), key=lambda item: item[1])
        reported = {report.pid for report in reports}
        events = self._dir / "hooks.jsonl"
        lines = events.read_text(encoding="utf-8").splitlines() if events.exists() else []
        for event in map(json.loads, lines):
            if event["pid"] not in reported:
                result.hooks.append(
                    HookRecord(
                        event["hook"],
                        None,
                        event["pid"],
                        roles.get(event["pid"], "other"),
                        event["started"] - self._clock,
                        event["ended"] - self._clock,
                        "ok",
                    )
                )

    def _stored_rows(self) -> int:
        database = self._dir / "demo.db"
        if not database.exists():
            return 0
        with contextlib.closing(sqlite3.connect(database)) as db:
            try:
                return int(db.execute("SELECT count(*) FROM orders").fetchone()[0])
            except sqlite3.OperationalError:  # no flush ever created the table
                return 0


# Warnings, deprecations, and lastcall's own start-up line on a server outside its tested range.
_WARNING = re.compile(r"warn|deprecat|outside the versions", re.IGNORECASE)
_WARNINGS_SHOWN = 5


def warnings_in(log: Path) -> list[str]:
    """The last few lines of the app's log that warn: what it said while starting, say."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    found = [line.strip() for line in text.splitlines() if _WARNING.search(line)]
    return list(dict.fromkeys(found))[-_WARNINGS_SHOWN:]


def classify(records: list[RequestRecord], stop_sent: float) -> None:
    """What a ``--cmd`` client's request was: in flight at the stop, or not.

    Answered before the stop: ``before``. Refused: its connection was made
    after the listener closed, so it was a new connection after the stop
    (``late``), never a request in flight at it.
    """
    for record in records:
        if record.kind != "in flight":
            continue
        if record.ended < stop_sent:
            record.kind = "before"
        elif record.fate == "refused":
            record.kind = "late"


def _tcp_rows(port: int) -> Iterator[tuple[str, int]]:
    """(state, rx_queue) of the IPv4 sockets bound to 127.0.0.1:port."""
    local = f"0100007F:{port:04X}"
    for row in Path("/proc/net/tcp").read_text(encoding="ascii").splitlines()[1:]:
        fields = row.split()
        if fields[1] == local:
            yield fields[3], int(fields[4].split(":")[1], 16)


def open_connections(port: int) -> int:
    """Connections to 127.0.0.1:port the kernel has accepted and nobody has closed yet."""
    return sum(state == "01" for state, _ in _tcp_rows(port))  # ESTABLISHED


def serving_processes(leader: int, port: int) -> list[int]:
    """The processes that serve on ``port``: the deepest of the session's holding its socket.

    A master and its workers all hold the listening socket; the workers
    serve. ``[leader]`` when it serves alone, or when nothing is found.
    """
    inodes = {
        int(row.split()[9])
        for table in ("tcp", "tcp6")
        for row in Path(f"/proc/net/{table}").read_text(encoding="ascii").splitlines()[1:]
        if row.split()[3] == "0A" and int(row.split()[1].rsplit(":", 1)[1], 16) == port
    }
    tree = session_processes(leader)
    holders = [pid for pid in sorted(tree) if _holds_socket(pid, inodes)]

    def depth(pid: int) -> int:
        return 0 if pid == leader or pid not in tree else 1 + depth(tree[pid])

    deepest = max(map(depth, holders), default=0)
    return [pid for pid in holders if depth(pid) == deepest] or [leader]


def _holds_socket(pid: int, inodes: set[int]) -> bool:
    wanted = {f"socket:[{inode}]" for inode in inodes}
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # gone, or not ours to read
        return False
    for fd in fds:
        try:
            if str(fd.readlink()) in wanted:
                return True
        except OSError:  # closed since listed: a process still starting opens and closes files
            continue
    return False


def listen_backlog(port: int) -> int:
    """Connections the kernel accepted on 127.0.0.1:port that no process has taken yet.

    For a listening socket, /proc/net/tcp's rx_queue is its accept queue's length.
    """
    return next((queued for state, queued in _tcp_rows(port) if state == "0A"), 0)  # LISTEN


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
