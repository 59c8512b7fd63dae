"""``lastcall drill`` making RPCs: ``--server grpc`` (the demo's service) and ``--grpc-method``.

Each RPC is on a connection of its own and counted by its status code; after the stop the
drill also asks the standard health service, which with lastcall answers NOT_SERVING during
the pre-stop delay while RPCs are still served. A user's server here is written as gRPC's
examples are (``grpc.server``, ``add_insecure_port``, ``wait_for_termination``), its
``*_pb2.py`` made at test time from a ``FileDescriptorProto`` (what ``protoc`` writes into it).
"""

from __future__ import annotations

import json
import signal
import sys
import textwrap

import pytest
from test_drill import DEMO_HOOKS, drill, fates, short, without_packages
from test_drill_inputs import refused

pytest.importorskip("grpc")
pytest.importorskip("grpc_health")

PB2 = """
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_file = descriptor_pb2.FileDescriptorProto(name="drilltest.proto", package="drilltest")
_ask = _file.message_type.add(name="Ask")
_ask.field.add(name="name", number=1, type=9, label=1)  # string
_ask.field.add(name="seconds", number=2, type=1, label=1)  # double
_reply = _file.message_type.add(name="Reply")
_reply.field.add(name="message", number=1, type=9, label=1)
_file.service.add(name="Greeter").method.add(
    name="SayHello", input_type=".drilltest.Ask", output_type=".drilltest.Reply"
)
DESCRIPTOR = descriptor_pool.Default().Add(_file)
_make = getattr(message_factory, "GetMessageClass", None)  # protobuf 4.22 and later
_make = _make or message_factory.MessageFactory(descriptor_pool.Default()).GetPrototype
Ask = _make(DESCRIPTOR.message_types_by_name["Ask"])
Reply = _make(DESCRIPTOR.message_types_by_name["Reply"])
"""
SERVER = """
import sys
import time
from concurrent import futures

import grpc

import drilltest_pb2


def say_hello(request, context):
    time.sleep(request.seconds)
    return drilltest_pb2.Reply(message=f"Hello, {request.name}!")


server = grpc.server(futures.ThreadPoolExecutor(max_workers=10))
handler = grpc.unary_unary_rpc_method_handler(
    say_hello, drilltest_pb2.Ask.FromString, drilltest_pb2.Reply.SerializeToString
)
server.add_generic_rpc_handlers(
    (grpc.method_handlers_generic_handler("drilltest.Greeter", {"SayHello": handler}),)
)
server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
if "--lastcall" in sys.argv:
    from lastcall.grpc import LastCall

    LastCall(server)
server.start()
server.wait_for_termination()
"""
METHOD = ("--grpc-method", "/drilltest.Greeter/SayHello")
SHORT = ("--requests", "4", "--request-seconds", "0.5")


def drilled(tmp_path, *args: str, ok: bool = True) -> dict:
    """The drill's JSON, with what it printed as ``shown``."""
    out = tmp_path / "drill.json"
    result = drill(*args, "--json", str(out), cwd=tmp_path)
    assert (result.returncode == 0) is ok, result.stdout + result.stderr
    return {**json.loads(out.read_text()), "shown": result.stdout}


@pytest.fixture
def users_server(tmp_path):
    (tmp_path / "drilltest_pb2.py").write_text(textwrap.dedent(PB2))
    (tmp_path / "server.py").write_text(textwrap.dedent(SERVER))
    return tmp_path


def test_the_demo_with_lastcall_answers_not_serving_while_it_still_serves(tmp_path):
    data = drilled(tmp_path, "--server", "grpc", *SHORT, "--prestop-delay", "1")
    assert fates(data, "in flight") == ["OK"] * 4, data["verdict"]
    health, late = fates(data, "health"), fates(data, "late")
    assert "NOT_SERVING" in health and "SERVING" not in health, health
    # Served during the delay, then refused: never lost under way (an RPC told UNAVAILABLE,
    # which clients retry on, is fine).
    assert "OK" in late and "reset" not in late and "timed out" not in late, late
    assert data["exit_status"] == 128 + signal.SIGTERM
    assert data["problems"] == [] and data["lost_writes"] == 0
    hooks = data["hooks"]
    assert {h["pid"] for h in hooks} == {data["serving"]}
    assert {short(h["name"]) for h in hooks} >= {*DEMO_HOOKS, "grpc drain"}
    assert "gRPC health checks after the stop" in data["shown"]


