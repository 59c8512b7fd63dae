"""Dramatiq workers on real redis-server and rabbitmq-server: ``lastcall.dramatiq.LastCall``.

Each test starts ``dramatiq proj`` (the app below, the middleware added to
its broker unless ``PLAIN=1``), puts messages in flight and signals
Dramatiq's main process, the one a user starts. Every actor records in Redis,
from inside itself, when it started (and in which process) and when it
completed; hooks record where they ran. RabbitMQ runs one node per test
process (``brokers.rabbitmq_server``), each test on a queue of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import WAIT, free_port, wait_session_empty
from test_celery import readyz, wait_until

if TYPE_CHECKING:
    from collections.abc import Sequence

    from brokers import RabbitMQ, Redis

pytest.importorskip("dramatiq")

DRAMATIQ = str(Path(sys.executable).parent / "dramatiq")
LASTCALL_DRAMATIQ = (sys.executable, "-m", "lastcall.dramatiq")  # what the docs say to run
EXIT_BY_SIGTERM = 128 + signal.SIGTERM  # what Dramatiq's main process passes on
# Made the controlling terminal of the session the test's spawn began, then run argv[2:].
CONTROLLING_TTY = (
    "import os, sys; os.close(os.open(sys.argv[1], os.O_RDWR)); os.execv(sys.argv[2], sys.argv[2:])"
)

APP = """
import asyncio, ctypes, multiprocessing, os, sys, time
import dramatiq, redis
import lastcall
from dramatiq.middleware import Shutdown

BROKER = os.environ["BROKER"]
if BROKER.startswith("amqp"):
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
    broker = RabbitmqBroker(url=BROKER)
else:
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.middleware import default_middleware
    broker = RedisBroker(url=BROKER, **(  # a short heartbeat timeout, maintenance each call
        {"heartbeat_timeout": int(os.environ["HEARTBEAT_MS"]), "maintenance_chance": 1_000_000}
        if os.environ.get("HEARTBEAT_MS") else {}
    ), **(  # Dramatiq 1.x's default Prometheus middleware: its main process forks a server
        {"middleware": [m() for m in default_middleware if m.__name__ != "Prometheus"]}
        if os.environ.get("NO_FORKS") else {}
    ))
store = redis.Redis.from_url(os.environ["STORE"])


class Marks(dramatiq.Middleware):  # a user's middleware: its cleanup in Dramatiq's shutdown events
    def before_worker_shutdown(self, broker, worker):
        store.rpush("order", f"before_worker_shutdown {os.getpid()}")

    def after_worker_shutdown(self, broker, worker):
        store.rpush("order", f"after_worker_shutdown {os.getpid()}")


broker.add_middleware(Marks())
if os.environ.get("ASYNC"):
    from dramatiq.middleware.asyncio import AsyncIO

    broker.add_middleware(AsyncIO())
if os.environ.get("GATE"):  # before lastcall's: a thread that took a message, not yet running it

    class Gate(dramatiq.Middleware):
        def before_process_message(self, broker, message):
            store.rpush("gated", message.message_id)
            redis.Redis.from_url(os.environ["STORE"]).blpop(os.environ["GATE"], 30)

    broker.add_middleware(Gate())


class ParentDeathSignal(dramatiq.Middleware):  # added before lastcall's: its boot runs after
    def after_worker_boot(self, broker, worker):  # on the thread lastcall's ran on
        value = ctypes.c_int()
        ctypes.CDLL(None).prctl(2, ctypes.byref(value))  # PR_GET_PDEATHSIG, a thread's own
        store.rpush("pdeathsig", value.value)


if sys.platform == "linux":
    broker.add_middleware(ParentDeathSignal())
if os.environ.get("PLAIN") != "1":
    import lastcall.dramatiq

    broker.add_middleware(lastcall.dramatiq.LastCall())
if os.environ.get("SLOW_BOOT"):  # a middleware's boot before lastcall's (added last, run first)

    class SlowBoot(dramatiq.Middleware):
        def after_worker_boot(self, broker, worker):
            redis.Redis.from_url(os.environ["STORE"]).blpop(os.environ["SLOW_BOOT"], 30)

    broker.add_middleware(SlowBoot())
dramatiq.set_broker(broker)
if multiprocessing.parent_process() is not None:  # a worker process, not the enqueuer
    store.rpush("processes", os.getpid())


