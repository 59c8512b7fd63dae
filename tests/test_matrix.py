"""lastcall's contract on every server, every way of stopping, seen from outside.

``lastcall drill --matrix`` must exit 0 (every lastcall cell clean). Then,
for each server, a prober opens a new connection every 50 ms from the stop
until the process is gone: each must be refused or get a complete response,
never be accepted and then reset, nor get an empty reply; requests in
flight at the stop get their 200, also when an exception or a normal exit
ended the loop serving them. The apps and launch lines here are the tests' own, written the way
a user starts each server.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import MATRIX, WAIT, free_port, wait_session_empty

PROBE_EVERY = 0.05
IN_FLIGHT = 4
SLOW = 0.5  # seconds a request in flight takes
GRACE = 5

# What both apps share: a line printer, and an exception raised on the main thread.
APP_TOOLS = """
def out(*words):
    sys.stdout.write(" ".join(map(str, words)) + "\\n")
    sys.stdout.flush()

class Unhandled(BaseException):
    # Not an Exception, so that no server's "except Exception" swallows it.
    pass

_pending = []
"""

WSGI_APP = (
    """
import os, signal, sys, threading, time
"""
    + APP_TOOLS
    + """
def _raise(signum, frame):
    raise _pending.pop()

signal.signal(signal.SIGUSR1, _raise)

def wsgi(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/slow":
        out("slow", os.getpid())
        time.sleep(SLOW)
    elif path in ("/exception", "/exit"):
        _pending.append(Unhandled("as asked") if path == "/exception" else SystemExit(0))
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
"""
)

ASGI_APP = (
    """
import asyncio, os, signal, sys, threading
"""
    + APP_TOOLS
    + """
def _raise(signum, frame):
    # Only where the loop waits for I/O (in asyncio's select; uvloop's, in C, shows the
    # runner's frame): elsewhere it would land in a request, which the server catches.
    # Until then, the signal comes again.
    if frame is not None and frame.f_code.co_name in ("select", "run"):
        raise _pending.pop()
    main = threading.main_thread().ident
    threading.Timer(0.01, signal.pthread_kill, (main, signal.SIGUSR1)).start()

signal.signal(signal.SIGUSR1, _raise)

async def plain(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    path = scope["path"]
    if path == "/slow":
        out("slow", os.getpid())
        await asyncio.sleep(SLOW)
    elif path in ("/exception", "/exit"):
        _pending.append(Unhandled("as asked") if path == "/exception" else SystemExit(0))
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})

from lastcall.asgi import LastCallMiddleware
asgi = LastCallMiddleware(plain)
"""
)

FLASK_MAIN = """
import sys
from flask import Flask
from lastcall.flask import LastCall
import webapp

app = Flask(__name__)
app.wsgi_app = webapp.wsgi  # the tests' plain WSGI view, which LastCall wraps
LastCall(app)
app.run(host="127.0.0.1", port=int(sys.argv[1]), threaded=True)
"""

WAITRESS_MAIN = """
import sys
import lastcall.waitress
import webapp

