"""Celery workers on a real redis-server, stopped by real signals: ``lastcall.celery.LastCall``.

Each test starts ``celery -A proj worker`` (the app below, ``LastCall(app)``
beside it unless ``PLAIN=1``), puts tasks in flight and signals the worker's
main process. Every task records in Redis, from inside itself, when it
started (and in which process) and when it completed; hooks record where they
ran. What each test would show against plain Celery is in its docstring, and
``test_plain_celery_*`` shows it where it is cheap.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from brokers import redis_server  # noqa: F401  # the fixture
from conftest import WAIT, free_port

if TYPE_CHECKING:
    from brokers import Redis

pytest.importorskip("celery")

CELERY = str(Path(sys.executable).parent / "celery")

APP = """
import os, time
import redis
import lastcall
from celery import Celery, signals

BROKER = os.environ["BROKER"]
app = Celery("proj", broker=BROKER)
app.conf.task_default_queue = os.environ.get("QUEUE", "celery")
app.conf.broker_connection_retry_on_startup = True
app.conf.task_acks_late = os.environ.get("ACKS_LATE") == "1"
if os.environ.get("SOFT_LIMIT"):
    app.conf.task_soft_time_limit = float(os.environ["SOFT_LIMIT"])
if os.environ.get("SOFT_SHUTDOWN"):
    app.conf.worker_soft_shutdown_timeout = float(os.environ["SOFT_SHUTDOWN"])
app.conf.broker_transport_options = {
    key: float(os.environ[name])
    for key, name in [("visibility_timeout", "VISIBILITY"), ("polling_interval", "POLLING")]
    if os.environ.get(name)
}  # kombu's Redis transport: polling_interval is its BRPOP's timeout
if os.environ.get("PLAIN") != "1":
    from lastcall.celery import LastCall

    LastCall(app)
store = redis.Redis.from_url(os.environ.get("STORE", BROKER))  # the tasks' records


@lastcall.on_shutdown
def main_hook():
    store.rpush("hooks", f"main {os.getpid()}")
    time.sleep(float(os.environ.get("HOOK_SLEEP", "0")))


@signals.worker_shutting_down.connect
def shutting_down(sig, how, exitcode, **_):
    store.rpush("shutting_down", f"{sig} {how} {exitcode} {os.getpid()}")


@signals.worker_process_init.connect
def pool_process_init(**_):
    store.rpush("processes", os.getpid())

    @lastcall.on_shutdown
    def pool_process_hook():
        store.rpush("hooks", f"process {os.getpid()}")


if os.environ.get("HOLD_LOOP") == "1":  # hold Celery's loop (a timer) when the test asks

    @signals.worker_ready.connect
    def hold_loop_when_asked(sender, **_):
        def hold():
            if store.delete("hold_loop"):
                store.rpush("loop_held", os.getpid())
                end = time.time() + 60  # at most: the test releases it
                while time.time() < end and not store.exists("release_loop"):
                    time.sleep(0.02)

        sender.hub.call_repeatedly(0.05, hold)

if os.environ.get("HOLD_STOP") == "1":  # hold the stop's thread before lastcall's door

    from lastcall._integration import Integration

    def hold_stop():
        store.rpush("stop_held", os.getpid())
        end = time.time() + 60  # at most: the test releases it
        while time.time() < end and not store.exists("release_stop"):
            time.sleep(0.02)

    Integration(lastcall.default).when_stopping(hold_stop)  # before LastCall's own


@app.task(soft_time_limit=float(os.environ.get("TASK_LIMIT", "0")) or None)
def work(n, seconds, again=None):
    attempt = store.incr(f"attempt:{n}")
    store.rpush("started", f"{n} {os.getpid()} {time.time()}")
    end = time.time() + (seconds if attempt == 1 or again is None else again)
    while time.time() < end and not store.exists("release", f"release:{n}"):  # test may end it
        time.sleep(min(0.05, max(0.0, end - time.time())))
    store.rpush("completed", n)
    return n
"""

ENQUEUE = """
import sys
import proj
for n, seconds, again in [tuple(map(float, job.split(":"))) for job in sys.argv[1:]]:
    proj.work.delay(int(n), seconds, again if again >= 0 else None)