@lastcall.on_shutdown
def hook():
    store.rpush("hooks", f"process {os.getpid()}")
    if os.environ.get("ASYNC") and multiprocessing.parent_process() is not None:
        from dramatiq.asyncio import get_event_loop_thread

        store.rpush("order", f"hook, event loop stopped: {get_event_loop_thread() is None}")


@dramatiq.actor(queue_name=os.environ["QUEUE"], max_retries=0)
def work(n, seconds, again=None):
    attempt = store.incr(f"attempt:{n}")
    store.rpush("started", f"{n} {os.getpid()} {time.time()}")
    time.sleep(seconds if attempt == 1 or again is None else again)
    store.rpush("completed", n)
    store.rpush("order", f"completed {n}")


@dramatiq.actor(queue_name=os.environ["QUEUE"], max_retries=0, notify_shutdown=True)
def persistent(n, seconds):  # examples/persistent's shape: saves its state when told
    store.rpush("started", f"{n} {os.getpid()} {time.time()}")
    try:
        for _ in range(int(seconds * 10)):
            time.sleep(0.1)
    except Shutdown:
        store.rpush("saved", n)
        return
    store.rpush("completed", n)


if os.environ.get("ASYNC"):

    @dramatiq.actor(queue_name=os.environ["QUEUE"], max_retries=0)
    async def work_async(n, seconds):
        store.rpush("started", f"{n} {os.getpid()} {time.time()}")
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            store.rpush("cancelled", n)
            raise
        store.rpush("completed", n)
        store.rpush("order", f"completed {n}")
"""

ENQUEUE = """
import os, sys
import proj
for n, seconds, again in [tuple(map(float, job.split(":"))) for job in sys.argv[1:]]:
    actor = os.environ.get("ACTOR", "work")
    args = (again if again >= 0 else None,) if actor == "work" else ()
    options = {"delay": int(os.environ["DELAY_MS"])} if os.environ.get("DELAY_MS") else {}
    getattr(proj, actor).send_with_options(args=(int(n), seconds, *args), **options)
"""


class Scenario:
    """The app in the test's directory, its broker, its record store, and workers on them."""

    def __init__(self, spawn: object, store: Redis, broker: Redis | RabbitMQ, queue: str) -> None:
        self.spawn = spawn
        self.store = store
        self.broker = broker
        self.queue = queue
        self.dir: Path = spawn.script_dir  # type: ignore[attr-defined]
        (self.dir / "proj.py").write_text(APP)
        (self.dir / "enqueue.py").write_text(ENQUEUE)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "BROKER": self.broker.url,
            "STORE": self.store.url,
            "QUEUE": self.queue,
            "PYTHONPATH": str(self.dir),
            **extra,
        }

    def worker(self, *options: str, command: Sequence[str] = (DRAMATIQ,), **env: str) -> object:
        argv = [*command, "proj", "--processes", "1", "--threads", "2", *options]
        child = self.spawn("", env=self.env(**env), argv=argv, wait_ready=False)  # type: ignore[operator]
        child.wait_for("Worker process is ready for action.", stream="stderr")
        return child

    def enqueue(self, *jobs: tuple[int, float, float | None], **env: str) -> None:
        args = [f"{n}:{s}:{-1 if a is None else a}" for n, s, a in jobs]
        subprocess.run(
            [sys.executable, str(self.dir / "enqueue.py"), *args],
            env={**self.env(**env), "PATH": "/usr/bin:/bin"},
            cwd=self.dir,
            check=True,
            timeout=WAIT,
        )

    def list(self, key: str) -> list[str]:
        return list(self.store.client.lrange(key, 0, -1))

    def queued(self) -> int:
        broker = self.broker
        if hasattr(broker, "client"):  # Redis: the queue's list of message ids
            return int(broker.client.llen(f"dramatiq:{self.queue}"))
        return broker.queued(self.queue)  # type: ignore[union-attr]

    def held(self) -> list[str]:
        """Redis: the ids in any worker's ack sets (fetched, neither acknowledged nor put back)."""
        client = self.broker.client  # type: ignore[union-attr]
        return [i for key in client.keys("dramatiq:__acks__.*") for i in client.smembers(key)]

    def worker_hooks(self) -> list[str]:
        """Hooks run in worker processes (not at the enqueuing script's own exit)."""
        processes = set(self.list("processes"))
        return [h for h in self.list("hooks") if h.split()[1] in processes]


