"""``lastcall.grpc.LastCall``: a real grpc server (sync and aio), real grpc clients, real signals.

The service is built from grpc's method handlers (bytes in, bytes out: no
protoc step), registered on the sync server as protoc's generated code does
(generic and registered methods) and on the aio server as a generic handler
only; the health service is grpcio-health-checking's own. What each
test shows against plain grpcio (the same script without ``LastCall``) is
in its docstring.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from conftest import WAIT, free_port, refused

grpc = pytest.importorskip("grpc")
health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
health_pb2_grpc = pytest.importorskip("grpc_health.v1.health_pb2_grpc")

COMMON = """
import logging, os, sys, time
import grpc
import lastcall
from lastcall.grpc import LastCall
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")

def out(*words):
    sys.stdout.write(" ".join(map(str, words)) + "\\n")
    sys.stdout.flush()

@lastcall.on_shutdown
def app_hook():
    out("hook:app", os.getpid())

def sync_unary(request, context):  # on grpc.aio, in its migration thread pool
    out("rpc:sync_unary")
    time.sleep(float(request or b"0"))
    return b"done"

def add_service(server, registered):
    methods = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "SyncUnary": grpc.unary_unary_rpc_method_handler(sync_unary),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Drill", methods),))
    if registered and hasattr(server, "add_registered_method_handlers"):  # grpcio >= 1.63
        server.add_registered_method_handlers("test.Drill", methods)  # as protoc's code does
"""

SYNC_APP = (
    COMMON
    + """
from concurrent import futures
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

def unary(request, context):
    out("rpc:unary", request.decode())
    time.sleep(float(request or b"0"))
    return b"done"

def server_stream(request, context):
    count, interval = request.split()
    out("rpc:server_stream")
    try:
        for i in range(int(count)):
            yield b"%d" % i
            time.sleep(float(interval))
    except GeneratorExit:
        out("told:server_stream")
        raise

def client_stream(requests, context):
    out("rpc:client_stream")
    return b"%d" % sum(1 for _ in requests)

def bidi(requests, context):
    out("rpc:bidi")
    for request in requests:
        yield request

server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
add_service(server, registered=True)
port = server.add_insecure_port("127.0.0.1:0")
if os.environ.get("PLAIN") != "1":
    LastCall(server)
if os.environ.get("OWN_HEALTH") == "1":  # the app's own, added after LastCall
    own = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(own, server)
    own.set("custom", health_pb2.HealthCheckResponse.SERVING)
server.start()
out("ready", port)
server.wait_for_termination()
out("main:returned")
"""
)

AIO_APP = (
    COMMON
    + """
import asyncio
from concurrent import futures
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

async def unary(request, context):
    out("rpc:unary", request.decode())
    await asyncio.sleep(float(request or b"0"))
    return b"done"

async def server_stream(request, context):
    count, interval = request.split()
    out("rpc:server_stream")
    try:
        for i in range(int(count)):
            yield b"%d" % i
            await asyncio.sleep(float(interval))
    except (GeneratorExit, asyncio.CancelledError):
        out("told:server_stream")
        raise

async def client_stream(requests, context):
    out("rpc:client_stream")
    count = 0
    async for _ in requests:
        count += 1
    return b"%d" % count

async def bidi(requests, context):
    out("rpc:bidi")
    async for request in requests:
        yield request

async def main():
    server = grpc.aio.server(migration_thread_pool=futures.ThreadPoolExecutor(max_workers=4))
    add_service(server, registered=False)
    port = server.add_insecure_port("127.0.0.1:0")
    if os.environ.get("PLAIN") != "1":
        LastCall(server)
    if os.environ.get("OWN_HEALTH") == "1":
        own = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(own, server)
        await own.set("custom", health_pb2.HealthCheckResponse.SERVING)
    await server.start()
    out("ready", port)
    await server.wait_for_termination()
    out("main:returned")

