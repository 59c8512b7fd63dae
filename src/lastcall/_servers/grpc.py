"""grpcio: the adapter the drain runs through (``lastcall.grpc.LastCall`` is the face).

What grpcio's own ``server.stop(grace)`` does, measured with 1.85 (sync and
``grpc.aio`` alike), is the door and the cancel; lastcall adds the rest:

* ``stop(grace)`` calls C-core's ``grpc_server_shutdown_and_notify``: the
  listening sockets close at once (a new TCP connection is refused, not
  accepted and reset) and every open connection gets an HTTP/2 GOAWAY, so a
  client's next RPC reconnects, is refused and fails UNAVAILABLE (its retry
  goes to another replica). RPCs in flight carry on. The sync ``stop``
  returns at once, with an Event set once every RPC is over; the aio one
  returns then.
* When ``grace`` runs out, ``grpc_server_cancel_all_calls``: every RPC still
  open ends with UNAVAILABLE, "Cancelling all calls"; a sync server stops
  iterating a response stream (the app's generator is closed at its next
  ``yield``), an aio server cancels the RPC's task (``CancelledError`` in the
  handler). ``stop(0)`` later shortens the grace to now.

So: close the door = ``stop(grace)`` with what is left of the grace (grpcio's
own cancel stays as a backstop); wait until idle = no RPC of the app's left
(counted here) and grpc's own "stopped" after; cancel = ``stop(0)``.

Counting: every handler is wrapped, in place, when the server starts (the
app may add its servicers before or after ``LastCall``), so an RPC is in
flight from the call of its handler until grpc says it is over (the
context's ``add_callback`` / ``add_done_callback``: status sent, or
cancelled). The health service's RPCs are not the app's work: a ``Watch``
stream (client-side health checking) stays open for ever, so once the app's
RPCs are over whatever is left is cancelled at once instead of holding the
drain to its budget.

Tested with grpcio 1.62 and 1.85 (``versions.GRPC``). Undocumented parts used, only to
find the handlers (without them the drain waits for grpc's own stop, which
counts a health ``Watch`` as in flight, and names no RPC in the report):

* ``grpc/_server.py``: ``_Server._state`` and its ``generic_handlers`` (a list)
  and ``registered_method_handlers`` (a dict, grpcio 1.63 and later);
* ``grpc/aio/_server.py``: ``Server._server``, the Cython ``AioServer``
  (``grpc/_cython/_cygrpc/aio/server.pyx.pxi``), whose ``_generic_handlers``
  list and ``_registered_method_handlers`` dict are not Python attributes:
  they are found among its ``gc.get_referents``, the only list and the only
  dict it holds (no dict before grpcio 1.63, which had no registered methods).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import gc
import inspect
import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, TypeAlias

from lastcall._log import log
from lastcall._servers import versions
from lastcall._servers.inflight import in_report
from lastcall._servers.listener import CLOSE_WAIT, admit_no_more_to, native_listeners, wait_closed

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from lastcall._coordinator import Coordinator

__all__ = (
    "HEALTH_SERVICE",
    "TESTED",
    "AioAdapter",
    "Handlers",
    "RpcsInFlight",
    "SyncAdapter",
    "find_handlers",
    "run_on",
    "service_names",
    "track",
)

# grpc objects (servers, handlers, contexts): untyped, reached by duck typing
Grpc: TypeAlias = Any

TESTED = versions.GRPC
HEALTH_SERVICE = "grpc.health.v1.Health"
_HEALTH_PREFIX = f"/{HEALTH_SERVICE}/"
_BEHAVIOURS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
# attributes grpc/_server.py reads on a behaviour (a health Watch's non-blocking stream)
_BEHAVIOUR_FLAGS = ("experimental_non_blocking", "experimental_thread_pool")
_SLASHES = 2  # in a method's path: /package.Service/Method
_LOOP_WAIT = 1.0  # seconds, at most, for the app's loop to run what the stop hands it
_CANCEL_WAIT = 1.0  # seconds, at most, for the cancelled RPCs' statuses to go out


class RpcsInFlight:
    """The app's RPCs in flight (path, start), and how many health RPCs are open."""

    def __init__(self) -> None:
        self._live: dict[int, tuple[str, float]] = {}
        self._health: set[int] = set()
        self._streams: set[int] = set()  # response streams whose handler still runs (sync)
        self._keys = itertools.count()
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return len(self._live)

    @property
    def health_open(self) -> int:
        """Health RPCs not over yet (``Watch`` streams, mostly)."""
        return len(self._health)

    def began(self, path: str) -> int:
        key = next(self._keys)
        with self._cond:
            if path.startswith(_HEALTH_PREFIX):
                self._health.add(key)
            else:
                self._live[key] = (path, time.monotonic())
        return key

    def ended(self, key: int) -> None:
        with self._cond:
            self._health.discard(key)
            if self._live.pop(key, None) is not None and not self._live:
                self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until none of the app's RPCs is in flight."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._live, max(0.0, timeout))

    def stream_began(self, key: int) -> None:
        with self._cond:
            self._streams.add(key)

    def stream_ended(self, key: int) -> None:
        with self._cond:
            self._streams.discard(key)
            if not self._streams:
                self._cond.notify_all()

    def wait_streams(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until no response stream's handler runs."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._streams, max(0.0, timeout))

    def listing(self) -> list[dict[str, Any]]:
        """The app's RPCs in flight, for the report (``list_requests_with``): POST and path."""
        now = time.monotonic()
        with self._cond:
            live = list(self._live.values())
        return [in_report("POST", path, began, now) for path, began in live]


# ---------------------------------------------------------------- the handlers


class Handlers:
    """Where a server keeps its handlers: the generic ones (a list), the registered (a dict)."""

    def __init__(self, generic: list[Grpc], registered: dict[str, Grpc]) -> None:
        self.generic = generic
        self.registered = registered

    def lookup(self, path: str) -> Grpc | None:
        """The method handler serving ``path``, as the server finds it: registered first."""
        handler = self.registered.get(path)
        if handler is not None:
            return handler
        details = _CallDetails(path)
        for generic in self.generic:
            handler = generic.service(details)
            if handler is not None:
                return handler
        return None

    def wrap(self, rpcs: RpcsInFlight, *, aio: bool) -> None:
        """Replace every handler, in place, by one that counts its RPCs in ``rpcs``."""
        self.generic[:] = [_TrackedGeneric(g, rpcs, aio=aio) for g in self.generic]
        for path, handler in list(self.registered.items()):
            self.registered[path] = track(handler, path, rpcs, aio=aio)


def find_handlers(server: Grpc, *, aio: bool) -> Handlers | None:  # noqa: PLR0911
    """The server's own handler list and dict (see the module's docstring); None if not found."""
    if not aio:
        state = getattr(server, "_state", None)  # grpc/_server.py: _Server._state
        generic = getattr(state, "generic_handlers", None)  # _ServerState.generic_handlers
        registered = getattr(state, "registered_method_handlers", {})  # grpcio >= 1.63
        if isinstance(generic, list) and isinstance(registered, dict):
            return Handlers(generic, registered)
        return None
    core = getattr(server, "_server", None)  # grpc/aio/_server.py: Server._server, an AioServer
    if core is None:
        return None
    # grpc/_cython/_cygrpc/aio/server.pyx.pxi: AioServer._generic_handlers (a list) and
    # ._registered_method_handlers (a dict) are C fields, seen only as what it refers to.
    referents = gc.get_referents(core)
    lists = [r for r in referents if type(r) is list]
    dicts = [r for r in referents if type(r) is dict]
    if len(lists) != 1 or len(dicts) > 1:
        return None
    generic = lists[0]
    registered = dicts[0] if dicts else {}  # no registered methods before grpcio 1.63
    if not all(hasattr(g, "service") for g in generic):
        return None
    if not all(isinstance(k, str) and k.startswith("/") for k in registered):
        return None
    return Handlers(generic, registered)


def service_names(handlers: Handlers) -> list[str]:
    """The services the server serves, where it says: registered methods, grpc's generic ones."""
    names = {path.split("/")[1] for path in handlers.registered if path.count("/") == _SLASHES}
    for generic in handlers.generic:
        name = getattr(generic, "service_name", None)  # grpc/_utilities.py DictionaryGenericHandler
        if callable(name):
            with contextlib.suppress(Exception):
                names.add(str(name()))
    names.discard(HEALTH_SERVICE)
    return sorted(n for n in names if n)


class _CallDetails:
    """A ``grpc.HandlerCallDetails`` for asking a generic handler about a method."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata: tuple[Any, ...] = ()


class _TrackedGeneric:
    """A ``grpc.GenericRpcHandler`` whose method handlers count their RPCs."""

    def __init__(self, inner: Grpc, rpcs: RpcsInFlight, *, aio: bool) -> None:
        self._inner = inner
        self._rpcs = rpcs
        self._aio = aio

    def service(self, handler_call_details: Grpc) -> Grpc | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        return track(handler, handler_call_details.method, self._rpcs, aio=self._aio)

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401  # service_name(), and the like
        return getattr(self._inner, name)


class _MethodHandler:
    """A ``grpc.RpcMethodHandler``: the eight fields grpc reads."""

    def __init__(self, handler: Grpc, behaviours: dict[str, Any]) -> None:
        self.request_streaming = handler.request_streaming
        self.response_streaming = handler.response_streaming
        self.request_deserializer = handler.request_deserializer
        self.response_serializer = handler.response_serializer
        self.unary_unary = behaviours.get("unary_unary")
        self.unary_stream = behaviours.get("unary_stream")
        self.stream_unary = behaviours.get("stream_unary")
        self.stream_stream = behaviours.get("stream_stream")


def track(handler: Grpc, path: str, rpcs: RpcsInFlight, *, aio: bool) -> Grpc:
    """``handler`` with each behaviour counting its RPC in ``rpcs`` until grpc says it is over."""
    if isinstance(handler, _MethodHandler):
        return handler  # wrapped already (a registered handler is also reached generically)
    behaviours = {}
    for name in _BEHAVIOURS:
        behaviour = getattr(handler, name, None)
        if behaviour is not None:
            wrap = _wrap_aio if aio else _wrap_sync
            behaviours[name] = wrap(behaviour, path, rpcs, streams=name.endswith("_stream"))
    return _MethodHandler(handler, behaviours)


def _copy_flags(wrapper: Callable[..., Any], behaviour: Callable[..., Any]) -> None:
    for flag in _BEHAVIOUR_FLAGS:
        if hasattr(behaviour, flag):
            setattr(wrapper, flag, getattr(behaviour, flag))


def _until_over(rpcs: RpcsInFlight, key: int, context: Grpc) -> None:
    """End ``key`` when grpc says the RPC is over (status sent, or cancelled)."""
    ended = functools.partial(rpcs.ended, key)
    if not context.add_callback(ended):  # grpc/_server.py: False once it is over
        ended()


def _wrap_sync(
    behaviour: Callable[..., Any], path: str, rpcs: RpcsInFlight, *, streams: bool
) -> Callable[..., Any]:
    """On grpc's threads; the RPC ends with the context's callbacks (``_Context.add_callback``).

    A response stream's handler is also followed until its iterator is closed
    (grpc drops it at the message after a cancel), so a cancel can give it
    that moment to hear of it.
    """

    def tracked(request: Any, context: Grpc, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        key = rpcs.began(path)
        _until_over(rpcs, key, context)
        result = behaviour(request, context, *args, **kwargs)
        if not streams or result is None or path.startswith(_HEALTH_PREFIX):
            return result  # None: a non-blocking stream (a health Watch) answers by callback
        rpcs.stream_began(key)
        return _ending(result, functools.partial(rpcs.stream_ended, key))

    _copy_flags(tracked, behaviour)
    return tracked


def _wrap_aio(
    behaviour: Callable[..., Any], path: str, rpcs: RpcsInFlight, *, streams: bool
) -> Callable[..., Any]:
    """The same kind of callable as ``behaviour``: grpc.aio serves each kind its own way.

    A coroutine (unary, or a stream's reader/writer API) and an async generator
    end with the context's ``add_done_callback``; a sync handler on the aio
    server's thread pool, whose context has no such thing, when it returns, or
    when its response iterator is done.
    """
    if inspect.isasyncgenfunction(behaviour):

        async def tracked_agen(request: Any, context: Grpc) -> Any:  # noqa: ANN401
            _until_done(rpcs, rpcs.began(path), context)
            async for response in behaviour(request, context):
                yield response

        return tracked_agen

    if inspect.iscoroutinefunction(behaviour):

        async def tracked_coro(request: Any, context: Grpc) -> Any:  # noqa: ANN401
            _until_done(rpcs, rpcs.began(path), context)
            return await behaviour(request, context)

        return tracked_coro

    def tracked_sync(request: Any, context: Grpc) -> Any:  # noqa: ANN401
        key = rpcs.began(path)
        try:
            result = behaviour(request, context)
        except BaseException:
            rpcs.ended(key)
            raise
        if streams:
            return _ending(result, functools.partial(rpcs.ended, key))
        rpcs.ended(key)
        return result

    return tracked_sync


def _until_done(rpcs: RpcsInFlight, key: int, context: Grpc) -> None:
    ended = functools.partial(rpcs.ended, key)
    context.add_done_callback(lambda _context: ended())


def _ending(responses: Iterator[Any], ended: Callable[[], None]) -> Iterator[Any]:
    try:
        yield from responses
    finally:
        ended()


# ---------------------------------------------------------------- the listening sockets


# ---------------------------------------------------------------- the drain's answers


class _Adapter:
    """What the two servers share: the door, counting, waiting, the health service's leftovers."""

    name: str

    def __init__(self, server: Grpc, rpcs: RpcsInFlight | None, coordinator: Coordinator) -> None:
        self._server = server
        self._rpcs = rpcs
        self._coordinator = coordinator
        self._stopped = threading.Event()  # grpc has ended every RPC (set by each server's way)
        self._cancelled = False
        self._listeners = native_listeners()  # the server has started: its sockets listen

    def close_door(self) -> int:
        """New connections are refused from now, never accepted and reset: nothing to take.

        grpc's core accepts connections itself, and closes its listening sockets a
        moment after ``stop()`` (milliseconds, longer on a busy machine; a connection
        it accepts meanwhile is closed at once). So first no new handshake completes
        on them (a client's SYN is dropped; it sends it again a second later, to a
        closed port), then grpc's stop, then the wait until they are closed.
        """
        admit_no_more_to(self._listeners)
        self._stop()
        if not wait_closed(self._listeners):
            log.log(
                logging.WARNING, "%s: still listening %.3g s after its stop", self.name, CLOSE_WAIT
            )
        return 0

    def prestop_delay(self) -> float:
        """The core's pre_stop phase has kept serving already."""
        return 0.0

    def in_flight(self) -> int:
        """The app's RPCs not over yet (grpc's own count when they cannot be counted here)."""
        if self._rpcs is None:
            return 0 if self._stopped.is_set() else 1
        return len(self._rpcs)

    def wait_idle(self, timeout: float) -> bool:
        """No RPC of the app's left, then the health service's cancelled, then grpc stopped."""
        deadline = time.monotonic() + timeout
        rpcs = self._rpcs
        if rpcs is not None:
            if not rpcs.wait_idle(timeout):
                return False
            if rpcs.health_open and not self._cancelled:
                self._cancel_all()  # Watch streams: over when the server's work is
        return self._stopped.wait(max(0.0, deadline - time.monotonic()))

    def close_idle(self) -> None:
        """Nothing: grpc has sent every connection its GOAWAY already."""

    def cancel(self) -> int:
        """End every RPC left with UNAVAILABLE (grpc's cancel-all); how many were the app's.

        Then a moment, at most ``_CANCEL_WAIT`` and half of what the hooks after the
        drain keep, for the statuses to go out and a sync response stream's handler
        to be closed at its next message (an aio handler is cancelled at once).
        """
        left = self.in_flight()
        self._cancel_all()
        deadline = time.monotonic() + min(_CANCEL_WAIT, (self._coordinator.time_left() or 0) / 2)
        if self._rpcs is not None:
            self._rpcs.wait_streams(deadline - time.monotonic())
        self._stopped.wait(max(0.0, deadline - time.monotonic()))
        return left

    def _grace(self) -> float:
        """For grpc's own stop: what is left of the grace, so grpc cancels after the drain does."""
        left = self._coordinator.time_left()
        return self._coordinator.settings.grace if left is None else left

    def _stop(self) -> None:
        raise NotImplementedError

    def _cancel_all(self) -> None:
        raise NotImplementedError


class SyncAdapter(_Adapter):
    """``grpc.server(...)``: its ``stop`` runs on any thread."""

    name = "grpc"

    def _stop(self) -> None:
        """``server.stop(grace)``: listeners closed, GOAWAY sent; returns at once."""
        stopped: threading.Event = self._server.stop(self._grace())
        self._stopped = stopped  # set by grpc once every RPC is over

    def _cancel_all(self) -> None:
        self._cancelled = True
        self._server.stop(0)  # grpc/_server.py _stop: cancel_all_calls now


class AioAdapter(_Adapter):
    """``grpc.aio.server()``: its ``stop`` runs on the app's loop, handed over from the stop."""

    name = "grpc.aio"

    def __init__(
        self,
        server: Grpc,
        rpcs: RpcsInFlight | None,
        coordinator: Coordinator,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(server, rpcs, coordinator)
        self._loop = loop

    def _stop(self) -> None:
        """``await server.stop(grace)``, begun on the loop: its first step closes the door."""
        if not run_on(self._loop, self._begin_stop(self._grace())):
            log.log(
                logging.ERROR,
                "grpc.aio: the app's event loop did not run the server's stop; "
                "it is not serving, or it is blocked",
            )

    async def _begin_stop(self, grace: float) -> None:
        task = asyncio.ensure_future(self._server.stop(grace))
        task.add_done_callback(lambda _task: self._stopped.set())
        await asyncio.sleep(0)  # the stop's first step: grpc_server_shutdown_and_notify

    def _cancel_all(self) -> None:
        self._cancelled = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs any more
            asyncio.run_coroutine_threadsafe(self._server.stop(0), self._loop)


def run_on(loop: asyncio.AbstractEventLoop, coro: Any) -> bool:  # noqa: ANN401  # a coroutine
    """Run ``coro`` on the app's ``loop`` from another thread; whether it finished in time."""
    try:
        future = asyncio.run_coroutine_threadsafe(coro, loop)
    except RuntimeError:  # the loop is closed
        coro.close()
        return False
    try:
        future.result(_LOOP_WAIT)
    except concurrent.futures.TimeoutError:
        future.cancel()
        return False
    return True
