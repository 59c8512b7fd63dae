"""granian's ASGI worker in ``LastCallMiddleware``, and ``python -m lastcall.granian``.

granian stops its Rust worker at the first SIGTERM (no pre-stop window), waits
without a bound, and its master exits 0. With the middleware each worker
holds granian's stop for the pre-stop delay, its listener admits no new
handshake before it closes (new connections refused, never reset), what
overruns the drain budget is cancelled (a WebSocket told 1001), and under
``python -m lastcall.granian`` the master ends by the signal.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import sys
import threading
import time

import pytest
from conftest import (
    WAIT,
    close_code,
    free_port,
    knock,
    live_processes_in_session,
    signal_another_thread,
)
from test_asgi import APP as ASGI_APP
from test_asgi import get, hooks, in_background, wait_serving
from test_gunicorn import wait_lines
from test_websockets import APP as ENDLESS_APP
from test_websockets import GRACE
from websockets.sync.client import connect

pytest.importorskip("granian")

# test_asgi's app, saying once lastcall handles the worker's stop (each worker: /readyz
# answers from one at a time).
STARTUP = '    out("startup loop", os.getpid(), id(asyncio.get_running_loop()))\n'
APP = ASGI_APP.replace(
    STARTUP, STARTUP + "    asyncio.get_running_loop().create_task(say_installed())\n"
).replace(
    "@asynccontextmanager\n",
    """async def say_installed():
    while not lastcall.default.installed:
        await asyncio.sleep(0.01)
    out("installed", os.getpid())

@asynccontextmanager
""",
)
assert "say_installed()" in APP

# The same for a WSGI app: a slow view, a hook, and a line once lastcall handles the stop.
WSGI_APP = """
import logging, os, threading, time
import lastcall
from lastcall.wsgi import LastCallMiddleware

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")

def out(*words):
    os.write(1, (" ".join(map(str, words)) + "\\n").encode())

@lastcall.on_shutdown
def sync_hook():
    out("hook:sync", os.getpid())

def say_installed():
    while not lastcall.default.installed:
        time.sleep(0.01)
    out("installed", os.getpid())

threading.Thread(target=say_installed, daemon=True).start()

def app(environ, start_response):
    body = b"hello"
    if environ["PATH_INFO"] == "/slow":
        out("entered", os.getpid())
        time.sleep(1)
        body = b"slow done"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]

