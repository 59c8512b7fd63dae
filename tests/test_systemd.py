"""systemd's notify protocol against a real AF_UNIX datagram socket bound by the test."""

from __future__ import annotations

import signal
import socket
import sys
import time
from typing import TYPE_CHECKING

import pytest
from test_asgi import APP, free_port, get, wait_serving

from lastcall import Coordinator, systemd

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

WAIT = 15.0


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request, tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket, and the NOTIFY_SOCKET value that names it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
    else:
        name = f"lastcall-test-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        address = "@" + name
    sock.settimeout(WAIT)
    with sock:
        yield sock, address


def test_ready_and_stopping_reach_the_socket(notify_socket, monkeypatch) -> None:
    sock, address = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert systemd.ready("serving")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
    assert systemd.stopping()
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"


def test_attach_sends_stopping_when_the_stop_begins(notify_socket, monkeypatch) -> None:
    sock, address = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    coordinator = Coordinator(run_at_exit=False)
    systemd.attach(coordinator)
    systemd.attach(coordinator)  # once per coordinator
    report = coordinator.shutdown()
    assert [h.name for h in report.hooks] == ["systemd STOPPING=1"]
    assert sock.recv(4096).startswith(b"STOPPING=1")


def test_without_notify_socket_nothing_is_sent(monkeypatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not systemd.ready()
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert not systemd.ready()


def test_a_missing_socket_is_logged_not_raised(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert not systemd.stopping()
    assert "could not notify systemd" in caplog.text


def test_uvicorn_says_ready_once_listening_and_stopping_at_sigterm(spawn, notify_socket) -> None:
    sock, address = notify_socket
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "scenario_0:app", "--host", "127.0.0.1"]
    argv += ["--port", str(port)]
    env = {"NOTIFY_SOCKET": address, "LASTCALL_PRESTOP_DELAY": "0.5"}
    child = spawn(APP, argv=argv, env=env, wait_ready=False)
    assert sock.recv(4096) == b"READY=1"
    assert get(port, "/readyz")[0] == 200  # READY=1 came once the port was listening
    wait_serving(port, child)
    child.send(signal.SIGTERM)
    assert sock.recv(4096).startswith(b"STOPPING=1")
    assert get(port, "/")[0] == 200  # still serving: STOPPING=1 came before the delay ended
    assert child.finish() == -signal.SIGTERM, child.output()
