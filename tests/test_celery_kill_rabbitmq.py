"""Celery workers on a real RabbitMQ node SIGKILLed: running tasks without ``acks_late`` back.

RabbitMQ puts back what a dead connection held unacknowledged (prefetched tasks,
running ones with ``acks_late``) by itself. A task without ``acks_late`` was
acknowledged, so deleted, as it started: lastcall's last-resort watcher
publishes it again from the copy the worker kept. Scenario of
``test_celery_rabbitmq.py``.
"""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

import pytest
from test_celery import wait_until
from test_celery_rabbitmq import scenario  # noqa: F401  # the fixture

if TYPE_CHECKING:
    from test_celery_rabbitmq import RabbitScenario

pytest.importorskip("celery")


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_sigkill_running_without_acks_late_back_within_1s(
    scenario: RabbitScenario,  # noqa: F811
    pool: str,
) -> None:
    """Tasks running and prefetched, SIGKILL: all back on the queue within 1 s, each done once.

    Against plain Celery the running ones are lost (solo: its loop, running the task,
    has not sent the ack yet, so RabbitMQ puts it back; lastcall must not add a copy).
    """
    concurrency = "1" if pool == "solo" else "2"
    running = int(concurrency)
    worker = scenario.worker("-P", pool, "-c", concurrency, LASTCALL_GRACE="5")
    worker.wait_for("running tasks get", stream="stderr")
    total = running + 4
    scenario.enqueue(*[(n, 60, 0.2) for n in range(total)])
    wait_until("tasks running", lambda: len(scenario.list("started")) == running)
    if pool != "solo":  # solo's loop fetches nothing while its task runs
        wait_until("the rest prefetched", lambda: scenario.queued() == 0)
    worker.send(signal.SIGKILL)
    killed = time.monotonic()
    back = wait_until("the tasks back", lambda: scenario.queued() == total)
    assert back - killed < 1.0, f"{back - killed:.2f} s"
    assert worker.finish() == -signal.SIGKILL
    assert scenario.list("completed") == []

    scenario.redis.client.set("release", 1)  # the rest run at once on the second worker
    second = scenario.worker("-P", "threads", "-c", str(total), LASTCALL_GRACE="5")
    wait_until("all completed", lambda: len(scenario.list("completed")) == total)
    assert scenario.queued() == 0
    second.send(signal.SIGTERM)
    assert second.finish() == -signal.SIGTERM
    assert sorted(scenario.list("completed")) == [str(n) for n in range(total)]  # each once