app = LastCallMiddleware(app)
"""

# A WebSocket and a request that never end on their own, lastcall's lines on stderr.
CUT_SHORT_APP = ENDLESS_APP.replace(
    "import lastcall\n", "import lastcall, logging\nlogging.basicConfig(level=logging.INFO)\n"
)
assert CUT_SHORT_APP != ENDLESS_APP

# How each is started, and how its master ends after SIGTERM (plain granian's: 0).
COMMANDS = {
    "granian": (["-m", "granian"], 0),
    "lastcall.granian": (["-m", "lastcall.granian"], -signal.SIGTERM),
}


def start(spawn, command: str, *options: str, app: str = APP, **env: str):
    """The server on a free port, serving; its port. ``--interface asgi`` unless given."""
    port = free_port()
    argv, _status = COMMANDS[command]
    interface = [] if "--interface" in options else ["--interface", "asgi"]
    argv = [sys.executable, *argv, *interface, "--port", str(port), *options, "scenario_0:app"]
    child = spawn(app, argv=argv, env=env, wait_ready=False)
    wait_serving(port, child)
    return child, port


def wait_count(child, text: str, count: int) -> list[str]:
    """Wait until ``count`` stdout lines start with ``text``; return them."""
    deadline = time.monotonic() + WAIT
    while len(child.lines(text)) < count:
        assert time.monotonic() < deadline, child.output()
        time.sleep(0.01)
    return child.lines(text)


@pytest.mark.parametrize(
    ("command", "options", "app", "hooks_each"),
    [
        # One worker, uvloop: granian's default loop where installed.
        ("granian", [], APP, ["hook:app-lifespan", "hook:async", "hook:sync"]),
        (
            "lastcall.granian",
            ["--workers", "2", "--loop", "asyncio"],
            APP,
            ["hook:app-lifespan", "hook:async", "hook:sync"],
        ),
        ("lastcall.granian", ["--interface", "wsgi", "--workers", "2"], WSGI_APP, ["hook:sync"]),
    ],
    ids=["granian-asgi", "lastcall.granian-asgi-2-workers", "lastcall.granian-wsgi-2-workers"],
)
def test_sigterm_drains_every_worker_after_the_prestop_delay(
    spawn, command, options, app, hooks_each
):
    """Steps: 6 requests of 1 s in flight, new connections made all along; SIGTERM to the
    master: /readyz 503 while / still answers 200 (Connection: close) during the pre-stop
    delay; every request in flight 200; new connections served, then refused, never reset;
    each worker runs each hook once (the app's lifespan shutdown among them), by its PID;
    the master ends as COMMANDS says. Before: refused at once, no delay, 0 for both (and
    the WSGI worker's lastcall stop began only at its exit, after granian's)."""
    env = {"LASTCALL_PRESTOP_DELAY": "0.6", "LASTCALL_GRACE": "10"}
    child, port = start(spawn, command, *options, app=app, **env)
    workers = 2 if "--workers" in options else 1
    startups = wait_count(child, "installed", workers)
    clients = [in_background(get, port, "/slow") for _ in range(6)]
    wait_count(child, "entered", 6)
    knocks: list[str] = []

    def knock_until_gone() -> None:
        while child.proc.poll() is None:
            knocks.append(knock(port))
            time.sleep(0.02)

    knocking = threading.Thread(target=knock_until_gone)
    child.send(signal.SIGTERM)
    knocking.start()
    wait_lines(child, "pre-stop delay: ", workers)  # each worker's: /readyz answers from either
    status, _, body = get(port, "/readyz")
    assert (status, json.loads(body)["status"]) == (503, "stopping")
    status, headers, body = get(port, "/")
    assert (status, body, headers["connection"]) == (200, b"hello", "close")
    for thread, results in clients:
        thread.join(WAIT)
        assert results and results[0][::2] == (200, b"slow done"), (results, child.output())
    assert child.finish() == COMMANDS[command][1], child.output()
    knocking.join(WAIT)
    assert set(knocks) == {"200", "refused"}, (knocks, child.output())
    assert knocks[-1] == "refused"
    pids = sorted(line.split()[1] for line in startups)
    for hook in hooks_each:
        assert sorted(line.split()[1] for line in child.lines(hook)) == pids, child.output()
    assert hooks(child) == sorted(hooks_each * workers), child.output()


def test_a_sigterm_one_of_granians_threads_takes_still_stops_the_wsgi_worker(spawn):
    """The kernel hands a process's SIGTERM to any thread not blocking it when the main thread
    cannot take it at once; here one of the Rust server's threads gets it (tgkill). The
    worker's stop begins all the same and its request in flight is answered. Before: its main
    thread slept on in granian's ``evp.wait()``, never running lastcall's handler, and granian's
    master waited for the worker forever (the 2-worker WSGI test above, 1 run in 4 under load)."""
    env = {"LASTCALL_GRACE": "10"}
    child, port = start(spawn, "lastcall.granian", "--interface", "wsgi", app=WSGI_APP, **env)
    (worker,) = (int(line.split()[1]) for line in wait_count(child, "installed", 1))
    thread, results = in_background(get, port, "/slow")
    wait_count(child, "entered", 1)
    signal_another_thread(worker, signal.SIGTERM)
    wait_lines(child, "lastcall shutdown started by SIGTERM", 1)
    thread.join(WAIT)
    assert results and results[0][::2] == (200, b"slow done"), (results, child.output())
    wait_lines(child, f"in pid {worker}: 2 hooks, 2 ok", 1)
    child.finish()  # granian's master ends on its own once its only worker has (status 1)


def test_what_the_drain_budget_ends_is_told_so(spawn, tmp_path):
    """Steps: a WebSocket that never ends and a stuck request; SIGTERM. When the drain
    budget ends the WebSocket's client gets 1001, the report names GET /stuck, and the
    master ends by SIGTERM within the grace. Before: granian waited for ever."""
    report = tmp_path / "report.json"
    env = {"LASTCALL_GRACE": str(GRACE), "LASTCALL_REPORT": str(report)}
    child, port = start(spawn, "lastcall.granian", app=CUT_SHORT_APP, **env)
    with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=WAIT) as websocket:
        assert websocket.recv(timeout=WAIT) == "tick"
        stuck = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        stuck.request("GET", "/stuck")
        child.wait_for("stuck entered")
        began = time.monotonic()
        child.send(signal.SIGTERM)
        code = close_code(websocket)
    assert code == 1001, child.output()
    assert child.finish() == -signal.SIGTERM, child.output()
    assert time.monotonic() - began < GRACE + 1.0
    stuck.close()
    reports = list(tmp_path.glob("report*.json"))  # the worker's (the master has no stop)
    assert len(reports) == 1, (reports, child.output())
    requests = json.loads(reports[0].read_text())["requests"]
    assert [(r["method"], r["path"]) for r in requests] == [("GET", "/stuck")]


def test_a_second_ctrl_c_ends_at_once(spawn):
    """Steps: a request that would take 60 s; Ctrl-C (SIGINT to the process group) twice:
    the worker ends at once, the master by SIGINT, nothing left running."""
    child, port = start(spawn, "lastcall.granian", app=CUT_SHORT_APP, LASTCALL_GRACE="30")
    stuck = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    stuck.request("GET", "/stuck")
    child.wait_for("stuck entered")
    os.killpg(child.pid, signal.SIGINT)
    child.wait_for("shutdown started by SIGINT", stream="stderr")
    began = time.monotonic()
    os.killpg(child.pid, signal.SIGINT)
    assert child.finish() == -signal.SIGINT, child.output()
    assert time.monotonic() - began < 2.0
    stuck.close()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_sigkill_to_the_master_stops_the_workers(spawn, command):
    """No orphan keeps serving: each worker notices its master's death within a second,
    finishes the request in flight, runs its hooks and exits."""
    child, port = start(spawn, command, "--workers", "2")
    workers = {line.split()[1] for line in wait_count(child, "installed", 2)}
    client = in_background(get, port, "/slow")
    child.wait_for("entered")
    child.send(signal.SIGKILL)
    killed = time.monotonic()
    child.wait_for("master process", stream="stderr")
    assert time.monotonic() - killed < 1.0
    assert child.finish() == -signal.SIGKILL
    deadline = time.monotonic() + WAIT
    while live_processes_in_session(child.pid):
        assert time.monotonic() < deadline, "a worker is still running"
        time.sleep(0.02)
    thread, results = client
    thread.join(WAIT)
    assert results and results[0][0] == 200
    assert {line.split()[1] for line in child.lines("hook:sync")} == workers
