"""waitress: the adapter the drain runs through (``lastcall.waitress.serve`` is the face).

waitress has no graceful stop of its own: its loop (``wasyncore``) runs on
the thread that called ``serve``, the main thread, and its request threads
are daemons. Everything here that touches the server runs on that loop's
thread, handed over through waitress's own trigger, unless the loop has
ended (an exception or ``sys.exit`` on its thread): then the door is
closed at once (``loop_died``), and the drain turns the loop itself so
the responses still go out.

Tested with waitress 3.0 (``versions.WAITRESS``). Undocumented parts used:

* ``waitress/server.py``: the server's ``map`` or a single server's
  ``_map``, ``asyncore`` (its ``loop``), ``adj``, ``accepting``,
  ``active_channels``, ``channel_class`` (replaced by a subclass),
  ``set_socket_options``, ``fix_addr``, ``del_channel`` and ``trigger``
  (its ``pull_trigger``, ``waitress/trigger.py``, which wakes the loop to
  run a function on it);
* ``waitress/channel.py``: ``task_class``, and the channel fields read by
  ``_close_idle``;
* ``waitress/task.py``: ``build_response_header`` and ``service``
  (subclassed), ``close_on_finish``, ``set_close_on_finish``, and
  ``task.request.command`` and ``.path``.
"""

from __future__ import annotations

import importlib
import threading
import time
from typing import TYPE_CHECKING, Any, TypeAlias

from lastcall._servers import versions
from lastcall._servers.inflight import has_input
from lastcall._servers.listener import take_backlog

if TYPE_CHECKING:
    from collections.abc import Callable

    from lastcall._servers.inflight import RequestsInFlight
    from lastcall._stoptoken import StopToken

__all__ = ("WaitressAdapter",)

# waitress objects (servers, channels): untyped, reached by duck typing
Waitress: TypeAlias = Any

_POLL = 0.05  # seconds between looks at the connections left

TESTED = versions.WAITRESS


def run_cli(argv: list[str], serve: Callable[..., None]) -> int:
    """``waitress-serve`` with ``argv``, serving through ``serve``: waitress's parser and help.

    ``waitress/runner.py``'s ``run`` (the ``waitress-serve`` entry point, the
    same in every version ``versions.WAITRESS`` names) takes the function it
    serves with as ``_serve``.
    """
    runner = importlib.import_module("waitress.runner")
    status: int = runner.run(argv=argv, _serve=serve)
    return status


def run(server: Waitress) -> None:
    """The ``run()`` of waitress (waitress/server.py), without its ``task_dispatcher.shutdown()``.

    That waits up to 5 s for the request threads while the listening socket
    still queues new connections; here the door closes first (``loop_died``).
    """
    server.asyncore.loop(
        timeout=server.adj.asyncore_loop_timeout,
        map=_socket_map(server),
        use_poll=server.adj.asyncore_use_poll,
    )


def adapt_tasks(
    server: Waitress,
    stopping: StopToken,
    requests: RequestsInFlight,
    health: tuple[str | None, ...],
) -> None:
    """Tasks (one per request, waitress/task.py) that say what is in flight and when to close.

    Each is kept in ``requests`` while it runs, health checks aside; a
    response that begins once the stop has begun closes its connection.
    """
    for each in _servers_of(server):
        channel_class = each.channel_class
        task_class = channel_class.task_class
        build = task_class.build_response_header
        service = task_class.service

        def build_response_header(task: Waitress, build: Any = build) -> Any:  # noqa: ANN401
            if stopping.is_set() and not task.close_on_finish:
                task.set_close_on_finish()  # "Connection: close", then close after the response
            return build(task)

        def tracked_service(task: Waitress, service: Any = service) -> Any:  # noqa: ANN401
            request = task.request
            if request.path in health:
                return service(task)
            requests.began(id(task), request.command, request.path)
            try:
                return service(task)
            finally:
                requests.ended(id(task))

        task = type(
            "LastCallTask",
            (task_class,),
            {"build_response_header": build_response_header, "service": tracked_service},
        )
        each.channel_class = type("LastCallChannel", (channel_class,), {"task_class": task})


