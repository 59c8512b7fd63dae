"""The ASGI middleware under real uvicorn and hypercorn processes, stopped by real signals.

Each scenario runs a Starlette app in a server started in its own session
(``spawn``); the app prints ``entered``, ``hook:<name>`` and loop ids to
stdout, so what the hooks really did is read from there. Clients talk to
127.0.0.1 over real sockets; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import sys
import threading
import time

import httpx
import pytest
from conftest import free_port, live_processes_in_session

import lastcall
from lastcall import Coordinator
from lastcall.asgi import LastCallMiddleware

WAIT = 15.0

APP = """
import asyncio, logging, os, sys
from contextlib import asynccontextmanager
import lastcall
from lastcall.asgi import LastCallMiddleware
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")

def out(*words):
    sys.stdout.write(" ".join(map(str, words)) + "\\n")
    sys.stdout.flush()

async def hello(request):
    return PlainTextResponse("hello")

async def slow(request):
    out("entered", os.getpid())
    await asyncio.sleep(1)
    return PlainTextResponse("slow done")

async def events(request):
    async def stream():
        n = 0
        while not await lastcall.stopping.wait_async(0.1):
            n += 1
            yield f"data: {n}\\n\\n"
        yield "event: bye\\ndata: stopping\\n\\n"
    return StreamingResponse(stream(), media_type="text/event-stream")

async def endless(request):
    async def stream():
        while True:  # ignores the stop token: the drain budget must end it
            yield "data: x\\n\\n"
            await asyncio.sleep(0.1)
    return StreamingResponse(stream(), media_type="text/event-stream")

@lastcall.on_shutdown
def sync_hook():
    out("hook:sync", os.getpid())

@lastcall.on_shutdown
async def async_hook():
    out("hook:async", os.getpid(), id(asyncio.get_running_loop()))

@asynccontextmanager
async def lifespan(app):
    out("startup loop", os.getpid(), id(asyncio.get_running_loop()))
    yield
    out("hook:app-lifespan", os.getpid())

routes = [Route("/", hello), Route("/slow", slow), Route("/events", events),
          Route("/endless", endless)]
