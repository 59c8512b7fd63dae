"""uvicorn and hypercorn: what both answer the drain the same way, on their event loop.

``AsgiServer`` is the adapter the drain runs through; ``lastcall._servers.
uvicorn`` and ``.hypercorn`` hold what differs (how each is told to stop).
The door, below, is closed the same way for both.

The listening sockets of an asyncio server, closed without a reset
------------------------------------------------------------------

Both servers listen through ``loop.create_server`` and stop with
``Server.close()``, which closes the listening file descriptor at once:
whatever the kernel had queued since the loop's last accept is reset, and
where another process holds the same socket (hypercorn's master) it goes on
queueing connections that nobody will accept. So the door is closed here
instead, in one callback on the loop (asyncio cannot accept in between):

1. keep the socket open through a duplicate, and let ``Server.close()``
   stop asyncio's accepting;
2. take every connection already queued, and hand each to the server's own
   protocol (``loop.connect_accepted_socket``), so it is served;
3. on a full stop, ``shutdown()`` the socket: it stops listening for every
   process holding it, and the kernel refuses new connections from then on.

The servers are found by wrapping ``create_server`` on the loop instance
when the app's lifespan starts, which both servers run before they listen.
A loop that allows no such wrapper (uvloop) keeps the servers' own close.

When the loop dies instead (an unhandled exception or ``sys.exit`` on its
thread), the door is closed at once, so new connections are refused rather
than queued until the process is gone, and the requests in flight are
finished before ``asyncio.run``'s teardown may cancel them (see
``AsgiServer._finish_in_flight_if_the_loop_dies``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import functools
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from lastcall._log import logger
from lastcall._servers.listener import stop_listening, take_backlog

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Coroutine

__all__ = ("DRAIN_BUDGET_SPENT", "AsgiServer", "AsyncioDoor")

DRAIN_BUDGET_SPENT = "lastcall: drain budget spent"  # the message of the drain's cancel

_SETTLE_TURNS = 2  # loop turns for a handed-over connection to read what already arrived
_HANDED_TURNS = 5  # for one handed to another server on the loop (Twisted) to reach the app
_AFTER_CANCEL = 1.0  # after cancelling what overran, how long to let the server notice
_DOOR_WAIT = 5.0  # at most, for the loop to close the door (it is one callback)
_DYING_POLL = 0.05  # how often a drain waiting for the server checks that its loop still lives


class AsgiServer:
    """The drain's questions, answered on the server's event loop.

    ``stop_server()`` gives the server's own stop (uvicorn's ``handle_exit``,
    hypercorn's trigger), called once the door is closed; ``drained`` is set
    when the server sends the lifespan shutdown, which it does once it has
    finished what it held. ``live`` and ``idle`` are the middleware's count.
    """

    def __init__(  # noqa: PLR0917  # the middleware's own state, handed over once
        self,
        loop: asyncio.AbstractEventLoop,
        live: Collection[asyncio.Task[Any]],
        idle: threading.Event,
        drained: threading.Event,
        stop_server: Callable[[], Callable[[], object] | None],
        full_stop: Callable[[], bool],
        budget: Callable[[], float],
        worker_prestop: float = 0.0,
        close_idle: Callable[[], object] | None = None,
        close_listeners: Callable[[bool], int] | None = None,
        writing: Callable[[], bool] | None = None,
    ) -> None:
        self.name = "the server"
        # gunicorn's UvicornWorker: a worker recycled alone does not keep serving with
        # readiness red (its siblings serve); only a full stop has the pre-stop delay.
        self.worker_prestop = worker_prestop
        self.door = AsyncioDoor(loop)
        self._loop = loop
        self._live = live
        self._idle = idle
        self._drained = drained
        self._stop_server = stop_server
        self._full_stop = full_stop
        self._told = False
        self._budget = budget
        self._close_idle = close_idle  # on the loop; None: the server closes them itself
        # On the loop: listeners that are no asyncio servers (daphne's Twisted ports).
        self._close_listeners = close_listeners
        self._writing = writing or (lambda: False)  # writes the server holds (daphne's Twisted)
        self._dying = threading.Event()
        self._finish_in_flight_if_the_loop_dies()

    def loop_dying(self) -> None:
        """The loop is ending under the server (any thread): nothing new is served."""
        self._dying.set()
        self.door.refuse_now()

    def prestop_delay(self) -> float:
        """A worker's own delay, on a full stop only; else the core's pre_stop phase did it."""
        return self.worker_prestop if self.worker_prestop and self._full_stop() else 0.0

    def close_door(self) -> int:
        """Close the door on the loop, then tell the server to finish what it holds."""
        if not self._serving():
            return 0
        taken = 0
        if not self.door.closed:
            refuse = self._full_stop()
            handed = self._close_other_listeners(refuse)
            closing = asyncio.run_coroutine_threadsafe(
                self._close_door(refuse=refuse, handed=handed), self._loop
            )
            with contextlib.suppress(concurrent.futures.TimeoutError):
                taken = handed + closing.result(_DOOR_WAIT)
        stop_server = self._stop_server()
        if stop_server is not None:
            self._loop.call_soon_threadsafe(stop_server)
            self._told = True
        return taken

    def _close_other_listeners(self, refuse: bool) -> int:
        """The integration's listeners that are no asyncio servers (daphne's): how many taken.

        In one callback on the loop, the loop's first next: a task would take a turn
        more, in which their server accepts what is queued, for a moment, in its own way.
        """
        close = self._close_listeners
        if close is None:
            return 0
        closed: concurrent.futures.Future[int] = concurrent.futures.Future()

        def run() -> None:
            try:
                closed.set_result(close(refuse))
            except BaseException as exc:
                closed.set_exception(exc)
                raise

        self._loop.call_soon_threadsafe(run)
        with contextlib.suppress(concurrent.futures.TimeoutError):
            return closed.result(_DOOR_WAIT)
        return 0

    async def _close_door(self, *, refuse: bool, handed: int) -> int:
        """The asyncio door; then, if some were handed elsewhere, turns for them to be counted."""
        taken = await self.door.close(refuse=refuse)
        for _ in range(_HANDED_TURNS if handed else 0):
            await asyncio.sleep(0)
        return taken

    def in_flight(self) -> int:
        """Requests (and WebSockets) the middleware counts."""
        return len(self._live)

    def wait_idle(self, timeout: float) -> bool:
        """A server that was told sends the lifespan shutdown once drained; else our count.

        If the loop dies meanwhile, the server will send nothing: our count then.
        """
        deadline = time.monotonic() + timeout
        while True:
            told = self._told and not self._dying.is_set()
            done = self._drained if told or self._drained.is_set() else self._idle
            left = deadline - time.monotonic()
            if done.wait(min(left, _DYING_POLL) if told else left):
                return True
            if left <= 0:
                return False

    def close_idle(self) -> None:
        """Close idle keep-alive connections, on the loop, where the server waits for them.

        A server told to stop closes them itself, but for gunicorn's ``-k asgi``,
        which waits for their timeout: its integration gives a way to close them.
        """
        if self._close_idle is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._close_idle)

    def cancel(self) -> int:
        """Cancel the requests still in flight, as uvicorn's own timeout would."""
        count = len(self._live)
        if not self._loop.is_running():
            return count
        self._loop.call_soon_threadsafe(self._cancel_in_flight)
        (self._drained if self._told else self._idle).wait(_AFTER_CANCEL)
        return count

    def _finish_in_flight_if_the_loop_dies(self) -> None:
        """If an exception ends the loop on its thread, finish what is in flight first.

        An unhandled exception or ``sys.exit`` raised on the loop's thread (by a
        signal handler, say) leaves the loop, and ``asyncio.run`` then cancels
        every request. asyncio's loop: its ``_run_once`` (``Lib/asyncio/
        base_events.py``, one turn of ``run_forever``, looked up on each turn)
        is wrapped on this loop instance; when a turn raises, the door is shut
        at once and the loop turns on until nothing is in flight, within the
        drain budget; then the exception goes on its way. uvloop's loop has no
        such turn to wrap: its tasks are made by a task factory (unless the app
        has one) as :class:`_RequestTask`, which the teardown cannot cancel
        while it is a request in flight, so the teardown runs the loop until
        each has finished, within the drain budget.
        """
        loop = self._loop
        run_once = getattr(loop, "_run_once", None)
        if run_once is None:
            if loop.get_task_factory() is None:
                loop.set_task_factory(functools.partial(_RequestTask, server=self))
            return

        def run_once_or_finish() -> None:
            try:
                run_once()
            except BaseException:
                loop._run_once = run_once  # type: ignore[attr-defined]  # noqa: SLF001  # once
                if self._live:
                    self.loop_dying()
                    if self._close_listeners is not None:  # on the loop's thread, as here
                        self._close_listeners(True)  # noqa: FBT003  # refuse new ones
                    deadline = time.monotonic() + self._budget()
                    while (self._live or self._writing()) and time.monotonic() < deadline:
                        run_once()
                    if self._live:
                        logger.warning(
                            "the event loop ended: %d request(s) in flight could not be finished",
                            len(self._live),
                        )
                raise

        with contextlib.suppress(AttributeError):
            loop._run_once = run_once_or_finish  # type: ignore[attr-defined]  # noqa: SLF001

    def _serving(self) -> bool:
        return self._loop.is_running() and not self._drained.is_set()

    def _cancel_in_flight(self) -> None:
        for task in list(self._live):
            task.cancel(DRAIN_BUDGET_SPENT)