@pytest.fixture(params=["redis", "rabbitmq"])
def scenario(request: pytest.FixtureRequest, spawn: object, redis_server: Redis) -> Scenario:
    queue = "dramatiq-" + request.node.name.replace("[", "-").rstrip("]")
    if request.param == "redis":
        return Scenario(spawn, redis_server, redis_server, queue)
    rabbit = request.getfixturevalue("rabbitmq_server")
    return Scenario(spawn, redis_server, rabbit, queue)


def test_sigterm_running_finish_none_starts_prefetched_back_at_once(scenario: Scenario) -> None:
    """2 threads, 2 actors running, 2 prefetched, 2 on the queue; SIGTERM to Dramatiq's main.

    Against plain Dramatiq: the prefetched stay with the stopping worker until its
    worker threads have ended, and the exit status is 0 (``test_plain_dramatiq_*``).
    """
    health = free_port()
    worker = scenario.worker(
        LASTCALL_GRACE="8",
        LASTCALL_HEALTH_PORT=str(health),
        LASTCALL_REPORT=str(scenario.dir / "report-{pid}.json"),
    )
    scenario.enqueue(*[(n, 1.5, None) for n in range(6)])
    wait_until("2 actors running", lambda: len(scenario.list("started")) == 2)
    wait_until("2 prefetched (prefetch: 2 x 2 threads)", lambda: scenario.queued() == 2)
    assert readyz(health) == 200
    worker.send(signal.SIGTERM)
    signalled = time.monotonic()
    back = wait_until("the prefetched back on the queue", lambda: scenario.queued() == 4)
    assert back - signalled < 1.0
    assert readyz(health) == 503  # red while the actors still run
    assert worker.finish() == EXIT_BY_SIGTERM, worker.output()
    started = [s.split()[0] for s in scenario.list("started")]
    assert len(started) == 2  # none started after the signal
    assert sorted(scenario.list("completed")) == sorted(started)
    [process] = scenario.list("processes")
    assert scenario.worker_hooks() == [f"process {process}"]  # once, in the worker process
    report = json.loads((scenario.dir / f"report-{process}.json").read_text())
    outcomes = sorted(job["outcome"] for job in report["jobs"])
    assert outcomes == ["completed"] * 2 + ["requeued"] * 2, report["jobs"]

    second = scenario.worker(LASTCALL_GRACE="8")
    wait_until("all 6 completed", lambda: len(scenario.list("completed")) == 6)
    second.send(signal.SIGTERM)
    assert second.finish() == EXIT_BY_SIGTERM
    assert sorted(scenario.list("completed")) == [str(n) for n in range(6)]  # each once


def test_actor_ending_in_the_prestop_delay_is_in_the_report(on_redis: Scenario) -> None:
    """One worker thread; its actor ends during the pre-stop delay, another message waits.

    The actor is in the report, though it ended before the door closed (the report
    noted only what was acknowledged after it). The waiting message goes back at
    once (it waited out the delay), and does not start (the thread, free during the
    delay, took it and ran it).
    """
    worker = on_redis.worker(
        "--threads", "1", LASTCALL_GRACE="14", LASTCALL_PRESTOP_DELAY="7",
        LASTCALL_REPORT=str(on_redis.dir / "report-{pid}.json"),
    )  # fmt: skip
    on_redis.enqueue((0, 5, None))  # ends 5 s after it began: within the pre-stop delay
    wait_until("the actor running", lambda: len(on_redis.list("started")) == 1)
    on_redis.enqueue((1, 0, None))  # after 0 began: Dramatiq 1.x may run a later one first
    wait_until("the other one fetched", lambda: on_redis.queued() == 0)
    worker.send(signal.SIGTERM)
    signalled = time.monotonic()
    back = wait_until("the fetched one back", lambda: on_redis.queued() == 1)
    assert back - signalled < 1.0, f"{back - signalled:.2f} s"  # at once, not after the delay
    assert worker.finish() == EXIT_BY_SIGTERM, worker.output()
    assert [s.split()[0] for s in on_redis.list("started")] == ["0"]  # none after the signal
    assert on_redis.list("completed") == ["0"]
    assert on_redis.queued() == 1
    [process] = on_redis.list("processes")
    report = json.loads((on_redis.dir / f"report-{process}.json").read_text())
    jobs = sorted((job["name"], job["outcome"]) for job in report["jobs"])
    assert jobs == [("work", "completed"), ("work", "requeued")], report["jobs"]


