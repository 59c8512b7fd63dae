"""RQ workers on a real redis-server, stopped by real signals: ``lastcall.rq.Worker``.

Each test starts ``rq worker --worker-class lastcall.rq.Worker`` (or
``SimpleWorker``; RQ's own classes where a test shows plain RQ), as its users
start it, with ``-c settings`` (the app's module, where its hooks are
registered). Every job records in Redis, from inside itself, when it started
(and in which process) and when it completed; hooks record where they ran.
What each test would show against plain RQ is in its docstring.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from brokers import redis_server  # noqa: F401  # the fixture
from conftest import WAIT, free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

    from brokers import Redis

pytest.importorskip("rq")

RQ = str(Path(sys.executable).parent / "rq")

JOBS = """
import os, time
import redis

store = redis.Redis.from_url(os.environ["BROKER"])


def threads():
    import threading
    store.rpush("horse threads", " ".join(sorted(t.name for t in threading.enumerate())))


def work(n, seconds, again=None):
    attempt = store.incr(f"attempt:{n}")
    store.rpush("started", f"{n} {os.getpid()} {time.time()}")
    time.sleep(seconds if attempt == 1 or again is None else again)
    store.rpush("completed", n)
    return n
"""

SETTINGS = """
import os
import lastcall
import redis

store = redis.Redis.from_url(os.environ["BROKER"])


@lastcall.on_shutdown
def worker_hook():
    store.rpush("hooks", f"worker {os.getpid()}")
"""

READY = "lastcall: SIGTERM and SIGINT stop this worker"  # said once the worker listens
CLASSES = ["Worker", "SimpleWorker"]


def wait_until(what: str, predicate: object, timeout: float = WAIT, output: object = None) -> float:
    """Wait, bounded, until ``predicate()`` holds; the time it held. ``output``: a worker's."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            said = output.output() if output is not None else ""  # type: ignore[attr-defined]
            pytest.fail(f"not within {timeout} s: {what}\n{said}")
        time.sleep(0.01)
    return time.monotonic()


class Scenario:
    """The app in the test's directory, its broker, and workers started on it."""

    def __init__(self, spawn: object, redis: Redis) -> None:
        import redis as redis_py
        from rq import Queue

        self.spawn = spawn
        self.redis = redis
        self.dir: Path = spawn.script_dir  # type: ignore[attr-defined]
        (self.dir / "jobs.py").write_text(JOBS)
        (self.dir / "settings.py").write_text(SETTINGS)
        self.raw = redis_py.Redis(port=redis.port)  # RQ's payloads are bytes
        self.queues = {name: Queue(name, connection=self.raw) for name in ("default", "high")}

    def worker(self, cls: str = "Worker", *queues: str, plain: bool = False, **env: str) -> object:
        module = "rq.worker" if plain else "lastcall.rq"
        argv = [RQ, "worker", "-u", self.redis.url, "-w", f"{module}.{cls}", "-c", "settings",
                *(queues or ("default",))]  # fmt: skip
        child = self.spawn(  # type: ignore[operator]
            "", env={"BROKER": self.redis.url, **env}, argv=argv, wait_ready=False
        )
        child.wait_for("*** Listening on" if plain else READY)
        return child

    def enqueue(self, n: int, seconds: float, again: float | None = None, **options: object) -> str:
        queue = self.queues[str(options.pop("queue", "default"))]
        job = queue.enqueue("jobs.work", n, seconds, again, **options)  # type: ignore[arg-type]
        return str(job.id)

    def list(self, key: str) -> list[str]:
        return list(self.redis.client.lrange(key, 0, -1))

    def queued(self, name: str = "default") -> list[str]:
        return self.list(f"rq:queue:{name}")

    def left_behind(self, name: str = "default") -> dict[str, int]:
        """What plain RQ leaves where no worker takes it: all 0 after a lastcall stop."""
        client = self.redis.client
        return {
            "started": int(client.zcard(f"rq:wip:{name}")),
            "failed": int(client.zcard(f"rq:failed:{name}")),
            "intermediate": int(client.llen(f"rq:queue:{name}:intermediate")),
        }


