"""Celery's eventlet pool (``celery -A proj worker -P eventlet``) is refused by ``LastCall(app)``.

Under eventlet, Celery sends ``worker_ready`` from a green thread, where no
signal handler can be set: lastcall could neither take SIGTERM nor put a task
back, and the worker would run as shipped while claiming lastcall's contract.
So it refuses at ``worker_init``, before the worker consumes anything: one
line naming the pool and what to use instead, exit status 1. Without the
refusal the worker starts and takes the task (``ready.`` and the task's
record), which this test would see.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from brokers import redis_server  # noqa: F401  # the fixture
from conftest import WAIT
from test_celery import CELERY, Scenario

from lastcall.celery import EVENTLET_REFUSED

if TYPE_CHECKING:
    from brokers import Redis

pytest.importorskip("celery")
pytest.importorskip("eventlet")


@pytest.fixture
def scenario(spawn: object, redis_server: Redis) -> Scenario:  # noqa: F811
    return Scenario(spawn, redis_server)


def test_eventlet_pool_is_refused_at_start_up_in_one_line(scenario: Scenario) -> None:
    """A task already queued: the worker says why in one line, exits 1, and leaves it queued."""
    scenario.enqueue((0, 0.1, None))
    argv = [CELERY, "-A", "proj", "worker", "-l", "info", "-P", "eventlet", "-c", "2",
            "--without-mingle", "--without-gossip"]  # fmt: skip
    worker = scenario.spawn("", env=scenario.env(), argv=argv, wait_ready=False)  # type: ignore[operator]
    assert worker.finish(WAIT) == 1, worker.output()  # type: ignore[attr-defined]
    lastcall_lines = [line for line in worker.stderr if line.startswith("lastcall")]  # type: ignore[attr-defined]
    assert lastcall_lines == [EVENTLET_REFUSED], worker.output()  # type: ignore[attr-defined]
    assert "-P gevent" in EVENTLET_REFUSED
    assert not any("ready." in line for line in worker.stderr)  # type: ignore[attr-defined]
    assert scenario.queued() == 1  # never taken
    assert scenario.list("started") == []