def test_dramatiqs_main_process_ends_within_the_grace(scenario: Scenario) -> None:
    """An actor longer than the grace (4 s); SIGTERM to Dramatiq's main process. Once its
    last worker process is gone, Dramatiq's main still waits about 1 s for its log thread
    (dramatiq/cli.py ``watch_logs``): the worker processes say they stop 1.2 s inside the
    grace, and the process the user started ends by SIGTERM within it (0.5 s of slack).
    Before: the workers took the whole grace, and the main process ended 1.05 s past it."""
    worker = scenario.worker(LASTCALL_GRACE="4")
    line = worker.wait_for("running actors get", stream="stderr")
    assert "stops this worker process within 2.8 s" in line, line
    scenario.enqueue((7, 60, 0.2))
    wait_until("the actor running", lambda: len(scenario.list("started")) == 1)
    worker.send(signal.SIGTERM)
    signalled = time.monotonic()
    assert worker.finish() == EXIT_BY_SIGTERM, worker.output()
    assert time.monotonic() - signalled < 4.5, worker.output()


def test_actor_longer_than_the_budget_is_put_back_and_completes_once(scenario: Scenario) -> None:
    """An actor running past the drain budget: put back at once, completed by another worker.

    Against plain Dramatiq: SIGTERM waits for it up to ``--worker-shutdown-timeout``
    (10 minutes by default), so the orchestrator's SIGKILL ends it; Redis then
    gives it to another worker only after the dead worker's heartbeat times out.
    """
    worker = scenario.worker(
        "--worker-shutdown-timeout", "600000",
        LASTCALL_GRACE="4", LASTCALL_REPORT=str(scenario.dir / "report-{pid}.json"),
    )  # fmt: skip
    line = worker.wait_for("running actors get", stream="stderr")
    budget = float(line.split("running actors get ")[1].split()[0])
    line = worker.wait_for("--worker-shutdown-timeout=600000 ms", stream="stderr")
    assert f"drain budget {budget:.3g} s" in line, line  # both numbers, in one line
    scenario.enqueue((7, 60, 0.2))
    wait_until("the actor running", lambda: len(scenario.list("started")) == 1)
    worker.send(signal.SIGTERM)
    signalled = time.monotonic()
    back = wait_until("the message back on the queue", lambda: scenario.queued() == 1)
    assert back - signalled < budget + 1.0, f"{back - signalled:.2f} s, budget {budget} s"
    assert worker.finish() == EXIT_BY_SIGTERM, worker.output()
    assert scenario.list("completed") == []  # stopped, never completed here
    [process] = scenario.list("processes")
    report = json.loads((scenario.dir / f"report-{process}.json").read_text())
    [job] = report["jobs"]
    assert (job["name"], job["outcome"]) == ("work", "requeued"), job
    assert job["seconds"] >= budget - 0.5
    assert scenario.queued() == 1  # once
    assert scenario.worker_hooks() == [f"process {process}"]

    second = scenario.worker(LASTCALL_GRACE="4")
    wait_until("the message completed", lambda: scenario.list("completed") == ["7"])
    second.send(signal.SIGTERM)
    assert second.finish() == EXIT_BY_SIGTERM
    assert scenario.list("completed") == ["7"]  # once
    first, again = (s.split()[1] for s in scenario.list("started"))
    assert first != again  # stopped in one worker process, completed by the other


def test_a_message_a_worker_thread_took_before_the_signal_goes_back(scenario: Scenario) -> None:
    """Taken from Dramatiq's work queue, not yet begun (another middleware's hook is slow).

    lastcall saw nothing running and the drain ended at once: on Redis the message
    stayed in the stopped worker's ack set, on no queue, for another worker's
    maintenance to find 60 s on (as in 3 of 19 runs of Dramatiq's examples/basic:
    a fetch under way at the signal landed the same way). Now what the ack sets
    still hold when nothing runs goes back. RabbitMQ requeues it as the connection
    closes, either way.
    """
    worker = scenario.worker("--threads", "1", LASTCALL_GRACE="8", GATE="gate")
    scenario.enqueue((1, 0.1, None))
    wait_until("the thread holding it", lambda: len(scenario.list("gated")) == 1)
    worker.send(signal.SIGTERM)
    assert worker.finish() == EXIT_BY_SIGTERM, worker.output()
    assert scenario.list("started") == []
    if hasattr(scenario.broker, "client"):
        assert scenario.held() == []  # nothing left in the stopped worker's ack set
    wait_until("back on the queue", lambda: scenario.queued() == 1, timeout=2.0)

    second = scenario.worker(LASTCALL_GRACE="8")
    wait_until("completed by the next worker", lambda: scenario.list("completed") == ["1"])
    second.send(signal.SIGTERM)
    assert second.finish() == EXIT_BY_SIGTERM
    assert scenario.list("completed") == ["1"]  # once


