"""gunicorn with uvicorn's worker class under ``-c python:lastcall.gunicorn``: FastAPI's way.

``uvicorn_worker.UvicornWorker`` (the ``uvicorn-worker`` package) and the
older ``uvicorn.workers.UvicornWorker``: the ASGI app goes into lastcall's
ASGI middleware (not the WSGI one, which answered every request with 500),
its lifespan runs, and SIGTERM to the master drains every worker.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
from conftest import knock, refused, wait_session_empty
from test_gunicorn import (
    _control_socket,
    assert_no_worker_outlives_the_master,
    collect,
    get,
    hooks,
    send_slow,
    start,
    wait_lines,
    worker_pids,
)

pytest.importorskip("uvicorn")

APP = """
import asyncio, os, time
import lastcall

def out(*words):
    os.write(1, (" ".join(map(str, words)) + "\\n").encode())  # one write: workers share stdout

@lastcall.on_shutdown
def app_hook():
    out("hook:app", os.getpid())

@lastcall.on_shutdown(phase="final")
def linger():
    time.sleep(float(os.environ.get("LINGER", "0")))  # the worker lives on a while

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            out("lifespan:" + message["type"].split(".")[1], os.getpid())
            if message["type"] == "lifespan.startup":  # a start-up that may take time
                await asyncio.sleep(float(os.environ.get("STARTUP_DELAY", "0")))
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["path"] == "/slow":
        out("slow", os.getpid())
        await asyncio.sleep(1.0)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"done"})
"""

WSGI_APP = """
def app(environ, start_response):
    start_response("200 OK", [])
    return [b"wsgi"]
"""

WORKERS = ["uvicorn_worker.UvicornWorker", "uvicorn.workers.UvicornWorker"]


def start_asgi(spawn, worker_class: str, **env: str):
    pytest.importorskip(worker_class.rsplit(".", 1)[0])
    child = start(spawn, "-k", worker_class, app=APP, env=env)
    wait_lines(child, "lifespan:startup", 2, stream="stdout")
    return child


@pytest.mark.parametrize("worker_class", WORKERS)
def test_sigterm_to_the_master_drains_every_worker(spawn, worker_class):
    """Requests in flight get 200; readiness red while / still answers during the pre-stop
    delay; then new connections are refused; hooks once per worker, in the workers."""
    child = start_asgi(spawn, worker_class, LASTCALL_PRESTOP_DELAY="1")
    port = child.port
    assert get(port, "/readyz") == 200
    conns = send_slow(port, 6)
    wait_lines(child, "slow", 6, stream="stdout")
    child.send(signal.SIGTERM)
    results, threads = collect(conns)
    wait_lines(child, "pre-stop delay: ", 2)
    assert get(port, "/readyz") == 503
    assert get(port, "/") == 200
    wait_lines(child, "stopped accepting", 2)
    assert refused(port)
    for thread in threads:
        thread.join()
    assert results == [(200, b"done")] * 6, child.output()
    assert child.finish() == -signal.SIGTERM, child.output()
    assert sorted(hooks(child, "app")) == sorted(worker_pids(child)), child.output()
    assert len(child.lines("lifespan:shutdown")) == 2, child.output()


def test_sigkill_to_the_master_leaves_no_worker_serving(spawn):
    child = start_asgi(spawn, WORKERS[0])
    child.send(signal.SIGKILL)
    assert_no_worker_outlives_the_master(child)


def test_after_the_masters_sigkill_new_connections_are_refused_not_reset(spawn):
    """Steps: SIGKILL to the master; each worker sees it and drains; while their last hook
    still runs, a new connection is refused, not queued on a socket nobody accepts from and
    reset at the workers' exit: uvicorn's server closes gunicorn's own socket object, so once
    every worker's door is closed no copy of the listener is left."""
    child = start_asgi(spawn, WORKERS[0], LINGER="2")
    child.send(signal.SIGKILL)
    wait_lines(child, "hook:app", 2, stream="stdout")
    assert knock(child.port) == "refused"
    assert child.finish() == -signal.SIGKILL
    wait_session_empty(child.pid)


def test_a_wsgi_app_is_refused_in_one_line(spawn):
    """uvicorn would take it for ASGI 2 and fail every request: the worker does not boot."""
    pytest.importorskip("uvicorn_worker")
    Path(spawn.script_dir, "webapp.py").write_text(WSGI_APP)
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:lastcall.gunicorn", "-k", WORKERS[0]]
    argv += ["-b", "127.0.0.1:0", *_control_socket(spawn.script_dir), "webapp:app"]
    child = spawn("", argv=argv, wait_ready=False)
    assert child.finish() == 3, child.output()  # gunicorn: a worker failed to boot
    lines = [line for line in child.stderr if "serves ASGI apps" in line]
    assert len(lines) == 1, child.output()
    assert "a WSGI app runs with -k sync or -k gthread" in lines[0]


def test_a_worker_recycled_alone_has_no_prestop_delay(spawn):
    """Steps: LASTCALL_PRESTOP_DELAY=5; SIGHUP to the master replaces both workers one by
    one: each old worker drains at once and runs its hook (no pre-stop delay: its siblings
    serve, and a red /readyz from it would only make probes fail); SIGTERM then keeps it."""
    child = start_asgi(spawn, WORKERS[0], LASTCALL_PRESTOP_DELAY="5")
    old = worker_pids(child)
    child.send(signal.SIGHUP)
    wait_lines(child, "hook:app", 2, stream="stdout", timeout=4.0)  # well inside the 5 s
    assert sorted(hooks(child, "app")) == sorted(old), child.output()
    assert not [line for line in child.stderr if "pre-stop delay: " in line], child.output()
    wait_lines(child, "lifespan:startup", 4, stream="stdout")  # the new workers serve
    child.send(signal.SIGTERM)
    wait_lines(child, "pre-stop delay: ", 2)  # a full stop still has it
    assert child.finish() == -signal.SIGTERM, child.output()