@pytest.fixture
def scenario(spawn: object, redis_server: Redis) -> Iterator[Scenario]:  # noqa: F811
    scenario = Scenario(spawn, redis_server)
    yield scenario
    scenario.raw.close()


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=WAIT) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def report(scenario: Scenario, pid: int) -> dict[str, object]:
    return dict(json.loads((scenario.dir / f"report-{pid}.json").read_text()))


@pytest.mark.parametrize("cls", CLASSES)
def test_sigterm_running_job_finishes_none_starts_after(scenario: Scenario, cls: str) -> None:
    """A job running, three waiting, SIGTERM: red at once, the job finishes, no other starts.

    Against plain RQ: no readiness to turn red, exit status 0 (RQ exits normally), and
    with a second worker's SIGTERM during a long job the job is cut (below).
    """
    health = free_port()
    worker = scenario.worker(
        cls, LASTCALL_GRACE="8", LASTCALL_HEALTH_PORT=str(health),
        LASTCALL_REPORT=str(scenario.dir / "report-{pid}.json"),
    )  # fmt: skip
    line = worker.wait_for("RQ's default job timeout 180 s is longer than")
    assert f"drain budget {_budget(worker):.3g} s" in line, line  # both numbers, one line
    assert readyz(health) == 200
    scenario.enqueue(0, 3.0)
    for n in (1, 2, 3):
        scenario.enqueue(n, 0.1)
    wait_until("the first job running", lambda: len(scenario.list("started")) == 1)
    worker.send(signal.SIGTERM)
    worker.wait_for("shutdown started by SIGTERM")
    assert readyz(health) == 503  # red at once, while the job still runs
    later = scenario.enqueue(4, 0.1)  # during the stop: left on the queue
    assert worker.finish() == -signal.SIGTERM, worker.output()
    assert "connection(s) taken from the backlog" not in worker.output()  # a server's words
    assert scenario.list("completed") == ["0"]
    assert len(scenario.list("started")) == 1  # none started after the signal
    assert len(scenario.queued()) == 4
    assert scenario.queued()[-1] == later
    assert scenario.left_behind() == {"started": 0, "failed": 0, "intermediate": 0}
    assert scenario.list("hooks") == [f"worker {worker.pid}"]  # once, in the worker
    [job] = report(scenario, worker.pid)["jobs"]  # type: ignore[misc]
    assert (job["name"], job["outcome"]) == ("jobs.work", "completed")


@pytest.mark.parametrize("cls", CLASSES)
def test_job_longer_than_the_budget_is_put_back_and_completes_once(
    scenario: Scenario, cls: str
) -> None:
    """A job running past the drain budget is stopped, put back at once, done by another worker.

    Against plain RQ: SIGTERM waits for the job with no limit; the orchestrator's SIGKILL
    then leaves it in StartedJobRegistry until it expires into FailedJobRegistry (rq#507).
    """
    worker = scenario.worker(
        cls, LASTCALL_GRACE="4", LASTCALL_REPORT=str(scenario.dir / "report-{pid}.json")
    )
    budget = _budget(worker)
    job_id = scenario.enqueue(7, 60, 0.2, job_timeout=600)
    line = worker.wait_for("job_timeout 600 s is longer than lastcall's drain budget")
    assert f"drain budget {budget:.3g} s" in line, line  # both numbers, in one line
    wait_until("the job running", lambda: len(scenario.list("started")) == 1)
    worker.send(signal.SIGTERM)
    worker.wait_for("shutdown started by SIGTERM")  # the budget began before this was read
    began = time.monotonic()
    back = wait_until("the job back on the queue", lambda: scenario.queued() == [job_id])
    assert back - began < budget + 1.0, f"{back - began:.2f} s, budget {budget} s"
    assert worker.finish() == -signal.SIGTERM, worker.output()
    assert scenario.list("completed") == []  # stopped, never completed here
    assert scenario.left_behind() == {"started": 0, "failed": 0, "intermediate": 0}
    assert scenario.redis.client.hget(f"rq:job:{job_id}", "status") == "queued"
    [job] = report(scenario, worker.pid)["jobs"]  # type: ignore[misc]
    assert (job["id"], job["name"], job["outcome"]) == (job_id, "jobs.work", "requeued")
    assert job["seconds"] >= budget - 0.5
    assert scenario.list("hooks") == [f"worker {worker.pid}"]

    second = scenario.worker(cls, LASTCALL_GRACE="4")
    wait_until("the job completed", lambda: scenario.list("completed") == ["7"])
    second.send(signal.SIGTERM)
    assert second.finish() == -signal.SIGTERM
    assert scenario.list("completed") == ["7"]  # once
    first, again = (s.split()[1] for s in scenario.list("started"))
    assert first != again  # stopped in one process, completed in another