def test_the_demo_as_shipped_loses_every_rpc_in_flight(tmp_path):
    """grpcio installs no SIGTERM handler: the process dies, the RPCs with it, atexit unrun."""
    data = drilled(tmp_path, "--server", "grpc", "--plain", *SHORT, ok=False)
    assert fates(data, "in flight") == ["reset"] * 4, data["verdict"]
    assert data["hooks_where"] == "none"
    assert data["lost_writes"] == data["acknowledged"] == 4  # those answered before the stop
    assert "NOT_SERVING" not in fates(data, "health")


@pytest.mark.parametrize("plain", [True, False])
def test_a_users_server_is_drilled_with_its_own_method(users_server, plain):
    """``--cmd`` and ``--grpc-method``: the request from ``--data`` in JSON, made into the
    method's message from the ``*_pb2.py`` beside it; RPCs of 0.3 s each. As shipped, the
    RPCs at the signal die with the process (reset; or refused, when grpc's client had not yet
    sent them and retried them on a new connection, so none counts as in flight): unclean
    either way."""
    command = f"{sys.executable} server.py {{port}}" + ("" if plain else " --lastcall")
    data = drilled(
        users_server,
        "--cmd",
        command,
        *METHOD,
        "--data",
        '{"name": "drill", "seconds": 0.3}',
        "--requests",
        "4",
        "--prestop-delay",
        "0.5",
        ok=not plain,
    )
    in_flight = fates(data, "in flight")
    assert data["exit_status"] == 128 + signal.SIGTERM  # grpcio's process dies by the signal
    if plain:  # no health service, and no drain: what was in flight died with it
        assert not {"SERVING", "NOT_SERVING"} & set(fates(data, "health"))
        assert data["problems"], data["verdict"]
    else:
        assert in_flight and set(in_flight) == {"OK"}, data["verdict"]
        assert "NOT_SERVING" in fates(data, "health")
        assert data["problems"] == []


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ("--grpc-method", "/drilltest.Greeter/Nope"),
            "--grpc-method /drilltest.Greeter/Nope: no such method in drilltest_pb2.py in ",
        ),
        (
            ("--grpc-method", "drilltest.Greeter.SayHello"),
            "--grpc-method 'drilltest.Greeter.SayHello' is not /package.Service/Method",
        ),
        (
            (*METHOD, "--data", '{"nope": 1}'),
            "--data is no drilltest.Ask in JSON (",
        ),
    ],
)
def test_a_method_or_request_that_cannot_be_made_is_one_line(users_server, args, said):
    line = refused(users_server, "--cmd", "python server.py {port}", *args)
    assert line.startswith(f"lastcall: error: {said}"), line


def test_grpc_method_without_cmd_and_an_app_on_grpc_are_one_line(users_server):
    line = refused(users_server, "--server", "grpc", *METHOD)
    assert line == (
        "lastcall: error: --grpc-method goes with --cmd, the command that starts your gRPC "
        "server; --server grpc drills the demo's service"
    )
    line = refused(users_server, "server:server", "--server", "grpc")
    assert line.startswith("lastcall: error: --server grpc serves the demo's service only")
    (users_server / "asgiapp.py").write_text("async def app(scope, receive, send):\n    pass\n")
    line = refused(users_server, "--matrix", "asgiapp:app", "--server", "grpc")
    assert line.startswith(
        "lastcall: error: APP 'asgiapp:app' is an ASGI app; grpc serves the demo's gRPC service"
    )


def test_grpc_not_installed_names_its_extra(tmp_path):
    python, env = without_packages(tmp_path, ("grpc",))
    result = drill("--server", "grpc", python=python, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "lastcall: error: grpc is not installed: pip install 'lastcall[grpc]'"
    )
