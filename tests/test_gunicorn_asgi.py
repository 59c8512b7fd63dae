"""gunicorn's own ASGI worker, ``-k asgi`` (25.1 on), under ``-c python:lastcall.gunicorn``.

The same contract as under uvicorn's worker (``tests/test_uvicorn_worker.py``):
the app goes into lastcall's ASGI middleware, its lifespan runs, SIGTERM to
the master serves every request in flight, new connections are refused,
each worker runs its hooks once and the master ends by the signal.
"""

from __future__ import annotations

import http.client
import importlib.metadata
import signal
import sys
from pathlib import Path

import pytest
from conftest import WAIT, knock, refused, wait_session_empty
from test_gunicorn import (
    _control_socket,
    assert_no_worker_outlives_the_master,
    collect,
    get,
    hooks,
    send_slow,
    start,
    statuses,
    wait_lines,
    worker_pids,
)
from test_uvicorn_worker import APP

from lastcall._servers.versions import _release

pytestmark = pytest.mark.skipif(
    _release(importlib.metadata.version("gunicorn")) < (25, 1),
    reason="lastcall drains gunicorn's -k asgi from gunicorn 25.1 on",
)

# Built first, never served: building a wrapper must change nothing in the server.
TWIN = APP.replace(
    "\nasync def app(",
    "\nasync def twin_app(scope, receive, send):\n"
    "    await app(scope, receive, send)\n\n"
    "from lastcall.asgi import LastCallMiddleware\n"
    "twin = LastCallMiddleware(twin_app)\n\n"
    "async def app(",
)
assert TWIN != APP


def start_asgi(spawn, *args: str, app: str = APP, workers: int = 2, **env: str):
    child = start(spawn, "-k", "asgi", *args, app=app, env=env, workers=workers)
    wait_lines(child, "lifespan:startup", workers, stream="stdout")
    return child


@pytest.mark.parametrize(
    ("app", "loop"),
    [(APP, "asyncio"), (APP, "auto"), (TWIN, "asyncio")],
    ids=["asyncio", "auto (uvloop if installed)", "with-an-unserved-twin"],
)
def test_sigterm_to_the_master_drains_every_worker(spawn, app, loop):
    """Requests in flight get 200; readiness red while / still answers during the pre-stop
    delay; then new connections are refused; hooks once per worker, in the workers; the
    master ends by SIGTERM. (Before: every worker failed to boot, 'ASGIWorker' object has no
    attribute 'wsgi'.)"""
    child = start_asgi(spawn, "--asgi-loop", loop, app=app, LASTCALL_PRESTOP_DELAY="1")
    port = child.port
    assert get(port, "/readyz") == 200
    conns = send_slow(port, 6)
    wait_lines(child, "slow", 6, stream="stdout")
    child.send(signal.SIGTERM)
    results, threads = collect(conns)
    wait_lines(child, "pre-stop delay:", 2)
    assert get(port, "/readyz") == 503
    assert get(port, "/") == 200
    wait_lines(child, "stopped accepting", 2)
    assert refused(port)
    for thread in threads:
        thread.join()
    assert statuses(results) == [200] * 6, child.output()
    assert child.finish() == -signal.SIGTERM, child.output()
    assert sorted(hooks(child, "app")) == sorted(worker_pids(child)), child.output()
    assert len(child.lines("lifespan:shutdown")) == 2, child.output()


def test_one_worker_serves_all_it_accepted_and_refuses_new_connections(spawn):
    """One worker, 8 slow requests sent at once, SIGTERM as the first begins: all 8 get
    200, and a knock during the drain is refused, not accepted and reset."""
    child = start_asgi(spawn, workers=1)
    conns = send_slow(child.port, 8)
    wait_lines(child, "slow", 1, stream="stdout")
    child.send(signal.SIGTERM)
    results, threads = collect(conns)
    wait_lines(child, "stopped accepting", 1)
    assert knock(child.port) == "refused"
    for thread in threads:
        thread.join()
    assert statuses(results) == [200] * 8, child.output()
    assert child.finish() == -signal.SIGTERM, child.output()


def test_sigkill_to_the_master_leaves_no_worker_serving(spawn):
    child = start_asgi(spawn)
    child.send(signal.SIGKILL)
    assert_no_worker_outlives_the_master(child)


def test_after_the_masters_sigkill_new_connections_are_refused_not_reset(spawn):
    """While the workers' last hook still runs after the master's SIGKILL, a new connection
    is refused, not queued on a socket nobody accepts from."""
    child = start_asgi(spawn, LINGER="2")
    child.send(signal.SIGKILL)
    wait_lines(child, "hook:app", 2, stream="stdout")
    assert knock(child.port) == "refused"
    assert child.finish() == -signal.SIGKILL
    wait_session_empty(child.pid)