"""


def wait_until(what: str, predicate: object, timeout: float = WAIT) -> float:
    """Wait, bounded, until ``predicate()`` holds; the time it held."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.02)
    return time.monotonic()


class Scenario:
    """The app in the test's directory, its broker, and workers started on it."""

    def __init__(self, spawn: object, redis: Redis) -> None:
        self.spawn = spawn
        self.redis = redis
        self.dir: Path = spawn.script_dir  # type: ignore[attr-defined]
        (self.dir / "proj.py").write_text(APP)
        (self.dir / "enqueue.py").write_text(ENQUEUE)

    def env(self, **extra: str) -> dict[str, str]:
        return {"BROKER": self.redis.url, "PYTHONPATH": str(self.dir), **extra}

    def worker(self, *options: str, **env: str) -> object:
        """A worker started and ready; its reports in the test's directory (``report``)."""
        argv = [CELERY, "-A", "proj", "worker", "-l", "info", "--without-mingle",
                "--without-gossip", *options]  # fmt: skip
        env = {"LASTCALL_REPORT": str(self.dir / "report-{pid}.json"), **env}
        child = self.spawn("", env=self.env(**env), argv=argv, wait_ready=False)  # type: ignore[operator]
        child.wait_for("ready.", stream="stderr")
        return child

    def report(self, worker: object) -> dict[str, Any]:
        """The report of the stop in ``worker``'s main process."""
        path = self.dir / f"report-{worker.pid}.json"  # type: ignore[attr-defined]
        return json.loads(path.read_text())  # type: ignore[no-any-return]

    def enqueue(self, *jobs: tuple[int, float, float | None]) -> None:
        import subprocess

        args = [f"{n}:{s}:{-1 if a is None else a}" for n, s, a in jobs]
        subprocess.run(
            [sys.executable, str(self.dir / "enqueue.py"), *args],
            env={**self.env(), "PATH": "/usr/bin:/bin"},
            cwd=self.dir,
            check=True,
            timeout=WAIT,
        )

    def list(self, key: str) -> list[str]:
        return list(self.redis.client.lrange(key, 0, -1))

    def queued(self) -> int:
        return int(self.redis.client.llen("celery"))


def drain_budget(worker: object) -> float:
    """The seconds the worker's running tasks get, from its start-up line."""
    line = worker.wait_for("running tasks get", stream="stderr")  # type: ignore[attr-defined]
    return float(line.split("running tasks get ")[1].split()[0])


def wait_received(worker: object, count: int) -> None:
    """Until ``count`` tasks were taken in: Celery's strategy logs each after lastcall's gate.

    A message the broker handed out but the worker's loop has not read yet would meet
    the gate if a signal came first, and go back without being anyone's job.
    """
    wait_until(
        f"{count} tasks received",
        lambda: worker.output().count("] received") >= count,  # type: ignore[attr-defined]
    )


def sigkill_and_wait_back(scenario: Scenario, worker: object, what: str, queued: int) -> None:
    """SIGKILL the worker; within 1 s its tasks are back (``queued`` on the queue)."""
    worker.send(signal.SIGKILL)  # type: ignore[attr-defined]
    killed = time.monotonic()
    back = wait_until(what, lambda: scenario.queued() == queued)
    assert back - killed < 1.0, f"{back - killed:.2f} s"
    assert worker.finish() == -signal.SIGKILL  # type: ignore[attr-defined]


