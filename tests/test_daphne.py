"""daphne (Django Channels' server) with the app in ``LastCallMiddleware``, WebSockets included.

As shipped, daphne's first SIGTERM cancels every request and WebSocket in
flight (``kill_all_applications``, daphne#177) and exits 0. With the
middleware: readiness red while it still serves, the listener's backlog
served and new connections refused, what is in flight finished, what
overruns the drain budget cancelled (a WebSocket told 1001), the process
ended by the signal.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sys
import threading
import time

import pytest
from conftest import WAIT, close_code, free_port, knock
from test_asgi import APP, TWINS, get, hooks, in_background, wait_serving
from test_granian import CUT_SHORT_APP
from test_websockets import GRACE
from websockets.sync.client import connect

pytest.importorskip("daphne")

# test_asgi's app, its slow requests long enough to be still in flight well after the door
# closed, on a loaded machine too.
SLOWER_APP = APP.replace("    await asyncio.sleep(1)\n", "    await asyncio.sleep(2.5)\n")
assert SLOWER_APP != APP


def start(spawn, *, app: str = APP, probe: str = "/readyz", **env: str):
    """``daphne scenario_0:app`` on a free port, serving; its port."""
    port = free_port()
    argv = [sys.executable, "-m", "daphne", "-p", str(port), "scenario_0:app"]
    child = spawn(app, argv=argv, env=env, wait_ready=False)
    wait_serving(port, child, probe)
    return child, port


def test_sigterm_finishes_what_is_in_flight_after_the_prestop_delay(spawn):
    """Steps: 6 requests of 2.5 s in flight, an idle keep-alive connection, new connections
    made all along; SIGTERM: /readyz 503 while / still answers 200 (Connection: close)
    during the pre-stop delay; every request in flight 200; the idle connection closed by
    the server; new connections served, then refused, never reset; each hook once; exit
    by SIGTERM. Before: all 6 cut, a new connection accepted then closed, exit 0."""
    child, port = start(spawn, app=SLOWER_APP, LASTCALL_PRESTOP_DELAY="0.3", LASTCALL_GRACE="10")
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    idle.request("GET", "/")
    assert idle.getresponse().read() == b"hello"
    clients = [in_background(get, port, "/slow") for _ in range(6)]
    deadline = time.monotonic() + WAIT
    while len(child.lines("entered")) < 6:
        assert time.monotonic() < deadline, child.output()
        time.sleep(0.01)
    knocks: list[str] = []

    def knock_until_gone() -> None:
        while child.proc.poll() is None:
            knocks.append(knock(port))
            time.sleep(0.02)

    knocking = threading.Thread(target=knock_until_gone)
    child.send(signal.SIGTERM)
    knocking.start()
    child.wait_for("pre-stop delay: ", stream="stderr")
    status, _, body = get(port, "/readyz")
    assert (status, json.loads(body)["status"]) == (503, "stopping")
    status, headers, body = get(port, "/")
    assert (status, body, headers["connection"]) == (200, b"hello", "close")
    child.wait_for("stopped accepting", stream="stderr")
    assert idle.sock is not None
    idle.sock.settimeout(WAIT)
    assert idle.sock.recv(1) == b""  # closed by the server while the drain waits ...
    assert not any(results for _thread, results in clients)  # ... for these, still in flight
    idle.close()
    for thread, results in clients:
        thread.join(WAIT)
        assert results and results[0][::2] == (200, b"slow done"), (results, child.output())
    assert child.finish() == -signal.SIGTERM, child.output()
    knocking.join(WAIT)
    assert set(knocks) == {"200", "refused"}, (knocks, child.output())
    assert knocks[-1] == "refused"
    assert hooks(child) == ["hook:async", "hook:sync"], child.output()


# An app whose /block holds daphne's event loop: connections made meanwhile wait in the
# listen backlog, unaccepted.
BLOCKING_APP = """
import logging, sys, time
from lastcall.asgi import LastCallMiddleware