def test_a_worker_recycled_alone_has_no_prestop_delay(spawn):
    """SIGHUP replaces both workers one by one: each old one drains at once and runs its
    hook (its siblings serve); SIGTERM then has the pre-stop delay."""
    child = start_asgi(spawn, LASTCALL_PRESTOP_DELAY="5")
    old = worker_pids(child)
    child.send(signal.SIGHUP)
    wait_lines(child, "hook:app", 2, stream="stdout", timeout=4.0)  # well inside the 5 s
    assert sorted(hooks(child, "app")) == sorted(old), child.output()
    assert not [line for line in child.stderr if "pre-stop delay:" in line], child.output()
    wait_lines(child, "lifespan:startup", 4, stream="stdout")
    assert get(child.port, "/") == 200
    child.send(signal.SIGTERM)
    wait_lines(child, "pre-stop delay:", 2)
    assert child.finish() == -signal.SIGTERM, child.output()


def test_a_wsgi_app_is_refused_in_one_line(spawn):
    Path(spawn.script_dir, "webapp.py").write_text(
        "def app(environ, start_response):\n"
        '    start_response("200 OK", [])\n'
        '    return [b"wsgi"]\n'
    )
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:lastcall.gunicorn", "-k", "asgi"]
    argv += ["-b", "127.0.0.1:0", *_control_socket(spawn.script_dir), "webapp:app"]
    child = spawn("", argv=argv, wait_ready=False)
    assert child.finish() == 3, child.output()  # gunicorn: a worker failed to boot
    lines = [line for line in child.stderr if "serves ASGI apps" in line]
    assert len(lines) == 1, child.output()


def test_with_the_lifespan_off_requests_in_flight_are_still_served(spawn):
    """``--asgi-lifespan off``: gunicorn sends no lifespan shutdown to end the drain, so it is
    not told to stop; the drain waits for the requests the middleware counts: all 200, hooks
    once per worker, the master ends by SIGTERM."""
    child = start(spawn, "-k", "asgi", "--asgi-lifespan", "off", app=APP)
    conns = send_slow(child.port, 4)
    wait_lines(child, "slow", 4, stream="stdout")
    child.send(signal.SIGTERM)
    results, threads = collect(conns)
    wait_lines(child, "stopped accepting", 2)
    assert refused(child.port)
    for thread in threads:
        thread.join()
    assert statuses(results) == [200] * 4, child.output()
    # Not held up waiting, to the end of the drain budget (about 12 s), for a lifespan
    # shutdown that never comes.
    assert child.finish(timeout=6) == -signal.SIGTERM, child.output()
    assert sorted(hooks(child, "app")) == sorted(worker_pids(child)), child.output()
    assert not child.lines("lifespan:"), child.output()


def test_below_25_1_asgi_is_refused_at_start_up(spawn):
    """gunicorn's version faked to 25.0 (a .dist-info ahead on PYTHONPATH): one line names
    the version to install, and no worker boots."""
    directory = Path(spawn.script_dir)
    info = directory / "fake-versions" / "gunicorn-25.0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gunicorn\nVersion: 25.0.0\n")
    (directory / "webapp.py").write_text(APP)
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:lastcall.gunicorn", "-k", "asgi"]
    argv += ["-b", "127.0.0.1:0", *_control_socket(directory), "webapp:app"]
    env = {"PYTHONPATH": f"{info.parent}:{directory}"}
    child = spawn("", argv=argv, env=env, wait_ready=False)
    assert child.finish() == 1, child.output()
    lines = [line for line in child.stderr if "gunicorn>=25.1" in line]
    assert len(lines) == 1, child.output()
    assert not [line for line in child.stderr if "Booting worker" in line], child.output()


PLAIN_WORKER = """
import time
from gunicorn.workers.base import Worker

class PlainWorker(Worker):  # a worker kind lastcall does not know: it serves nothing
    def run(self):
        while self.alive:
            self.notify()
            time.sleep(0.05)
"""


def test_what_is_not_drained_is_named_in_one_line_at_start_up(spawn):
    """A worker class lastcall does not drain and HTTP/2 on: gunicorn starts, and its master
    says, in one line, what lastcall does not drain; SIGTERM still ends it by the signal."""
    Path(spawn.script_dir, "plainworker.py").write_text(PLAIN_WORKER)
    args = ["-k", "plainworker.PlainWorker", "--http-protocols", "h1,h2"]
    child = start(spawn, *args, env={"PYTHONPATH": str(spawn.script_dir)})
    lines = [line for line in child.stderr if "not drained by lastcall at a stop:" in line]
    assert len(lines) == 1, child.output()
    assert "PlainWorker workers" in lines[0]
    assert "HTTP/2 connections" in lines[0]
    assert "dirty" not in lines[0]
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert "Traceback" not in child.output()


