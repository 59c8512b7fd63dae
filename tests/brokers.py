"""Real brokers for the worker tests: private ``redis-server`` and ``rabbitmq-server``, by PID.

Debian's packages (``.ci/run`` installs them when missing). Each server
listens on free ports of 127.0.0.1, keeps its files in a temporary directory
and is stopped by PID, with whatever it started.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from typing import TYPE_CHECKING, Any

import pytest

from lastcall.cli.broker import RABBITMQ_START_WAIT, RabbitMQServer, RedisServer
from lastcall.cli.plan import DrillError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


class Redis:
    """One ``redis-server`` process (the worker drill's own): its URL, a client for the test."""

    def __init__(self, directory: Path) -> None:
        try:
            self.server = RedisServer.start(directory)
        except DrillError as exc:
            pytest.fail(str(exc))
        self.port = self.server.port
        self.url = self.server.url
        import redis

        self.client = redis.Redis(port=self.port, decode_responses=True)

    def stop(self) -> None:
        self.client.close()
        self.server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    """A private redis-server for one test."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = Redis(directory)
    try:
        yield server
    finally:
        server.stop()


class RabbitMQ(RabbitMQServer):
    """The worker drill's RabbitMQ node (``cli/broker.py``), with the test's own looks at it."""

    def __init__(self, port: int, pids: list[int]) -> None:
        super().__init__(port, pids)
        self._connection: Any = None  # the test's own looks

    @classmethod
    def start(
        cls, directory: Path, mark: str | None = None, wait: float = RABBITMQ_START_WAIT
    ) -> RabbitMQ:
        """Boot a node with its files in ``directory``; wait until it answers AMQP."""
        try:
            node = RabbitMQServer.start(directory, mark, wait)
        except DrillError as exc:
            log = directory / "rabbitmq.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            pytest.fail(f"{exc}\n{tail}")
        return cls(node.port, node.pids)

    def queued(self, queue: str) -> int:
        """Messages ready on ``queue`` (not those delivered and unacknowledged); 0 if none."""
        import amqp

        if self._connection is None:
            self._connection = amqp.Connection(f"127.0.0.1:{self.port}")
            self._connection.connect()
        channel = self._connection.channel()
        try:
            return int(channel.queue_declare(queue, passive=True).message_count)
        except amqp.exceptions.NotFound:
            return 0
        finally:
            if channel.is_open:
                channel.close()

    def close(self) -> None:
        """This process's connection, if it made one."""
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None

    def stop(self) -> None:
        """The test's connection, then the node, by PID."""
        self.close()
        super().stop()


@pytest.fixture(scope="session")
def rabbitmq_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RabbitMQ]:
    """One RabbitMQ node for the whole run; each test uses queues of its own.

    A node takes ~10 s to boot, more beside others: under xdist the first test
    process to need it starts it, the others use it, and the last to finish stops
    it (a count in the run's own directory, under a lock).
    """
    if not hasattr(request.config, "workerinput"):
        node = RabbitMQ.start(tmp_path_factory.mktemp("rabbitmq"))
        try:
            yield node
        finally:
            node.stop()
        return
    shared = tmp_path_factory.getbasetemp().parent  # the run's, shared by its workers
    state = shared / "rabbitmq.json"
    with _locked(shared / "rabbitmq.lock"):
        if state.exists():
            known = json.loads(state.read_text())
            node = RabbitMQ(known["port"], known["pids"])
        else:
            node = RabbitMQ.start(tmp_path_factory.mktemp("rabbitmq"))
            known = {"port": node.port, "pids": node.pids, "users": 0}
        known["users"] += 1
        state.write_text(json.dumps(known))
    try:
        yield node
    finally:
        node.close()
        with _locked(shared / "rabbitmq.lock"):
            known = json.loads(state.read_text())
            known["users"] -= 1
            if known["users"]:
                state.write_text(json.dumps(known))
            else:
                node.stop()
                state.unlink()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield
