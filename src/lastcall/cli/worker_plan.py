"""What a worker drill is asked to do: the :class:`WorkerPlan`, its stops, what cannot be drilled.

Checked before anything starts (``WorkerPlan.check``): bad input is one line
(``DrillError``, exit status 2), as for a server's drill (``plan.py``).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lastcall.cli.frameworks import FRAMEWORKS
from lastcall.cli.plan import STOP_WORDS, DrillError

if TYPE_CHECKING:
    from lastcall.cli.frameworks import Framework

WORKER_STOPS = ("TERM", "INT", "INT-INT", "KILL")
WORKER_STOP_WORDS = {**STOP_WORDS, "INT-INT": "SIGINT twice (a second Ctrl-C)"}
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
INCLUDE_DEMO = {  # how a user's worker (--cmd) takes the demo job
    "rq": "RQ imports it by name: nothing to add",
    "celery": "add -I lastcall.cli.demo_celery to the worker's options",
    "dramatiq": "name lastcall.cli.demo_dramatiq after your module",
}


@dataclass(frozen=True)
class WorkerPlan:
    """What to drill: the demo worker of ``framework``, or ``cmd``; on ``broker`` or a private one.

    ``jobs`` short jobs of ``job_seconds``, and one long job and one enqueued
    during the stop beside them.
    """

    framework: str = "celery"
    cmd: str | None = None
    broker: str | None = None
    queue: str | None = None
    stop: str = "TERM"
    jobs: int = 6
    job_seconds: float = 2.0
    stop_after: float = 0.25
    grace: float = 10.0
    plain: bool = False
    start_timeout: float = 30.0

    @property
    def variant(self) -> str:
        """``plain`` or ``lastcall``, for tables (a command says which itself)."""
        return "plain" if self.plain else "lastcall"

    @property
    def queue_name(self) -> str:
        """The queue the jobs go to: ``--queue``, else the framework's default."""
        return self.queue or FRAMEWORKS[self.framework].default_queue

    @property
    def kills(self) -> bool:
        """SIGKILL: no code of the worker runs, so never a clean stop."""
        return self.stop == "KILL"

    def check(self) -> None:
        """Refuse, in one line, what cannot be drilled."""
        framework = FRAMEWORKS.get(self.framework)
        if framework is None:
            raise DrillError(f"unknown --worker {self.framework!r}; choose one of "
                             f"{', '.join(FRAMEWORKS)}")  # fmt: skip
        missing = framework.missing()
        if missing:
            raise DrillError(missing)
        if self.stop not in WORKER_STOPS:
            raise DrillError(
                f"--stop {self.stop} is not a worker drill's stop; choose one of "
                f"{', '.join(WORKER_STOPS)}"
            )
        if self.jobs < 1 or self.job_seconds <= 0 or self.grace <= 0:
            raise DrillError("--jobs must be at least 1, --job-seconds > 0, --grace > 0")
        if self.broker is not None and not self.broker.startswith(_REDIS_SCHEMES):
            raise DrillError(
                f"--broker {self.broker!r} is not a Redis URL: the worker drill reads the queue "
                "on Redis (redis://HOST:PORT/DB); leave it out for a private redis-server"
            )
        if self.cmd is not None:
            self._check_cmd()

    def _check_cmd(self) -> None:
        if self.plain:
            raise DrillError("--cmd starts the worker its own way: leave out --plain")
        try:
            words = shlex.split(self.cmd or "")
        except ValueError as exc:
            raise DrillError(
                f"--cmd cannot be split into words ({exc}); check its quotes"
            ) from None
        if not words:
            raise DrillError("--cmd is empty; give the command that starts the worker")
        if "{broker}" not in (self.cmd or "") and self.broker is None:
            raise DrillError(
                "--cmd has no {broker}: write {broker} where the worker takes its broker URL "
                "(celery -b {broker}, rq worker --url {broker}), or give the one it uses with "
                "--broker redis://HOST:PORT/DB"
            )

    def argv(self, framework: Framework, *, worker: str) -> list[str]:
        """The command worker A or B runs: the demo's, or ``--cmd`` with its words filled in."""
        if self.cmd is None:
            return framework.demo_argv(plain=self.plain, nodename=f"lastcall-drill-{worker}")
        words = shlex.split(self.cmd)
        fill = {
            "{broker}": framework.broker,
            "{python}": sys.executable,
            "{queue}": self.queue_name,
        }
        for placeholder, value in fill.items():
            words = [w.replace(placeholder, value) for w in words]
        return words
