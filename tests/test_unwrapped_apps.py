"""``python -m lastcall.uvicorn`` and ``python -m lastcall.hypercorn`` on an app nobody wrapped.

Each command line puts the app in ``lastcall.asgi.LastCallMiddleware`` where
the server loads it, as ``-c python:lastcall.gunicorn`` and ``python -m
lastcall.waitress`` do: ``/readyz`` answers, requests in flight are served
at a stop, and a worker whose parent is SIGKILLed stops instead of serving
as an orphan. (Before: ``/readyz`` 404, the app served unprotected, and a
SIGKILLed parent left its workers running.)
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
from conftest import free_port, refused, wait_session_empty
from test_asgi import get, wait_serving
from test_gunicorn import collect, send_slow, statuses, wait_lines
from test_uvicorn_worker import APP  # a plain ASGI app: hooks, lifespan, /slow, no wrapper

pytest.importorskip("uvicorn")
pytest.importorskip("hypercorn")

COMMANDS = {
    "lastcall.uvicorn": (["-m", "lastcall.uvicorn", "webapp:app", "--port", "{port}"], 1),
    "lastcall.uvicorn --workers 2": (
        ["-m", "lastcall.uvicorn", "webapp:app", "--port", "{port}", "--workers", "2"],
        2,
    ),
    "lastcall.hypercorn": (["-m", "lastcall.hypercorn", "webapp:app", "-b", "127.0.0.1:{port}"], 1),
    "lastcall.hypercorn --workers 0": (
        ["-m", "lastcall.hypercorn", "webapp:app", "-b", "127.0.0.1:{port}", "--workers", "0"],
        1,
    ),
}
WITH_A_PARENT = ["lastcall.uvicorn --workers 2", "lastcall.hypercorn"]


def start(spawn, command: str, app: str = APP, **env: str):
    """Start ``command`` on the plain app; wait until each worker serves ``/readyz``."""
    args, workers = COMMANDS[command]
    port = free_port()
    Path(spawn.script_dir, "webapp.py").write_text(app)
    argv = [sys.executable, *(arg.format(port=port) for arg in args)]
    child = spawn("", argv=argv, env=env, wait_ready=False)
    wait_lines(child, "lifespan:startup", workers, stream="stdout")
    if command.startswith("lastcall.uvicorn"):  # every worker through its start-up, not only begun
        wait_lines(child, "Application startup complete.", workers, stream="stderr")
    wait_serving(port, child)
    _status, _headers, body = get(port, "/readyz")  # lastcall's answer, not the app's
    assert body.startswith(b"{") and json.loads(body)["status"] == "ready", (body, child.output())
    return child, port


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_unwrapped_app_is_drained(spawn, command):
    """Steps: the app, not wrapped by hand; /readyz 200; 4 requests of 1 s in flight;
    SIGTERM to the process started: all 4 get 200, then a new connection is refused; the
    app's hook runs once in each worker, the leader ends by SIGTERM."""
    child, port = start(spawn, command)
    assert get(port, "/livez")[0] == 200
    readers = collect(send_slow(port, 4))
    wait_lines(child, "slow ", 4, stream="stdout")
    child.send(signal.SIGTERM)
    results, threads = readers
    for thread in threads:
        thread.join()
    assert statuses(results) == [200] * 4, child.output()
    assert child.finish() == -signal.SIGTERM, child.output()
    assert refused(port)
    hooks = [int(line.split()[1]) for line in child.lines("hook:app ")]
    workers = {int(line.split()[1]) for line in child.lines("lifespan:startup ")}
    assert sorted(hooks) == sorted(workers), child.output()


@pytest.mark.parametrize("command", WITH_A_PARENT)
def test_sigkill_to_the_parent_leaves_no_worker(spawn, command):
    """Steps: SIGKILL to the supervisor (uvicorn) or master (hypercorn): each worker sees
    its parent gone, runs the app's hook, and exits; no process is left, nothing serves."""
    child, port = start(spawn, command)
    child.send(signal.SIGKILL)
    workers = {int(line.split()[1]) for line in child.lines("lifespan:startup ")}
    wait_lines(child, "hook:app ", len(workers), stream="stdout")
    assert child.finish() == -signal.SIGKILL
    wait_session_empty(child.pid)
    assert refused(port)
    assert {int(line.split()[1]) for line in child.lines("hook:app ")} == workers


@pytest.mark.parametrize("command", ["lastcall.uvicorn", "lastcall.hypercorn"])
def test_an_app_wrapped_by_hand_is_not_wrapped_again(spawn, tmp_path, command):
    """The app the user wrapped is served as it is: one drain hook, the app's hook once."""
    wrapped = APP + "from lastcall.asgi import LastCallMiddleware\napp = LastCallMiddleware(app)\n"
    report = tmp_path / "report-{pid}.json"
    child, _port = start(spawn, command, app=wrapped, LASTCALL_REPORT=str(report))
    (worker,) = {int(line.split()[1]) for line in child.lines("lifespan:startup ")}
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    hooks = json.loads((tmp_path / f"report-{worker}.json").read_text())["hooks"]
    assert [hook["name"] for hook in hooks].count("asgi drain") == 1, hooks
    assert len(child.lines("hook:app ")) == 1, child.output()


def test_a_wsgi_app_under_lastcall_hypercorn_is_served_and_said_so(spawn):
    """hypercorn serves WSGI apps too; lastcall's ASGI middleware cannot wrap one: it is
    served as hypercorn serves it, and one line in the worker says it is not drained."""
    Path(spawn.script_dir, "webapp.py").write_text(
        "def app(environ, start_response):\n"
        '    start_response("200 OK", [])\n'
        '    return [b"wsgi"]\n'
    )
    port = free_port()
    argv = [sys.executable, "-m", "lastcall.hypercorn", "webapp:app", "-b", f"127.0.0.1:{port}"]
    child = spawn("", argv=argv, wait_ready=False)
    wait_serving(port, child, "/")
    assert get(port, "/")[2] == b"wsgi"
    (line,) = wait_lines(child, "is not an ASGI app", 1)
    assert "without lastcall's drain" in line
    child.send(signal.SIGTERM)
    child.finish()
    assert len([line for line in child.stderr if "is not an ASGI app" in line]) == 1
