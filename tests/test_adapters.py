"""The adapter contract: every server goes through the one drain sequence the same way.

``lastcall._servers.drain`` asks each adapter the same questions in the
same order. Here every adapter is held to it from outside, on its real
server: the drain's steps appear in order in the log; a request in flight
is finished; an idle keep-alive connection is closed at once rather than
waited for; a request that overruns the budget is cancelled (or given up)
and said so, and the stop still ends within the grace.
"""

from __future__ import annotations

import http.client
import inspect
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import WAIT, free_port, wait_session_empty
from test_matrix import (
    ASGI,
    ASGI_APP,
    FLASK_MAIN,
    LAUNCH,
    PACKAGE,
    WAITRESS_MAIN,
    WSGI_APP,
    _Request,
    _wait_answering,
    _wait_in_flight,
)

from lastcall._servers import drain
from lastcall._servers.asgi import AsgiServer
from lastcall._servers.gunicorn import GeventWorker, GunicornWorker
from lastcall._servers.waitress import WaitressAdapter
from lastcall._servers.werkzeug import WerkzeugAdapter
from lastcall._servers.wsgiref import WsgirefAdapter

ADAPTERS = [
    WerkzeugAdapter,
    GunicornWorker,
    GeventWorker,
    WaitressAdapter,
    AsgiServer,
    WsgirefAdapter,
]
LOGGING = """
import logging, sys
_handler = logging.StreamHandler(sys.stderr)
_handler.setFormatter(logging.Formatter("lastcall-log %(message)s"))
logging.getLogger("lastcall").addHandler(_handler)
logging.getLogger("lastcall").setLevel(logging.INFO)
"""


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.__name__)
def test_every_adapter_answers_every_question(adapter: type) -> None:
    questions = {name for name, _ in inspect.getmembers(drain.Adapter) if not name.startswith("_")}
    assert questions == {
        "name",
        "prestop_delay",
        "close_door",
        "in_flight",
        "wait_idle",
        "close_idle",
        "cancel",
    }
    missing = {q for q in questions if not hasattr(adapter, q) and q != "name"}
    assert not missing, missing


def _start(spawn, server: str, slow: float, grace: int):
    pytest.importorskip(PACKAGE.get(server, server))
    directory = Path(spawn.script_dir)
    app = ASGI_APP if server in ASGI else WSGI_APP
    (directory / "webapp.py").write_text(f"SLOW = {slow}\n{LOGGING}\n{app}")
    (directory / "flask_main.py").write_text(FLASK_MAIN)
    (directory / "waitress_main.py").write_text(WAITRESS_MAIN)
    port = free_port()
    env = {"LASTCALL_GRACE": str(grace), "PYTHONPATH": str(directory)}
    argv = LAUNCH[server](port)
    if server.startswith("gunicorn"):
        argv[argv.index("--graceful-timeout") + 1] = str(grace + 1)
    child = spawn("", argv=argv, env=env, wait_ready=False)
    _wait_answering(child, port)
    return child, port


def _logged(child, text: str) -> int:
    """The index of the first drain log line containing ``text``; fails if there is none."""
    lines = [line for line in child.stderr if "lastcall-log" in line]
    for index, line in enumerate(lines):
        if text in line:
            return index
    pytest.fail(f"no log line with {text!r}\n{child.output()}")


@pytest.mark.parametrize("server", list(LAUNCH))
def test_drain_finishes_in_flight_and_closes_idle_at_once(spawn, server: str) -> None:
    """Steps: a keep-alive connection left idle; a 1 s request in flight; SIGTERM.

    The request gets 200; the stop ends soon after it, not at the end of the
    9 s drain budget (the idle connection was closed); the drain's lines come
    in the sequence's order.
    """
    grace, slow = 10, 1.0
    child, port = _start(spawn, server, slow, grace)
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    idle.request("GET", "/fast")
    idle.getresponse().read()
    in_flight = _Request(port, "/slow")
    _wait_in_flight(child, port, 1)
    began = time.monotonic()
    child.send(signal.SIGTERM)
    child.finish(grace + WAIT)
    took = time.monotonic() - began
    idle.close()
    wait_session_empty(child.pid)
    assert in_flight.result(WAIT) == 200, child.output()
    assert took < slow + 2.5, f"{took:.1f} s\n{child.output()}"
    door = _logged(child, "stopped accepting; serving")
    assert _logged(child, "drained: nothing left in flight") > door


