"""``lastcall.aiohttp.LastCall``: a real aiohttp app under ``web.run_app`` and under gunicorn's
``aiohttp.GunicornWebWorker``, real clients, real signals.

What each test shows against plain aiohttp (the same script without ``LastCall``) is in
its docstring.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import WAIT, close_code, free_port, knock, refused, signal_another_thread
from test_gunicorn import (
    assert_no_worker_outlives_the_master,
    collect,
    get,
    hooks,
    send_slow,
    wait_lines,
    worker_pids,
)
from test_gunicorn import start as start_gunicorn

pytest.importorskip("aiohttp")
from websockets.sync.client import connect

APP = """
import asyncio, logging, os, signal, sys, time
from aiohttp import web
import lastcall
from lastcall.aiohttp import LastCall

def out(*words):
    os.write(1, (" ".join(map(str, words)) + "\\n").encode())  # one write: workers share stdout

@lastcall.on_shutdown
def app_hook():
    out("hook:app", os.getpid())

loops = []

@lastcall.on_shutdown
async def async_hook():  # on aiohttp's own loop, where the app's clients live
    out("hook:async", asyncio.get_running_loop() is loops[0])

async def note_loop(app):
    loops.append(asyncio.get_running_loop())

async def slow(request):
    out("slow", os.getpid())
    await asyncio.sleep(float(request.query.get("s", "1")))
    return web.Response(text="done")

async def block(request):  # holds the whole loop: new connections wait in the backlog
    out("blocking")
    time.sleep(float(request.query.get("s", "1")))
    return web.Response(text="done")

async def ticks(request):  # never looks at lastcall.stopping
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    while True:
        await ws.send_str("tick")
        await asyncio.sleep(0.1)

async def on_a_thread(request):  # starts asyncio's executor: a thread that takes signals
    return web.Response(text=str(await asyncio.to_thread(os.getpid)))

async def cleanup(app):
    out("on_cleanup", os.getpid())

async def shutdown(app):
    if os.environ.get("TERM_IN_SHUTDOWN") == "1":  # a stop signal while aiohttp stops itself
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.5)

app = web.Application()
app.add_routes([web.get("/slow", slow), web.get("/block", block), web.get("/ws", ticks),
                web.get("/thread", on_a_thread)])
app.on_cleanup.append(cleanup)
app.on_shutdown.append(shutdown)
app.on_startup.append(note_loop)
if os.environ.get("PLAIN") != "1" and os.environ.get("GUNICORN") != "1":
    LastCall(app)
if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    web.run_app(
        app, host="127.0.0.1", port=int(sys.argv[1]), print=lambda *a: out("ready", sys.argv[1])
    )
