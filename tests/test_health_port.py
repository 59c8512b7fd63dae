"""Health on a port of its own: probes answered while the app is busy, and during the stop."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest
from conftest import WAIT, free_port
from test_process_triggers import PRELUDE

from lastcall import Coordinator
from lastcall._config import resolve


def probe(port: int, path: str) -> tuple[int, dict[str, object]]:
    """GET ``path`` on the health port; retried only until the listener is up (bounded)."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())
        except urllib.error.URLError as error:
            if not isinstance(error.reason, ConnectionRefusedError) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


BUSY = """
lastcall.install(prestop_delay=3, grace=6)
lastcall.on_shutdown(say("close"))
out("ready")
while True:
    sum(range(10**6))  # the only worker, always busy
"""


def test_probes_are_answered_while_the_app_is_busy_and_tell_the_stop(spawn):
    """Steps: the app's main thread never stops computing; /readyz on the health port says
    200; after SIGTERM, during the pre-stop delay, /readyz says 503 stopping and /livez 200."""
    port = free_port()
    child = spawn(PRELUDE + BUSY, env={"LASTCALL_HEALTH_PORT": str(port)})
    assert probe(port, "/readyz") == (200, {"status": "ready"})
    assert probe(port, "/livez") == (200, {"status": "alive"})
    child.send(signal.SIGTERM)
    child.wait_for("shutdown started", stream="stderr")
    assert probe(port, "/readyz") == (503, {"status": "stopping"})
    assert probe(port, "/livez") == (200, {"status": "alive"})
    assert child.finish() == -signal.SIGTERM


def test_readiness_can_be_turned_off_and_on_with_a_reason(spawn):
    """Steps: the app turns readiness off (its own SIGUSR1 handler) and on (SIGUSR2);
    /readyz follows with the reason, /livez stays 200."""
    port = free_port()
    child = spawn(
        PRELUDE
        + """
lastcall.install()
signal.signal(signal.SIGUSR1, lambda *_: lastcall.set_not_ready("shedding load"))
signal.signal(signal.SIGUSR2, lambda *_: lastcall.set_ready())
out("ready")
while True:
    time.sleep(0.05)
""",
        env={"LASTCALL_HEALTH_PORT": str(port)},
    )
    assert probe(port, "/readyz")[0] == 200
    child.send(signal.SIGUSR1)
    deadline = time.monotonic() + WAIT
    while probe(port, "/readyz")[0] == 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert probe(port, "/readyz") == (503, {"status": "not_ready", "reason": "shedding load"})
    assert probe(port, "/livez")[0] == 200
    child.send(signal.SIGUSR2)
    while probe(port, "/readyz")[0] == 503 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert probe(port, "/readyz") == (200, {"status": "ready"})
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM


def test_readiness_toggle_in_process():
    coordinator = Coordinator(run_at_exit=False)
    assert coordinator.readiness() == ("ready", None)
    coordinator.expect_serving()
    assert coordinator.readiness() == ("starting", None)
    coordinator.serving()
    booted: list[int] = []
    coordinator.expect_serving(until=lambda: len(booted) >= 2)  # a master counting workers
    booted.append(1)
    assert coordinator.readiness() == ("starting", None)
    booted.append(2)
    assert coordinator.readiness() == ("ready", None)
    booted.clear()
    assert coordinator.readiness() == ("ready", None)  # once serving, not asked again
    coordinator.set_not_ready("shedding load")
    assert coordinator.readiness() == ("not_ready", "shedding load")
    coordinator.set_ready()
    assert coordinator.readiness() == ("ready", None)
    coordinator.shutdown()
    assert coordinator.readiness() == ("stopping", None)


def test_a_bad_or_taken_port_is_one_line_at_start_up(spawn):
    with pytest.raises(ValueError, match="LASTCALL_HEALTH_PORT='http' is not a port number"):
        resolve(environ={"LASTCALL_HEALTH_PORT": "http"})
    with pytest.raises(ValueError, match="from 0 to 65535"):
        resolve(health_port=70000)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        child = spawn(
            PRELUDE
            + """
try:
    lastcall.install()
except OSError as exc:
    out("refused:", exc)
out("ready")
""",
            env={"LASTCALL_HEALTH_PORT": str(port)},
        )
        assert child.finish() == 0
        line = child.wait_for("refused:")
        assert f"LASTCALL_HEALTH_PORT={port}: cannot listen on 127.0.0.1:{port}" in line


BUSY_APP = """
import os, time

time.sleep(0.5)  # the app takes a while to load: the master's /readyz says starting

def app(environ, start_response):
    if environ["PATH_INFO"] == "/busy":
        os.write(1, b"busy\\n")
        time.sleep(3)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done"]
"""


def test_gunicorn_master_serves_the_health_port_for_a_busy_worker(spawn):
    """Steps: gunicorn, one sync worker, LASTCALL_HEALTH_PORT: the master answers /readyz
    starting until the worker has loaded the app, then 200, in well under a second while the
    only worker is busy for 3 s; after SIGTERM /readyz 503 stopping, /livez 200; the busy
    request still gets its 200."""
    pytest.importorskip("gunicorn")  # the core's legs on other Pythons have no servers
    from test_gunicorn import collect, send_slow, start, wait_lines

    health = free_port()
    child = start(
        spawn, workers=1, app=BUSY_APP, env={"LASTCALL_HEALTH_PORT": str(health)}, wait=False
    )
    assert probe(health, "/readyz") == (503, {"status": "starting"})
    wait_lines(child, "ready; its shutdown hooks", 1)
    assert probe(health, "/readyz") == (200, {"status": "ready"})

    busy, readers = collect(send_slow(child.port, 1, "/busy"))
    child.wait_for("busy")
    began = time.monotonic()
    assert probe(health, "/readyz") == (200, {"status": "ready"})
    assert time.monotonic() - began < 0.5
    child.send(signal.SIGTERM)
    deadline = time.monotonic() + WAIT
    while probe(health, "/readyz")[0] == 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert probe(health, "/readyz") == (503, {"status": "stopping"})
    assert probe(health, "/livez") == (200, {"status": "alive"})
    assert child.finish() == -signal.SIGTERM, child.output()
    readers[0].join(WAIT)
    assert busy == [(200, b"done")]
