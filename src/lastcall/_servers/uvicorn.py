"""uvicorn: how it is told to stop once lastcall's drain begins.

uvicorn stops accepting the moment it sees SIGTERM, leaving no pre-stop
window. It installs ``Server.handle_exit`` with ``signal.signal`` inside
``Server.serve`` (``uvicorn/server.py``, ``capture_signals``), on the main
thread, before the app's lifespan starts. At lifespan start-up that
handler is kept and lastcall's put in its place; calling the kept handler
when the drain begins is all uvicorn's own SIGTERM would have done.

uvicorn's own stop closes every open WebSocket at once, with code 1012
(``Server.shutdown`` calls ``shutdown()`` on each connection). lastcall's
stop leaves them open instead: a WebSocket is in flight like a request
until it ends or the drain budget does, and then the middleware sends it
1001, going away (``lastcall.asgi``).

Tested with uvicorn 0.30 to 0.54 (``versions.UVICORN``). Undocumented:
``Server.started`` (``uvicorn/server.py``), read for systemd's ``READY=1``;
``Server.server_state.connections`` (``uvicorn/server.py``) and the
``shutdown()`` of its WebSocket protocols (``uvicorn/protocols/websockets/``
``websockets_impl.py``, ``websockets_sansio_impl.py``, ``wsproto_impl.py``).
"""

from __future__ import annotations

import functools
import signal
from typing import TYPE_CHECKING, Any

from lastcall._servers import versions

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("TESTED", "started", "take_signal")

TESTED = versions.UVICORN


def take_signal(sig: signal.Signals) -> tuple[Callable[[], object], Any] | None:
    """Take a Python-level stop handler the server set for ``sig``; (its call, its owner).

    The handler is replaced by the default, so lastcall, installed next,
    does not chain to it. None if there is no such handler.
    """
    current = signal.getsignal(sig)
    if not callable(current) or current is signal.default_int_handler:
        return None
    signal.signal(sig, signal.SIG_DFL)
    server = getattr(current, "__self__", None)
    return functools.partial(_stop_leaving_websockets_open, server, current, sig), server


def _stop_leaving_websockets_open(
    server: object, handle_exit: Callable[[int, Any], object], sig: signal.Signals
) -> None:
    """The server's own stop (run on its loop), leaving out the WebSockets open now."""
    connections = getattr(getattr(server, "server_state", None), "connections", ())
    for connection in list(connections):
        if type(connection).__module__.startswith(_WEBSOCKET_PROTOCOLS):
            connection.shutdown = _leave_open  # this connection only: an instance attribute
    handle_exit(sig, None)


_WEBSOCKET_PROTOCOLS = "uvicorn.protocols.websockets."


def _leave_open() -> None:
    """A WebSocket's ``shutdown()`` while lastcall drains: nothing; the drain ends it."""


def started(server: object) -> bool:
    """Whether uvicorn's ``Server`` says it listens (true for anything else)."""
    return bool(getattr(server, "started", True))
