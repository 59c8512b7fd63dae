"""What the drain budget cuts short still ends properly: WebSockets told 1001, SSE ended
cleanly, and the requests still in flight named in the report (issue 12).

One process per server: a Starlette app whose WebSocket, event stream and slow request
all ignore ``lastcall.stopping``, so only the end of the drain budget can end them.
"""

from __future__ import annotations

import http.client
import json
import signal
import sys
import time

import pytest
from conftest import WAIT, close_code, free_port
from test_asgi import SERVERS, wait_serving
from test_flask_devserver import put_slow_requests_in_flight
from test_flask_devserver import start as start_devserver
from websockets.sync.client import connect

GRACE = 2.5  # the drain budget is 2.25 s of it

APP = """
import asyncio, sys
import lastcall
from lastcall.asgi import LastCallMiddleware
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute

def out(*words):
    sys.stdout.write(" ".join(map(str, words)) + "\\n")
    sys.stdout.flush()

async def ticks(websocket):
    await websocket.accept()
    while True:  # never looks at lastcall.stopping
        await websocket.send_text("tick")
        await asyncio.sleep(0.1)

async def endless(request):
    async def stream():
        while True:
            yield "data: x\\n\\n"
            await asyncio.sleep(0.1)
    return StreamingResponse(stream(), media_type="text/event-stream")

async def stuck(request):
    out("stuck entered")
    await asyncio.sleep(60)
    return PlainTextResponse("never")

routes = [WebSocketRoute("/ws", ticks), Route("/endless", endless), Route("/stuck", stuck)]
app = LastCallMiddleware(Starlette(routes=routes))
"""


@pytest.mark.parametrize("server", ["uvicorn", "hypercorn"])
def test_what_the_drain_budget_ends_is_told_so(spawn, tmp_path, server):
    """Steps: a WebSocket, an SSE stream and a stuck request open; SIGTERM. When the
    budget ends the WebSocket's client gets close code 1001, the stream ends cleanly
    after its last event, and the report names GET /stuck (and the stream) with its
    seconds in flight, logged at ERROR; the process still dies by SIGTERM within the grace."""
    report = tmp_path / "report.json"
    port = free_port()
    argv = [sys.executable, *(a.format(port=port) for a in SERVERS[server])]
    env = {"LASTCALL_GRACE": str(GRACE), "LASTCALL_REPORT": str(report)}
    child = spawn(APP, argv=argv, env=env, wait_ready=False)
    wait_serving(port, child)

    with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=WAIT) as websocket:
        assert websocket.recv(timeout=WAIT) == "tick"
        sse = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        sse.request("GET", "/endless")
        events = sse.getresponse()
        assert events.readline() == b"data: x\n"
        stuck = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        stuck.request("GET", "/stuck")
        child.wait_for("stuck entered")

        began = time.monotonic()
        child.send(signal.SIGTERM)
        code = close_code(websocket)
    assert code == 1001, child.output()
    assert events.read().endswith(b"data: x\n\n")  # no IncompleteRead: a clean end
    assert child.finish() == -signal.SIGTERM, child.output()
    assert time.monotonic() - began < GRACE + 1.0
    sse.close()
    stuck.close()

    requests = {r["path"]: r for r in json.loads(report.read_text())["requests"]}
    assert sorted(requests) == ["/endless", "/stuck"]  # the WebSocket is no HTTP request
    assert requests["/stuck"]["method"] == "GET"
    assert 2.0 < requests["/stuck"]["seconds"] < GRACE + 1.0
    assert "request GET /stuck still in flight after" in child.output()


def test_a_wsgi_request_still_in_flight_is_in_the_report(spawn, tmp_path):
    """Steps: Flask's dev server, a 30 s request in flight, SIGTERM, grace 1.5 s: the
    report of the serving process names GET /slow and how long it had run."""
    child, port, pid = start_devserver(
        spawn, tmp_path, reload=False, slow=30, env={"LASTCALL_GRACE": "1.5"}
    )
    put_slow_requests_in_flight(child, port, 1)
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    (request,) = json.loads((tmp_path / f"report-{pid}.json").read_text())["requests"]
    assert (request["method"], request["path"]) == ("GET", "/slow")
    assert 1.0 < request["seconds"] < 2.5
    assert "request GET /slow still in flight after" in child.output()