class _RequestTask(asyncio.Task[Any]):
    """A task on a loop without ``_run_once`` (uvloop): kept from the runner's teardown.

    If it serves a request, a cancel while the loop is stopped (the teardown)
    is refused, and the task left to finish, for the drain budget at most.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any],
        /,
        *,
        server: AsgiServer,
        **options: Any,  # noqa: ANN401  # as loop.create_task passes them
    ) -> None:
        super().__init__(coro, loop=loop, **options)
        self._server = server

    def cancel(self, msg: Any | None = None) -> bool:  # noqa: ANN401  # as asyncio.Task
        server = self._server
        loop = self.get_loop()
        if loop.is_running() or self not in server._live:  # noqa: SLF001  # the adapter's own
            return super().cancel(msg)
        server.loop_dying()
        loop.call_later(server._budget(), super().cancel, DRAIN_BUDGET_SPENT)  # noqa: SLF001
        return False


class AsyncioDoor:
    """The listening sockets one event loop serves, and how to close them."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, listening: Callable[[], object] | None = None
    ) -> None:
        self._loop = loop
        self._servers: list[asyncio.Server] = []
        self.closed = False
        create = loop.create_server

        async def create_server(*args: Any, **kwargs: Any) -> asyncio.Server:  # noqa: ANN401
            server = await create(*args, **kwargs)
            self._servers.append(server)
            if listening is not None:  # a server that says nothing when it listens (aiohttp)
                listening()
            return server

        # asyncio's accept callback (Lib/asyncio/selector_events.py, _accept_connection,
        # Python 3.10 to 3.13), which create_server's listeners are read with: a
        # listener another process shut (a sibling worker's full stop) fails
        # with EINVAL on every turn, logged each time; it has nothing more to
        # accept, so it is read no more.
        accept_connection = getattr(loop, "_accept_connection", None)

        def accept_connection_unless_shut(factory: Any, sock: socket.socket, *args: Any) -> None:  # noqa: ANN401
            try:
                accept_connection(factory, sock, *args)  # type: ignore[misc]
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                loop.remove_reader(sock.fileno())

        # Instance attributes: this loop only, gone with it.
        with contextlib.suppress(AttributeError):  # uvloop's Loop has no instance dict
            loop.create_server = create_server  # type: ignore[method-assign]
            if accept_connection is not None:
                loop._accept_connection = accept_connection_unless_shut  # type: ignore[attr-defined]  # noqa: SLF001

    def adopt(self, servers: list[Any]) -> None:
        """Listeners made where ``create_server`` was not seen (uvloop's loop): closed too."""
        self._servers += [server for server in servers if server not in self._servers]

    async def close(self, *, refuse: bool) -> int:
        """Stop accepting, serve what was queued; with ``refuse``, refuse new connections.

        Returns how many queued connections were taken. ``refuse`` is for a
        full stop only: a worker recycled alone leaves the socket listening
        for the worker that replaces it.
        """
        self.closed = True
        # Connections asyncio accepted in this loop turn attach to their server on
        # the next one; a server closed in between drops them silently, request
        # unread, to be reset at the end (Server._attach, Lib/asyncio/base_events.py).
        # So: accept nothing more, let those attach, then close.
        for server in self._servers:
            for sock in server.sockets:
                with contextlib.suppress(Exception):  # uvloop accepts with libuv, not a reader
                    self._loop.remove_reader(sock.fileno())
        for _ in range(_SETTLE_TURNS):
            await asyncio.sleep(0)
        handed = [
            self._loop.create_task(self._loop.connect_accepted_socket(factory, conn, ssl=ssl))
            for factory, ssl, conn in self._take(refuse=refuse)
        ]
        if handed:
            await asyncio.wait(handed)
        for _ in range(_SETTLE_TURNS):
            await asyncio.sleep(0)
        return len(handed)

    def refuse_now(self) -> None:
        """The loop is dying: nothing can be served, so stop listening at once."""
        if self.closed:
            return
        self.closed = True
        for server in self._servers:
            for sock in server.sockets:
                # A socket of our own on the same one: uvloop's stand-ins cannot shut it.
                with socket.socket(fileno=os.dup(sock.fileno())) as own:
                    stop_listening(own)
            server.close()  # else the loop, if it turns again, accepts on a shut socket

    def _take(self, *, refuse: bool) -> list[tuple[Callable[[], Any], Any, socket.socket]]:
        taken: list[tuple[Callable[[], Any], Any, socket.socket]] = []
        for server in self._servers:
            # asyncio's Server keeps what it serves with in private attributes
            # (Lib/asyncio/base_events.py, Server.__init__); without them, the
            # server's own close() is all there is.
            # (uvloop's has neither: its backlog cannot be handed over, only refused.)
            factory = getattr(server, "_protocol_factory", None)
            ssl = getattr(server, "_ssl_context", None)
            kept = [socket.socket(fileno=os.dup(s.fileno())) for s in server.sockets]
            server.close()
            for sock in kept:
                if factory is not None:
                    for conn, _address in take_backlog(sock, refuse=refuse):
                        conn.setblocking(False)  # noqa: FBT003  # as asyncio's own accept
                        taken.append((factory, ssl, conn))
                elif refuse:
                    stop_listening(sock)
                sock.close()
        return taken
