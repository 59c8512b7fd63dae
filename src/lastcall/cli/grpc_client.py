"""The drill's gRPC clients: each RPC on a connection of its own, its fate a status code.

Fates: ``OK`` or the status code's name (``UNAVAILABLE``, ``CANCELLED``...),
``refused`` when the connection was refused (nothing listened: a client's
balancer picks another replica), ``timed out`` past the deadline; a health
check's fate is the health service's answer (``SERVING``, ``NOT_SERVING``)
or ``UNIMPLEMENTED`` when the server has no health service.

The request: the demo's (``{"id": N}``, JSON), or ``--data`` as JSON for
``--grpc-method``, made into the method's protobuf message. The message type
is found in the ``*_pb2.py`` modules of the directory the drill runs in
(where ``protoc`` wrote them, beside the server), as the server itself finds it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
import sys
from typing import TYPE_CHECKING, Any

import grpc
import httpx

from lastcall.cli.clients import Ask, Load, RequestRecord
from lastcall.cli.runner import HOST

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

DEMO_METHOD = "/lastcall.demo.Orders/Take"
CONTROL_SERVICE = "lastcall.drill.Control"
DELAY_METADATA = "x-lastcall-drill-delay"
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_METHOD = re.compile(r"/([\w.]+)\.(\w+)/(\w+)")
# Each channel its own connection: without it, channels to one address share one.
_OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)
_REFUSED = ("connection refused", "failed to connect")
_RESET = ("socket closed", "connection reset", "broken pipe", "end of tcp stream")


class GrpcInputError(Exception):
    """``--grpc-method`` or its request cannot be used: one line, the fix included."""


def request_bytes(method: str, data: bytes | None, directory: Path) -> bytes:
    """``data`` (JSON, ``{}`` if none) as ``method``'s request message, serialized."""
    match = _METHOD.fullmatch(method)
    if match is None:
        raise GrpcInputError(
            f"--grpc-method {method!r} is not /package.Service/Method; write it as gRPC names "
            "it on the wire, e.g. /helloworld.Greeter/SayHello"
        )
    message = _request_class(method, match, directory)()
    json_format = importlib.import_module("google.protobuf.json_format")
    try:
        json_format.Parse((data or b"{}").decode(), message)
    except (json_format.ParseError, UnicodeDecodeError) as exc:
        name = message.DESCRIPTOR.full_name
        said = " ".join(str(exc).split())  # protobuf's message spans lines
        raise GrpcInputError(f"--data is no {name} in JSON ({said}); give its fields") from None
    serialized: bytes = message.SerializeToString()
    return serialized


def _request_class(method: str, match: re.Match[str], directory: Path) -> Any:  # noqa: ANN401
    """The request message class of ``method``, from the ``*_pb2.py`` modules in ``directory``."""
    modules = sorted(directory.glob("*_pb2.py"))
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    for module in modules:
        try:
            importlib.import_module(module.stem)
        except Exception as exc:
            raise GrpcInputError(
                f"{module.name} cannot be imported ({type(exc).__name__}: {exc}); "
                "regenerate it with the installed protobuf's grpcio-tools"
            ) from None
    pool = importlib.import_module("google.protobuf.descriptor_pool").Default()
    package, service, name = match.groups()
    try:
        found = pool.FindServiceByName(f"{package}.{service}").FindMethodByName(name)
    except KeyError:
        found = None
    if found is None:
        where = ", ".join(m.name for m in modules) or "no *_pb2.py module"
        raise GrpcInputError(
            f"--grpc-method {method}: no such method in {where} in {directory}; run the drill "
            "from the directory holding the service's *_pb2.py"
        )
    factory = importlib.import_module("google.protobuf.message_factory")
    if hasattr(factory, "GetMessageClass"):  # protobuf 4.22 and later
        return factory.GetMessageClass(found.input_type)
    return factory.MessageFactory(pool).GetPrototype(found.input_type)  # gone in protobuf 5