def _budget(worker: object) -> float:
    line = worker.wait_for(READY)  # type: ignore[attr-defined]
    return float(line.split("a running job gets ")[1].split()[0])


@pytest.mark.parametrize("cls", CLASSES)
def test_second_sigint_puts_back_at_once_and_ends(scenario: Scenario, cls: str) -> None:
    """Ctrl-C twice within a second: the second ends the worker at once, its job back.

    Against plain RQ: a second signal within 1 s of the first is ignored
    (``request_force_stop``); a later one kills the horse and leaves its job in
    StartedJobRegistry, to be failed when it expires.
    """
    worker = scenario.worker(cls, LASTCALL_GRACE="20")
    job_id = scenario.enqueue(3, 60, 0.2)
    wait_until("the job running", lambda: len(scenario.list("started")) == 1)
    worker.send(signal.SIGINT)
    worker.wait_for("shutdown started by SIGINT")
    worker.send(signal.SIGINT)
    forced = time.monotonic()
    assert worker.finish() == -signal.SIGINT, worker.output()
    assert time.monotonic() - forced < 3.0  # at once: well under a second when not loaded
    assert scenario.queued() == [job_id]
    assert scenario.list("completed") == []
    assert scenario.left_behind() == {"started": 0, "failed": 0, "intermediate": 0}


@pytest.mark.parametrize("queues", [("default",), ("high", "default")], ids=["blmove", "blpop"])
def test_idle_worker_stops_at_once_and_deregisters(
    scenario: Scenario, queues: tuple[str, ...]
) -> None:
    """An idle worker waits in a BLMOVE or BLPOP of minutes: the stop ends it at once.

    Without ``CLIENT UNBLOCK`` the wait would hold the drain to its budget (7.2 s here)
    and the process would end with the wait still open at the server.
    """
    worker = scenario.worker("Worker", *queues, LASTCALL_GRACE="8")
    assert scenario.redis.client.scard("rq:workers") == 1
    command = "blmove" if len(queues) == 1 else "blpop"
    clients = scenario.redis.client.client_list
    wait_until(f"RQ waiting in {command}", lambda: any(c["cmd"] == command for c in clients()))
    worker.send(signal.SIGTERM)
    signalled = time.monotonic()
    assert worker.finish() == -signal.SIGTERM, worker.output()
    assert time.monotonic() - signalled < 3.0
    worker.wait_for("drained: nothing left in flight")
    assert scenario.redis.client.scard("rq:workers") == 0  # RQ's teardown deregistered it


@pytest.mark.parametrize("queues", [("default",), ("high", "default")], ids=["blmove", "blpop"])
def test_jobs_enqueued_through_a_stop_each_complete_once(
    scenario: Scenario, queues: tuple[str, ...]
) -> None:
    """Jobs enqueued before, during and after an idle worker's stop: none lost (rq#2268).

    RQ waits for a job in one long BLMOVE (one queue) or BLPOP (several). The stop
    ends that wait with CLIENT UNBLOCK; a job Redis handed out as the stop began goes
    back to the head of its queue instead of being lost in the intermediate list.
    """
    total = 200
    worker = scenario.worker("Worker", *queues, LASTCALL_GRACE="8")
    done = threading.Event()

    def produce() -> None:  # over about 2 s: the stop comes while jobs still arrive
        for n in range(total):
            scenario.enqueue(n, 0.0, queue=queues[n % len(queues)])
            time.sleep(0.01)
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        wait_until("10 completed", lambda: scenario.redis.client.llen("completed") >= 10)
        worker.send(signal.SIGTERM)
        assert worker.finish() == -signal.SIGTERM, worker.output()
    finally:
        producer.join(WAIT)
    assert done.is_set()
    first = scenario.list("completed")
    assert len(first) == len(set(first))
    waiting = sum(len(scenario.queued(q)) for q in queues)
    assert len(first) + waiting == total  # none lost, none in two places
    for name in queues:
        assert scenario.left_behind(name) == {"started": 0, "failed": 0, "intermediate": 0}

    second = scenario.worker("SimpleWorker", *queues, LASTCALL_GRACE="8")  # no fork: quicker
    wait_until("all completed", lambda: scenario.redis.client.llen("completed") >= total)
    second.send(signal.SIGTERM)
    assert second.finish() == -signal.SIGTERM
    assert sorted(map(int, scenario.list("completed"))) == list(range(total))  # each once