@pytest.fixture
def scenario(spawn: object, redis_server: Redis) -> Scenario:  # noqa: F811
    return Scenario(spawn, redis_server)


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=WAIT) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.mark.parametrize(
    ("pool", "acks_late"),
    [("prefork", "0"), ("prefork", "1"), ("threads", "1")],
    ids=["prefork-acks-early", "prefork-acks-late", "threads-acks-late"],
)
def test_sigterm_running_finish_none_starts_prefetched_back_at_once(
    scenario: Scenario, pool: str, acks_late: str
) -> None:
    """2 processes (or threads), 2 tasks running and 4 prefetched, SIGTERM to the main process.

    Threads: the 4 prefetched wait in the thread pool's queue; their futures are
    cancelled (no thread takes them) and their messages go back.

    Against plain Celery: the 4 prefetched stay held by the stopping worker (not
    on the queue) until its warm shutdown ends, the exit status is 0, and the
    pool processes' hooks never run (``test_plain_celery_holds_prefetched_and_exits_0``).
    """
    health = free_port()
    worker = scenario.worker(
        "-P", pool, "-c", "2",
        ACKS_LATE=acks_late, LASTCALL_GRACE="8", LASTCALL_HEALTH_PORT=str(health),
        SOFT_LIMIT="60",
        VISIBILITY="8",
    )  # fmt: skip
    budget = drain_budget(worker)
    line = worker.wait_for("task_soft_time_limit=60 s", stream="stderr")
    assert f"drain budget {budget:g} s" in line, line  # both numbers, in one line
    line = worker.wait_for("visibility_timeout=8 s", stream="stderr")
    assert "LASTCALL_GRACE=8 s" in line, line
    assert readyz(health) == 200
    scenario.enqueue(*[(n, 60, None) for n in range(6)])  # until "release"
    wait_until("2 tasks running", lambda: len(scenario.list("started")) == 2)
    wait_received(worker, 6)  # the other 4 prefetched (4 x 2 processes)
    worker.send(signal.SIGTERM)
    signalled = time.monotonic()
    worker.wait_for("shutdown started by SIGTERM", stream="stderr")
    assert readyz(health) == 503  # red at once, while the tasks still run
    back = wait_until("the prefetched tasks back on the queue", lambda: scenario.queued() == 4)
    assert back - signalled < 1.0
    scenario.redis.client.set("release", 1)  # the 2 running end, within the budget
    scenario.enqueue((6, 0.2, None))  # during (or after) the stop: left on the queue
    assert worker.finish() == -signal.SIGTERM, worker.output()
    assert "connection(s) taken from the backlog" not in worker.output()  # a server's words
    assert sorted(scenario.list("completed")) == ["0", "1"], worker.output()
    assert len(scenario.list("started")) == 2  # none started after the signal
    processes = scenario.list("processes")
    ours = {str(worker.pid), *processes}  # not the enqueuing script's own exit
    hooks = [h for h in scenario.list("hooks") if h.split()[1] in ours]
    assert sorted(hooks) == sorted([f"main {worker.pid}", *(f"process {p}" for p in processes)])
    report = scenario.report(worker)
    outcomes = sorted(job["outcome"] for job in report["jobs"])
    assert outcomes == ["completed"] * 2 + ["requeued"] * 4, report["jobs"]
    assert scenario.list("shutting_down") == [f"SIGTERM Warm 0 {worker.pid}"]  # Celery's signal
    assert "has a time limit" not in worker.output()  # the app-wide limit is said once
    scenario.enqueue((7, 0.2, None))  # after it ended
    assert scenario.queued() == 6
    assert int(scenario.redis.client.hlen("unacked")) == 0

    # A second worker takes the rest: every task completes exactly once.
    second = scenario.worker("-P", "prefork", "-c", "4", LASTCALL_GRACE="8")
    wait_until("all 8 completed", lambda: len(scenario.list("completed")) == 8)
    second.send(signal.SIGTERM)
    assert second.finish() == -signal.SIGTERM
    assert sorted(scenario.list("completed")) == [str(n) for n in range(8)]