logging.basicConfig(level=logging.INFO)

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/block":
        print("blocking", flush=True)
        time.sleep(1.5)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

app = LastCallMiddleware(app)
"""


def test_the_backlog_at_the_stop_is_served(spawn):
    """Steps: SIGTERM; during the pre-stop delay /block holds daphne's loop past the
    delay's end; 4 connections, each with its request, wait in the listen backlog; as the
    loop turns again the door closes first: all 4 are handed to daphne and answered 200,
    and a new connection after them is refused. Without the hand-over they were reset."""
    child, port = start(spawn, app=BLOCKING_APP, probe="/livez", LASTCALL_PRESTOP_DELAY="0.5")
    child.send(signal.SIGTERM)
    child.wait_for("pre-stop delay: ", stream="stderr")
    blocked = in_background(get, port, "/block")
    child.wait_for("blocking")
    queued = []
    for _ in range(4):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        conn.request("GET", "/")
        queued.append(conn)
    answers = [(r.status, r.read()) for r in (conn.getresponse() for conn in queued)]
    assert answers == [(200, b"ok")] * 4, child.output()
    assert "serving 4 " in child.wait_for("taken from the backlog", stream="stderr")
    assert knock(port) == "refused"
    for conn in queued:
        conn.close()
    blocked[0].join(WAIT)
    assert blocked[1] and blocked[1][0][0] == 200
    assert child.finish() == -signal.SIGTERM, child.output()


def test_what_the_drain_budget_ends_is_told_so(spawn, tmp_path):
    """Steps: a WebSocket that never ends and a stuck request; SIGTERM. When the drain
    budget ends the WebSocket's client gets 1001, the report names GET /stuck, and the
    process ends by SIGTERM within the grace. Before: both cut at once (1006), exit 0."""
    report = tmp_path / "report.json"
    env = {"LASTCALL_GRACE": str(GRACE), "LASTCALL_REPORT": str(report)}
    child, port = start(spawn, app=CUT_SHORT_APP, probe="/livez", **env)
    with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=WAIT) as websocket:
        assert websocket.recv(timeout=WAIT) == "tick"
        stuck = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        stuck.request("GET", "/stuck")
        child.wait_for("stuck entered")
        began = time.monotonic()
        child.send(signal.SIGTERM)
        code = close_code(websocket)
    assert code == 1001, child.output()
    assert time.monotonic() - began > GRACE - 1.0  # served until the budget's end
    assert child.finish() == -signal.SIGTERM, child.output()
    assert time.monotonic() - began < GRACE + 1.0
    stuck.close()
    requests = json.loads(report.read_text())["requests"]
    assert [(r["method"], r["path"]) for r in requests] == [("GET", "/stuck")]


def test_a_second_ctrl_c_ends_at_once(spawn):
    """Steps: a request that would take 60 s; Ctrl-C twice: ends at once, by SIGINT."""
    child, port = start(spawn, app=CUT_SHORT_APP, probe="/livez", LASTCALL_GRACE="30")
    stuck = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    stuck.sendall(b"GET /stuck HTTP/1.1\r\nHost: x\r\n\r\n")
    child.wait_for("stuck entered")
    os.killpg(child.pid, signal.SIGINT)
    child.wait_for("shutdown started by SIGINT", stream="stderr")
    began = time.monotonic()
    os.killpg(child.pid, signal.SIGINT)
    assert child.finish() == -signal.SIGINT, child.output()
    assert time.monotonic() - began < 2.0
    stuck.close()


def test_a_wrapped_twin_daphne_does_not_serve_changes_nothing(spawn):
    """The module builds a LastCallMiddleware, but daphne serves the plain app: daphne
    stops as shipped (exit 0), and lastcall takes no signal."""
    child, port = start(spawn, app=TWINS["plain"], probe="/")
    assert get(port, "/")[0] == 200
    child.send(signal.SIGTERM)
    assert child.finish() == 0, child.output()
    assert "pre-stop delay" not in child.output()