DIRTY_APP = """
from gunicorn.dirty.app import DirtyApp

class Heavy(DirtyApp):
    def init(self):
        pass

    def __call__(self, action, *args, **kwargs):
        return None

    def close(self):
        pass
"""


def test_the_dirty_arbiter_is_named_and_stopped_by_gunicorn(spawn):
    """A dirty app beside -k asgi: one line at start-up names the dirty arbiter, nothing
    crashes, SIGTERM still drains the workers and ends the master by the signal, and no
    process (the dirty arbiter's included) is left."""
    Path(spawn.script_dir, "dirtyapp.py").write_text(DIRTY_APP)
    args = ["--dirty-app", "dirtyapp:Heavy", "--dirty-workers", "1"]
    child = start_asgi(spawn, *args, PYTHONPATH=str(spawn.script_dir))
    lines = [line for line in child.stderr if "not drained by lastcall at a stop:" in line]
    assert len(lines) == 1, child.output()
    assert "the dirty arbiter and its dirty workers (dirty_apps)" in lines[0]
    assert "ASGIWorker" not in lines[0]
    conns = send_slow(child.port, 2)
    wait_lines(child, "slow", 2, stream="stdout")
    child.send(signal.SIGTERM)
    results, threads = collect(conns)
    for thread in threads:
        thread.join()
    assert statuses(results) == [200] * 2, child.output()
    assert child.finish() == -signal.SIGTERM, child.output()
    wait_session_empty(child.pid)
    assert "Traceback" not in child.output()


def test_max_requests_recycles_a_worker_and_the_port_stays_open(spawn):
    """``--max-requests 2``: after two requests the worker stops itself (gunicorn's own
    reason to stop), runs its hook once, and its successor serves on the same socket."""
    child = start_asgi(spawn, "--max-requests", "2", workers=1)
    (first,) = worker_pids(child)
    assert get(child.port, "/") == 200
    assert get(child.port, "/") == 200
    wait_lines(child, f"hook:app {first}", 1, stream="stdout")
    wait_lines(child, "ready; its shutdown hooks", 2)  # the replacement
    wait_lines(child, "lifespan:startup", 2, stream="stdout")
    assert get(child.port, "/") == 200
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert hooks(child, "app") == worker_pids(child), child.output()


@pytest.mark.parametrize("loop", ["asyncio", "auto"])
def test_an_idle_keep_alive_connection_does_not_hold_the_stop(spawn, loop):
    """``--keep-alive 30``, one connection idle after its first response, SIGTERM: gunicorn
    would wait for it up to its keep-alive (here the drain budget, about 12 s, came first);
    the drain closes it (cleanly: the client reads the end, no reset) and the worker ends
    within a few seconds."""
    child = start_asgi(spawn, "--keep-alive", "30", "--asgi-loop", loop, workers=1)
    idle = http.client.HTTPConnection("127.0.0.1", child.port, timeout=WAIT)
    idle.request("GET", "/")
    assert idle.getresponse().read() == b"done"
    child.send(signal.SIGTERM)
    assert child.finish(timeout=6) == -signal.SIGTERM, child.output()
    assert idle.sock.recv(1) == b"", child.output()
    idle.close()
    assert "drain budget spent" not in child.output()
    assert hooks(child, "app") == worker_pids(child), child.output()


def test_an_unserved_wrapped_twin_changes_nothing_under_uvicorns_worker(spawn):
    """As for -k asgi above, under UvicornWorker: the module first builds a LastCallMiddleware
    it never serves, then the app gunicorn serves (wrapped by lastcall.gunicorn); 4 requests
    of 1 s in flight, SIGTERM to the master: all 4 get 200, hooks once per worker, the master
    ends by SIGTERM."""
    pytest.importorskip("uvicorn_worker")
    child = start(spawn, "-k", "uvicorn_worker.UvicornWorker", app=TWIN)
    wait_lines(child, "lifespan:startup", 2, stream="stdout")
    conns = send_slow(child.port, 4)
    wait_lines(child, "slow", 4, stream="stdout")
    child.send(signal.SIGTERM)
    results, threads = collect(conns)
    for thread in threads:
        thread.join()
    assert statuses(results) == [200] * 4, child.output()
    assert child.finish() == -signal.SIGTERM, child.output()
    assert sorted(hooks(child, "app")) == sorted(worker_pids(child)), child.output()