@pytest.mark.parametrize(
    ("pool", "acks_late"),
    [("prefork", "0"), ("prefork", "1"), ("solo", "0"), ("threads", "0")],
    ids=["prefork-acks-early", "prefork-acks-late", "solo", "threads"],
)
def test_task_longer_than_the_budget_is_put_back_and_completes_once(
    scenario: Scenario, pool: str, acks_late: str
) -> None:
    """A task running past the drain budget is stopped, put back at once, done by another worker.

    Against plain Celery: SIGTERM waits for the task with no limit (the orchestrator's
    SIGKILL then loses it without ``acks_late``, or leaves it to Redis's hour-long
    visibility timeout with it); here it is on the queue within 1 s of the budget's end.
    """
    # With Celery 5.5's soft shutdown and billiard's SIGTERM remap set: both are said, and
    # neither changes what SIGTERM does here.
    remap = {"REMAP_SIGTERM": "SIGQUIT", "SOFT_SHUTDOWN": "30"} if acks_late == "1" else {}
    if remap:  # and a task's own time limit
        remap["TASK_LIMIT"] = "40"
    worker = scenario.worker(
        "-P", pool, "-c", "1", LASTCALL_GRACE="5", ACKS_LATE=acks_late,
        **remap,
    )  # fmt: skip
    if remap:
        worker.wait_for("REMAP_SIGTERM=SIGQUIT: lastcall takes SIGTERM", stream="stderr")
        worker.wait_for("worker_soft_shutdown_timeout=30 s applies to SIGQUIT", stream="stderr")
        line = worker.wait_for("task proj.work has a time limit of 40 s", stream="stderr")
        assert "drain budget 3 s" in line, line  # LASTCALL_GRACE=5: both numbers, one line
    budget = drain_budget(worker)
    scenario.enqueue((7, 60, 0.2))
    wait_until("the task running", lambda: len(scenario.list("started")) == 1)
    worker.send(signal.SIGTERM)
    signalled = time.monotonic()
    back = wait_until("the task back on the queue", lambda: scenario.queued() == 1)
    assert back - signalled < budget + 1.0, f"{back - signalled:.2f} s, budget {budget} s"
    assert worker.finish() == -signal.SIGTERM, worker.output()
    assert scenario.list("completed") == []  # stopped, never completed here
    report = scenario.report(worker)
    [job] = report["jobs"]
    assert (job["name"], job["outcome"]) == ("proj.work", "requeued")
    assert job["seconds"] >= budget - 0.5
    assert int(scenario.redis.client.hlen("unacked")) == 0  # not left to visibility_timeout
    hooks = scenario.list("hooks")
    assert hooks.count(f"main {worker.pid}") == 1
    for process in scenario.list("processes"):  # the stopped task's process ran its own
        assert hooks.count(f"process {process}") == 1, (process, hooks)

    second = scenario.worker("-P", pool, "-c", "1", LASTCALL_GRACE="5")
    wait_until("the task completed", lambda: scenario.list("completed") == ["7"])
    second.send(signal.SIGTERM)
    assert second.finish() == -signal.SIGTERM
    assert scenario.list("completed") == ["7"]  # once
    first, again = (s.split()[1] for s in scenario.list("started"))
    assert first != again  # stopped in one worker, completed by the other


def test_second_sigint_puts_back_everything_and_ends(scenario: Scenario) -> None:
    """Ctrl-C twice: the second ends the worker at once, every task back on the queue.

    Against plain Celery: the second Ctrl-C is a cold shutdown that cancels the
    running tasks; without ``acks_late`` they are acknowledged already, and lost.
    """
    worker = scenario.worker(
        "-P", "prefork", "-c", "2", LASTCALL_GRACE="20",
    )  # fmt: skip
    scenario.enqueue(*[(n, 60, 0.2) for n in range(4)])
    wait_until("2 tasks running", lambda: len(scenario.list("started")) == 2)
    worker.send(signal.SIGINT)
    worker.wait_for("shutdown started by SIGINT", stream="stderr")
    wait_until("the prefetched tasks back", lambda: scenario.queued() == 2)
    worker.send(signal.SIGINT)
    forced = time.monotonic()
    assert worker.finish() == -signal.SIGINT, worker.output()
    assert time.monotonic() - forced < 2.0
    assert scenario.queued() == 4  # the 2 running ones too, at once
    assert scenario.list("completed") == []
    assert int(scenario.redis.client.hlen("unacked")) == 0
    report = scenario.report(worker)
    assert report["forced"]
    outcomes = sorted(job["outcome"] for job in report["jobs"])
    assert outcomes == ["requeued"] * 4, report["jobs"]  # the 2 running ones too
    assert scenario.list("shutting_down") == [f"SIGINT Warm 0 {worker.pid}"]


