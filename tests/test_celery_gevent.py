"""Celery's gevent pool (``celery -A proj worker -P gevent``) with ``lastcall.celery.LastCall``.

The app and scenario of ``test_celery.py`` on a real redis-server, the worker
started with ``-P gevent``. The gevent pool runs each task in a greenlet; while
the pool is full, Celery's loop waits in ``Pool.spawn`` holding the next
message, so a worker holds one prefetched task (not ``concurrency x 4``).
Against plain Celery that task starts after SIGTERM, and running tasks are
waited for with no limit (``test_plain_celery_gevent_starts_a_task_after_sigterm``).
"""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

import pytest
from brokers import redis_server  # noqa: F401  # the fixture
from conftest import free_port
from test_celery import Scenario, drain_budget, readyz, wait_until

if TYPE_CHECKING:
    from brokers import Redis

pytest.importorskip("celery")
pytest.importorskip("gevent")


@pytest.fixture
def scenario(spawn: object, redis_server: Redis) -> Scenario:  # noqa: F811
    return Scenario(spawn, redis_server)


@pytest.mark.parametrize("acks_late", ["0", "1"], ids=["acks-early", "acks-late"])
def test_gevent_sigterm_running_finish_none_starts_prefetched_back_at_once(
    scenario: Scenario, acks_late: str
) -> None:
    """2 greenlets running, 1 task held by Celery's loop, SIGTERM to the worker.

    Red at once, the held task back on the queue within 1 s (and never started
    here), the running ones finish, hooks once, exit by the signal.
    """
    health = free_port()
    worker = scenario.worker(
        "-P", "gevent", "-c", "2", ACKS_LATE=acks_late, LASTCALL_GRACE="10",
        LASTCALL_HEALTH_PORT=str(health),
    )  # fmt: skip
    worker.wait_for("if this gevent worker is killed (SIGKILL)", stream="stderr")
    worker.wait_for("running tasks get", stream="stderr")
    assert readyz(health) == 200
    scenario.enqueue(*[(n, 60, None) for n in range(5)])  # until "release"
    wait_until("2 tasks running", lambda: len(scenario.list("started")) == 2)
    wait_until("1 held by Celery's loop", lambda: scenario.queued() == 2)
    worker.send(signal.SIGTERM)
    signalled = time.monotonic()
    worker.wait_for("shutdown started by SIGTERM", stream="stderr")
    assert readyz(health) == 503  # red at once, while the tasks still run
    back = wait_until("the held task back on the queue", lambda: scenario.queued() == 3)
    assert back - signalled < 1.0
    scenario.redis.client.set("release", 1)  # the 2 running end, within the budget
    assert worker.finish() == -signal.SIGTERM, worker.output()
    assert sorted(scenario.list("completed")) == ["0", "1"], worker.output()
    assert len(scenario.list("started")) == 2  # none started after the signal
    hooks = [h for h in scenario.list("hooks") if h.split()[1] == str(worker.pid)]
    assert hooks == [f"main {worker.pid}"]
    report = scenario.report(worker)
    outcomes = sorted(job["outcome"] for job in report["jobs"])
    assert outcomes == ["completed", "completed", "requeued"], report["jobs"]
    assert scenario.list("shutting_down") == [f"SIGTERM Warm 0 {worker.pid}"]
    assert int(scenario.redis.client.hlen("unacked")) == 0

    second = scenario.worker("-P", "gevent", "-c", "4", LASTCALL_GRACE="10")
    wait_until("all 5 completed", lambda: len(scenario.list("completed")) == 5)
    second.send(signal.SIGTERM)
    assert second.finish() == -signal.SIGTERM
    assert sorted(scenario.list("completed")) == [str(n) for n in range(5)]  # each once


