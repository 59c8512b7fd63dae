"""The process ``lastcall drill --server grpc`` starts: the demo's gRPC server, as users write it.

``python -m lastcall.cli.grpc_runner HANDLER --port N --threads T [--plain]``:
``grpc.server`` on a thread pool, the demo's service (HANDLER:
``demo_grpc:handler``, or ``demo_grpc_plain:handler`` with ``atexit``), ``add_insecure_port``, then
``LastCall(server)`` unless ``--plain``, ``server.start()`` and
``server.wait_for_termination()``. In front of the demo's RPCs sit the
drill's instruments (``runner.Controls``): the ``lastcall.drill.Control``
service (``State``: this pid; ``Act``: the in-process stops) and the hold of
an RPC carrying ``x-lastcall-drill-delay``, inside lastcall's count of RPCs.
"""

from __future__ import annotations

import argparse
from concurrent import futures
from typing import Any

import grpc

from lastcall.cli.grpc_client import CONTROL_SERVICE, DELAY_METADATA
from lastcall.cli.runner import HOST, BadInputError, Controls, check_port, fail, load


class _Held(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc's classes are untyped
    """The demo's unary RPCs, each held first if its metadata asks."""

    def __init__(self, inner: Any, controls: Controls) -> None:  # noqa: ANN401  # grpc's
        self._inner = inner
        self._controls = controls

    def service(self, details: Any) -> Any:  # noqa: ANN401  # grpc's
        handler = self._inner.service(details)
        delay = dict(details.invocation_metadata or ()).get(DELAY_METADATA)
        if handler is None or not delay:
            return handler
        behaviour = handler.unary_unary

        def held(request: Any, context: Any) -> Any:  # noqa: ANN401
            self._controls.hold_thread(float(delay))
            return behaviour(request, context)

        return grpc.unary_unary_rpc_method_handler(
            held, handler.request_deserializer, handler.response_serializer
        )


def _control(controls: Controls) -> Any:  # noqa: ANN401  # grpc's
    def act(request: bytes, _context: Any) -> bytes:  # noqa: ANN401
        return controls._act(request.decode())  # noqa: SLF001  # the drill's own instruments

    handler = grpc.unary_unary_rpc_method_handler(act)
    return grpc.method_handlers_generic_handler(CONTROL_SERVICE, {"State": handler, "Act": handler})


def serve(spec: str, port: int, threads: int, *, plain: bool) -> None:
    """The demo's server until it stops; ``LastCall(server)`` unless plain."""
    handler = load(spec)
    controls = Controls()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
    server.add_generic_rpc_handlers((_control(controls), _Held(handler, controls)))
    server.add_insecure_port(f"{HOST}:{port}")
    if not plain:
        from lastcall.grpc import LastCall  # noqa: PLC0415  # not in --plain runs

        LastCall(server)
    server.start()
    server.wait_for_termination()


def main(argv: list[str] | None = None) -> None:
    """Check the port, serve until stopped."""
    parser = argparse.ArgumentParser(prog="python -m lastcall.cli.grpc_runner")
    parser.add_argument("handler")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--plain", action="store_true", help="serve without lastcall")
    parser.add_argument("--error-file")
    args = parser.parse_args(argv)
    try:
        check_port(args.port)
    except BadInputError as exc:
        fail(args.error_file, str(exc))
    serve(args.handler, args.port, args.threads, plain=args.plain)


if __name__ == "__main__":
    main()