lastcall.waitress.serve(webapp.wsgi, host="127.0.0.1", port=int(sys.argv[1]), threads=12)
"""


def _gunicorn(port: int, *kind: str) -> list[str]:
    return [
        *(sys.executable, "-m", "gunicorn", "-c", "python:lastcall.gunicorn"),
        *("-b", f"127.0.0.1:{port}", "-w", "1", *kind),
        *("--graceful-timeout", str(GRACE + 1), "webapp:wsgi"),
    ]


def _gthread(port: int) -> list[str]:
    return _gunicorn(port, "-k", "gthread", "--threads", "12")


def _uvicorn(port: int, loop: str = "asyncio") -> list[str]:
    return [
        # asyncio's loop by default: the app's unhandled exception is raised from a signal
        # handler while the loop waits in its selector, which uvloop has not (uvloop runs
        # signal handlers in a callback, and logs the exception: no stop). Its sys.exit is one.
        *(sys.executable, "-m", "uvicorn", "webapp:asgi", "--loop", loop),
        *("--host", "127.0.0.1", "--port", str(port)),
        *("--timeout-graceful-shutdown", str(GRACE)),
    ]


def _hypercorn(port: int) -> list[str]:
    return [
        *(sys.executable, "-m", "hypercorn", "webapp:asgi", "-b", f"127.0.0.1:{port}"),
        *("--workers", "1", "--graceful-timeout", str(GRACE)),
    ]


LAUNCH = {
    "werkzeug": lambda port: [sys.executable, "flask_main.py", str(port)],
    "gunicorn": _gunicorn,
    "gunicorn-gthread": _gthread,
    "waitress": lambda port: [sys.executable, "waitress_main.py", str(port)],
    "uvicorn": _uvicorn,
    "uvicorn-uvloop": lambda port: _uvicorn(port, "uvloop"),
    "hypercorn": _hypercorn,
}
PACKAGE = {"werkzeug": "flask", "gunicorn-gthread": "gunicorn", "uvicorn-uvloop": "uvloop"}
ASGI = ("uvicorn", "uvicorn-uvloop", "hypercorn")
# (server, stop): a worker that dies is replaced by its master, so nothing stops.
NOT_A_STOP = {
    *(
        (gunicorn, stop)
        for gunicorn in ("gunicorn", "gunicorn-gthread")
        for stop in ("exception", "exit")
    ),
    ("hypercorn", "exit"),
    # uvloop: only a loop ended by sys.exit differs from asyncio's (signals are handled the
    # same); an exception there is logged and the loop runs on, no stop
    *(("uvicorn-uvloop", stop) for stop in ("TERM", "INT", "exception")),
}
CASES = [
    (server, stop)
    for server in LAUNCH
    for stop in ("TERM", "INT", "exception", "exit")
    if (server, stop) not in NOT_A_STOP
]


@MATRIX
def test_matrix_lastcall_cells_are_clean(tmp_path: Path) -> None:
    """Every scenario, plain beside lastcall, on every installed server: every lastcall cell
    is clean, and the matrix exits 0 (README: ``lastcall drill --matrix``)."""
    out = tmp_path / "m.json"
    proc = subprocess.run(  # our own command
        [sys.executable, "-m", "lastcall", "drill", "--matrix", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
        start_new_session=True,
    )
    assert out.exists(), proc.stdout[-6000:] + proc.stderr[-3000:]
    unclean = {
        (r["plan"]["server"], r["plan"]["stop"])
        for r in json.loads(out.read_text())
        if not r["plan"]["plain"] and r["problems"]
    }
    verdicts = [
        f"{r['plan']['server']} {r['plan']['stop']}: {r['verdict']}"
        for r in json.loads(out.read_text())
        if (r["plan"]["server"], r["plan"]["stop"]) in unclean and not r["plan"]["plain"]
    ]
    assert unclean == set(), "\n".join(verdicts)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


@pytest.mark.parametrize(("server", "stop"), CASES)
def test_new_connections_refused_or_served(spawn, server: str, stop: str) -> None:
    """Steps: start the server; put requests in flight; stop it; probe every 50 ms until it is gone.

    Every probe is refused or answered in full; the requests in flight get
    200, also when an exception or exit ended the loop serving them.
    """
    pytest.importorskip(PACKAGE.get(server, server))
    directory = Path(spawn.script_dir)
    app = ASGI_APP if server in ASGI else WSGI_APP
    (directory / "webapp.py").write_text(f"SLOW = {SLOW}\n{app}")
    (directory / "flask_main.py").write_text(FLASK_MAIN)
    (directory / "waitress_main.py").write_text(WAITRESS_MAIN)
    port = free_port()
    env = {"LASTCALL_GRACE": str(GRACE), "PYTHONPATH": str(directory)}
    child = spawn("", argv=LAUNCH[server](port), env=env, wait_ready=False)
    _wait_answering(child, port)

    in_flight = [_Request(port, "/slow") for _ in range(IN_FLIGHT)]
    _wait_in_flight(child, port, IN_FLIGHT)
    prober = _Prober(port)
    if stop in ("TERM", "INT"):
        child.send(getattr(signal, f"SIG{stop}"))
    else:  # raised on the main thread while this very response is on its way: it may be cut
        with contextlib.suppress(OSError, http.client.HTTPException):
            _get(port, f"/{stop}")
    prober.start()
    child.finish(GRACE + WAIT)
    prober.stop()
    wait_session_empty(child.pid)

    bad = [fate for fate in prober.fates if fate not in ("refused", "complete")]
    assert prober.fates, "no probe was made"
    assert not bad, f"probes: {prober.fates}\n{child.output()}"
    statuses = [request.result(WAIT) for request in in_flight]
    assert statuses == [200] * IN_FLIGHT, f"{statuses}\n{child.output()}"


def test_second_sigint_is_immediate_on_gunicorn(spawn) -> None:
    """Steps: gunicorn with a request that hangs; SIGINT (graceful), SIGINT again: gone at once."""
    pytest.importorskip("gunicorn")
    directory = Path(spawn.script_dir)
    (directory / "webapp.py").write_text(f"SLOW = 30\n{WSGI_APP}")
    port = free_port()
    env = {"LASTCALL_GRACE": str(GRACE), "PYTHONPATH": str(directory)}
    child = spawn("", argv=_gunicorn(port), env=env, wait_ready=False)
    _wait_answering(child, port)
    hanging = _Request(port, "/slow")
    _wait_in_flight(child, port, 1)
    child.send(signal.SIGINT)
    child.wait_for("stopped accepting", stream="stderr")
    began = time.monotonic()
    child.send(signal.SIGINT)
    child.finish(WAIT)
    assert time.monotonic() - began < GRACE - 1, child.output()
    assert hanging.result(WAIT) != 200  # cut (or a 500), as a quick shutdown does
    wait_session_empty(child.pid)


# ---------------------------------------------------------------- helpers


def _wait_answering(child, port: int) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            pytest.fail(f"the server exited with {child.proc.returncode}\n{child.output()}")
        try:
            if _get(port, "/livez") == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    pytest.fail(f"the server did not answer within {WAIT} s\n{child.output()}")


def _wait_in_flight(child, port: int, count: int) -> None:
    """Until ``count`` requests have entered the app or wait in the listen backlog."""
    deadline = time.monotonic() + WAIT
    while len(child.lines("slow")) + _listen_backlog(port) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"{count} requests not in flight within {WAIT} s\n{child.output()}")
        time.sleep(0.02)


def _listen_backlog(port: int) -> int:
    """Connections queued on 127.0.0.1:port (a listener's rx_queue in /proc/net/tcp)."""
    local = f"0100007F:{port:04X}"
    for row in Path("/proc/net/tcp").read_text(encoding="ascii").splitlines()[1:]:
        fields = row.split()
        if fields[1] == local and fields[3] == "0A":
            return int(fields[4].split(":")[1], 16)
    return 0


def _get(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


class _Request:
    """One request on a thread of its own: its status, or None if it got no answer."""

    def __init__(self, port: int, path: str) -> None:
        self._status: int | None = None
        self._thread = threading.Thread(target=self._send, args=(port, path), daemon=True)
        self._thread.start()

    def _send(self, port: int, path: str) -> None:
        try:
            self._status = _get(port, path)
        except (OSError, http.client.HTTPException):
            self._status = None

    def result(self, timeout: float) -> int | None:
        self._thread.join(timeout)
        return self._status


class _Prober:
    """A new connection every 50 ms, each recording its fate."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._done = threading.Event()
        self._probes: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.fates: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(WAIT)
        for probe in self._probes:
            probe.join(WAIT)

    def _run(self) -> None:
        while not self._done.wait(PROBE_EVERY):
            probe = threading.Thread(target=self._probe, daemon=True)
            probe.start()
            self._probes.append(probe)

    def _probe(self) -> None:
        fate = _fate(self._port)
        with self._lock:
            self.fates.append(fate)


_LENGTH = b"content-length:"


def _fate(port: int) -> str:
    """``refused``, ``complete``, ``reset``, ``empty`` or ``partial`` for one new connection."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    except ConnectionRefusedError:
        return "refused"
    received = b""
    try:
        with sock:
            sock.sendall(b"GET /fast HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            while chunk := sock.recv(65536):
                received += chunk
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    except TimeoutError:
        return "timed out"
    if not received:
        return "empty"
    head, _, body = received.partition(b"\r\n\r\n")
    if not head.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")):  # wsgiref answers in HTTP/1.0
        return "partial"
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(_LENGTH)
        ),
        None,
    )
    return "complete" if length is None or len(body) >= length else "partial"