@pytest.mark.parametrize("acks_late", ["0", "1"], ids=["acks-early", "acks-late"])
def test_gevent_task_longer_than_the_budget_is_put_back_and_completes_once(
    scenario: Scenario, acks_late: str
) -> None:
    """The task's greenlet is killed at the budget's end, its message back at once.

    Without the kill noted, Celery's ``on_success`` would see the killed greenlet's
    ``(False, None, None)`` and acknowledge the task as done (``acks_late``).
    """
    worker = scenario.worker(
        "-P", "gevent", "-c", "1", LASTCALL_GRACE="8", ACKS_LATE=acks_late,
    )  # fmt: skip
    budget = drain_budget(worker)
    scenario.enqueue((7, 60, 0.2))
    wait_until("the task running", lambda: len(scenario.list("started")) == 1)
    worker.send(signal.SIGTERM)
    signalled = time.monotonic()
    back = wait_until("the task back on the queue", lambda: scenario.queued() == 1)
    assert back - signalled < budget + 1.0, f"{back - signalled:.2f} s, budget {budget} s"
    assert worker.finish() == -signal.SIGTERM, worker.output()
    assert time.monotonic() - signalled < 8.0 + 1.0  # within the grace
    assert scenario.list("completed") == []  # stopped, never completed here
    report = scenario.report(worker)
    [job] = report["jobs"]
    assert (job["name"], job["outcome"]) == ("proj.work", "requeued")
    assert job["seconds"] >= budget - 0.5
    assert int(scenario.redis.client.hlen("unacked")) == 0  # not left to visibility_timeout
    assert scenario.list("hooks").count(f"main {worker.pid}") == 1

    second = scenario.worker("-P", "gevent", "-c", "1", LASTCALL_GRACE="8")
    wait_until("the task completed", lambda: scenario.list("completed") == ["7"])
    second.send(signal.SIGTERM)
    assert second.finish() == -signal.SIGTERM
    assert scenario.list("completed") == ["7"]  # once
    first, again = (s.split()[1] for s in scenario.list("started"))
    assert first != again  # stopped in one worker, completed by the other


def test_gevent_second_sigint_does_not_force_as_said(scenario: Scenario) -> None:
    """Ctrl-C twice: the stop goes on (the running tasks finish), as said at start-up.

    gevent runs signal handlers on its hub, where lastcall's forced end cannot wait
    for its log: forcing there made Celery end with "Unrecoverable error", status 1.
    """
    worker = scenario.worker(
        "-P", "gevent", "-c", "2", LASTCALL_GRACE="10",
    )  # fmt: skip
    worker.wait_for("a second SIGINT does not force this gevent worker", stream="stderr")
    scenario.enqueue(*[(n, 60, None) for n in range(4)])  # until "release"
    wait_until("2 tasks running", lambda: len(scenario.list("started")) == 2)
    wait_until("1 held by Celery's loop", lambda: scenario.queued() == 1)
    worker.send(signal.SIGINT)
    worker.wait_for("shutdown started by SIGINT", stream="stderr")
    wait_until("the held task back", lambda: scenario.queued() == 2)
    worker.send(signal.SIGINT)
    time.sleep(0.5)  # a look on: a forced end would be over by now
    assert worker.proc.poll() is None, worker.output()
    scenario.redis.client.set("release", 1)
    assert worker.finish() == -signal.SIGINT, worker.output()
    assert sorted(scenario.list("completed")) == ["0", "1"]
    report = scenario.report(worker)
    assert not report["forced"]
    assert "Unrecoverable error" not in worker.output()


def test_plain_celery_gevent_starts_a_task_after_sigterm(scenario: Scenario) -> None:
    """Plain Celery beside: the task its loop held starts after SIGTERM; it exits 0."""
    worker = scenario.worker("-P", "gevent", "-c", "2", PLAIN="1")
    scenario.enqueue(*[(n, 60, None) for n in range(3)])  # until "release"
    wait_until("2 tasks running", lambda: len(scenario.list("started")) == 2)
    wait_until("1 held by Celery's loop", lambda: scenario.queued() == 0)
    worker.send(signal.SIGTERM)
    worker.wait_for("worker: Warm shutdown (MainProcess)", stream="stdout")
    scenario.redis.client.set("release", 1)
    wait_until("the held task started", lambda: len(scenario.list("started")) == 3)
    assert worker.finish() == 0
    assert sorted(scenario.list("completed")) == ["0", "1", "2"]
