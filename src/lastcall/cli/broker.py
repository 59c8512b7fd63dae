"""The worker drill's broker: a private ``redis-server`` or ``rabbitmq-server``, or the user's.

A private one (``redis-server`` by default, a RabbitMQ node for ``--broker
rabbitmq``) listens on free ports of 127.0.0.1, runs in a session of its
own, with the drill's mark in its environment (``cli/cleanup.py``: Ctrl-C
ends it with everything else the drill started), keeps its files in the
drill's temporary directory, and is stopped by PID when the drill ends. A
user's (``--broker URL``) is asked to answer before any worker starts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from lastcall.cli import cleanup
from lastcall.cli.plan import DrillError

if TYPE_CHECKING:
    from collections.abc import Mapping

NOT_INSTALLED = (
    "the worker drill needs a Redis broker and redis-server is not installed: "
    "apt-get install redis-server, or pass --broker redis://HOST:PORT/DB (your own)"
)
RABBITMQ_NOT_INSTALLED = (
    "--broker rabbitmq needs rabbitmq-server, which is not installed: apt-get install "
    "rabbitmq-server, or pass --broker amqp://USER:PASSWORD@HOST:PORT/VHOST (your own)"
)
PRIVATE_RABBITMQ = "rabbitmq"  # --broker's word for a private RabbitMQ node
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")
_START_WAIT = 10.0  # seconds for redis-server to answer PING
_STOP_WAIT = 5.0
_PORT_TRIES = 3
_ANSWER_WAIT = 3.0  # seconds for a user's broker to answer


def check_answers(url: str) -> None:
    """A user's broker answers on its host and port: else one line, before any worker starts."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return  # a socket path: redis-py says it when the drill first enqueues
    default = 5672 if url.startswith(AMQP_SCHEMES) else 6379
    try:
        address = (parts.hostname or "127.0.0.1", parts.port or default)
        with socket.create_connection(address, timeout=_ANSWER_WAIT):
            pass
    except (OSError, ValueError) as exc:
        kind = "RabbitMQ" if url.startswith(AMQP_SCHEMES) else "Redis"
        raise DrillError(
            f"--broker {url}: no {kind} answers there ({exc}); start it or fix the URL, or "
            "leave out --broker for a private redis-server"
        ) from None


