"""The end of a listening socket: what it queued is served, nothing after it is reset.

Real sockets on 127.0.0.1 and a real asyncio server; no process needed.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import WAIT

from lastcall._servers.asgi import AsyncioDoor
from lastcall._servers.listener import _admit_no_more, stop_listening, take_backlog


def _listener() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock, sock.getsockname()[1]


def _connect_and_ask(port: int, outcome: dict[str, str]) -> None:
    """A client as the drills' knocks: connect, send a request, read the answer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            outcome["answer"] = conn.recv(64).decode() or "closed"
    except ConnectionRefusedError:
        outcome["answer"] = "refused"
    except OSError as exc:
        outcome["answer"] = repr(exc)


def _syn_sent_to(port: int) -> bool:
    """A socket of this machine waits for the answer to its SYN to ``port`` (/proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2].endswith(f":{port:04X}") and fields[3] == "02":  # TCP_SYN_SENT
            return True
    return False


def test_take_backlog_takes_what_is_queued_then_refuses() -> None:
    sock, port = _listener()
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    taken = take_backlog(sock)
    assert len(taken) == 3
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    for conn, _address in taken:
        conn.close()
    for client in [*clients, sock]:
        client.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux socket filter")
def test_a_connection_arriving_while_the_socket_is_shut_is_refused_not_reset() -> None:
    """Steps: no new connection admitted; a client connects; the socket stops listening.
    Without the filter the client's handshake completes into the backlog and the
    shutdown resets it; with it the client's SYN is dropped, and its retry is refused."""
    sock, port = _listener()
    _admit_no_more(sock)
    outcome: dict[str, str] = {}
    client = threading.Thread(target=_connect_and_ask, args=(port, outcome))
    client.start()
    deadline = time.monotonic() + WAIT
    while not _syn_sent_to(port):  # the client's SYN has gone out (and was dropped)
        assert time.monotonic() < deadline
        time.sleep(0.01)
    stop_listening(sock)
    client.join(WAIT)
    assert outcome == {"answer": "refused"}
    sock.close()


def test_asyncio_door_serves_a_connection_accepted_in_the_same_turn() -> None:
    """Steps: asyncio accepts a connection, and in that same loop turn the door begins
    to close (before the connection is attached to its server). The connection's
    request is still answered: closing the server then would drop it unread."""
    outcome: dict[str, str] = {}

    class Answer(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            self.transport.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        door = AsyncioDoor(loop)
        closing: list[asyncio.Task[int]] = []
        began = asyncio.Event()
        accept = loop._accept_connection  # type: ignore[attr-defined]  # the door's, then asyncio's

        def accept_then_close(*args: Any) -> None:
            accept(*args)  # the connection's attach is now scheduled for the next turn
            if not closing:
                started = door.close(refuse=True)
                started.send(None)  # the door's first step, in this very turn
                closing.append(loop.create_task(started))
                began.set()

        loop._accept_connection = accept_then_close  # type: ignore[attr-defined]
        server = await loop.create_server(Answer, "127.0.0.1", 0)  # read with the one above
        port = server.sockets[0].getsockname()[1]
        client = threading.Thread(target=_connect_and_ask, args=(port, outcome))
        client.start()
        await asyncio.wait_for(began.wait(), WAIT)
        await closing[0]
        await asyncio.get_running_loop().run_in_executor(None, client.join, WAIT)
        server.close()

    asyncio.run(main())
    assert outcome["answer"].startswith("HTTP/1.1 200"), outcome
