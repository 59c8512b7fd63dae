"""Assert that your app stops clean, in your own tests.

::

    from lastcall.testing import drill

    def test_my_app_stops_clean():
        result = drill("myapp:create_app()", server="gunicorn")
        assert result.clean, result.verdict

:func:`drill` is ``lastcall drill`` as a function: it starts the app in a
session of its own on a free loopback port, puts requests in flight, stops
it, and returns what every client and hook saw; every process it started
has ended when it returns. With pytest, the fixture ``lastcall_drill``
(from the plugin lastcall registers, ``lastcall.pytest_plugin``) is the
same function, keeping each drill's files (the app's log, its lastcall
reports) in the test's ``tmp_path``.

It needs the command's extra (``pip install 'lastcall[cli]'``) and the
server named, as ``lastcall drill`` does; the fixture needs pytest too,
which ``lastcall[cli]`` does not install: ``pip install 'lastcall[testing]'``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from lastcall.cli.processes import HookRecord
    from lastcall.cli.result import Result
    from lastcall.cli.worker_result import JobRecord, WorkerResult

__all__ = ("DrillResult", "WorkerDrillResult", "drill", "drill_worker")

_MISSING = "lastcall.testing.drill needs the command's extra: pip install 'lastcall[cli]'"


@dataclass(frozen=True)
class DrillResult:
    """What one drill saw; ``clean`` is what to assert, ``verdict`` what to show when it fails."""

    result: Result

    @property
    def clean(self) -> bool:
        """Every request in flight served, nothing lost, hooks once where the work was, no kill."""
        return self.result.clean

    @property
    def verdict(self) -> str:
        """The one line ``lastcall drill`` prints: ``clean stop: 4/4 requests served, ...``."""
        return self.result.verdict()

    @property
    def problems(self) -> list[str]:
        """What went worse than the stop allows, in words; empty when nothing did."""
        return self.result.problems()

    @property
    def served(self) -> int:
        """Requests in flight at the stop that got the expected status."""
        return self.result.served

    @property
    def dropped(self) -> int:
        """Requests in flight at the stop that got no answer (reset or timed out)."""
        return self.result.dropped

    @property
    def refused(self) -> int:
        """Requests in flight at the stop whose connection was refused."""
        return self.result.refused

    @property
    def lost_writes(self) -> int | None:
        """The demo app's writes acknowledged but never stored; None for any other app."""
        return self.result.lost

    @property
    def hooks(self) -> list[HookRecord]:
        """The shutdown hooks that ran: name, phase, pid, role, times and outcome."""
        return self.result.hooks

    @property
    def exit_status(self) -> int | None:
        """The exit status of the process the drill started, as a shell shows it (143: SIGTERM)."""
        return self.result.exit_status

    def to_json(self) -> str:
        """Everything measured, as ``lastcall drill --json`` writes it."""
        return json.dumps(self.result.to_dict(), indent=2)

    def __str__(self) -> str:
        return self.verdict


@dataclass(frozen=True)
class WorkerDrillResult:
    """What one worker drill saw (:func:`drill_worker`): each job's fate, hooks, exit."""

    result: WorkerResult

    @property
    def clean(self) -> bool:
        """Every job completed once, none begun after the signal, exit by it within the grace."""
        return self.result.clean

    @property
    def verdict(self) -> str:
        """The one line ``lastcall drill --worker`` prints: ``clean stop: 5/5 jobs ...``."""
        return self.result.verdict()

    @property
    def problems(self) -> list[str]:
        """What went worse than the stop allows, in words; empty when nothing did."""
        return self.result.problems()

    @property
    def outcomes(self) -> dict[str, int]:
        """Jobs by outcome: ``completed once``, ``completed twice``, ``queued``, ``held``..."""
        return self.result.outcomes()

    @property
    def jobs(self) -> list[JobRecord]:
        """Each job: its kind, its runs (worker, pid, times) and its outcome."""
        return self.result.jobs

    @property
    def hooks(self) -> list[HookRecord]:
        """The shutdown hooks worker A's processes ran."""
        return self.result.hooks

    @property
    def exit_status(self) -> int | None:
        """Worker A's exit status, as a shell shows it (143: SIGTERM; 137: killed)."""
        return self.result.exit_status

    def to_json(self) -> str:
        """Everything measured, as ``lastcall drill --worker --json`` writes it."""
        return json.dumps(self.result.to_dict(), indent=2)

    def __str__(self) -> str:
        return self.verdict