@pytest.mark.parametrize("door", ["closed", "held"])
def test_a_task_enqueued_at_the_second_sigint_is_not_lost(scenario: Scenario, door: str) -> None:
    """A task enqueued as the second Ctrl-C comes: not lost in the worker's last ``BRPOP``.

    kombu's consumer always has a ``BRPOP`` under way (up to its timeout: 60 s here),
    and its cancel does not end it. A task enqueued then is popped from the queue and
    sent to a worker that no longer reads it: forced to end, it lost the task (in no
    ``unacked`` hash). Now the door's closing ends that ``BRPOP``, and the forced end
    puts back what one still took ("held": Celery's loop held by a timer of the app's,
    so the door has not run yet). SIGSTOP holds the worker, as a busy loop would, while
    the task is enqueued.
    """
    worker = scenario.worker(
        "-P", "prefork", "-c", "1", LASTCALL_GRACE="20", POLLING="60",
        HOLD_LOOP="1" if door == "held" else "0",
    )  # fmt: skip
    scenario.enqueue((0, 60, 0.2))
    wait_until("the task running", lambda: len(scenario.list("started")) == 1)
    if door == "held":
        scenario.redis.client.set("hold_loop", 1)
        wait_until("the loop held", lambda: scenario.list("loop_held"))
    worker.send(signal.SIGINT)
    worker.wait_for("shutdown started by SIGINT", stream="stderr")
    if door == "closed":
        worker.wait_for("stopped consuming;", stream="stderr")
    worker.send(signal.SIGSTOP)
    try:
        scenario.enqueue((1, 0.1, None))
        if door == "held":  # the BRPOP under way takes it, the loop held
            wait_until("the task popped", lambda: scenario.queued() == 0)
        worker.send(signal.SIGINT)
    finally:
        worker.send(signal.SIGCONT)
    assert worker.finish() == -signal.SIGINT, worker.output()
    assert scenario.queued() == 2, worker.output()  # the running task, and the one enqueued
    assert int(scenario.redis.client.hlen("unacked")) == 0
    assert scenario.list("completed") == []


def test_door_closing_as_the_last_brpop_answers(scenario: Scenario) -> None:
    """The door's call and the last ``BRPOP``'s reply come in one turn of Celery's loop.

    The loop is held (a timer of the app's) while the stop's thread queues the
    door's call on it, and a task enqueued then is popped by the ``BRPOP`` under
    way. The loop's next poll finds both: the door ran first and read that reply
    itself, then kombu's ``_brpop_read`` waited forever for it, the loop with it;
    the drain ran out the grace and the app's hook was skipped.
    """
    worker = scenario.worker(
        "-P", "prefork", "-c", "1", LASTCALL_GRACE="20", HOLD_LOOP="1", POLLING="60"
    )  # fmt: skip  # POLLING: the BRPOP waits 60 s, however slow the enqueueing
    scenario.redis.client.set("hold_loop", 1)
    wait_until("the loop held", lambda: scenario.list("loop_held"))
    worker.send(signal.SIGTERM)
    wait_until("the stop at the door", lambda: scenario.list("shutting_down"))  # just before
    scenario.enqueue((0, 0, None))
    wait_until("the task popped by the BRPOP under way", lambda: scenario.queued() == 0)
    scenario.redis.client.set("release_loop", 1)
    assert worker.finish() == -signal.SIGTERM, worker.output()
    assert scenario.list("hooks").count(f"main {worker.pid}") == 1, worker.output()
    assert scenario.queued() == 1  # put back, never run
    assert int(scenario.redis.client.hlen("unacked")) == 0
    assert scenario.list("completed") == []


def test_plain_celery_holds_prefetched_and_exits_0(scenario: Scenario) -> None:
    """Plain Celery beside: what the first test checks does not hold without lastcall."""
    worker = scenario.worker("-P", "prefork", "-c", "2", PLAIN="1")
    scenario.enqueue(*[(n, 60, None) for n in range(6)])  # until "release"
    wait_until("2 tasks running", lambda: len(scenario.list("started")) == 2)
    wait_until("the other 4 prefetched", lambda: scenario.queued() == 0)
    worker.send(signal.SIGTERM)
    time.sleep(1.0)  # a look 1 s on: lastcall has them back by now (the first test)
    assert scenario.queued() == 0  # still held by the stopping worker
    scenario.redis.client.set("release", 1)
    assert worker.finish() == 0  # Celery exits 0 after SIGTERM
    assert sorted(scenario.list("completed")) == ["0", "1"]
    assert not any(h.startswith("process") for h in scenario.list("hooks"))


