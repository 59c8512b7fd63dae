"""The drain serves connections already queued in the listen backlog, then refuses new ones."""

from __future__ import annotations

import http.client
import socket
import threading
from pathlib import Path

from werkzeug.serving import make_server

from lastcall._servers.werkzeug import _Served, _stop_accepting


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"served"]


def test_queued_connections_are_served_and_new_ones_refused():
    """Steps: a server that has not accepted yet holds 3 connections in its
    backlog (the requests are sent); the final drain step runs; all 3 get 200;
    a new connection is refused.
    """
    server = make_server("127.0.0.1", 0, app, threaded=True)
    port = server.socket.getsockname()[1]
    results: list[object] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            results.append((response.status, response.read()))
        except OSError as exc:
            results.append(exc)
        finally:
            conn.close()

    clients = [threading.Thread(target=client) for _ in range(3)]
    for t in clients:
        t.start()
    # Wait until the kernel holds all three in the backlog (established, unaccepted).
    for _ in range(200):
        rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
        local = f":{port:04X}"
        if sum(1 for row in rows if row.split()[1].endswith(local) and row.split()[3] == "01") >= 3:
            break
        threading.Event().wait(0.02)
    try:
        _stop_accepting(server, _Served(), final=True)
        for t in clients:
            t.join(10)
        assert results == [(200, b"served")] * 3
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except ConnectionRefusedError:
            pass
        else:
            raise AssertionError("a new connection after the drain was accepted")
    finally:
        server.server_close()
