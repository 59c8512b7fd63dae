"""``lastcall.waitress.serve``: a real waitress server, real signals, real sockets."""

from __future__ import annotations

import http.client
import json
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import WAIT, free_port, refused

APP = """
import logging, os, sys, time
import lastcall
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")

def out(*words):
    sys.stdout.write(" ".join(map(str, words)) + "\\n")
    sys.stdout.flush()

@lastcall.on_shutdown
def app_hook():
    out("hook:app", os.getpid())

def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        out("slow", os.getpid())
        time.sleep(float(os.environ.get("SLOW", "1")))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
    return [b"done"]
"""
SCRIPT = (
    APP
    + """
from lastcall.waitress import serve
out("ready")
serve(app, listen="127.0.0.1:0", threads=4)
"""
)
FACTORY = (
    APP
    + """
def create_app():  # for python -m lastcall.waitress --call
    return app
"""
)


def start(spawn, env=None):
    child = spawn(SCRIPT, env=env)
    line = child.wait_for("Serving on http://", stream="stderr")
    child.port = int(re.search(r":(\d+)$", line).group(1))
    return child


def get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def wait_count(child, text: str, count: int, *, stream: str = "stdout") -> None:
    deadline = time.monotonic() + WAIT
    while True:
        with child._cond:
            sink = child.stdout if stream == "stdout" else child.stderr
            if sum(text in line for line in sink) >= count:
                return
        if time.monotonic() > deadline:
            pytest.fail(f"wanted {count} lines with {text!r}\n{child.output()}")
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_lets_every_request_in_flight_finish(spawn, sig):
    """Steps: 6 requests of 1 s (4 on waitress's threads, 2 waiting for one);
    the signal. All 6 get 200, a new connection during the drain is refused,
    the hook runs once, the process ends by that signal.
    """
    child = start(spawn)
    conns = []
    for _ in range(6):
        conn = http.client.HTTPConnection("127.0.0.1", child.port, timeout=WAIT)
        conn.request("GET", "/slow")
        conns.append(conn)
    wait_count(child, "slow", 4)
    child.send(sig)
    results: list = [None] * 6

    def read(i: int) -> None:
        try:
            response = conns[i].getresponse()
            response.read()
            results[i] = (response.status, response.getheader("Connection"))
        except Exception as exc:
            results[i] = repr(exc)
        finally:
            conns[i].close()

    threads = [threading.Thread(target=read, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    child.wait_for("waitress stopped accepting", stream="stderr")
    assert refused(child.port)
    for thread in threads:
        thread.join(WAIT)
    assert child.finish() == -sig, child.output()
    # answered after the stop began: each closes its connection (waitress's way, no 500)
    assert results == [(200, "close")] * 6, child.output()
    assert child.lines("hook:app") == [f"hook:app {child.pid}"]


def test_a_request_still_in_flight_at_the_end_is_named_in_the_report(spawn, tmp_path):
    """Steps: a 30 s request in flight, SIGTERM, grace 2 s: the report names GET /slow and
    how long it had run, and the log says so at ERROR; a /readyz probe is not listed."""
    report = tmp_path / "report.json"
    child = start(spawn, env={"SLOW": "30", "LASTCALL_GRACE": "2", "LASTCALL_REPORT": str(report)})
    conn = http.client.HTTPConnection("127.0.0.1", child.port, timeout=WAIT)
    conn.request("GET", "/slow")
    wait_count(child, "slow", 1)
    assert get(child.port, "/readyz") == 200
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    (request,) = json.loads(report.read_text())["requests"]
    assert (request["method"], request["path"]) == ("GET", "/slow")
    assert 1.0 < request["seconds"] < 3.0
    assert "request GET /slow still in flight after" in child.output()
    conn.close()


def test_prestop_delay_keeps_serving_while_readiness_is_red(spawn):
    child = start(spawn, env={"LASTCALL_PRESTOP_DELAY": "2"})
    assert get(child.port, "/readyz") == 200
    child.send(signal.SIGTERM)
    deadline = time.monotonic() + WAIT
    while get(child.port, "/readyz") != 503:
        assert time.monotonic() < deadline, child.output()
        time.sleep(0.02)
    assert get(child.port, "/") == 200
    assert get(child.port, "/livez") == 200
    child.wait_for("waitress stopped accepting", stream="stderr")
    assert refused(child.port)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert len(child.lines("hook:app")) == 1


def test_idle_keepalive_connections_are_closed_not_waited_for(spawn):
    child = start(spawn, env={"LASTCALL_EXIT_CODE": "0"})
    idle = http.client.HTTPConnection("127.0.0.1", child.port, timeout=WAIT)
    try:
        idle.request("GET", "/")
        response = idle.getresponse()
        response.read()
        assert response.status == 200
        assert response.getheader("Connection") != "close"  # kept alive, now idle
        began = time.monotonic()
        child.send(signal.SIGTERM)
        assert child.finish() == 0, child.output()
        assert time.monotonic() - began < 5, child.output()  # waitress alone waits 120 s
        assert len(child.lines("hook:app")) == 1
    finally:
        idle.close()


def test_bad_input_fails_before_serving(monkeypatch):
    from lastcall.waitress import serve

    with pytest.raises(TypeError, match="WSGI callable"):
        serve(object(), listen="127.0.0.1:0")
    monkeypatch.setenv("LASTCALL_GRACE", "5")
    monkeypatch.setenv("LASTCALL_PRESTOP_DELAY", "5")
    with pytest.raises(ValueError, match="LASTCALL_PRESTOP_DELAY=5 leaves no time"):
        serve(lambda environ, start_response: [], listen="127.0.0.1:0")


def test_command_line_takes_waitress_serve_options_and_stops_the_same(spawn):
    """``python -m lastcall.waitress`` with waitress-serve's options: requests in flight get
    200 at SIGTERM, readiness goes red while / still answers, then new connections are
    refused; the hook runs once and the process ends by the signal."""
    Path(spawn.script_dir, "webapp.py").write_text(FACTORY)
    port = free_port()
    argv = [sys.executable, "-m", "lastcall.waitress", f"--listen=127.0.0.1:{port}"]
    argv += ["--threads=4", "--call", "webapp:create_app"]
    child = spawn("", argv=argv, env={"LASTCALL_PRESTOP_DELAY": "1"}, wait_ready=False)
    child.wait_for("Serving on http://", stream="stderr")
    conns = []
    for _ in range(3):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        conn.request("GET", "/slow")
        conns.append(conn)
    wait_count(child, "slow", 3)
    child.send(signal.SIGTERM)
    child.wait_for("pre-stop delay: ", stream="stderr")
    assert get(port, "/readyz") == 503
    assert get(port, "/") == 200
    for conn in conns:
        assert conn.getresponse().status == 200
        conn.close()
    child.wait_for("waitress stopped accepting", stream="stderr")
    assert refused(port)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert child.lines("hook:app") == [f"hook:app {child.pid}"]


def test_command_line_refuses_an_unknown_option_as_waitress_serve_does(spawn):
    argv = [sys.executable, "-m", "lastcall.waitress", "--no-such-option", "webapp:app"]
    child = spawn("", argv=argv, wait_ready=False)
    assert child.finish() == 1, child.output()
    assert child.stderr[0] == "Error: option --no-such-option not recognized", child.output()
