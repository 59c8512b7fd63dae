"""The worker drill's broker: a private ``redis-server`` on a free port, or the user's ``--broker``.

The private one runs in a session of its own, with the drill's mark in its
environment (``cli/cleanup.py``: Ctrl-C ends it with everything else the
drill started), keeps its files in the drill's temporary directory, saves
nothing to disk, and is stopped by PID when the drill ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING

from lastcall.cli import cleanup
from lastcall.cli.plan import DrillError

if TYPE_CHECKING:
    from pathlib import Path

NOT_INSTALLED = (
    "the worker drill needs a Redis broker and redis-server is not installed: "
    "apt-get install redis-server, or pass --broker redis://HOST:PORT/DB (your own)"
)
_START_WAIT = 10.0  # seconds for redis-server to answer PING
_STOP_WAIT = 5.0
_PORT_TRIES = 3


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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