"""


def start(spawn, env: dict[str, str] | None = None):
    port = free_port()
    script = spawn.script_dir / "aioapp.py"
    script.write_text(APP)
    child = spawn("", argv=[sys.executable, str(script), str(port)], env=env)
    child.port = port
    return child


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_requests_in_flight_at_the_signal_all_finish(spawn, sig):
    """Steps: 5 requests of 1 s in flight; the signal. All get 200; once the door closes a
    new connection is refused; the hook runs once, in the server's process, and the app's
    on_cleanup after it; the process ends by the signal.
    Plain aiohttp: the same 200s, but exit status 0 and no hook."""
    child = start(spawn, env={"LASTCALL_GRACE": "10"})
    conns = send_slow(child.port, 5)
    wait_lines(child, "slow", 5, stream="stdout")
    results, threads = collect(conns)
    child.send(sig)
    child.wait_for("lastcall aiohttp stopped accepting", stream="stderr")
    assert refused(child.port)
    for thread in threads:
        thread.join(WAIT)
    assert results == [(200, b"done")] * 5, child.output()
    assert child.finish() == -sig, child.output()
    assert child.lines("hook:app") == [f"hook:app {child.pid}"]
    assert child.lines("on_cleanup") == [f"on_cleanup {child.pid}"]
    assert child.lines("hook:async") == ["hook:async True"]
    assert child.stdout.index(f"hook:app {child.pid}") < child.stdout.index(
        f"on_cleanup {child.pid}"
    )
    assert "aiohttp drained: nothing left in flight" in child.output()


def wait_in_epoll(pid: int) -> None:
    """Until the main thread of ``pid`` has waited for I/O in two looks 0.1 s apart."""
    wchan = Path(f"/proc/{pid}/wchan")
    deadline = time.monotonic() + WAIT
    looks = 0
    while looks < 2:
        assert time.monotonic() < deadline, wchan.read_text()
        looks = looks + 1 if wchan.read_text() == "do_epoll_wait" else 0
        time.sleep(0.1)


def test_a_sigterm_the_executors_thread_takes_still_begins_the_stop(spawn):
    """The kernel hands a process's SIGTERM to any thread not blocking it when the main thread
    cannot take it at once: here asyncio's executor thread (``asyncio.to_thread`` started it),
    while the loop waits for I/O with nothing to do. The stop begins, and the process ends by
    the signal. Before: with aiohttp's handlers off the loop asyncio had dropped its wake-up
    fd, and the main thread slept on in epoll until a next connection came (the drill's
    aiohttp SIGTERM cell: its stop began 0.1 s late, once in ~10 runs), or for ever."""
    child = start(spawn, env={"LASTCALL_GRACE": "10"})
    assert get(child.port, "/thread") == 200
    wait_in_epoll(child.pid)
    signal_another_thread(child.pid, signal.SIGTERM)
    child.wait_for("lastcall shutdown started by SIGTERM", stream="stderr")
    assert child.finish() == -signal.SIGTERM, child.output()
    assert child.lines("hook:app") == [f"hook:app {child.pid}"]


def test_readiness_red_while_the_prestop_delay_still_serves(spawn):
    """Steps: SIGTERM with a pre-stop delay of 2 s. At once /readyz answers 503 while /livez
    and a new request on a new connection get 200; then the door closes: refused.
    Plain aiohttp: no /readyz (404), and the socket closes at the signal."""
    child = start(spawn, env={"LASTCALL_PRESTOP_DELAY": "2", "LASTCALL_GRACE": "10"})
    assert get(child.port, "/readyz") == 200
    child.send(signal.SIGTERM)
    child.wait_for("pre-stop delay", stream="stderr")
    assert get(child.port, "/readyz") == 503
    assert get(child.port, "/livez") == 200
    assert get(child.port, "/slow?s=0") == 200
    child.wait_for("lastcall aiohttp stopped accepting", stream="stderr")
    assert knock(child.port) == "refused"
    assert child.finish() == -signal.SIGTERM, child.output()


def test_the_backlog_is_served_not_reset(spawn):
    """Steps: a handler blocks the loop for 1.5 s; meanwhile 4 clients connect and send
    (the kernel queues them) and SIGTERM comes. Once the loop is free the door takes them:
    all 5 get 200, and then a new connection is refused.
    Plain aiohttp: its sites close the listening socket with the 4 still queued: reset."""
    child = start(spawn, env={"LASTCALL_GRACE": "10"})
    blocking = send_slow(child.port, 1, "/block?s=1.5")
    child.wait_for("blocking")
    queued = send_slow(child.port, 4, "/slow?s=0")
    results, threads = collect(blocking + queued)
    child.send(signal.SIGTERM)
    for thread in threads:
        thread.join(WAIT)
    assert results == [(200, b"done")] * 5, child.output()
    assert child.finish() == -signal.SIGTERM, child.output()


def test_what_overruns_the_budget_is_cancelled_websockets_told_1001(spawn, tmp_path):
    """Steps: a WebSocket that never ends and a 60 s request; SIGTERM, grace 2.5 s. When the
    budget runs out the WebSocket's client gets close code 1001, the request is cancelled
    and named in the report (the WebSocket is not a request), the hook runs once and the
    process ends by SIGTERM within the grace.
    Plain aiohttp: run_app waits 60 s (shutdown_timeout), then drops both (no close frame)."""
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
    has closed. The process ends by SIGINT at once.
    Plain aiohttp: the first Ctrl-C waits for the request (shutdown_timeout 60 s)."""
    child = start(spawn, env={"LASTCALL_GRACE": "30"})
    conns = send_slow(child.port, 1, "/slow?s=30")
    child.wait_for("slow")
    child.send(signal.SIGINT)
    child.wait_for("lastcall aiohttp stopped accepting", stream="stderr")
    began = time.monotonic()
    child.send(signal.SIGINT)
    assert child.finish() == -signal.SIGINT, child.output()
    assert time.monotonic() - began < 2.0
    conns[0].close()