def drill(  # the command's options, as keywords
    app: str | None = None,
    *,
    cmd: str | None = None,
    server: str = "werkzeug",
    workers: int = 1,
    stop: str = "TERM",
    requests: int = 4,
    request_seconds: float = 0.5,
    path: str = "/",
    method: str = "GET",
    headers: dict[str, str] | None = None,
    data: bytes | str | None = None,
    expect: int | None = None,
    plain: bool = False,
    grace: float | None = None,
    prestop_delay: float | None = None,
    stop_after: float = 0.25,
    start_timeout: float = 15.0,
    directory: Path | None = None,
) -> DrillResult:
    """Drill ``app`` (``"module:app"``, ``"module:create_app()"``, a ``.py`` path) or ``cmd``.

    The keywords are ``lastcall drill``'s options; ``app`` and ``cmd`` both
    None drills the built-in demo app. Input the drill cannot use raises
    ``ValueError`` with the one line the command would print.
    ``directory`` keeps the drill's files there (the fixture gives ``tmp_path``).
    """
    try:
        from lastcall.cli import appkind  # noqa: PLC0415  # the optional extra
        from lastcall.cli.clients import Ask  # noqa: PLC0415
        from lastcall.cli.drill import Drill  # noqa: PLC0415
        from lastcall.cli.plan import DrillError, Plan  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(f"{_MISSING} ({exc.name} is missing)") from None
    body = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    plan = Plan(
        app=app,
        cmd=cmd,
        server=server,
        workers=workers,
        stop=stop.upper(),
        requests=requests,
        request_seconds=request_seconds,
        stop_after=stop_after,
        plain=plain,
        ask=Ask(method.upper(), path, tuple((headers or {}).items()), body),
        expect=expect,
        start_timeout=start_timeout,
        grace=Plan.grace if grace is None else grace,  # None: the command's default
        prestop_delay=Plan.prestop_delay if prestop_delay is None else prestop_delay,
    )
    try:
        plan.check()
        if app is not None and cmd is None:  # a server of the wrong kind: at once, not after
            appkind.check(app, server, start_timeout)
        return DrillResult(Drill(plan, directory=directory).run())
    except (DrillError, appkind.AppKindError) as exc:
        raise ValueError(str(exc)) from None


def drill_worker(  # lastcall drill --worker's options, as keywords
    framework: str,
    *,
    cmd: str | None = None,
    broker: str | None = None,
    queue: str | None = None,
    pool: str | None = None,
    acks_late: bool = False,
    stop: str = "TERM",
    jobs: int = 3,
    job_seconds: float = 0.5,
    plain: bool = False,
    grace: float = 3.0,
    stop_after: float = 0.25,
    start_timeout: float = 15.0,
    directory: Path | None = None,
) -> WorkerDrillResult:
    """Drill a queue worker of ``framework`` (``"rq"``, ``"celery"``, ``"dramatiq"``).

    ``lastcall drill --worker`` as a function: its demo worker (or ``cmd``) on
    ``pool`` and ``broker`` (a URL, ``"rabbitmq"`` for a private RabbitMQ node;
    default a private redis-server), ``jobs`` of ``job_seconds`` beside a
    long one, the stop, a second worker, each job counted. Input the drill
    cannot use raises ``ValueError`` with the one line the command would print.
    """
    try:
        from lastcall.cli.plan import DrillError  # noqa: PLC0415  # the optional extra
        from lastcall.cli.worker_drill import WorkerDrill  # noqa: PLC0415
        from lastcall.cli.worker_plan import WorkerPlan  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(f"{_MISSING} ({exc.name} is missing)") from None
    plan = WorkerPlan(
        framework=framework,
        cmd=cmd,
        broker=broker,
        queue=queue,
        pool=pool,
        acks_late=acks_late,
        stop=stop.upper(),
        jobs=jobs,
        job_seconds=job_seconds,
        stop_after=stop_after,
        grace=grace,
        plain=plain,
        start_timeout=start_timeout,
    )
    try:
        return WorkerDrillResult(WorkerDrill(plan, directory=directory).run())
    except DrillError as exc:
        raise ValueError(str(exc)) from None