asyncio.run(main())
"""
)

APPS = {"sync": SYNC_APP, "aio": AIO_APP}
KINDS = pytest.mark.parametrize("kind", ["sync", "aio"])


def start(spawn: Any, kind: str, env: dict[str, str] | None = None) -> Any:
    child = spawn(APPS[kind], env=env)
    child.port = int(child.wait_for("ready").split()[1])
    return child


def channel(port: int) -> Any:
    return grpc.insecure_channel(f"127.0.0.1:{port}")


def check(port: int, service: str = "") -> str:
    """The health service's answer for ``service`` on a new connection: a status or a code."""
    with channel(port) as chan:
        stub = health_pb2_grpc.HealthStub(chan)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=WAIT)
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def wait_until(predicate: Any, child: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not come within {WAIT} s\n{child.output()}")
        time.sleep(0.02)


def paced(count: int, interval: float) -> Any:
    """A client's request stream: ``count`` messages, one every ``interval`` s."""
    for n in range(count):
        time.sleep(interval)
        yield b"%d" % n


class Call(threading.Thread):
    """One RPC on a thread of its own; ``result`` is what the client saw."""

    def __init__(self, port: int, method: str, request: Any) -> None:
        super().__init__(daemon=True)
        self.port, self.method, self.request = port, method, request
        self.result: Any = None
        self.start()

    def run(self) -> None:
        with channel(self.port) as chan:
            kind = {
                "Unary": chan.unary_unary,
                "SyncUnary": chan.unary_unary,
                "ServerStream": chan.unary_stream,
                "ClientStream": chan.stream_unary,
                "Bidi": chan.stream_stream,
            }[self.method]
            call = kind(f"/test.Drill/{self.method}")
            got: list[bytes] = []
            try:
                if self.method in ("Unary", "SyncUnary", "ClientStream"):
                    got.append(call(self.request, timeout=WAIT * 2))
                else:
                    got.extend(call(self.request, timeout=WAIT * 2))
            except grpc.RpcError as exc:
                self.result = (exc.code().name, len(got))
                return
            self.result = ("OK", got)

    def outcome(self) -> Any:
        self.join(WAIT * 2)
        return self.result


class Watch(threading.Thread):
    """A health Watch stream (the whole server's), as client-side health checking keeps open."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.seen: list[str] = []  # the statuses, as they come: tests poll it
        self.end: str | None = None
        self.start()

    def run(self) -> None:
        with channel(self.port) as chan:
            stream = health_pb2_grpc.HealthStub(chan).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=WAIT * 2
            )
            try:
                for reply in stream:
                    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                    self.seen.append(name)
            except grpc.RpcError as exc:
                self.end = str(exc.code().name)
            else:
                self.end = "OK"

    def outcome(self) -> str | None:
        self.join(WAIT * 2)
        return self.end


def all_four(port: int) -> dict[str, Call]:
    """One RPC of each kind, about 1 s long; and a sync handler's (on aio: its thread pool)."""
    return {
        "Unary": Call(port, "Unary", b"1"),
        "SyncUnary": Call(port, "SyncUnary", b"1.5"),  # the last: the Watch is not ended before
        "ServerStream": Call(port, "ServerStream", b"5 0.2"),
        "ClientStream": Call(port, "ClientStream", paced(5, 0.2)),
        "Bidi": Call(port, "Bidi", paced(5, 0.2)),
    }


EXPECTED = {
    "Unary": ("OK", [b"done"]),
    "SyncUnary": ("OK", [b"done"]),
    "ServerStream": ("OK", [b"0", b"1", b"2", b"3", b"4"]),
    "ClientStream": ("OK", [b"5"]),
    "Bidi": ("OK", [b"0", b"1", b"2", b"3", b"4"]),
}


@pytest.mark.parametrize(
    ("kind", "sig"),
    [("sync", signal.SIGTERM), ("sync", signal.SIGINT), ("aio", signal.SIGTERM)],
)
def test_rpcs_of_every_kind_in_flight_at_the_signal_all_finish(spawn, kind, sig):
    """Steps: a unary, a server-streaming, a client-streaming and a bidi RPC of about 1 s in
    flight (and, on grpc.aio, a sync handler in its migration thread pool), and a health Watch
    stream open; the signal. All complete with every message; once the door closes a new
    connection is refused and a new RPC fails UNAVAILABLE (clients retry those); the hook runs
    once, in the server's process; the process ends by the signal.
    Plain grpcio: SIGTERM kills the process at once, all fail UNAVAILABLE and no hook runs; on
    SIGINT a sync server does not end (grpc#40834), an aio one ends at once, its RPCs CANCELLED.
    """
    child = start(spawn, kind, env={"LASTCALL_GRACE": "10"})
    watch = Watch(child.port)
    calls = all_four(child.port)
    for method in ("unary", "sync_unary", "server_stream", "client_stream", "bidi"):
        child.wait_for(f"rpc:{method}")
    wait_until(lambda: watch.seen == ["SERVING"], child, "the Watch stream's SERVING")
    child.send(sig)
    child.wait_for("stopped accepting", stream="stderr")
    assert refused(child.port)
    late = Call(child.port, "Unary", b"0").outcome()
    assert late == ("UNAVAILABLE", 0)
    assert {name: call.outcome() for name, call in calls.items()} == EXPECTED, child.output()
    assert watch.outcome() == "UNAVAILABLE"  # ended once the app's RPCs were over, not before
    assert child.finish() == -sig, child.output()
    assert child.lines("hook:app") == [f"hook:app {child.pid}"]
    assert "drained: nothing left in flight" in child.output()


@KINDS
def test_health_goes_not_serving_at_once_while_the_prestop_delay_still_serves(spawn, kind):
    """Steps: health SERVING for the server and its service; SIGTERM with a pre-stop delay of
    3 s. At once the health service answers NOT_SERVING for both (and the health port's
    /readyz 503), while a new RPC on a new connection still succeeds; a Watch stream opened
    before sees SERVING then NOT_SERVING, and is ended when the door closes instead of
    holding the drain to its budget (the stop takes well under the grace of 20 s).
    Plain grpcio: no health service (UNIMPLEMENTED), and grpcio-health-checking's own stays
    SERVING until the process dies.
    """
    health_port = free_port()
    env = {
        "LASTCALL_PRESTOP_DELAY": "3",
        "LASTCALL_GRACE": "20",
        "LASTCALL_HEALTH_PORT": str(health_port),
    }
    child = start(spawn, kind, env=env)
    assert check(child.port) == "SERVING"
    assert check(child.port, "test.Drill") == "SERVING"
    assert check(child.port, "nothing.Here") == "NOT_FOUND"
    watch = Watch(child.port)
    wait_until(lambda: watch.seen == ["SERVING"], child, "the Watch stream's SERVING")
    began = time.monotonic()
    child.send(signal.SIGTERM)
    wait_until(lambda: check(child.port) == "NOT_SERVING", child, "NOT_SERVING")
    assert check(child.port, "test.Drill") == "NOT_SERVING"
    assert _readyz(health_port) == 503
    assert Call(child.port, "Unary", b"0").outcome() == ("OK", [b"done"])  # still serving
    wait_until(lambda: watch.seen == ["SERVING", "NOT_SERVING"], child, "the Watch's update")
    child.wait_for("stopped accepting", stream="stderr")
    assert refused(child.port)
    assert watch.outcome() == "UNAVAILABLE"
    assert child.finish() == -signal.SIGTERM, child.output()
    assert time.monotonic() - began < 10.0, (
        child.output()
    )  # not the grace: the Watch did not hold it
    assert child.lines("hook:app") == [f"hook:app {child.pid}"]


@KINDS
def test_the_apps_own_health_servicer_is_the_one_driven(spawn, kind):
    """Steps: the app adds grpcio-health-checking's servicer after LastCall, with a service of
    its own ("custom") SERVING; SIGTERM. "custom" turns NOT_SERVING: lastcall drove the app's
    servicer rather than registering another (which would answer NOT_FOUND for "custom").
    Plain grpcio: "custom" stays SERVING through the stop.
    """
    child = start(spawn, kind, env={"OWN_HEALTH": "1", "LASTCALL_PRESTOP_DELAY": "1"})
    assert check(child.port, "custom") == "SERVING"
    child.send(signal.SIGTERM)
    wait_until(lambda: check(child.port, "custom") == "NOT_SERVING", child, "NOT_SERVING")
    assert check(child.port) == "NOT_SERVING"
    assert child.finish() == -signal.SIGTERM, child.output()


@pytest.mark.parametrize(("kind", "sig"), [("sync", signal.SIGINT), ("aio", signal.SIGTERM)])
def test_rpcs_that_overrun_the_budget_end_unavailable_and_are_named_in_the_report(
    spawn, tmp_path, kind, sig
):
    """Steps: a 30 s unary RPC and an endless server stream in flight; the signal, grace 4 s.
    When the drain budget runs out both end with UNAVAILABLE (the stream after the messages
    it sent; the app's stream is told: GeneratorExit / CancelledError), the report names both,
    the hook still runs once and the process ends by the signal within the grace. With SIGINT
    this is grpc#40834: Ctrl-C ends the process while an RPC's handler still runs.
    Plain grpcio: SIGTERM kills at once (no report, no hook); SIGINT leaves the process
    running until the 30 s handler returns (concurrent.futures joins its thread at exit).
    """
    report = tmp_path / "report.json"
    child = start(spawn, kind, env={"LASTCALL_GRACE": "4", "LASTCALL_REPORT": str(report)})
    unary = Call(child.port, "Unary", b"30")
    stream = Call(child.port, "ServerStream", b"100000 0.05")
    child.wait_for("rpc:unary")
    child.wait_for("rpc:server_stream")
    began = time.monotonic()
    child.send(sig)
    assert unary.outcome() == ("UNAVAILABLE", 0)
    code, messages = stream.outcome()
    assert code == "UNAVAILABLE"
    assert messages > 5
    assert child.finish() == -sig, child.output()
    assert time.monotonic() - began < 6.0, child.output()
    child.wait_for("told:server_stream")
    assert child.lines("hook:app") == [f"hook:app {child.pid}"]
    listed = json.loads(report.read_text())["requests"]
    assert sorted((r["method"], r["path"]) for r in listed) == [
        ("POST", "/test.Drill/ServerStream"),
        ("POST", "/test.Drill/Unary"),
    ]
    assert "still in flight after" in child.output()


@KINDS
def test_a_second_ctrl_c_ends_the_process_at_once(spawn, kind):
    """Steps: a 30 s unary RPC in flight, grace 30 s; Ctrl-C, then Ctrl-C again once the door
    has closed. The process ends by SIGINT at once, the RPC fails UNAVAILABLE.
    Plain grpcio: a sync server does not end on either Ctrl-C while the RPC runs (grpc#40834:
    still running after the RPC's deadline); an aio server ends on the first, the RPC
    CANCELLED (which clients do not retry)."""
    child = start(spawn, kind, env={"LASTCALL_GRACE": "30"})
    unary = Call(child.port, "Unary", b"30")
    child.wait_for("rpc:unary")
    child.send(signal.SIGINT)
    child.wait_for("stopped accepting", stream="stderr")
    began = time.monotonic()
    child.send(signal.SIGINT)
    assert child.finish() == -signal.SIGINT, child.output()
    assert time.monotonic() - began < 2.0
    assert unary.outcome() == ("UNAVAILABLE", 0)


def test_lastcall_takes_only_a_grpc_server() -> None:
    from lastcall.grpc import LastCall

    with pytest.raises(TypeError, match=r"grpc\.server\(\) or a grpc\.aio\.server\(\)"):
        LastCall(object())


def _readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=WAIT) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