def test_a_delayed_message_the_worker_holds_goes_back_to_its_delay_queue(
    on_redis: Scenario,
) -> None:
    """Redis: a message sent with a delay, fetched and held in memory until its time.

    It goes back to its delay queue at the stop. Before, it stayed in the stopped
    worker's ack set until another worker's maintenance, after ``heartbeat_timeout``.
    """
    scenario = on_redis
    worker = scenario.worker(LASTCALL_GRACE="8")
    delayed = f"dramatiq:{scenario.queue}.DQ"
    client = scenario.store.client
    scenario.enqueue((1, 0.1, None), DELAY_MS="600000")
    wait_until("fetched by the worker", lambda: client.llen(delayed) == 0 and scenario.held())
    worker.send(signal.SIGTERM)
    assert worker.finish() == EXIT_BY_SIGTERM, worker.output()
    assert scenario.held() == []
    assert client.llen(delayed) == 1  # back, still delayed


def test_dramatiqs_shutdown_events_run_once_after_the_drain(scenario: Scenario) -> None:
    """Other middlewares' ``before/after_worker_shutdown`` (Dramatiq's ``Worker.stop()``).

    A user's middleware records them: before at the signal, after once the running
    actor completed, before lastcall's cleanup hooks; once, in the worker process.
    """
    worker = scenario.worker(LASTCALL_GRACE="8")
    scenario.enqueue((1, 2.5, None))
    wait_until("the actor running", lambda: len(scenario.list("started")) == 1)
    worker.send(signal.SIGTERM)
    assert worker.finish() == EXIT_BY_SIGTERM, worker.output()
    [process] = scenario.list("processes")
    assert scenario.list("order") == [
        f"before_worker_shutdown {process}",
        "completed 1",
        f"after_worker_shutdown {process}",
    ]
    assert scenario.worker_hooks() == [f"process {process}"]


def test_asyncio_middleware_stops_its_event_loop_after_async_actors_finish(
    on_redis: Scenario,
) -> None:
    """Dramatiq's AsyncIO middleware: its loop stops in ``after_worker_shutdown``.

    The async actor running at the signal completes first; the loop is stopped when
    the app's lastcall hook runs. Before, the event loop thread was left running.
    """
    scenario = on_redis
    worker = scenario.worker(LASTCALL_GRACE="8", ASYNC="1")
    scenario.enqueue((1, 1.5, None), ACTOR="work_async", ASYNC="1")
    wait_until("the async actor running", lambda: len(scenario.list("started")) == 1)
    worker.send(signal.SIGTERM)
    assert worker.finish() == EXIT_BY_SIGTERM, worker.output()
    [process] = scenario.list("processes")
    assert scenario.list("order") == [
        f"before_worker_shutdown {process}",
        "completed 1",
        f"after_worker_shutdown {process}",
        "hook, event loop stopped: True",
    ]
    assert scenario.list("completed") == ["1"], worker.output()


def test_an_async_actor_past_the_budget_is_cancelled_on_its_loop(on_redis: Scenario) -> None:
    """Put back at the budget's end, its coroutine is cancelled, as Dramatiq's own interrupts do.

    Before, the exception lastcall raises in the worker thread left the coroutine
    running on the event loop, where it could still complete after being put back.
    """
    scenario = on_redis
    worker = scenario.worker(LASTCALL_GRACE="6", ASYNC="1")  # time for the hooks after it
    scenario.enqueue((1, 60, None), ACTOR="work_async", ASYNC="1")
    wait_until("the async actor running", lambda: len(scenario.list("started")) == 1)
    worker.send(signal.SIGTERM)
    assert worker.finish() == EXIT_BY_SIGTERM, worker.output()
    assert scenario.list("cancelled") == ["1"], worker.output()
    assert scenario.list("completed") == []
    assert scenario.queued() == 1  # put back
    [process] = scenario.list("processes")
    assert scenario.list("order")[-2:] == [
        f"after_worker_shutdown {process}",
        "hook, event loop stopped: True",
    ]