def test_plain_rq_ignores_a_quick_second_signal_and_leaves_the_job(scenario: Scenario) -> None:
    """Plain RQ beside: what the tests above check does not hold without lastcall."""
    worker = scenario.worker("Worker", plain=True)
    job_id = scenario.enqueue(5, 60, 0.2)
    wait_until("the job running", lambda: len(scenario.list("started")) == 1)
    worker.send(signal.SIGTERM)
    worker.wait_for("warm shut down requested")
    worker.send(signal.SIGTERM)  # within 1 s of the first: ignored
    time.sleep(1.2)  # a look after RQ's 1 s: lastcall would have ended by now (above)
    assert worker.proc.poll() is None
    assert scenario.queued() == []  # still running, never put back
    # The orchestrator's SIGKILL at the end of its grace (the horse is killed here by hand,
    # as a container's end would): the job is left in StartedJobRegistry, not on its queue.
    worker.send(signal.SIGKILL)
    horse = int(scenario.list("started")[0].split()[1])
    os.kill(horse, signal.SIGKILL)  # it holds the worker's output pipes too
    assert worker.finish() == -signal.SIGKILL
    assert scenario.queued() == []
    assert scenario.left_behind()["started"] == 1  # until it expires into FailedJobRegistry
    assert scenario.redis.client.hget(f"rq:job:{job_id}", "status") == "started"


@pytest.mark.parametrize("cls", CLASSES)
def test_sigkill_of_the_worker_puts_its_job_back_within_a_second(
    scenario: Scenario, cls: str
) -> None:
    """SIGKILL (the OOM killer): the last resort puts the running job back; the horse dies too.

    Against plain RQ: the job stays in StartedJobRegistry until it expires into
    FailedJobRegistry, and a fork worker's orphaned horse runs on and completes it.
    """
    worker = scenario.worker(cls, LASTCALL_GRACE="8")
    job_id = scenario.enqueue(9, 60, 0.2)
    wait_until("the job running", lambda: len(scenario.list("started")) == 1)
    worker.send(signal.SIGKILL)
    killed = time.monotonic()
    back = wait_until(
        "the job back on the queue", lambda: scenario.queued() == [job_id], output=worker
    )
    # About 0.1 s on a quiet machine (the watcher imports the hook and redis-py); a loaded
    # one can take a second more.
    assert back - killed < 2.0, f"{back - killed:.2f} s"
    assert worker.finish() == -signal.SIGKILL
    assert scenario.left_behind() == {"started": 0, "failed": 0, "intermediate": 0}
    assert scenario.redis.client.hget(f"rq:job:{job_id}", "status") == "queued"

    second = scenario.worker(cls, LASTCALL_GRACE="8")
    wait_until("the job completed", lambda: scenario.list("completed") == ["9"])
    second.send(signal.SIGTERM)
    assert second.finish() == -signal.SIGTERM
    assert scenario.list("completed") == ["9"]  # once: the first horse died with its worker


def test_the_work_horse_starts_none_of_lastcalls_threads(scenario: Scenario) -> None:
    """Steps: lastcall.rq.Worker runs a job that lists its horse's threads: only the main one.
    The horse ignores the stop signals and ends with os._exit, so the dispatcher and log
    threads lastcall starts in a forked child would cost each job a fork's worth of time for
    nothing (before: "MainThread lastcall-dispatcher lastcall-log")."""
    worker = scenario.worker("Worker")
    scenario.queues["default"].enqueue("jobs.threads")
    wait_until("the job ran", lambda: scenario.list("horse threads"), output=worker)
    assert scenario.list("horse threads") == ["MainThread"], worker.output()  # type: ignore[attr-defined]
    worker.send(signal.SIGTERM)  # type: ignore[attr-defined]
    assert worker.finish() == -signal.SIGTERM, worker.output()  # type: ignore[attr-defined]