def test_many_short_tasks_each_complete_once_across_a_stop(scenario: Scenario) -> None:
    """1,000 short tasks flowing, SIGTERM mid-stream, then a second worker: each completes once.

    The door takes back only what no pool process has seen: taking back a job a
    process had already begun (Celery's ``AsynPool.flush`` does, at a lost
    connection) runs it here and again on the second worker.
    """
    total = 1000
    scenario.enqueue(*[(n, 0.0, None) for n in range(total)])
    worker = scenario.worker("-P", "prefork", "-c", "2", LASTCALL_GRACE="8")
    wait_until("100 completed", lambda: scenario.redis.client.llen("completed") >= 100)
    worker.send(signal.SIGTERM)
    assert worker.finish() == -signal.SIGTERM, worker.output()
    first = scenario.list("completed")
    assert len(first) == len(set(first))
    unacked = int(scenario.redis.client.hlen("unacked"))
    held = (len(first), scenario.queued(), unacked)
    assert held == (len(first), total - len(first), 0), worker.output()  # none lost or twice

    second = scenario.worker("-P", "prefork", "-c", "2", LASTCALL_GRACE="8")
    wait_until("all completed", lambda: scenario.redis.client.llen("completed") >= total)
    second.send(signal.SIGTERM)
    assert second.finish() == -signal.SIGTERM
    completed = scenario.list("completed")
    assert sorted(map(int, completed)) == list(range(total))  # each exactly once


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_task_ending_in_the_prestop_delay_is_in_the_report(scenario: Scenario, pool: str) -> None:
    """One pool place; its task ends during the pre-stop delay, another task waits for it.

    The task is in the report, though it ended before the door closed (the report
    noted the tasks running at the door). The waiting one never starts.
    """
    worker = scenario.worker(
        "-P", pool, "-c", "1", LASTCALL_GRACE="8", LASTCALL_PRESTOP_DELAY="3",
    )  # fmt: skip
    scenario.enqueue((0, 60, None), (1, 0, None))
    wait_until("the task running", lambda: len(scenario.list("started")) == 1)
    if pool != "solo":  # solo's loop fetches nothing while its task runs
        wait_received(worker, 2)  # the other one prefetched
    worker.send(signal.SIGTERM)
    worker.wait_for("pre-stop delay: still serving", stream="stderr")
    scenario.redis.client.set("release:0", 1)  # it ends now, during the pre-stop delay
    assert worker.finish() == -signal.SIGTERM, worker.output()
    assert [s.split()[0] for s in scenario.list("started")] == ["0"]  # none after the signal
    assert scenario.list("completed") == ["0"]
    assert scenario.queued() == 1
    report = scenario.report(worker)
    jobs = sorted((job["name"], job["outcome"]) for job in report["jobs"])
    expected = [("proj.work", "completed")]
    if pool != "solo":
        expected.append(("proj.work", "requeued"))
    assert jobs == expected, report["jobs"]


def test_a_message_delivered_again_is_held_not_done_in_the_last_resorts_file() -> None:
    """Put back (marked done), then delivered again: the watcher must see it held.

    The first delivery sits in the ring's last slot, so a second slot would come
    first in the file, and the watcher would read the older, done state last.
    """
    from lastcall._workers import celery as adapter

    delivered = adapter.Delivered()
    try:
        for n in range(adapter._TAG_SLOTS - 1):
            delivered.note(f"other-{n}")
        delivered.note("again")
        delivered.done("again")  # put back on its queue
        delivered.note("again")  # taken again: in the unacked hash, to restore if killed
        states, _ = adapter._read_delivered(Path(delivered.path).read_bytes())
        assert states["again"] == adapter._HELD
    finally:
        delivered.remove()