app = LastCallMiddleware(Starlette(routes=routes, lifespan=lifespan))
"""

SERVERS = {
    "uvicorn": ["-m", "uvicorn", "scenario_0:app", "--host", "127.0.0.1", "--port", "{port}"],
    "hypercorn": ["-m", "hypercorn", "scenario_0:app", "--workers", "0", "-b", "127.0.0.1:{port}"],
    "hypercorn-worker": ["-m", "hypercorn", "scenario_0:app", "-b", "127.0.0.1:{port}"],
    "lastcall.hypercorn": ["-m", "lastcall.hypercorn", "scenario_0:app", "-b", "127.0.0.1:{port}"],
}
# How the leader ends after SIGTERM: by it, but for plain hypercorn's master, which exits 0
# once its worker did; python -m lastcall.hypercorn's master ends by it.
SIGTERM_STATUS = {
    "uvicorn": -signal.SIGTERM,
    "hypercorn": -signal.SIGTERM,
    "hypercorn-worker": 0,
    "lastcall.hypercorn": -signal.SIGTERM,
}


def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def wait_serving(port: int, child, probe: str = "/readyz") -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            pytest.fail(f"server ended before serving\n{child.output()}")
        try:
            if get(port, probe)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    pytest.fail(f"server not serving within {WAIT} s\n{child.output()}")


def start(spawn, server: str, *, app: str = APP, probe: str = "/readyz", **env: str):
    port = free_port()
    argv = [sys.executable] + [a.format(port=port) for a in SERVERS[server]]
    child = spawn(app, argv=argv, env=env, wait_ready=False)
    wait_serving(port, child, probe)
    return child, port


def hooks(child) -> list[str]:
    return sorted(line.split()[0] for line in child.lines("hook:"))


def in_background(func, *args):
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(func(*args)))
    thread.start()
    return thread, results


@pytest.mark.parametrize("server", list(SERVERS))
def test_sigterm_drains_requests_in_flight_and_serves_through_the_delay(spawn, server):
    """8 requests of 1 s in flight, SIGTERM: all 8 get 200; during the pre-stop delay
    readiness is red while / still answers 200; hooks once, async ones on the server's loop.
    """
    child, port = start(spawn, server, LASTCALL_PRESTOP_DELAY="0.6", LASTCALL_GRACE="10")
    clients = [in_background(get, port, "/slow") for _ in range(8)]
    deadline = time.monotonic() + WAIT
    while len(child.lines("entered")) < 8:
        assert time.monotonic() < deadline, child.output()
        time.sleep(0.01)
    child.send(signal.SIGTERM)
    child.wait_for("pre-stop delay: ", stream="stderr")
    status, _, body = get(port, "/readyz")
    assert (status, json.loads(body)["status"]) == (503, "stopping")
    status, headers, body = get(port, "/")
    assert (status, body) == (200, b"hello")
    assert headers["connection"] == "close"
    assert get(port, "/livez")[0] == 200
    for thread, results in clients:
        thread.join(WAIT)
        assert results and results[0][:1] == (200,), (results, child.output())
        assert results[0][2] == b"slow done"
    assert child.finish() == SIGTERM_STATUS[server], child.output()
    assert hooks(child) == ["hook:app-lifespan", "hook:async", "hook:sync"], child.output()
    startup_loop = child.lines("startup loop")[0].split()[-1]
    assert child.lines("hook:async")[0].split()[-1] == startup_loop


# The module also builds, first, a wrapped app the server never serves (a twin for tests,
# an app mounted elsewhere): building one must change nothing in the server, whether the
# app it serves is wrapped too or not.
SERVED = "\napp = LastCallMiddleware(Starlette(routes=routes, lifespan=lifespan))\n"
TWINS = {
    "wrapped": APP.replace(
        SERVED, "\ntwin = LastCallMiddleware(Starlette(routes=routes))" + SERVED
    ),
    "plain": APP.replace(
        SERVED,
        "\napp = Starlette(routes=routes, lifespan=lifespan)\ntwin = LastCallMiddleware(app)\n",
    ),
}
assert APP not in TWINS.values()


@pytest.mark.parametrize("served", list(TWINS))
@pytest.mark.parametrize("server", list(SERVERS))
def test_an_unserved_wrapped_twin_changes_nothing(spawn, server, served):
    """Steps: the served module first builds a LastCallMiddleware it never serves, then the
    app it serves (wrapped, or not); 4 requests of 1 s in flight, SIGTERM: all 4 get 200.
    Before: the twin's constructor patched hypercorn process-wide, and hypercorn's worker
    serving the plain app reset all 4."""
    child, port = start(spawn, server, app=TWINS[served], probe="/", LASTCALL_GRACE="10")
    clients = [in_background(get, port, "/slow") for _ in range(4)]
    deadline = time.monotonic() + WAIT
    while len(child.lines("entered")) < 4:
        assert time.monotonic() < deadline, child.output()
        time.sleep(0.01)
    child.send(signal.SIGTERM)
    for thread, results in clients:
        thread.join(WAIT)
        assert results and results[0][::2] == (200, b"slow done"), (results, child.output())
    child.finish()
    if served == "wrapped":
        assert hooks(child) == ["hook:app-lifespan", "hook:async", "hook:sync"], child.output()


@pytest.mark.parametrize("server", list(SERVERS))
def test_open_sse_stream_ends_cleanly_within_the_grace(spawn, server):
    child, port = start(spawn, server, LASTCALL_PRESTOP_DELAY="0.2", LASTCALL_GRACE="5")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    conn.request("GET", "/events")
    response = conn.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: ")
    began = time.monotonic()
    child.send(signal.SIGTERM)
    rest = response.read()  # a clean end: the chunked body's terminator arrives
    conn.close()
    assert rest.endswith(b"event: bye\ndata: stopping\n\n"), rest[-200:]
    assert time.monotonic() - began < 5
    assert child.finish() == SIGTERM_STATUS[server], child.output()
    assert hooks(child) == ["hook:app-lifespan", "hook:async", "hook:sync"]


def test_drain_is_bounded_by_the_grace_when_uvicorn_would_wait_forever(spawn):
    """A stream that ignores the token: uvicorn waits forever; the grace ends it."""
    child, port = start(spawn, "uvicorn", LASTCALL_GRACE="2")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    conn.request("GET", "/endless")
    response = conn.getresponse()
    assert response.readline().startswith(b"data: ")
    began = time.monotonic()
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert time.monotonic() - began < 2 + 1.5
    conn.close()
    assert hooks(child) == ["hook:app-lifespan", "hook:async", "hook:sync"]
    assert "drain budget spent with 1 still in flight; 1 cancelled" in child.output()


@pytest.mark.parametrize("server", ["hypercorn-worker", "uvicorn-workers"])
def test_sigkill_to_the_master_stops_the_worker_within_a_second(spawn, server):
    """No orphan keeps serving: the worker notices its master's death, drains, runs its hooks."""
    if server == "uvicorn-workers":
        port = free_port()
        argv = [sys.executable, "-m", "uvicorn", "scenario_0:app", "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--workers", "2"]
        child = spawn(APP, argv=argv, wait_ready=False)
        wait_serving(port, child)
        deadline = time.monotonic() + WAIT
        while len(child.lines("startup loop")) < 2:
            assert time.monotonic() < deadline, child.output()
            time.sleep(0.01)
    else:
        child, port = start(spawn, server)
    workers = {line.split()[2] for line in child.lines("startup loop")}
    client = in_background(get, port, "/slow")
    child.wait_for("entered")
    child.send(signal.SIGKILL)
    killed = time.monotonic()
    child.wait_for("master process", stream="stderr", timeout=WAIT)
    noticed = time.monotonic() - killed
    assert noticed < 1.0, noticed
    assert child.finish() == -signal.SIGKILL  # returns once the workers closed their output
    deadline = time.monotonic() + WAIT  # a worker may still be between closing and exiting
    while live_processes_in_session(child.pid):
        assert time.monotonic() < deadline, "a worker is still running"
        time.sleep(0.02)
    thread, results = client
    thread.join(WAIT)
    assert results and results[0][0] == 200
    assert sorted(line.split()[1] for line in child.lines("hook:sync")) == sorted(workers)


