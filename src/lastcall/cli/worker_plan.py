"""What a worker drill is asked to do: the :class:`WorkerPlan`, its stops, what cannot be drilled.

Checked before anything starts (``WorkerPlan.check``): bad input is one line
(``DrillError``, exit status 2), as for a server's drill (``plan.py``).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lastcall.cli.broker import (
    AMQP_SCHEMES,
    PRIVATE_RABBITMQ,
    REDIS_SCHEMES,
    check_rabbitmq_installed,
)
from lastcall.cli.frameworks import FRAMEWORKS
from lastcall.cli.plan import STOP_WORDS, DrillError

if TYPE_CHECKING:
    from lastcall.cli.frameworks import Framework

WORKER_STOPS = ("TERM", "INT", "INT-INT", "KILL")
WORKER_STOP_WORDS = {**STOP_WORDS, "INT-INT": "SIGINT twice (a second Ctrl-C)"}
INCLUDE_DEMO = {  # how a user's worker (--cmd) takes the demo job
    "rq": "RQ imports it by name: nothing to add",
    "celery": "add -I lastcall.cli.demo_celery to the worker's options",
    "dramatiq": "name lastcall.cli.demo_dramatiq after your module",
}


@dataclass(frozen=True)
class WorkerPlan:
    """What to drill: the demo worker of ``framework``, or ``cmd``; on ``broker`` or a private one.

    ``jobs`` short jobs of ``job_seconds``, and one long job and one enqueued
    during the stop beside them. ``pool``: how the demo worker runs its jobs
    (None: the framework's default); ``broker``: a URL, ``rabbitmq`` for a
    private RabbitMQ node, None for a private redis-server; ``acks_late``:
    Celery's, on the demo task.
    """

    framework: str = "celery"
    cmd: str | None = None
    broker: str | None = None
    pool: str | None = None
    acks_late: bool = False
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
    def pool_name(self) -> str:
        """``--pool``, else the framework's default; ``--cmd``'s own is not known."""
        if self.cmd is not None and self.pool is None:
            return "its own"
        return self.pool or FRAMEWORKS[self.framework].pools[0]

    @property
    def on_amqp(self) -> bool:
        """RabbitMQ: ``--broker amqp://...`` or ``rabbitmq``."""
        broker = self.broker or ""
        return broker == PRIVATE_RABBITMQ or broker.startswith(AMQP_SCHEMES)

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
        self._check_broker()
        if self.pool is not None:
            if self.cmd is not None:
                raise DrillError("--cmd starts the worker its own way: write its pool in COMMAND")
            problem = framework.pool_problem(self.pool)
            if problem:
                raise DrillError(problem)
        if self.acks_late and self.framework != "celery":
            raise DrillError(
                f"--acks-late is Celery's task_acks_late; {self.framework} acknowledges its own "
                "way: leave it out"
            )
        if self.cmd is not None:
            self._check_cmd()

    def _check_broker(self) -> None:
        broker = self.broker
        if broker is None:
            return
        amqp = self.on_amqp
        if amqp and not FRAMEWORKS[self.framework].amqp_too:
            raise DrillError(
                f"--broker {broker}: {self.framework} runs on Redis only; give --broker "
                "redis://HOST:PORT/DB, or leave it out for a private redis-server"
            )
        if broker == PRIVATE_RABBITMQ:
            check_rabbitmq_installed()
        if not amqp and not broker.startswith(REDIS_SCHEMES):
            raise DrillError(
                f"--broker {broker!r} is neither a Redis nor an AMQP URL: give "
                "redis://HOST:PORT/DB, amqp://USER:PASSWORD@HOST:PORT/VHOST, rabbitmq (a private "
                "RabbitMQ node), or leave it out for a private redis-server"
            )

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
        if self.framework == "celery" and self.on_amqp and "{name}" not in (self.cmd or ""):
            raise DrillError(
                "--cmd on RabbitMQ: Celery's workers A and B need names of their own (a "
                "worker's pidbox queue there is exclusive, and B would stop at start-up): add "
                "-n {name}@%h to COMMAND"
            )
        if "{broker}" not in (self.cmd or "") and self.broker in (None, PRIVATE_RABBITMQ):
            raise DrillError(
                "--cmd has no {broker}: write {broker} where the worker takes its broker URL "
                "(celery -b {broker}, rq worker --url {broker}), or give the one it uses with "
                "--broker redis://HOST:PORT/DB"
            )

    def argv(self, framework: Framework, *, worker: str) -> list[str]:
        """The command worker A or B runs: the demo's, or ``--cmd`` with its words filled in."""
        nodename = f"lastcall-drill-{worker}-{self.queue_name}"  # one per worker and drill
        if self.cmd is None:
            return framework.demo_argv(plain=self.plain, nodename=nodename, pool=self.pool_name)
        words = shlex.split(self.cmd)
        fill = {
            "{broker}": framework.broker,
            "{python}": sys.executable,
            "{queue}": self.queue_name,
            "{name}": nodename,
        }
        for placeholder, value in fill.items():
            words = [w.replace(placeholder, value) for w in words]
        return words
