"""``lastcall.tornado.LastCall``: a real tornado ``HTTPServer`` (what ``app.listen()`` returns),
real clients, real signals.

What each test shows against plain tornado (the same script without ``LastCall``) is in
its docstring.
"""

from __future__ import annotations

import json
import signal
import sys
import time

import pytest
from conftest import WAIT, close_code, free_port, knock, refused
from test_gunicorn import collect, get, send_slow, wait_lines

pytest.importorskip("tornado")
from websockets.sync.client import connect

APP = """
import asyncio, logging, os, signal, sys, time
import tornado.ioloop, tornado.web, tornado.websocket
import lastcall
from lastcall.tornado import LastCall

def out(*words):
    os.write(1, (" ".join(map(str, words)) + "\\n").encode())

@lastcall.on_shutdown
def app_hook():
    out("hook:app", os.getpid())

loops = []

@lastcall.on_shutdown
async def async_hook():  # on tornado's own loop, where the app's clients live
    out("hook:async", asyncio.get_running_loop() is loops[0])

class Slow(tornado.web.RequestHandler):
    async def get(self):
        out("slow", os.getpid())
        await asyncio.sleep(float(self.get_argument("s", "1")))
        self.write("done")

class Block(tornado.web.RequestHandler):  # holds the whole loop: new connections wait
    def get(self):
        out("blocking")
        time.sleep(float(self.get_argument("s", "1")))
        self.write("done")

class Ticks(tornado.websocket.WebSocketHandler):  # never looks at lastcall.stopping
    def open(self):
        self.ticking = asyncio.ensure_future(self.tick())

    async def tick(self):
        while True:
            await self.write_message("tick")
            await asyncio.sleep(0.1)

    def on_close(self):
        self.ticking.cancel()

def _exit(signum, frame):  # sys.exit on the main thread, inside tornado's loop
    out("exiting")
    sys.exit(3)

signal.signal(signal.SIGUSR1, _exit)

def make_app():
    return tornado.web.Application([("/slow", Slow), ("/block", Block), ("/ws", Ticks)])

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
port = int(sys.argv[1])

async def main():
    loops.append(asyncio.get_running_loop())
    server = make_app().listen(port, "127.0.0.1")
    if os.environ.get("PLAIN") != "1":
        LastCall(server)
    out("ready", port)
    await asyncio.Event().wait()

if os.environ.get("STYLE") == "ioloop":  # the older way: IOLoop.current().start()
    server = make_app().listen(port, "127.0.0.1")
    LastCall(server)
    loops.append(tornado.ioloop.IOLoop.current().asyncio_loop)
    out("ready", port)
    tornado.ioloop.IOLoop.current().start()
else:
    asyncio.run(main())
"""


def start(spawn, env: dict[str, str] | None = None):
    port = free_port()
    script = spawn.script_dir / "tornadoapp.py"
    script.write_text(APP)
    child = spawn("", argv=[sys.executable, str(script), str(port)], env=env)
    child.port = port
    return child


@pytest.mark.parametrize(
    ("sig", "style"),
    [(signal.SIGTERM, "asyncio"), (signal.SIGINT, "asyncio"), (signal.SIGTERM, "ioloop")],
)
def test_requests_in_flight_at_the_signal_all_finish(spawn, sig, style):
    """Steps: 5 requests of 1 s in flight; the signal. All get 200; once the door closes a
    new connection is refused; the hooks run once, in the server's process (an async one on
    tornado's loop); the process ends by the signal.
    Plain tornado: SIGTERM kills the process at once (5 connections reset, no hook); SIGINT
    raises KeyboardInterrupt out of the loop, the same."""
    child = start(spawn, env={"LASTCALL_GRACE": "10", "STYLE": style})
    conns = send_slow(child.port, 5)
    wait_lines(child, "slow", 5, stream="stdout")
    results, threads = collect(conns)
    child.send(sig)
    child.wait_for("lastcall tornado stopped accepting", stream="stderr")
    assert refused(child.port)
    for thread in threads:
        thread.join(WAIT)
    assert results == [(200, b"done")] * 5, child.output()
    assert child.finish() == -sig, child.output()
    assert child.lines("hook:app") == [f"hook:app {child.pid}"]
    assert child.lines("hook:async") == ["hook:async True"]
    assert "tornado drained: nothing left in flight" in child.output()


def test_an_exit_on_the_loops_thread_finishes_the_requests_in_flight(spawn):
    """Steps: 5 requests of 1 s in flight; ``sys.exit(3)`` raised on the main thread, inside
    tornado's loop. The loop turns on until all 5 get 200, new connections refused meanwhile;
    then the exit goes on: the hooks run once and the process exits 3.
    Before (and plain tornado): ``asyncio.run``'s teardown cancelled the 5 requests, their
    connections closed without a response."""
    child = start(spawn, env={"LASTCALL_GRACE": "10"})
    conns = send_slow(child.port, 5)
    wait_lines(child, "slow", 5, stream="stdout")
    results, threads = collect(conns)
    child.send(signal.SIGUSR1)
    child.wait_for("lastcall tornado's loop is ending: stopped accepting", stream="stderr")
    assert refused(child.port)
    for thread in threads:
        thread.join(WAIT)
    assert results == [(200, b"done")] * 5, child.output()
    assert child.finish() == 3, child.output()
    assert child.lines("hook:app") == [f"hook:app {child.pid}"]