class WaitressAdapter:
    """The drain's questions answered on waitress's loop thread."""

    name = "waitress"

    def __init__(self, server: Waitress) -> None:
        self._server = server
        self._servers = _servers_of(server)
        # Set once waitress's loop has ended: no loop is left to hand work to.
        self.loop_ended = threading.Event()
        self._door_closed = False
        self._left = 0

    def loop_died(self) -> None:
        """On the loop's thread, as its loop ends: close the door now, not at exit.

        Until the process is gone the socket would queue new connections that
        nobody accepts, and they would be reset. What the backlog holds is taken
        as channels, which the drain serves by turning the loop.
        """
        self.loop_ended.set()
        if not self._door_closed:
            self._close_door()

    def prestop_delay(self) -> float:
        """The core's pre_stop phase has kept serving already."""
        return 0.0

    def close_door(self) -> int:
        """Take the backlog as channels, then close the listening sockets."""
        if self._door_closed:
            return 0
        return self._on_loop(self._close_door, time.monotonic() + 1.0) or 0

    def in_flight(self) -> int:
        """Connections left at the last look."""
        return self._left

    def requests_in_flight(self, health: tuple[str | None, ...] = ()) -> int:
        """Requests being answered now, health checks aside (for ``/readyz``).

        Read from another thread than the loop's: a moment's count, no more.
        """
        return sum(
            1
            for server in self._servers
            for channel in list(server.active_channels.values())
            for request in list(channel.requests)[:1]
            if getattr(request, "path", None) not in health
        )

    def wait_idle(self, timeout: float) -> bool:
        """Until no connection is left: turning the loop ourselves if it has ended."""
        deadline = time.monotonic() + timeout
        while True:
            left = self._on_loop(self._count_left, deadline)
            if left is not None:
                self._left = left
            if left == 0:
                return True
            if time.monotonic() >= deadline:
                return False
            if self.loop_ended.is_set():
                self._turn_loop()
            else:
                time.sleep(_POLL)

    def close_idle(self) -> None:
        """Mark idle connections to close; the loop closes them on its next turn."""
        self._on_loop(self._close_idle, time.monotonic() + _POLL)

    def cancel(self) -> int:
        """No request thread can be cancelled: the connections left are given up."""
        return self._left

    # ------------------------------------------------------------ on the loop's thread

    def _on_loop(self, func: Callable[[], int], deadline: float) -> int | None:
        """Run ``func`` on waitress's loop thread (its trigger); None if it did not run in time."""
        if self.loop_ended.is_set():
            return func()
        done = threading.Event()
        result: list[int] = []

        def thunk() -> None:
            try:
                result.append(func())
            finally:
                done.set()

        self._servers[0].trigger.pull_trigger(thunk)
        done.wait(max(0.0, deadline - time.monotonic()))
        return result[0] if result else None

    def _turn_loop(self) -> None:
        """One turn of waitress's loop, for the loop that ended: the responses go out."""
        server = self._server
        server.asyncore.loop(
            timeout=_POLL, map=_socket_map(server), use_poll=server.adj.asyncore_use_poll, count=1
        )

    def _close_door(self) -> int:
        self._door_closed = True
        taken = 0
        for server in self._servers:
            for conn, addr in take_backlog(server.socket):
                try:
                    server.set_socket_options(conn)
                except OSError:
                    conn.close()
                    continue
                address = server.fix_addr(addr)
                server.channel_class(server, conn, address, server.adj, map=_socket_map(server))
                taken += 1
            server.accepting = False
            server.del_channel()
            server.socket.close()  # not server.close(): that closes the trigger we still use
        return taken

    def _count_left(self) -> int:
        return sum(len(server.active_channels) for server in self._servers)

    def _close_idle(self) -> int:
        for server in self._servers:
            for channel in list(server.active_channels.values()):
                busy = (
                    channel.requests
                    or channel.request is not None
                    or channel.total_outbufs_len
                    or channel.will_close
                    or channel.close_when_flushed
                    or has_input(channel.socket)
                )
                if not busy:
                    channel.will_close = True
        return 0


def _servers_of(server: Waitress) -> list[Waitress]:
    """One server, or the several a MultiSocketServer holds in its map."""
    if hasattr(server, "accepting"):
        return [server]
    return [d for d in server.map.values() if hasattr(d, "active_channels")]


def _socket_map(server: Waitress) -> dict[int, Waitress]:
    """The dispatchers waitress's loop serves: ``map``, or a single server's ``_map``."""
    socket_map: dict[int, Waitress] = getattr(server, "map", None) or server._map  # noqa: SLF001  # waitress/wasyncore.py dispatcher
    return socket_map