@pytest.mark.parametrize("ending", ["sigterm", "sigkill"])
@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_place_free_before_the_door_closed_starts_no_task(
    scenario: Scenario, pool: str, ending: str
) -> None:
    """One pool place; the stop's thread is held before it closes the door; the task ends.

    The place that came free would start the prefetched task: prefork's loop hands
    it to the pool as the other one ends, a free thread takes it from the pool's
    queue. It goes back instead, as the stop signal came first. Then the stop goes
    on, or a SIGKILL ends the worker: the last resort must not publish the copy it
    kept of that task (no ``acks_late``) a second time.
    """
    worker = scenario.worker("-P", pool, "-c", "1", HOLD_STOP="1")
    scenario.enqueue((0, 60, None), (1, 0, None))
    wait_until("the task running", lambda: len(scenario.list("started")) == 1)
    wait_received(worker, 2)  # the other one taken in, waiting for the place
    worker.send(signal.SIGTERM)
    wait_until("the stop's thread held", lambda: scenario.list("stop_held"))
    scenario.redis.client.set("release:0", 1)  # a place comes free before the door
    worker.wait_for("not started (the stop signal came first)", stream="stderr")
    worker.wait_for("stopped consuming;", stream="stderr")  # the loop closed the door itself
    wait_until("the task back on the queue", lambda: scenario.queued() == 1)
    assert scenario.list("completed") == ["0"]
    if ending == "sigkill":
        worker.send(signal.SIGKILL)
        worker.wait_for("task(s) of the killed Celery worker put back", stream="stderr")
        assert worker.finish() == -signal.SIGKILL
    else:
        scenario.redis.client.set("release_stop", 1)
        assert worker.finish() == -signal.SIGTERM, worker.output()
        jobs = [(job["name"], job["outcome"]) for job in scenario.report(worker)["jobs"]]
        assert ("proj.work", "requeued") in jobs, jobs
    assert scenario.queued() == 1  # once: not published again from its copy
    assert [s.split()[0] for s in scenario.list("started")] == ["0"]


@pytest.mark.parametrize("acks_late", ["0", "1"], ids=["acks-early", "acks-late"])
def test_threads_task_put_back_never_completes_in_its_thread(
    scenario: Scenario, acks_late: str
) -> None:
    """Threads: a task put back at the budget's end, told to finish while the stop's hooks run.

    A thread cannot be killed: its task is put back at once, and the thread gets
    ``TaskStopped`` at its next Python bytecode. Without that the task would
    complete in its thread while the hook sleeps (2 s), and again on the second
    worker.
    """
    worker = scenario.worker(
        "-P", "threads", "-c", "2", LASTCALL_GRACE="5", HOOK_SLEEP="2", ACKS_LATE=acks_late,
    )  # fmt: skip
    budget = drain_budget(worker)
    scenario.enqueue((1, 60, 0.2), (2, 60, None))
    wait_until("both running", lambda: len(scenario.list("started")) == 2)
    worker.send(signal.SIGTERM)
    signalled = time.monotonic()
    worker.wait_for("shutdown started by SIGTERM", stream="stderr")
    scenario.redis.client.set("release:2", 1)  # task 2 ends within the budget
    back = wait_until("the task back on the queue", lambda: scenario.queued() == 1)
    assert back - signalled < budget + 1.0
    scenario.redis.client.set("release:1", 1)  # task 1's loop ends now, if it still runs
    assert worker.finish() == -signal.SIGTERM, worker.output()
    assert time.monotonic() - back > 1.0  # the hook kept the process alive meanwhile
    assert scenario.list("completed") == ["2"]  # not 1: stopped in its thread
    scenario.redis.client.delete("release:1")
    report = scenario.report(worker)
    outcomes = {job["id"]: job["outcome"] for job in report["jobs"]}
    assert sorted(outcomes.values()) == ["completed", "requeued"], report["jobs"]
    assert scenario.list("hooks").count(f"main {worker.pid}") == 1
    assert int(scenario.redis.client.hlen("unacked")) == 0

    second = scenario.worker("-P", "threads", "-c", "2", LASTCALL_GRACE="5")
    wait_until("the task completed", lambda: len(scenario.list("completed")) == 2)
    second.send(signal.SIGTERM)
    assert second.finish() == -signal.SIGTERM
    assert sorted(scenario.list("completed")) == ["1", "2"]  # each once