def test_readiness_red_while_the_prestop_delay_still_serves(spawn):
    """Steps: SIGTERM with a pre-stop delay of 2 s. At once /readyz answers 503 while /livez
    and a new request on a new connection get 200; then the door closes: refused. An idle
    keep-alive connection does not hold the drain (tornado keeps one an hour).
    Plain tornado: no /readyz (404), and SIGTERM kills the process at once."""
    child = start(spawn, env={"LASTCALL_PRESTOP_DELAY": "2", "LASTCALL_GRACE": "20"})
    assert get(child.port, "/readyz") == 200
    idle = send_slow(child.port, 1, "/slow?s=0")
    assert idle[0].getresponse().read() == b"done"  # and the connection stays open
    began = time.monotonic()
    child.send(signal.SIGTERM)
    child.wait_for("pre-stop delay", stream="stderr")
    assert get(child.port, "/readyz") == 503
    assert get(child.port, "/livez") == 200
    assert get(child.port, "/slow?s=0") == 200
    child.wait_for("lastcall tornado stopped accepting", stream="stderr")
    assert knock(child.port) == "refused"
    assert child.finish() == -signal.SIGTERM, child.output()
    assert time.monotonic() - began < 5.0  # not held to the budget by the idle connection
    idle[0].close()


def test_the_backlog_is_served_not_reset(spawn):
    """Steps: a handler blocks the loop for 1.5 s; meanwhile 4 clients connect and send
    (the kernel queues them) and SIGTERM comes. All 5 get 200, then new connections are
    refused.
    Plain tornado: SIGTERM kills the process: all 5 reset."""
    child = start(spawn, env={"LASTCALL_GRACE": "10"})
    blocking = send_slow(child.port, 1, "/block?s=1.5")
    child.wait_for("blocking")
    queued = send_slow(child.port, 4, "/slow?s=0")
    results, threads = collect(blocking + queued)
    child.send(signal.SIGTERM)
    for thread in threads:
        thread.join(WAIT)
    assert results == [(200, b"done")] * 5, child.output()
    assert refused(child.port)
    assert child.finish() == -signal.SIGTERM, child.output()


def test_what_overruns_the_budget_is_cut_websockets_told_1001(spawn, tmp_path):
    """Steps: a WebSocket that never ends and a 60 s request; SIGTERM, grace 2.5 s. When the
    budget runs out the WebSocket's client gets close code 1001, the request's connection is
    closed and the request named in the report (the WebSocket is not a request), the hook
    runs once and the process ends by SIGTERM within the grace.
    Plain tornado: SIGTERM kills the process: no close frame, no report, no hook."""
    report = tmp_path / "report.json"
    child = start(spawn, env={"LASTCALL_GRACE": "2.5", "LASTCALL_REPORT": str(report)})
    with connect(f"ws://127.0.0.1:{child.port}/ws", open_timeout=WAIT) as websocket:
        assert websocket.recv(timeout=WAIT) == "tick"
        stuck = send_slow(child.port, 1, "/slow?s=60")
        child.wait_for("slow")
        began = time.monotonic()
        child.send(signal.SIGTERM)
        code = close_code(websocket)
    assert code == 1001, child.output()
    assert child.finish() == -signal.SIGTERM, child.output()
    assert time.monotonic() - began < 3.5
    stuck[0].close()
    assert child.lines("hook:app") == [f"hook:app {child.pid}"], child.output()
    assert [(r["method"], r["path"]) for r in json.loads(report.read_text())["requests"]] == [
        ("GET", "/slow")
    ]


def test_a_second_ctrl_c_ends_the_process_at_once(spawn):
    """Steps: a 30 s request in flight, grace 30 s; Ctrl-C, then Ctrl-C again once the door
    has closed. The process ends by SIGINT at once."""
    child = start(spawn, env={"LASTCALL_GRACE": "30"})
    conns = send_slow(child.port, 1, "/slow?s=30")
    child.wait_for("slow")
    child.send(signal.SIGINT)
    child.wait_for("lastcall tornado stopped accepting", stream="stderr")
    began = time.monotonic()
    child.send(signal.SIGINT)
    assert child.finish() == -signal.SIGINT, child.output()
    assert time.monotonic() - began < 2.0
    conns[0].close()


def test_lastcall_takes_an_http_server() -> None:
    import tornado.web

    from lastcall.tornado import LastCall

    with pytest.raises(TypeError, match=r"app\.listen\(\) returns one"):
        LastCall(tornado.web.Application())  # type: ignore[arg-type]