@pytest.mark.parametrize("made_by", ["gunicorn", "app"])
def test_gunicorn_aiohttp_workers_drain_on_sigterm_to_the_master(spawn, made_by):
    """Steps: gunicorn -k aiohttp.GunicornWebWorker -c python:lastcall.gunicorn, 2 workers,
    the app with LastCall(app) or without (lastcall.gunicorn adds it); 6 requests of 1 s;
    SIGTERM to the master with a pre-stop delay of 1 s. /readyz 503 while / still answers;
    then refused; all 6 get 200; the hook once per worker, in the workers; the master ends
    by SIGTERM.
    Plain: each worker closes its socket at once and no hook runs; the master exits 0."""
    env = {"LASTCALL_PRESTOP_DELAY": "1", "GUNICORN": "1" if made_by == "gunicorn" else "0"}
    child = start_gunicorn(spawn, "-k", "aiohttp.GunicornWebWorker", app=APP, env=env)
    port = child.port
    wait_serving(port)
    conns = send_slow(port, 6)
    wait_lines(child, "slow", 6, stream="stdout")
    results, threads = collect(conns)
    child.send(signal.SIGTERM)
    wait_lines(child, "pre-stop delay: ", 2)
    assert get(port, "/readyz") == 503
    assert get(port, "/slow?s=0") == 200
    wait_lines(child, "] aiohttp stopped accepting", 2)
    assert refused(port)
    for thread in threads:
        thread.join(WAIT)
    assert results == [(200, b"done")] * 6, child.output()
    assert child.finish() == -signal.SIGTERM, child.output()
    assert sorted(hooks(child, "app")) == sorted(worker_pids(child)), child.output()
    assert sorted(int(line.split()[1]) for line in child.lines("on_cleanup")) == sorted(
        worker_pids(child)
    )


def test_sigkill_to_the_gunicorn_master_leaves_no_aiohttp_worker_serving(spawn):
    """Steps: SIGKILL to the master. Each worker notices (lastcall.gunicorn's parent watch),
    drains and runs its hook; none serves on as an orphan.
    Plain: aiohttp's worker notices within a second too, but runs no hook of the app's."""
    child = start_gunicorn(spawn, "-k", "aiohttp.GunicornWebWorker", app=APP)
    wait_serving(child.port)
    child.send(signal.SIGKILL)
    assert_no_worker_outlives_the_master(child)


def test_a_stop_begun_while_aiohttp_stops_on_its_own_does_not_wait_for_the_grace(spawn):
    """Steps: gunicorn --max-requests 1, one worker; after its second request the worker
    stops on its own (aiohttp's own stop), and a SIGTERM reaches it during its on_shutdown.
    lastcall's stop lets the app's on_cleanup run and the worker ends within a few seconds,
    not when the grace (14 s) runs out."""
    args = ("-k", "aiohttp.GunicornWebWorker", "--max-requests", "1")
    child = start_gunicorn(spawn, *args, workers=1, app=APP, env={"TERM_IN_SHUTDOWN": "1"})
    first = worker_pids(child)[0]
    assert get(child.port, "/slow?s=0") == 200
    assert get(child.port, "/slow?s=0") == 200
    began = time.monotonic()
    child.wait_for(f"on_cleanup {first}")
    assert time.monotonic() - began < 5.0, child.output()
    wait_lines(child, "ready; its shutdown hooks", 2)  # the master started another
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()


def wait_serving(port: int) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        try:
            if get(port, "/readyz") == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"/readyz on {port} not 200 within {WAIT} s")
        time.sleep(0.05)


def test_lastcall_takes_an_application_once_before_it_runs() -> None:
    from aiohttp import web

    from lastcall.aiohttp import LastCall

    with pytest.raises(TypeError, match=r"takes an aiohttp\.web\.Application"):
        LastCall(object())  # type: ignore[arg-type]
    app = web.Application()
    LastCall(app)
    with pytest.raises(RuntimeError, match="once is enough"):
        LastCall(app)
    frozen = web.Application()
    frozen.freeze()
    with pytest.raises(RuntimeError, match=r"before the app runs"):
        LastCall(frozen)