def test_notify_shutdown_actors_are_told_at_the_signal(on_redis: Scenario) -> None:
    """``notify_shutdown=True`` (examples/persistent): Dramatiq's ``Shutdown`` at the signal.

    The actor saves its state and returns, as under plain Dramatiq; the stop does not
    wait for the budget. Before, it ran on until the budget ended, was put back,
    and never saved.
    """
    scenario = on_redis
    worker = scenario.worker(LASTCALL_GRACE="20")
    scenario.enqueue((1, 60, None), ACTOR="persistent")
    wait_until("the actor running", lambda: len(scenario.list("started")) == 1)
    worker.send(signal.SIGTERM)
    signalled = time.monotonic()
    assert worker.finish() == EXIT_BY_SIGTERM, worker.output()
    assert time.monotonic() - signalled < 10.0  # the budget is 18 s
    assert scenario.list("saved") == ["1"]
    assert scenario.queued() == 0  # acknowledged, as Dramatiq does
    assert scenario.held() == []


@pytest.fixture
def on_redis(spawn: object, redis_server: Redis, request: pytest.FixtureRequest) -> Scenario:
    queue = "dramatiq-" + request.node.name.replace("[", "-").rstrip("]")
    return Scenario(spawn, redis_server, redis_server, queue)


def test_heartbeats_go_on_while_running_actors_finish(on_redis: Scenario) -> None:
    """Redis: a worker that fetches no more still sends its heartbeat (dramatiq#159).

    Another worker's maintenance takes back the messages of a worker whose
    heartbeat is older than ``heartbeat_timeout`` (2.5 s here, 60 s by default):
    without the heartbeat, the running actor would start again there meanwhile.
    """
    scenario = on_redis
    first = scenario.worker("--threads", "1", LASTCALL_GRACE="10", HEARTBEAT_MS="2500")
    scenario.enqueue((1, 5.0, None))
    wait_until("the actor running", lambda: len(scenario.list("started")) == 1)
    other = scenario.worker("--threads", "1", LASTCALL_GRACE="10", HEARTBEAT_MS="2500")
    first.send(signal.SIGTERM)
    assert first.finish() == EXIT_BY_SIGTERM, first.output()
    assert scenario.list("completed") == ["1"]
    assert len(scenario.list("started")) == 1, scenario.list("started")  # not taken meanwhile
    other.send(signal.SIGTERM)
    assert other.finish() == EXIT_BY_SIGTERM
    assert len(scenario.list("started")) == 1


def test_second_signal_puts_back_everything_and_ends(scenario: Scenario) -> None:
    """Ctrl-C twice to Dramatiq's main process (it forwards each as SIGTERM): ends at once.

    Everything not done is back on the queue; Dramatiq's main process exits 1,
    as it does when its own second signal kills a worker process.
    """
    worker = scenario.worker(LASTCALL_GRACE="20")
    scenario.enqueue(*[(n, 60, 0.2) for n in range(4)])
    wait_until("2 actors running", lambda: len(scenario.list("started")) == 2)
    wait_until("the other 2 prefetched", lambda: scenario.queued() == 0)
    worker.send(signal.SIGINT)
    wait_until("the prefetched back", lambda: scenario.queued() == 2)
    worker.send(signal.SIGINT)
    forced = time.monotonic()
    assert worker.finish() == 1, worker.output()
    assert time.monotonic() - forced < 3.0
    wait_until("the running ones back too", lambda: scenario.queued() == 4, timeout=2.0)
    assert scenario.list("completed") == []


def test_second_sigint_under_python_m_lastcall_dramatiq_ends_130(on_redis: Scenario) -> None:
    """The same forced stop, started as the docs say: the main process ends by SIGINT."""
    scenario = on_redis
    worker = scenario.worker(command=LASTCALL_DRAMATIQ, LASTCALL_GRACE="20")
    scenario.enqueue(*[(n, 60, 0.2) for n in range(2)])
    wait_until("2 actors running", lambda: len(scenario.list("started")) == 2)
    worker.send(signal.SIGINT)
    worker.wait_for("prefetched message(s) put back on their queues", stream="stderr")
    worker.send(signal.SIGINT)
    forced = time.monotonic()
    assert worker.finish() == -signal.SIGINT, worker.output()
    assert time.monotonic() - forced < 3.0
    wait_until("the running ones back", lambda: scenario.queued() == 2, timeout=2.0)
    assert scenario.list("completed") == []


