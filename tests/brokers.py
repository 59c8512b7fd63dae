"""Real brokers for the worker tests: private ``redis-server`` and ``rabbitmq-server``, by PID.

Debian's packages (``.ci/run`` installs them when missing). Each server
listens on free ports of 127.0.0.1, keeps its files in a temporary directory
and is stopped by PID, with whatever it started.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from lastcall.cli.broker import RedisServer
from lastcall.cli.cleanup import session_processes
from lastcall.cli.plan import DrillError

if TYPE_CHECKING:
    from collections.abc import Iterator

RABBITMQ_START_WAIT = 60.0  # an Erlang node boots in ~10 s on a loaded 2-core machine
RABBITMQ_STOP_WAIT = 15.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


# Debian's script that runs the node (``/usr/sbin/rabbitmq-server`` switches to the
# ``rabbitmq`` user first when started as root; this one runs as whoever starts it, so
# the node's files stay in the test's directory, owned by the test's user).
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
# Frame type 1 (a method: Connection.Start) in answer to the AMQP 0-9-1 protocol header.
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
_RABBITMQ_CONF = """\
listeners.tcp.default = {port}
disk_free_limit.absolute = 1MB
"""


class RabbitMQ:
    """One RabbitMQ node and its own ``epmd``, on free ports; stopped by PID, children too.

    The node's name, AMQP port, distribution port and ``epmd`` port are its own, so
    nodes of tests running beside it never meet. ``epmd`` is started here (not
    daemonized by the node, which would leave it running in a session of its own).
    The node may be another test process's (``rabbitmq_server``): it is known by
    its URL and PIDs only.
    """

    _children: ClassVar[dict[int, subprocess.Popen[bytes]]] = {}  # the ones this process started

    def __init__(self, port: int, pids: list[int]) -> None:
        self.port = port
        self.url = f"amqp://guest:guest@127.0.0.1:{port}/%2F"  # vhost "/"
        self.pids = pids  # the node's script, then epmd: each leads a session of its own
        self._connection: Any = None  # the test's own looks

    @classmethod
    def start(cls, directory: Path) -> RabbitMQ:
        """Boot a node with its files in ``directory``; wait until it answers AMQP."""
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        if not Path(RABBITMQ_SERVER).exists() or not Path(epmd).exists():
            pytest.fail("rabbitmq-server is not installed: apt-get install rabbitmq-server")
        port, dist_port, epmd_port = _free_port(), _free_port(), _free_port()
        (directory / "home").mkdir()
        (directory / "enabled_plugins").write_text("[].\n")
        (directory / "rabbitmq.conf").write_text(_RABBITMQ_CONF.format(port=port))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(directory / "home"),  # the Erlang cookie
            "ERL_EPMD_PORT": str(epmd_port),
            "RABBITMQ_NODENAME": f"lastcall-test-{port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq"),
            "RABBITMQ_CONF_ENV_FILE": str(directory / "rabbitmq-env.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(directory / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_PID_FILE": str(directory / "rabbitmq.pid"),
            "RABBITMQ_LOGS": "-",
        }
        epmd_proc = subprocess.Popen(
            [epmd, "-port", str(epmd_port), "-address", "127.0.0.1"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        log = directory / "rabbitmq.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [RABBITMQ_SERVER],
                env=env,
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        cls._children.update({proc.pid: proc, epmd_proc.pid: epmd_proc})
        node = cls(port, [proc.pid, epmd_proc.pid])
        deadline = time.monotonic() + RABBITMQ_START_WAIT
        while not node._answers():
            if time.monotonic() > deadline or proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                node.stop()
                pytest.fail(f"rabbitmq-server did not answer on port {port}:\n{tail}")
            time.sleep(0.1)
        return node

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
                conn.sendall(_AMQP_HEADER)
                return conn.recv(1) == b"\x01"
        except OSError:
            return False

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
        """SIGTERM to the node (its script stops the Erlang VM), then anything left, by PID."""
        self.close()
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + RABBITMQ_STOP_WAIT
            while session_processes(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            for left in session_processes(pid):  # erl_child_setup, inet_gethost ...
                with contextlib.suppress(ProcessLookupError):
                    os.kill(left, signal.SIGKILL)
            proc = self._children.pop(pid, None)
            if proc is not None:
                proc.wait(RABBITMQ_STOP_WAIT)


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