class RedisServer:
    """One ``redis-server`` process; :meth:`stop` ends it by PID."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"

    @classmethod
    def start(cls, directory: Path, mark: str | None = None) -> RedisServer:
        """Start one in ``directory``; raises ``DrillError`` (one line) if it cannot.

        ``mark``: the drill's (``cli/cleanup.py``), so that Ctrl-C ends it with the rest.
        """
        binary = shutil.which("redis-server")
        if binary is None:
            raise DrillError(NOT_INSTALLED)
        directory.mkdir(parents=True, exist_ok=True)
        for _ in range(_PORT_TRIES):  # a free port may be taken before redis-server binds it
            port = _free_port()
            argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
                    "--save", "", "--appendonly", "no", "--loglevel", "warning"]  # fmt: skip
            with (directory / "redis.log").open("wb") as log:
                proc = subprocess.Popen(  # noqa: S603  # redis-server, found on PATH
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=os.environ if mark is None else {**os.environ, cleanup.OWNER: mark},
                    start_new_session=True,
                )
            server = cls(proc, port)
            if server._until_answering():
                return server
            server.stop()
        raise DrillError(f"redis-server did not start; its log: {directory / 'redis.log'}")

    def _until_answering(self) -> bool:
        deadline = time.monotonic() + _START_WAIT
        while self.proc.poll() is None and time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn,
            ):
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it has not ended within a few seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(_STOP_WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait()


# Debian's script that runs the node as whoever starts it (``/usr/sbin/rabbitmq-server``,
# started as root, switches to the ``rabbitmq`` user, who could not write the node's files
# in the drill's directory); ``epmd``, Erlang's port mapper, is started beside it, on a port
# of its own (the node would otherwise daemonize one on 4369 and leave it running).
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
_EPMD = "/usr/lib/erlang/bin/epmd"
RABBITMQ_START_WAIT = 60.0  # an Erlang node boots in ~10 s on a loaded 2-core machine
RABBITMQ_STOP_WAIT = 15.0
# Frame type 1 (a method: Connection.Start) in answer to the AMQP 0-9-1 protocol header.
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
_RABBITMQ_CONF = """\
listeners.tcp.default = {port}
disk_free_limit.absolute = 1MB
"""
_STARTED: dict[int, subprocess.Popen[bytes]] = {}  # by this process: reaped when stopped


class RabbitMQServer:
    """One RabbitMQ node and its own ``epmd``, on free ports; stopped by PID, children too.

    The node's name, AMQP port, distribution port and ``epmd`` port are its own, so
    nodes started beside it never meet. Known by its port and PIDs only: it may have
    been started by another process (the tests share one node).
    """

    def __init__(self, port: int, pids: list[int]) -> None:
        self.port = port
        self.url = f"amqp://guest:guest@127.0.0.1:{port}/%2F"  # vhost "/"
        self.pids = pids  # the node's script, then epmd: each leads a session of its own

    @classmethod
    def start(
        cls, directory: Path, mark: str | None = None, wait: float = RABBITMQ_START_WAIT
    ) -> RabbitMQServer:
        """Boot a node with its files in ``directory``; raises ``DrillError`` if it cannot."""
        check_rabbitmq_installed()
        epmd = shutil.which("epmd") or _EPMD
        port, dist_port, epmd_port = _free_port(), _free_port(), _free_port()
        (directory / "home").mkdir(parents=True)
        (directory / "enabled_plugins").write_text("[].\n")
        (directory / "rabbitmq.conf").write_text(_RABBITMQ_CONF.format(port=port))
        env = _rabbitmq_env(directory, port, dist_port, epmd_port)
        if mark is not None:
            env[cleanup.OWNER] = mark
        epmd_proc = subprocess.Popen(  # noqa: S603  # Erlang's epmd, at a fixed path
            [epmd, "-port", str(epmd_port), "-address", "127.0.0.1"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        log = directory / "rabbitmq.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(  # noqa: S603  # Debian's script, at a fixed path
                [RABBITMQ_SERVER],
                env=env,
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _STARTED.update({proc.pid: proc, epmd_proc.pid: epmd_proc})
        node = cls(port, [proc.pid, epmd_proc.pid])
        deadline = time.monotonic() + wait
        while not node.answers():
            if time.monotonic() > deadline or proc.poll() is not None:
                node.stop()
                raise DrillError(
                    f"rabbitmq-server did not answer on port {port} within {wait:g} s; its "
                    f"log: {log}"
                )
            time.sleep(0.1)
        return node

    def answers(self) -> bool:
        """Whether the node speaks AMQP on its port."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
                conn.sendall(_AMQP_HEADER)
                return conn.recv(1) == b"\x01"
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM to the node (its script stops the Erlang VM), then anything left, by PID."""
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + RABBITMQ_STOP_WAIT
            while cleanup.session_processes(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            for left in cleanup.session_processes(pid):  # erl_child_setup, inet_gethost ...
                with contextlib.suppress(ProcessLookupError):
                    os.kill(left, signal.SIGKILL)
            proc = _STARTED.pop(pid, None)
            if proc is not None:
                proc.wait(RABBITMQ_STOP_WAIT)


def check_rabbitmq_installed() -> None:
    """Debian's rabbitmq-server and Erlang's epmd are here: else one line saying how to get them."""
    if not Path(RABBITMQ_SERVER).exists() or not Path(shutil.which("epmd") or _EPMD).exists():
        raise DrillError(RABBITMQ_NOT_INSTALLED)


def _rabbitmq_env(directory: Path, port: int, dist_port: int, epmd_port: int) -> dict[str, str]:
    """Every file of the node in ``directory``; its name and ports its own."""
    files: Mapping[str, str] = {
        "HOME": "home",  # the Erlang cookie
        "RABBITMQ_CONFIG_FILE": "rabbitmq",
        "RABBITMQ_CONF_ENV_FILE": "rabbitmq-env.conf",
        "RABBITMQ_ADVANCED_CONFIG_FILE": "advanced.config",
        "RABBITMQ_ENABLED_PLUGINS_FILE": "enabled_plugins",
        "RABBITMQ_MNESIA_BASE": "mnesia",
        "RABBITMQ_LOG_BASE": "log",
        "RABBITMQ_PID_FILE": "rabbitmq.pid",
    }
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ERL_EPMD_PORT": str(epmd_port),
        "RABBITMQ_NODENAME": f"lastcall-{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_LOGS": "-",
        **{name: str(directory / file) for name, file in files.items()},
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