def test_plain_dramatiq_holds_prefetched_and_exits_0(on_redis: Scenario) -> None:
    """Plain Dramatiq beside: what the first test checks does not hold without lastcall."""
    scenario = on_redis
    worker = scenario.worker(PLAIN="1")
    scenario.enqueue(*[(n, 1.5, None) for n in range(6)])
    wait_until("2 actors running", lambda: len(scenario.list("started")) == 2)
    wait_until("2 prefetched", lambda: scenario.queued() == 2)
    worker.send(signal.SIGTERM)
    time.sleep(1.0)  # a look 1 s on: lastcall has them back by now (the first test)
    assert scenario.queued() == 2  # the prefetched still held by the stopping worker
    assert worker.finish() == 0  # Dramatiq exits 0 after SIGTERM
    started = [s.split()[0] for s in scenario.list("started")]
    assert sorted(scenario.list("completed")) == sorted(started)


def test_sigkill_to_the_main_process_stops_its_worker_process(on_redis: Scenario) -> None:
    """Dramatiq's main process SIGKILLed (the OOM killer): its worker process stops too.

    The kernel tells it at once (``PR_SET_PDEATHSIG``, a signal of lastcall's: before, it
    noticed within 0.2 s, and free threads could start jobs meanwhile), and it stops as at
    SIGTERM: the running actor finishes within the budget, the fetched ones go back.
    Against plain Dramatiq (and lastcall before): the orphaned worker process took jobs
    on until killed itself. (Dramatiq
    1.x's Prometheus fork process, which runs none of the app's code, is left out: it
    stays orphaned, plain or not.)
    """
    scenario = on_redis
    worker = scenario.worker("--threads", "1", LASTCALL_GRACE="6", NO_FORKS="1")
    scenario.enqueue((1, 3, None))  # still running at the kill, however slow the next enqueue
    wait_until("the actor running", lambda: len(scenario.list("started")) == 1)
    scenario.enqueue((2, 0.1, None))  # fetched, waiting for the one thread
    wait_until("the second one fetched", lambda: scenario.queued() == 0)
    [process] = scenario.list("processes")
    worker.send(signal.SIGKILL)
    assert worker.finish() == -signal.SIGKILL
    scenario.enqueue((3, 0.1, None))  # after the kill: for another worker
    wait_session_empty(worker.pid, timeout=6.0)  # the worker process ended within the grace
    assert scenario.list("completed") == ["1"]
    assert [s.split()[0] for s in scenario.list("started")] == ["1"]  # none started after
    assert scenario.queued() == 2  # the fetched one back, the one enqueued after still there
    assert scenario.worker_hooks() == [f"process {process}"]
    if sys.platform == "linux":
        assert scenario.list("pdeathsig") == [str(signal.SIGRTMAX - 1)]


def test_sigterm_during_a_slow_boot_drains_what_began(on_redis: Scenario) -> None:
    """Actors begin as soon as the worker threads start, before the last middleware's boot.

    SIGTERM while another middleware's ``after_worker_boot`` still runs: lastcall
    counts the actors that began meanwhile, lets them finish and puts the fetched
    ones back. Before: it saw "0 running" and left them held, and Dramatiq's own
    handler took that SIGTERM (exit 0, nothing put back at once).
    """
    scenario = on_redis
    scenario.enqueue(*[(n, 1.5, None) for n in range(4)])
    worker = scenario.spawn(  # type: ignore[operator]
        "",
        env=scenario.env(LASTCALL_GRACE="8", SLOW_BOOT="booted",
                         LASTCALL_REPORT=str(scenario.dir / "report-{pid}.json")),
        argv=[DRAMATIQ, "proj", "--processes", "1", "--threads", "2"],
        wait_ready=False,
    )  # fmt: skip
    wait_until("2 actors running, the boot not over", lambda: len(scenario.list("started")) == 2)
    [process] = scenario.list("processes")
    os.kill(int(process), signal.SIGTERM)  # as a signal to the process group reaches it
    scenario.store.client.rpush("booted", "go")
    assert worker.finish() == EXIT_BY_SIGTERM, worker.output()
    print(worker.output())
    started = [s.split()[0] for s in scenario.list("started")]
    assert sorted(scenario.list("completed")) == sorted(started)  # the 2 that began, finished
    assert scenario.queued() == 2  # the fetched ones back, none held
    report = json.loads((scenario.dir / f"report-{process}.json").read_text())
    outcomes = sorted(job["outcome"] for job in report["jobs"])
    assert outcomes == ["completed"] * 2 + ["requeued"] * 2, report["jobs"]