def test_prestop_delay_longer_than_grace_refuses_to_start(spawn):
    """As on every server: the one check (``_config.check_drain_time``) names both settings."""
    argv = [sys.executable] + [a.format(port=free_port()) for a in SERVERS["uvicorn"]]
    env = {"LASTCALL_PRESTOP_DELAY": "30", "LASTCALL_GRACE": "5"}
    child = spawn(APP, argv=argv, env=env, wait_ready=False)
    assert child.finish() != 0
    assert (
        "ValueError: LASTCALL_PRESTOP_DELAY=30 leaves no time to drain within LASTCALL_GRACE=5"
        in (child.output())
    )


# ---------------------------------------------------------------- in process


async def plain_app(scope, receive, send) -> None:
    assert scope["type"] == "http"
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"connection", b"keep-alive")]}
    )
    await send({"type": "http.response.body", "body": b"app saw " + scope["path"].encode()})


def test_not_an_asgi_app_is_refused_with_one_clear_line() -> None:
    with pytest.raises(TypeError, match="needs an ASGI 3 app"):
        LastCallMiddleware("app:app")  # type: ignore[arg-type]

    def wsgi_app(environ, start_response):
        return []

    with pytest.raises(TypeError, match=r"WSGI app\? use lastcall.wsgi.LastCallMiddleware"):
        LastCallMiddleware(wsgi_app)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="livez_path"):
        LastCallMiddleware(plain_app, livez_path="livez")
    with pytest.raises(ValueError, match="drain_timeout"):
        LastCallMiddleware(plain_app, drain_timeout=0)


def test_health_and_connection_close_in_process() -> None:
    coordinator = Coordinator(run_at_exit=False)
    middleware = LastCallMiddleware(plain_app, coordinator=coordinator, livez_path=None)

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            ready = await client.get("/readyz")
            assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
            assert (await client.get("/livez")).text == "app saw /livez"
            assert (await client.head("/readyz")).content == b""
            before = await client.get("/x")
            assert before.headers["connection"] == "keep-alive"
            await asyncio.get_running_loop().run_in_executor(None, coordinator.shutdown)
            red = await client.get("/readyz")
            assert (red.status_code, red.json()) == (503, {"status": "stopping", "in_flight": 0})
            after = await client.get("/x")
            assert (after.status_code, after.headers["connection"]) == (200, "close")

    asyncio.run(scenario())
    assert middleware.in_flight == 0


def test_async_hooks_run_on_the_loop_given_to_use_loop() -> None:
    coordinator = Coordinator(run_at_exit=False)
    seen: list[object] = []

    @coordinator.on_shutdown
    async def hook() -> None:
        seen.append(asyncio.get_running_loop())

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        coordinator.use_loop(loop)
        await loop.run_in_executor(None, coordinator.shutdown)
        assert seen == [loop]

    asyncio.run(scenario())
    assert lastcall.default is not coordinator


@pytest.mark.parametrize("attempt", range(4))
def test_sigint_to_uvicorn_ends_by_sigint_with_a_request_in_flight(spawn, attempt):
    """Steps: a 1 s request in flight; SIGINT. uvicorn puts back the handlers it found and
    raises the signal it was told of again when its serve returns: that must not decide how
    the process ends (it did whenever the main thread got there before lastcall's wake-up:
    143, by the SIGTERM uvicorn raised, or 0 at the interpreter's exit; 3 runs in 4 once the
    stop's log lines were flushed before the wake-up). Four runs: each must end by SIGINT,
    with the request served and the hooks run once."""
    child, port = start(spawn, "uvicorn", LASTCALL_GRACE="10")
    thread, results = in_background(get, port, "/slow")
    child.wait_for("entered")
    child.send(signal.SIGINT)
    thread.join(WAIT)
    assert results and results[0][:1] == (200,), (results, child.output())
    assert child.finish() == -signal.SIGINT, child.output()
    assert hooks(child) == ["hook:app-lifespan", "hook:async", "hook:sync"], child.output()
