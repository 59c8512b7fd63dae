"""daphne: where lastcall's drain starts, and how its Twisted listeners are closed.

daphne (Django Channels' server) runs the ASGI app on Twisted's asyncio
reactor, in one process. On SIGTERM or SIGINT, Twisted's handlers stop the
reactor, and ``Server.kill_all_applications`` (``daphne/server.py``, a
"before shutdown" trigger) cancels every application instance: each request
and WebSocket in flight is cut (daphne#177), and the process exits 0.
Measured with daphne 4.2.3: three requests of 2 s in flight, all three
closed without a response; a new connection accepted, then closed unanswered.

daphne sends no ASGI lifespan, so the middleware it serves is started here
instead, once the reactor runs (``reactor.callWhenRunning``, after Twisted
has installed its signal handlers): lastcall's handlers replace them, the
drain waits for what the middleware counts, the budget ends the rest
(WebSockets told 1001), and the process ends by the signal. A wrapper
daphne does not serve (``Server.application``, found in the frame of
``Server.run``) starts nothing.

The door: daphne's listening ports are the reactor's readers
(``IReactorFDSet.getReaders``) built by its ``http_factory``; each stops
listening, what its backlog holds is handed to that factory
(``IReactorSocket.adoptStreamConnection``), and the socket is shut, so new
connections are refused (``listener.take_backlog``). Idle keep-alive
channels are closed while the drain waits.

Tested with daphne 4.0 to 4.2 (``versions.DAPHNE``). Undocumented: the
``self`` of ``Server.run`` and its ``application`` and ``http_factory``
(``daphne/server.py``, the same from 4.0 to 4.2); Twisted's
``_GenericHTTPChannelProtocol._channel`` and ``HTTPChannel.requests``
(``twisted/web/http.py``).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lastcall._servers import versions
from lastcall._servers.listener import take_backlog

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

__all__ = ("TESTED", "TwistedDoor", "when_serving")

TESTED = versions.DAPHNE
_GOING_AWAY = 1001  # RFC 6455, 7.4.1
_FLUSH_WAIT = 1.0  # at most, for Twisted to write what the drain's last words left buffered
_FLUSH_POLL = 0.01
_SERVER_FILE = ("daphne", "server.py")


def when_serving(
    app: object, start: Callable[[asyncio.AbstractEventLoop, TwistedDoor], None]
) -> None:
    """If daphne is about to run, call ``start`` once its reactor runs, if it serves ``app``."""
    if "daphne.server" not in sys.modules:
        return
    reactor = _reactor()
    if reactor.running:
        return

    def check() -> None:
        server = _running_server()
        if server is not None and getattr(server, "application", None) is app:
            _drop_twisted_handlers()
            _let_websockets_go_away()
            start(asyncio.get_event_loop(), TwistedDoor(server))

    reactor.callWhenRunning(check)


def _drop_twisted_handlers() -> None:
    """Take Twisted's SIGTERM and SIGINT handlers away: they would stop the reactor at once.

    ``twisted/internet/_signals.py`` installs them as the reactor starts; lastcall's
    go in their place, and the reactor is never stopped (the stop ends the process).
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        owner = getattr(signal.getsignal(sig), "__self__", None)
        if type(owner).__module__.startswith("twisted."):
            signal.signal(sig, signal.SIG_DFL)


def _let_websockets_go_away() -> None:
    """A WebSocket closed with 1001 (going away) is sent 1001, not an exception.

    daphne's ``WebSocketProtocol.serverClose`` (``daphne/ws_protocol.py``) calls
    autobahn's ``sendClose``, which takes 1000 or 3000 to 4999 only; RFC 6455 gives
    1001 to a server going down, and the drain's cancel sends it. That code goes
    through autobahn's ``sendCloseFrame`` instead.
    """
    protocols: Any = importlib.import_module("daphne.ws_protocol")
    WebSocketProtocol = protocols.WebSocketProtocol  # noqa: N806  # daphne's class
    server_close = WebSocketProtocol.serverClose
    if getattr(server_close, "__lastcall__", False):
        return

    def server_close_going_away(self: Any, code: int | None = None) -> None:  # noqa: ANN401
        if code == _GOING_AWAY:
            self.sendCloseFrame(code=code, isReply=False)
        else:
            server_close(self, code)

    server_close_going_away.__lastcall__ = True  # type: ignore[attr-defined]
    WebSocketProtocol.serverClose = server_close_going_away


def _reactor() -> Any:  # noqa: ANN401  # Twisted's global reactor (daphne installed it)
    return importlib.import_module("twisted.internet.reactor")


def _running_server() -> object | None:
    """Daphne's ``Server`` whose ``run`` is up this thread's stack (it runs the reactor)."""
    frame: FrameType | None = sys._getframe(1)  # noqa: SLF001
    while frame is not None:
        if Path(frame.f_code.co_filename).parts[-2:] == _SERVER_FILE and frame.f_code.co_name == (
            "run"
        ):
            return frame.f_locals.get("self")
        frame = frame.f_back
    return None


class TwistedDoor:
    """daphne's listening ports and keep-alive channels, closed on the reactor's loop."""

    def __init__(self, server: Any) -> None:  # noqa: ANN401  # daphne's Server
        self._factory = server.http_factory

    def close(self, refuse: bool) -> int:  # AsgiServer's close_listeners
        """Stop listening; hand the backlog to daphne; refuse new connections. How many taken."""
        reactor = _reactor()
        taken = 0
        for port in [r for r in reactor.getReaders() if self._is_port(r)]:
            family = port.socket.family
            with socket.socket(fileno=os.dup(port.socket.fileno())) as kept:
                port.stopListening()  # Twisted reads it no more, and closes its own fd
                for conn, _address in take_backlog(kept, refuse=refuse):
                    with conn:
                        reactor.adoptStreamConnection(conn.fileno(), family, self._factory)
                    taken += 1
        return taken

    def close_idle(self) -> None:
        """Close the HTTP channels that wait for their next request."""
        for reader in _reactor().getReaders():
            wrapper = getattr(reader, "protocol", None)  # an upgraded WebSocket's is daphne's own
            if getattr(wrapper, "factory", None) is not self._factory:
                continue
            channel = getattr(wrapper, "_channel", None)
            if channel is not None and not getattr(channel, "requests", True):
                channel.transport.loseConnection()

    def writing(self) -> bool:
        """Whether Twisted still holds writes for a socket (it writes when writable)."""
        return bool(_reactor().getWriters())

    async def flush(self) -> None:
        """Wait until Twisted has written what it holds: the 1001 of a cancelled WebSocket.

        Twisted writes when the socket is writable, not at ``write()``: the process
        may end right after the drain, before the close frame left.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _FLUSH_WAIT
        # Polled: Twisted tells nobody when its buffers are empty.
        while self.writing() and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_FLUSH_POLL)

    def _is_port(self, reader: object) -> bool:
        return getattr(reader, "factory", None) is self._factory and hasattr(reader, "socket")