def test_ctrl_c_at_a_terminal_ends_130_and_clean(on_redis: Scenario) -> None:
    """A real Ctrl-C (^C typed into the terminal: SIGINT to main and worker processes alike).

    Under ``python -m lastcall.dramatiq``: running actors finish once, the prefetched go
    back, and the main process ends by SIGINT (130). Plain ``dramatiq`` exits 143
    here: its main process forwards Ctrl-C as SIGTERM and passes on the workers' status.
    """
    scenario = on_redis
    master, terminal = os.openpty()
    try:
        argv = [sys.executable, "-c", CONTROLLING_TTY, os.ttyname(terminal), *LASTCALL_DRAMATIQ]
        worker = scenario.worker(command=argv, LASTCALL_GRACE="8")
        os.close(terminal)
        scenario.enqueue(*[(n, 1.5, None) for n in range(4)])
        wait_until("2 actors running", lambda: len(scenario.list("started")) == 2)
        wait_until("2 prefetched", lambda: scenario.queued() == 0)
        os.write(master, b"\x03")  # the terminal's Ctrl-C
        assert worker.finish() == -signal.SIGINT, worker.output()
    finally:
        os.close(master)
        with contextlib.suppress(OSError):
            os.close(terminal)
    started = [s.split()[0] for s in scenario.list("started")]
    assert sorted(scenario.list("completed")) == sorted(started)  # each once
    assert scenario.queued() == 2  # the prefetched back
    [process] = scenario.list("processes")
    assert scenario.worker_hooks() == [f"process {process}"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_python_m_lastcall_dramatiq_ends_by_the_signal_its_main_process_got(
    on_redis: Scenario, sig: signal.Signals
) -> None:
    """``kill -INT <main pid>`` ends 130, ``kill -TERM`` 143; plain ``dramatiq``: 143 for both."""
    scenario = on_redis
    worker = scenario.worker(command=LASTCALL_DRAMATIQ, LASTCALL_GRACE="8")
    scenario.enqueue((1, 1.0, None))
    wait_until("the actor running", lambda: len(scenario.list("started")) == 1)
    worker.send(sig)
    assert worker.finish() == -sig, worker.output()
    assert scenario.list("completed") == ["1"]
    assert len(scenario.worker_hooks()) == 1
    said = worker.output()
    assert "stopped consuming; 0 prefetched message(s) put back on their queues, 1 running" in said
    assert "connection(s) taken from the backlog" not in said  # HTTP's words, not a worker's


def test_python_m_lastcall_dramatiq_still_reloads_on_sighup(on_redis: Scenario) -> None:
    """SIGHUP is Dramatiq's reload (``--watch`` sends it): the same process runs the command again.

    Dramatiq re-executes ``sys.argv``; the module's file alone is no program.
    """
    scenario = on_redis
    worker = scenario.worker(command=LASTCALL_DRAMATIQ, LASTCALL_GRACE="8")
    worker.send(signal.SIGHUP)
    wait_until(
        "booted again, in the same process",
        lambda: worker.output().count("Worker process is ready for action.") == 2,
    )
    assert (
        worker.output().count(
            f"[PID {worker.pid}] [MainThread] [dramatiq.MainProcess] [INFO] Dramatiq"
        )
        == 2
    )
    worker.send(signal.SIGINT)
    assert worker.finish() == -signal.SIGINT, worker.output()


def test_python_m_lastcall_dramatiq_reads_only_its_main_process_signals(
    on_redis: Scenario,
) -> None:
    """SIGTERM to the worker process alone: the main process got no signal, so no end by one.

    It exits with the worker's status, as Dramatiq does; the worker's own signal (its
    process was forked with the main process's wake-up fd) is not taken for the main's.
    """
    scenario = on_redis
    worker = scenario.worker(command=LASTCALL_DRAMATIQ, LASTCALL_GRACE="8")
    wait_until("the worker process up", lambda: len(scenario.list("processes")) == 1)
    [process] = scenario.list("processes")
    os.kill(int(process), signal.SIGTERM)
    assert worker.finish() == EXIT_BY_SIGTERM, worker.output()


def test_the_health_port_taken_by_a_sibling_worker_process_is_said_in_dramatiqs_words(
    on_redis: Scenario,
) -> None:
    """Two worker processes, one health port: the second says so, naming no HTTP server."""
    scenario = on_redis
    health = free_port()
    worker = scenario.worker("--processes", "2", LASTCALL_HEALTH_PORT=str(health))
    line = worker.wait_for("is taken, by a sibling worker most likely", stream="stderr")
    assert line.endswith("the probes are answered there, none by this process"), line
    assert "uvicorn" not in line
    assert readyz(health) == 200
    worker.send(signal.SIGTERM)
    assert worker.finish() == EXIT_BY_SIGTERM, worker.output()