def _fate(error: grpc.RpcError) -> tuple[str, str]:
    """The fate of a failed RPC, in the drill's words where they apply; and grpc's details."""
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (error.details() if isinstance(error, grpc.Call) else "") or ""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "timed out", details
    if code == grpc.StatusCode.UNAVAILABLE:
        said = details.lower()
        if any(words in said for words in _REFUSED):
            return "refused", details
        if any(words in said for words in _RESET):
            return "reset", details  # accepted, then the connection was lost under it
    return str(code.name), details


def call(
    port: int,
    method: str,
    request: bytes,
    timeout: float,
    metadata: Sequence[tuple[str, str]] = (),
) -> tuple[str, bytes]:
    """One unary RPC on a new connection: its fate, and the response (or grpc's details)."""
    with grpc.insecure_channel(f"{HOST}:{port}", options=_OWN_CONNECTION) as channel:
        rpc = channel.unary_unary(method)
        try:
            response: bytes = rpc(request, timeout=timeout, metadata=tuple(metadata))
        except grpc.RpcError as error:
            fate, details = _fate(error)
            return fate, details.encode()
    return "OK", response


def health(port: int, timeout: float) -> str:
    """The standard health service's answer for the whole server (``""``), on a new connection."""
    health_pb2 = importlib.import_module("grpc_health.v1.health_pb2")
    request = health_pb2.HealthCheckRequest(service="").SerializeToString()
    fate, answer = call(port, _HEALTH_CHECK, request, timeout)
    if fate != "OK":
        return fate
    status = health_pb2.HealthCheckResponse.FromString(answer).status
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(status))


class GrpcLoad(Load):
    """:class:`Load` for a gRPC server: RPCs instead of requests, health checks beside them.

    ``write``: each RPC is an order to the demo (``Take``, ``{"id": N}``); else
    ``ask``'s method with ``request`` (its ``--data``, serialized).
    """

    def __init__(  # Load's, and the request
        self,
        port: int,
        *,
        clock: float,
        timeout: float,
        workers: int,
        ask: Ask,
        write: bool,
        request: bytes = b"",
    ) -> None:
        super().__init__(port, clock=clock, timeout=timeout, workers=workers, ask=ask, write=write)
        self._port = port
        self._timeout = timeout
        self._method = ask.grpc_method or DEMO_METHOD
        self._request = request

    def _one(self, kind: str, delay: float) -> None:
        with self._lock:
            index, self._sent = self._sent, self._sent + 1
        metadata = [(DELAY_METADATA, str(delay))] if delay else []
        request = json.dumps({"id": index}).encode() if self._write else self._request
        method = DEMO_METHOD if self._write else self._method
        started = self.now()
        fate, said = call(self._port, method, request, self._timeout, metadata)
        detail = "" if fate == "OK" else said.decode(errors="replace")
        self._add(RequestRecord(index, kind, started, self.now(), fate, detail))

    def check_health(self, kind: str) -> None:
        """One health check now, on a new connection, recorded as ``kind``."""

        def check() -> None:
            with self._lock:
                index, self._sent = self._sent, self._sent + 1
            started = self.now()
            fate = health(self._port, self._timeout)
            self._add(RequestRecord(index, kind, started, self.now(), fate))

        self._submit(check)

    def control(self, action: str, timeout: float) -> httpx.Response:
        """The drill's control RPC (``State``, ``Act``), answered as its HTTP route would be."""
        method = f"/{CONTROL_SERVICE}/{'State' if action == 'state' else 'Act'}"
        fate, body = call(self._port, method, action.encode(), timeout)
        if fate != "OK":
            raise httpx.TransportError(f"the drill's control RPC ended {fate}")
        return httpx.Response(200, content=body)

    def _add(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)


def state(port: int, timeout: float) -> int | None:
    """The serving process's pid, once the demo answers; None until then."""
    with contextlib.suppress(ValueError, KeyError):
        fate, body = call(port, f"/{CONTROL_SERVICE}/State", b"state", timeout)
        if fate == "OK":
            return int(json.loads(body)["pid"])
    return None