@pytest.mark.parametrize("acks_late", ["1", "0"], ids=["acks-late", "acks-early"])
@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_sigkill_running_and_prefetched_back_within_1s(
    scenario: Scenario, pool: str, acks_late: str
) -> None:
    """The worker SIGKILLed (the OOM killer) with tasks running and prefetched.

    The last-resort watcher puts back every message the worker held unacknowledged
    within 1 s, and publishes again each running task acknowledged as it started
    (no ``acks_late``) from the copy the worker kept. Against plain Celery the
    unacknowledged ones stay in Redis's ``unacked`` hash until ``visibility_timeout``
    (an hour by default), and a running task without ``acks_late`` is lost.
    """
    concurrency = "1" if pool == "solo" else "2"
    running = int(concurrency)
    worker = scenario.worker("-P", pool, "-c", concurrency, LASTCALL_GRACE="5", ACKS_LATE=acks_late)
    total = running + 4
    scenario.enqueue(*[(n, 60, 0.2) for n in range(total)])
    wait_until("tasks running", lambda: len(scenario.list("started")) == running)
    if pool != "solo":  # solo's loop fetches nothing while its task runs
        wait_until("the rest prefetched", lambda: scenario.queued() == 0)
    sigkill_and_wait_back(scenario, worker, "the tasks back", total)
    assert int(scenario.redis.client.hlen("unacked")) == 0
    assert scenario.list("completed") == []

    scenario.redis.client.set("release", 1)  # the rest run at once on the second worker
    second = scenario.worker("-P", "threads", "-c", str(total), LASTCALL_GRACE="5")
    wait_until("all completed", lambda: len(scenario.list("completed")) == total)
    second.send(signal.SIGTERM)
    assert second.finish() == -signal.SIGTERM
    completed = scenario.list("completed")
    assert sorted(completed) == [str(n) for n in range(total)]  # each once


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_sigkill_completed_task_not_published_again(scenario: Scenario, pool: str) -> None:
    """A task without ``acks_late`` that completed just before the kill is not published again.

    One pool place: task 1 starts once task 0's result was taken (solo: Celery's loop
    runs both in turn; threads: the one thread runs task 0's callbacks first), so at
    the kill task 0 is done and task 1 runs: only task 1 comes back.
    """
    worker = scenario.worker("-P", pool, "-c", "1", LASTCALL_GRACE="5")
    scenario.enqueue((0, 0, None), (1, 60, 0.2))
    wait_until("task 1 running", lambda: len(scenario.list("started")) == 2)
    sigkill_and_wait_back(scenario, worker, "task 1 back", 1)
    assert scenario.list("completed") == ["0"]

    second = scenario.worker("-P", "threads", "-c", "2", LASTCALL_GRACE="5")
    wait_until("task 1 completed", lambda: len(scenario.list("completed")) == 2)
    assert scenario.queued() == 0
    second.send(signal.SIGTERM)
    assert second.finish() == -signal.SIGTERM
    assert scenario.list("completed") == ["0", "1"]  # each once


def test_sigkill_after_a_pool_process_was_replaced(scenario: Scenario) -> None:
    """A pool process replaced (``--max-tasks-per-child``) leaves the worker's file to the worker.

    A pool process forked once the worker was ready ran the worker's end-of-stop
    callback in its own stop, as it was replaced, and removed the file the
    last-resort watcher reads: a SIGKILL later put back nothing, and the running
    task (no ``acks_late``) was lost.
    """
    worker = scenario.worker("-P", "prefork", "-c", "1", "--max-tasks-per-child", "1")
    scenario.enqueue((0, 0, None), (1, 0, None))  # 1 runs in a process forked after "ready"
    wait_until("tasks 0 and 1 completed", lambda: len(scenario.list("completed")) == 2)
    scenario.enqueue((2, 60, 0.2))
    wait_until("task 2 running", lambda: len(scenario.list("started")) == 3)
    sigkill_and_wait_back(scenario, worker, "task 2 back", 1)


def test_sigkill_message_too_big_to_copy_said_once(scenario: Scenario) -> None:
    """A task message too big for its copy: one warning line, and the task is lost as before.

    Two such tasks running without ``acks_late`` on the threads pool, SIGKILL: the
    watcher publishes neither (they were acknowledged as they started).
    """
    worker = scenario.worker("-P", "threads", "-c", "2", LASTCALL_GRACE="5")
    enqueue = (
        "import proj\n"
        "for n in range(2): proj.work.apply_async((n, 60), headers={'pad': 'x' * 10000})"
    )
    scenario.spawn(enqueue, env=scenario.env(), wait_ready=False).finish()  # type: ignore[operator]
    wait_until("tasks running", lambda: len(scenario.list("started")) == 2)
    worker.send(signal.SIGKILL)
    line = worker.wait_for("lastcall: 0 task(s) of the killed Celery worker", stream="stderr")
    assert "0 running one(s)" in line
    assert worker.finish() == -signal.SIGKILL
    said = [line for line in worker.stderr if "does not fit its copy's slot" in line]
    assert len(said) == 1, said
    assert scenario.queued() == 0