@pytest.mark.parametrize("server", list(LAUNCH))
def test_drain_cancels_what_overruns_and_says_so(spawn, server: str) -> None:
    """Steps: a 30 s request in flight, a 3 s grace, SIGTERM: the stop ends within the grace."""
    grace = 3
    child, port = _start(spawn, server, 30, grace)
    _Request(port, "/slow")
    _wait_in_flight(child, port, 1)
    began = time.monotonic()
    child.send(signal.SIGTERM)
    child.finish(grace + WAIT)
    took = time.monotonic() - began
    wait_session_empty(child.pid)
    assert took < grace + 1.5, f"{took:.1f} s\n{child.output()}"
    door = _logged(child, "stopped accepting; serving")
    assert _logged(child, "drain budget spent with 1 still in flight; 1 cancelled") > door


# A WSGI app for waitress, an ASGI one for uvicorn and hypercorn; the module is imported
# only by a server that started (which, with a bad setting, none should).
MINIMAL_APPS = """
def wsgi(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]

async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
"""


@pytest.mark.parametrize(
    ("module", "listening"),
    [
        (["lastcall.waitress", "--listen", "127.0.0.1:{port}", "webapp:wsgi"], "Serving on"),
        (["lastcall.uvicorn", "webapp:app", "--port", "{port}"], "Uvicorn running on"),
        (["lastcall.hypercorn", "webapp:app", "--bind", "127.0.0.1:{port}"], "Running on"),
    ],
    ids=["waitress", "uvicorn", "hypercorn"],
)
def test_a_bad_setting_stops_each_command_line_in_one_line(
    spawn, module: list[str], listening: str
) -> None:
    """Steps: ``python -m lastcall.<server>`` with LASTCALL_GRACE=soon (and an app, served
    with the defaults before): status 1, one line that names the setting, no traceback,
    and the server never said it was listening."""
    pytest.importorskip(module[0].split(".")[1])
    Path(spawn.script_dir, "webapp.py").write_text(MINIMAL_APPS)
    argv = [sys.executable, "-m", *(arg.format(port=free_port()) for arg in module)]
    child = spawn("", argv=argv, env={"LASTCALL_GRACE": "soon"}, wait_ready=False)
    assert child.finish() == 1, child.output()
    errors = [line for line in child.stderr if line.startswith("Error: lastcall:")]
    assert len(errors) == 1, child.output()
    assert "LASTCALL_GRACE='soon'" in errors[0]
    assert "Traceback" not in child.output()
    assert listening not in child.output()


@pytest.mark.parametrize("server", ["uvicorn", "hypercorn", "granian", "dramatiq"])
def test_a_command_line_whose_server_is_not_installed_says_so_in_one_line(server: str) -> None:
    """Steps: ``python -m lastcall.<server>`` where the server cannot be imported (hidden
    here by a None in sys.modules): status 1, one line naming the extra to install, no
    traceback. Before: ModuleNotFoundError's traceback."""
    hide = (
        f"import runpy, sys; sys.modules[{server!r}] = None; sys.argv = ['lastcall', '--help']; "
        f"runpy.run_module('lastcall.{server}', run_name='__main__', alter_sys=True)"
    )
    ran = subprocess.run(
        [sys.executable, "-c", hide], capture_output=True, text=True, timeout=WAIT, check=False
    )
    assert ran.returncode == 1, ran.stderr
    assert ran.stderr.splitlines() == [
        f"Error: lastcall: {server} is not installed: pip install 'lastcall[{server}]'"
    ]
