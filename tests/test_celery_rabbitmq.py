"""Celery workers on a real RabbitMQ node: ``lastcall.celery.LastCall`` over AMQP.

The app and the scenario of ``test_celery.py``, with RabbitMQ as the broker
(one node per test process, a queue of its own per test) and the tasks'
records in a private redis-server. On RabbitMQ, a delivered message stays
with the worker's channel until acknowledged or rejected, or until the
connection closes: these tests look at the queue while the stopping worker
is still connected, so what they see came back by lastcall's doing.
"""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

import pytest
from conftest import free_port
from test_celery import Scenario, drain_budget, readyz, wait_received, wait_until

if TYPE_CHECKING:
    from brokers import RabbitMQ, Redis

pytest.importorskip("celery")


class RabbitScenario(Scenario):
    """The Celery scenario with its tasks on a RabbitMQ queue of the test's own."""

    def __init__(self, spawn: object, redis: Redis, rabbit: RabbitMQ, queue: str) -> None:
        super().__init__(spawn, redis)
        self.rabbit = rabbit
        self.queue = queue
        self.started = 0

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **super().env(**extra),
            "BROKER": self.rabbit.url,
            "STORE": self.redis.url,
            "QUEUE": self.queue,
        }

    def queued(self) -> int:
        return self.rabbit.queued(self.queue)

    def worker(self, *options: str, **env: str) -> object:
        """A node name of the test's own: tests share the RabbitMQ node (and its pidbox queues)."""
        self.started += 1
        return super().worker("-n", f"{self.queue}-{self.started}@%h", *options, **env)


@pytest.fixture
def scenario(
    spawn: object,
    redis_server: Redis,
    rabbitmq_server: RabbitMQ,
    request: pytest.FixtureRequest,
) -> RabbitScenario:
    queue = "celery-" + request.node.name.replace("[", "-").rstrip("]")
    return RabbitScenario(spawn, redis_server, rabbitmq_server, queue)


@pytest.mark.parametrize("acks_late", ["0", "1"], ids=["acks-early", "acks-late"])
def test_sigterm_running_finish_prefetched_back_at_once(
    scenario: RabbitScenario, acks_late: str
) -> None:
    """Prefork, 2 processes, 2 tasks running and 4 prefetched, SIGTERM to the main process.

    Against plain Celery on RabbitMQ: the 4 prefetched stay with the stopping
    worker's channel until its warm shutdown closes the connection, and it exits 0.
    """
    health = free_port()
    worker = scenario.worker(
        "-P", "prefork", "-c", "2",
        ACKS_LATE=acks_late, LASTCALL_GRACE="8", LASTCALL_HEALTH_PORT=str(health),
    )  # fmt: skip
    worker.wait_for("running tasks get", stream="stderr")
    scenario.enqueue(*[(n, 1.5, None) for n in range(6)])
    wait_until("2 tasks running", lambda: len(scenario.list("started")) == 2)
    wait_received(worker, 6)  # the other 4 prefetched (4 x 2 processes)
    worker.send(signal.SIGTERM)
    signalled = time.monotonic()
    worker.wait_for("shutdown started by SIGTERM", stream="stderr")
    assert readyz(health) == 503
    back = wait_until("the prefetched tasks back on the queue", lambda: scenario.queued() == 4)
    assert back - signalled < 1.0
    assert worker.proc.poll() is None  # still connected: not the connection's close
    assert worker.finish() == -signal.SIGTERM, worker.output()
    assert sorted(scenario.list("completed")) == ["0", "1"]
    assert len(scenario.list("started")) == 2  # none started after the signal
    report = scenario.report(worker)
    outcomes = sorted(job["outcome"] for job in report["jobs"])
    assert outcomes == ["completed"] * 2 + ["requeued"] * 4, report["jobs"]
    assert scenario.queued() == 4

    second = scenario.worker("-P", "prefork", "-c", "4", LASTCALL_GRACE="8", ACKS_LATE=acks_late)
    wait_until("all 6 completed", lambda: len(scenario.list("completed")) == 6)
    second.send(signal.SIGTERM)
    assert second.finish() == -signal.SIGTERM
    assert sorted(scenario.list("completed")) == [str(n) for n in range(6)]  # each once


@pytest.mark.parametrize(
    ("pool", "acks_late"),
    [("prefork", "0"), ("prefork", "1"), ("solo", "1")],
    ids=["prefork-acks-early", "prefork-acks-late", "solo-acks-late"],
)
def test_task_longer_than_the_budget_is_put_back_and_completes_once(
    scenario: RabbitScenario, pool: str, acks_late: str
) -> None:
    """A task running past the drain budget: stopped, back on the queue at once, done elsewhere.

    Without ``acks_late`` the message was acknowledged as the task started: it is
    published again. With it, it is rejected with requeue while the worker still
    holds its channel. Against plain Celery: SIGTERM waits for the task with no limit.
    """
    worker = scenario.worker(
        "-P", pool, "-c", "1", LASTCALL_GRACE="5", ACKS_LATE=acks_late,
    )  # fmt: skip
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
    assert scenario.queued() == 1  # once: not also back from the connection's close

    second = scenario.worker("-P", pool, "-c", "1", LASTCALL_GRACE="5", ACKS_LATE=acks_late)
    wait_until("the task completed", lambda: scenario.list("completed") == ["7"])
    second.send(signal.SIGTERM)
    assert second.finish() == -signal.SIGTERM
    assert scenario.list("completed") == ["7"]  # once
    first, again = (s.split()[1] for s in scenario.list("started"))
    assert first != again  # stopped in one worker, completed by the other
