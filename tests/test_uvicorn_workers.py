"""``uvicorn --workers N`` through ``python -m lastcall.uvicorn``: lastcall in the supervisor too.

The supervisor serves ``LASTCALL_HEALTH_PORT`` for every worker (``starting``
until each serves, ``stopping`` from the signal), stops the workers
together, and ends by the signal; each worker drains as under uvicorn, and
the shared listening socket is shut, so a connection is served or refused,
never accepted and then reset.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import WAIT, free_port, knock
from test_gunicorn import collect, send_slow, wait_lines
from test_health_port import probe
from test_uvicorn_worker import APP as ASGI_APP

pytest.importorskip("uvicorn")

# Under uvicorn the app is wrapped by hand, as lastcall's docs say.
APP = (
    ASGI_APP
    + """
from lastcall.asgi import LastCallMiddleware
app = LastCallMiddleware(app)
"""
)
STARTUP = {"STARTUP_DELAY": "0.5"}  # a start-up that takes time: /readyz says starting


def test_sigterm_to_the_supervisor_stops_every_worker_in_order(spawn):
    """Steps: two workers, health port on the supervisor: /readyz starting, then ready; four
    slow requests in flight; SIGTERM to the supervisor: /readyz 503 stopping, /livez 200, /
    still served during the pre-stop delay, then refused (never reset); every request in
    flight 200; the hook once in each worker, none in the supervisor; exit by SIGTERM."""
    port, health = free_port(), free_port()
    Path(spawn.script_dir, "webapp.py").write_text(APP)
    argv = [sys.executable, "-m", "lastcall.uvicorn", "webapp:app", "--port", str(port)]
    child = spawn(
        "",
        argv=[*argv, "--workers", "2"],
        env={"LASTCALL_HEALTH_PORT": str(health), "LASTCALL_PRESTOP_DELAY": "0.5", **STARTUP},
        wait_ready=False,
    )
    assert probe(health, "/readyz") == (503, {"status": "starting"})
    deadline = time.monotonic() + WAIT
    while probe(health, "/readyz")[0] != 200:
        assert time.monotonic() < deadline, child.output()
        time.sleep(0.05)

    slow, readers = collect(send_slow(port, 4))
    wait_lines(child, "slow ", 4, stream="stdout")
    knocks: list[str] = []

    def knock_until_gone() -> None:
        while child.proc.poll() is None:
            knocks.append(knock(port))
            time.sleep(0.02)

    knocking = threading.Thread(target=knock_until_gone)
    child.send(signal.SIGTERM)
    knocking.start()
    deadline = time.monotonic() + WAIT  # the supervisor's main thread takes the signal
    while probe(health, "/readyz")[0] == 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert probe(health, "/readyz") == (503, {"status": "stopping"})
    assert probe(health, "/livez") == (200, {"status": "alive"})

    assert child.finish() == -signal.SIGTERM
    knocking.join(WAIT)
    for reader in readers:
        reader.join(WAIT)
    assert [status for status, _body in slow] == [200] * 4, slow
    assert set(knocks) == {"200", "refused"}, (knocks, child.output())  # served, then refused
    hooks = [int(line.split()[1]) for line in child.lines("hook:app ")]
    assert len(set(hooks)) == len(hooks) == 2, child.output()
    assert child.pid not in hooks
    assert "Errno 22" not in child.output()  # no accept on the socket a sibling shut


def test_plain_uvicorn_workers_with_a_health_port_keep_lastcall_in_every_worker(spawn):
    """Steps: plain ``uvicorn --workers 2`` with LASTCALL_HEALTH_PORT: one worker serves the
    port, the other says so in one line and starts anyway (an error there would make uvicorn
    run the app without lastcall, silently); SIGTERM: the hook runs in both workers."""
    port, health = free_port(), free_port()
    Path(spawn.script_dir, "webapp.py").write_text(APP)
    argv = [sys.executable, "-m", "uvicorn", "webapp:app", "--port", str(port), "--workers", "2"]
    child = spawn("", argv=argv, env={"LASTCALL_HEALTH_PORT": str(health)}, wait_ready=False)
    deadline = time.monotonic() + WAIT
    while sum("Application startup complete" in line for line in child.stderr) < 2:
        assert time.monotonic() < deadline, child.output()
        time.sleep(0.05)
    while probe(health, "/readyz") != (200, {"status": "ready"}):  # "starting" until it serves
        assert time.monotonic() < deadline, child.output()
        time.sleep(0.05)
    taken = [line for line in child.stderr if "is taken, by a sibling worker" in line]
    assert len(taken) == 1, child.output()
    assert "unsupported" not in child.output()  # lastcall's lifespan ran in both
    child.send(signal.SIGTERM)
    child.finish()
    hooks = [int(line.split()[1]) for line in child.lines("hook:app ")]
    assert len(set(hooks)) == len(hooks) == 2, child.output()


def test_a_report_path_without_pid_stops_the_supervisor_at_start_up(spawn, tmp_path):
    """Steps: ``--workers 2`` with LASTCALL_REPORT naming one file: one line says each
    worker would write over the other and how to fix it; no worker starts; status 1."""
    Path(spawn.script_dir, "webapp.py").write_text(APP)
    report = tmp_path / "report.json"
    argv = [sys.executable, "-m", "lastcall.uvicorn", "webapp:app", "--port", str(free_port())]
    argv += ["--workers", "2"]
    child = spawn("", argv=argv, env={"LASTCALL_REPORT": str(report)}, wait_ready=False)
    assert child.finish() == 1, child.output()
    errors = [line for line in child.stderr if line.startswith("Error: lastcall:")]
    assert len(errors) == 1, child.output()
    assert f"LASTCALL_REPORT={report}" in errors[0]
    assert str(tmp_path / "report-{pid}.json") in errors[0]
    assert "Traceback" not in child.output()
    assert not any("Started server process" in line for line in child.stderr)


def test_a_health_port_in_use_stops_the_supervisor_in_one_line(spawn):
    """Steps: ``--workers 2`` with LASTCALL_HEALTH_PORT on a port another socket listens on:
    one line names the port and says to choose a free one; no traceback, no worker starts;
    status 1 (before: a traceback from deep inside the supervisor's start)."""
    Path(spawn.script_dir, "webapp.py").write_text(APP)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        health = taken.getsockname()[1]
        argv = [sys.executable, "-m", "lastcall.uvicorn", "webapp:app", "--port", str(free_port())]
        argv += ["--workers", "2"]
        child = spawn("", argv=argv, env={"LASTCALL_HEALTH_PORT": str(health)}, wait_ready=False)
        assert child.finish() == 1, child.output()
    errors = [line for line in child.stderr if line.startswith("Error: lastcall:")]
    assert len(errors) == 1, child.output()
    assert f"LASTCALL_HEALTH_PORT={health}" in errors[0]
    assert "Traceback" not in child.output()
    assert not any("Started server process" in line for line in child.stderr)
