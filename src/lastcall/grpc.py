"""gRPC (grpcio), sync and asyncio: ``LastCall(server)`` before ``server.start()``.

::

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=10))
    helloworld_pb2_grpc.add_GreeterServicer_to_server(Greeter(), server)
    server.add_insecure_port("[::]:50051")
    LastCall(server)
    server.start()
    server.wait_for_termination()

The same for ``grpc.aio.server()`` (``LastCall(server)``, then ``await
server.start()`` and ``await server.wait_for_termination()``, on the main
thread's loop; not ``await lastcall.stopping``: once the main coroutine
returns, ``asyncio.run`` cancels every task, the RPCs' too). On SIGTERM,
SIGINT or SIGHUP (``LASTCALL_SIGNALS``), through ``lastcall.install()``:

1. the standard health service (``grpc.health.v1.Health``, with
   ``grpcio-health-checking`` installed) answers NOT_SERVING for every
   service (its ``enter_graceful_shutdown()``), and ``LASTCALL_HEALTH_PORT``'s
   ``/readyz`` turns red; the server keeps serving new RPCs for
   ``LASTCALL_PRESTOP_DELAY`` seconds;
2. ``server.stop(grace)``: the listening port closes (a new connection is
   refused) and every connection gets a GOAWAY, so a client's next RPC goes
   elsewhere; RPCs in flight carry on;
3. they finish within the drain budget (the grace, ``LASTCALL_GRACE``, less
   what the hooks after the drain keep); those still running then end with
   UNAVAILABLE, which clients retry on (a response stream is closed at its
   next message, an aio handler gets ``CancelledError``), and are named in
   the report; health ``Watch`` streams are ended once the app's RPCs are;
4. the other hooks run, once, and the process ends by the signal (or
   ``LASTCALL_EXIT_CODE``). A second Ctrl-C ends it at once, RPCs or not.

The health servicer: the app's own, if it registered one (before or after
``LastCall``), is driven only at the stop (its statuses are the app's);
otherwise one is registered at ``server.start()``, answering SERVING for the
whole server (``""``) and for each service the server names. ``health=False``
registers none. How it is done, and which parts of grpcio it relies on:
``lastcall._servers.grpc``.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from typing import TYPE_CHECKING, Any

import lastcall
from lastcall._config import resolve
from lastcall._integration import Integration
from lastcall._log import log, logger
from lastcall._servers import grpc as adapter
from lastcall._servers.drain import drain

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("LastCall",)


class LastCall:
    """lastcall's stop for one grpc server (``grpc.server`` or ``grpc.aio.server``)."""

    def __init__(self, server: Any, *, health: bool = True) -> None:  # noqa: ANN401  # grpc's
        grpc = importlib.import_module("grpc")
        self.server = server
        self.aio = isinstance(server, importlib.import_module("grpc.aio").Server)
        if not self.aio and not isinstance(server, grpc.Server):
            raise TypeError(
                f"LastCall() takes a grpc.server() or a grpc.aio.server(), not {server!r}"
            )
        self.health: Any = None  # the health servicer driven, once the server has started
        self._want_health = health
        self._health_is_ours = False
        self._services: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._adapter: adapter.SyncAdapter | adapter.AioAdapter | None = None
        self.rpcs: adapter.RpcsInFlight | None = None
        coordinator = self._coordinator = lastcall.default
        if not coordinator.installed:
            resolve()  # a bad LASTCALL_* setting fails here, before the server starts
        adapter.TESTED.check()
        Integration(coordinator).expect_serving()
        Integration(coordinator).ensure_installed()
        coordinator.on_shutdown(phase="drain", name="grpc drain")(self._drain)
        coordinator.on_shutdown(phase="pre_stop", name="grpc health: NOT_SERVING")(
            self._not_serving
        )
        self._wrap_start()

    # ------------------------------------------------------------ start

    def _wrap_start(self) -> None:
        server = self.server
        start: Callable[[], Any] = server.start
        if self.aio:

            async def start_aio() -> None:
                self._loop = asyncio.get_running_loop()
                self._prepare()
                await start()
                self._adapter = adapter.AioAdapter(server, self.rpcs, self._coordinator, self._loop)
                if self._health_is_ours:
                    for service in self._services:
                        await self.health.set(service, _serving())
                Integration(self._coordinator).serving()

            server.start = start_aio
        else:

            def start_sync() -> None:
                self._prepare()
                start()
                self._adapter = adapter.SyncAdapter(server, self.rpcs, self._coordinator)
                if self._health_is_ours:
                    for service in self._services:
                        self.health.set(service, _serving())
                Integration(self._coordinator).serving()

            server.start = start_sync

    def _prepare(self) -> None:
        """Before grpc's start: find or add the health servicer, wrap every handler.

        Nothing here may keep the server from starting: what fails is said, once.
        """
        try:
            self._find_and_wrap()
        except Exception as exc:
            logger.exception(
                "grpc: lastcall could not prepare the server's stop (%r); its RPCs are not "
                "counted, the drain waits for grpc's own stop",
                exc,
            )

    def _find_and_wrap(self) -> None:
        handlers = adapter.find_handlers(self.server, aio=self.aio)
        if handlers is None:
            logger.warning(
                "grpc %s: lastcall cannot find the server's handlers (tested with %s): RPCs "
                "are not counted, the drain waits for grpc's own stop, health is not driven",
                adapter.TESTED.installed(),
                adapter.TESTED.range,
            )
            return
        check = handlers.lookup(f"/{adapter.HEALTH_SERVICE}/Check")
        servicer = getattr(getattr(check, "unary_unary", None), "__self__", None)
        if check is not None:
            if hasattr(servicer, "enter_graceful_shutdown"):
                self.health = servicer
        elif self._want_health:
            self.health = self._add_health_servicer()
            self._health_is_ours = self.health is not None
        self._services = ["", *adapter.service_names(handlers)]
        rpcs = adapter.RpcsInFlight()
        handlers.wrap(rpcs, aio=self.aio)
        self.rpcs = rpcs
        Integration(self._coordinator).list_requests_with(rpcs.listing)

    def _add_health_servicer(self) -> Any:  # noqa: ANN401  # grpc_health's
        try:
            health = importlib.import_module("grpc_health.v1.health")
            health_grpc = importlib.import_module("grpc_health.v1.health_pb2_grpc")
        except ImportError:
            return None
        servicer = health.aio.HealthServicer() if self.aio else health.HealthServicer()
        health_grpc.add_HealthServicer_to_server(servicer, self.server)
        return servicer

    # ------------------------------------------------------------ the stop

    def _not_serving(self) -> None:
        """The pre_stop hook: every service NOT_SERVING, for good."""
        servicer = self.health
        if servicer is None:
            return
        if not self.aio:
            servicer.enter_graceful_shutdown()
        elif self._loop is None or not adapter.run_on(
            self._loop, servicer.enter_graceful_shutdown()
        ):
            log.log(logging.ERROR, "grpc health: the app's loop did not set NOT_SERVING")
            return
        log.log(logging.INFO, "grpc health: NOT_SERVING for every service")

    def _drain(self) -> None:
        """The drain hook: nothing to drain if the server never started."""
        if self._adapter is not None:
            drain(self._adapter, self._coordinator)


def _serving() -> int:
    health_pb2 = importlib.import_module("grpc_health.v1.health_pb2")
    status: int = health_pb2.HealthCheckResponse.SERVING
    return status
