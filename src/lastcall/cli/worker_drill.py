"""One worker drill: start a worker, enqueue jobs, stop it one way, count what became of each job.

The sequence only, read top to bottom from :meth:`WorkerDrill.run`; what it
is asked: ``worker_plan.py``; what runs the workers: ``worker_launch.py``. The
broker (``broker.py``: a private ``redis-server``, or RabbitMQ node for
``--broker rabbitmq``, else the user's); the jobs' records (``demo_jobs.
Records``: a SQLite file of the drill's, the same on any broker); worker
A (the demo worker of ``frameworks.py``, or ``--cmd``), once it has completed a
first job of 0 s (not counted); the jobs, the long one first (its first run
outlasts the grace), then the short ones; once one runs
and ``--stop-after`` later, the stop (a signal, or SIGINT twice), and one job
more enqueued during it; worker B, as a rolling deploy starts the next one;
A's end, waited for within the grace (then SIGKILL to all it started, as an
orchestrator does when its grace is up); then every job accounted for, until
each completed or nothing moves any more. What it makes of it:
``worker_result.py``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from lastcall.cli import cleanup, demo_jobs
from lastcall.cli.broker import PRIVATE_RABBITMQ, RabbitMQServer, RedisServer, check_answers
from lastcall.cli.demo_jobs import Records
from lastcall.cli.drill import CancelledError
from lastcall.cli.frameworks import FRAMEWORKS, HELD, QUEUED, Framework
from lastcall.cli.plan import DrillError
from lastcall.cli.processes import ProcessWatch, hooks_run, warnings_in
from lastcall.cli.worker_launch import Worker
from lastcall.cli.worker_plan import INCLUDE_DEMO, WORKER_STOP_WORDS
from lastcall.cli.worker_result import JobRecord, Run, WorkerResult, reported_jobs

if TYPE_CHECKING:
    from collections.abc import Callable

    from lastcall.cli.worker_plan import WorkerPlan

_SIGNALS = {"TERM": signal.SIGTERM, "INT": signal.SIGINT, "INT-INT": signal.SIGINT,
            "KILL": signal.SIGKILL}  # fmt: skip
_SECOND_SIGINT_AFTER = 0.5  # seconds: within RQ's own 1 s, in which it ignores a second signal
_EXIT_MARGIN = 1.0  # beyond the grace, before worker A is killed as an orchestrator would
_LONG_BEYOND = 10.0  # seconds the long job's first run lasts beyond the grace
_SETTLE = 2.0  # seconds with nothing running and nothing queued: what is left will not move
_SECOND_LOOK = 0.5  # seconds after every job completed: a second completion on its way
_LOOK_EVERY = 0.1  # seconds between two looks at every job
_POLL = 0.05  # seconds between two looks at worker A (ProcessWatch times its end closer)
_WARM_UP = -1  # a first job of 0 s, not counted: the stop meets a worker taking jobs
_B_STOP_WAIT = 5.0  # seconds for worker B to end on SIGTERM once every job is accounted for


class WorkerDrill:
    """One run of a plan. ``run()`` returns the result and leaves no process behind.

    ``directory`` keeps the drill's files (the workers' logs and lastcall
    reports) there; without it they go to a temporary directory, removed after.
    ``cancel`` set (Ctrl-C in a matrix run) ends it at its next wait.
    """

    def __init__(
        self,
        plan: WorkerPlan,
        progress: Callable[[str], None] = lambda _: None,
        directory: Path | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        plan.check()
        self.plan = plan
        self._progress = progress
        self._cancel = cancel or threading.Event()
        self._keep = directory
        self._dir = Path()
        self._clock = time.time()
        self._jobs: list[JobRecord] = []

    def _now(self) -> float:
        return time.time() - self._clock

    def _wait(self, seconds: float) -> None:
        if self._cancel.wait(max(0.0, seconds)):
            raise CancelledError

    def run(self) -> WorkerResult:
        """Drill once; raises ``DrillError`` for bad input, always ends every process."""
        plan = self.plan
        if self._keep is not None:
            self._keep.mkdir(parents=True, exist_ok=True)
        prefix = f"{plan.framework}-{plan.stop}-{plan.variant}-".lower()
        self._dir = Path(tempfile.mkdtemp(prefix=prefix, dir=self._keep))
        server: RedisServer | RabbitMQServer | None = None
        workers: list[Worker] = []
        framework: Framework | None = None
        store: Records | None = None
        try:
            server, broker = self._broker()
            store = Records.create(str(self._dir / "records.sqlite"))
            framework = FRAMEWORKS[plan.framework](broker, plan.queue_name)
            return self._drill(framework, store, workers)
        finally:
            for worker in workers:
                worker.end()
            for client in (framework, store):
                if client is not None:
                    with contextlib.suppress(Exception):  # the broker may be gone: nothing kept
                        client.close()
            if server is not None:
                server.stop()
            if self._keep is None:
                shutil.rmtree(self._dir, ignore_errors=True)

    def _broker(self) -> tuple[RedisServer | RabbitMQServer | None, str]:
        """A private broker (its server, its URL), or the user's, seen to answer."""
        broker = self.plan.broker
        if broker is None:
            redis = RedisServer.start(self._dir / "redis", cleanup.new_mark())
            self._progress(f"a private redis-server (pid {redis.proc.pid}) on {redis.url}")
            return redis, redis.url
        if broker == PRIVATE_RABBITMQ:
            self._progress("starting a private rabbitmq-server (an Erlang node: ~10 s)")
            node = RabbitMQServer.start(self._dir / "rabbitmq", cleanup.new_mark())
            self._progress(f"a private rabbitmq-server (pid {node.pids[0]}) on {node.url}")
            return node, node.url
        check_answers(broker)
        return None, broker

    def _drill(self, framework: Framework, store: Records, workers: list[Worker]) -> WorkerResult:
        plan = self.plan
        env = self._env(framework, store.path)
        a = self._start("A", framework, env, workers)
        framework.enqueue(_WARM_UP, 0.0, 0.0)
        self._until(a, lambda: _WARM_UP in _completed(store), "completed a first job")
        self._clock = time.time()
        long_seconds = plan.grace + _LONG_BEYOND
        self._enqueue(framework, "long", long_seconds)
        for _ in range(plan.jobs):
            self._enqueue(framework, "short", plan.job_seconds)
        self._progress(
            f"enqueued 1 job of {long_seconds:g} s (beyond the grace) and {plan.jobs} of "
            f"{plan.job_seconds:g} s on queue {plan.queue_name!r}"
        )
        jobs = range(len(self._jobs))
        self._until(a, lambda: any(n in store.runs() for n in jobs), "runs a job")
        self._wait(plan.stop_after)
        watch = ProcessWatch(a.pid, self._now)
        try:
            stop_sent = self._now()
            a.signal(_SIGNALS[plan.stop])
            if plan.stop == "INT-INT":
                self._wait(_SECOND_SIGINT_AFTER)
                a.signal(signal.SIGINT)
            self._progress(f"sent {WORKER_STOP_WORDS[plan.stop]} to worker A (pid {a.pid})")
            self._enqueue(framework, "during the stop", plan.job_seconds)
            b = self._start("B", framework, env, workers)
            left = self._until_a_gone(a, stop_sent)
        finally:
            watch.close()
        self._until_accounted(framework, store, a, b, stop_sent)
        self._look(framework, store, a, b)
        b.signal(signal.SIGTERM)  # every job is accounted for: B's own stop is not drilled
        b.wait(_B_STOP_WAIT)
        return self._result(a, b, watch, stop_sent, left)

    def _env(self, framework: Framework, records: str) -> dict[str, str]:
        plan = self.plan
        env = {k: v for k, v in os.environ.items() if not k.startswith("LASTCALL_")}
        env.update(
            {
                demo_jobs.STORE: records,
                demo_jobs.QUEUE: plan.queue_name,
                demo_jobs.ACKS_LATE: "1" if plan.acks_late else "0",
                "LASTCALL_GRACE": str(plan.grace),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if plan.cmd is None:
            env.update(
                {
                    demo_jobs.DEMO: "1",
                    demo_jobs.PLAIN: "1" if plan.plain else "0",
                    demo_jobs.BROKER: framework.broker,
                }
            )
        return env

    def _start(
        self, label: str, framework: Framework, env: dict[str, str], workers: list[Worker]
    ) -> Worker:
        argv = self.plan.argv(framework, worker=label.lower())
        env = {**env, demo_jobs.WORKER: label}
        worker = Worker(argv, env, self._dir / f"worker-{label.lower()}")
        workers.append(worker)
        self._progress(f"worker {label}: started pid {worker.pid}: {shlex.join(argv)}")
        return worker

    def _enqueue(self, framework: Framework, kind: str, seconds: float) -> None:
        n = len(self._jobs)
        again = self.plan.job_seconds  # a run after the job was put back
        job_id = framework.enqueue(n, seconds, again)
        self._jobs.append(JobRecord(n, job_id, kind, seconds, self._now()))

    def _until(self, a: Worker, seen: Callable[[], bool], what: str) -> None:
        """Until worker A did ``what``; a worker that ends first, or takes too long, is one line."""
        plan = self.plan
        deadline = time.monotonic() + plan.start_timeout
        while not seen():
            if not a.alive():
                a.wait(0)
                raise DrillError(
                    f"worker A exited with status {a.status} before it {what}; its last line: "
                    f"{a.last_line()}"
                )
            if time.monotonic() > deadline:
                hint = (
                    "check that it starts on its own"
                    if plan.cmd is None
                    else f"check that it takes jobs from the drill's broker and queue "
                    f"{plan.queue_name!r} (--queue), and that it has the demo job: "
                    f"{INCLUDE_DEMO[plan.framework]}"
                )
                raise DrillError(
                    f"worker A has not {what} within {plan.start_timeout:g} s; {hint}, or give "
                    f"it longer with --start-timeout (its last line: {a.last_line()})"
                )
            self._wait(_POLL)
        self._progress(f"worker A (pid {a.pid}) {what}")

    def _until_a_gone(self, a: Worker, stop_sent: float) -> list[int]:
        """A's end within the grace; after it, SIGKILL to all it started. Those it killed."""
        until = stop_sent + self.plan.grace + _EXIT_MARGIN
        while a.processes() and self._now() < until:
            self._wait(_POLL)
        left = sorted(a.processes())
        if left:
            self._progress(
                f"worker A still runs after the grace: pid {left}; ending them (SIGKILL), as "
                "an orchestrator does when its grace is up"
            )
            a.signal(signal.SIGKILL)  # the main process first: it must not see its children die
            a.end()
        a.wait(_B_STOP_WAIT)
        return left

    def _until_accounted(
        self, framework: Framework, store: Records, a: Worker, b: Worker, stop_sent: float
    ) -> None:
        """Until every job completed, or nothing runs and nothing is queued a while (bounded)."""
        plan = self.plan
        work = (len(self._jobs) + 1) * plan.job_seconds
        until = stop_sent + plan.grace + _EXIT_MARGIN + plan.start_timeout + 2 * work
        self._progress("worker A is gone; waiting until every job is accounted for")
        still_since = None
        while self._now() < until and b.alive():
            self._look(framework, store, a, b)
            if all(job.completions for job in self._jobs):
                self._wait(_SECOND_LOOK)
                return
            moving = any(j.outcome in ("running", QUEUED) for j in self._jobs)
            if moving:
                still_since = None
            elif still_since is None:
                still_since = time.monotonic()
            elif time.monotonic() - still_since >= _SETTLE:
                return
            self._wait(_LOOK_EVERY)
        if not b.alive():
            b.wait(0)
            self._progress(
                f"worker B exited with status {b.status} before every job was accounted for; "
                f"its last line: {b.last_line()}"
            )

    def _look(self, framework: Framework, store: Records, a: Worker, b: Worker) -> None:
        """Each job's runs (from the records) and, if not completed, where it is now."""
        alive = a.processes() | b.processes()
        records = store.runs()
        running = set()
        for job in self._jobs:
            started, completed = records.get(job.n, ([], []))
            job.runs = _pair(started, completed, self._clock)
            job.completions = len(completed)
            if any(r.completed is None and r.pid in alive for r in job.runs):
                running.add(job.n)
        waiting = [j for j in self._jobs if not j.completions and j.n not in running]
        where = framework.where([j.id for j in waiting])
        for job in self._jobs:
            job.outcome = _outcome(job.completions, job.n in running, where.get(job.id))

    def _result(
        self, a: Worker, b: Worker, watch: ProcessWatch, stop_sent: float, left: list[int]
    ) -> WorkerResult:
        plan = self.plan
        roles = dict.fromkeys(watch.seen, "child") | {a.pid: "main"}
        processes = watch.records(roles, a.status or 0, left, stop_sent)
        if a.status is None:
            processes = [p for p in processes if p.pid != a.pid]
        ended = max([stop_sent, *(p.gone for p in processes)])
        hooks, _ = hooks_run(a.directory, roles, self._clock, 0.0, a.pid)
        result = WorkerResult(
            plan=plan,
            worker_a=a.pid,
            worker_b=b.pid,
            stop_sent=stop_sent,
            ended=ended,
            exit_status=a.status,
            stop_seconds=None if left else ended - stop_sent,
            left_behind=left,
            jobs=self._jobs,
            hooks=hooks,
            processes=processes,
            reported_jobs=reported_jobs(a.directory),
            warnings=warnings_in(a.directory / "worker.log"),
            directory=str(self._dir) if self._keep is not None else None,
        )
        if plan.cmd is not None:  # a user's own hooks are seen in lastcall's reports only
            result.hooks_known = any(a.directory.glob("report-*.json"))
        return result


def _completed(store: Records) -> set[int]:
    """The jobs that completed at least once."""
    return {n for n, (_, completed) in store.runs().items() if completed}


def _pair(
    started: list[tuple[str, int, float]], completed: list[tuple[str, int, float]], clock: float
) -> list[Run]:
    """Each run of a job (``(worker, pid, time)``), its completion matched by pid and time."""
    done = [(pid, at) for _, pid, at in completed]
    runs = []
    for worker, pid, at in started:
        end = next((c for c in done if c[0] == pid and c[1] >= at), None)
        if end is not None:
            done.remove(end)
        runs.append(Run(pid, worker, at - clock, None if end is None else end[1] - clock))
    return runs


def _outcome(completions: int, running: bool, where: str | None) -> str:
    if completions > 1:
        return "completed twice"
    if completions == 1:
        return "completed once"
    if running:
        return "running"
    return {QUEUED: QUEUED, HELD: HELD}.get(where or "", "lost")
