"""uvicorn: how it is told to stop once lastcall's drain begins.

uvicorn stops accepting the moment it sees SIGTERM, leaving no pre-stop
window. It installs ``Server.handle_exit`` with ``signal.signal`` inside
``Server.serve`` (``uvicorn/server.py``, ``capture_signals``), on the main
thread, before the app's lifespan starts. At lifespan start-up that
handler is kept and lastcall's put in its place; calling the kept handler
when the drain begins is all uvicorn's own SIGTERM would have done.

Tested with uvicorn 0.30 to 0.54 (``versions.UVICORN``). Undocumented:
``Server.started`` (``uvicorn/server.py``), read for systemd's ``READY=1``.
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
    return functools.partial(current, sig, None), getattr(current, "__self__", None)


def started(server: object) -> bool:
    """Whether uvicorn's ``Server`` says it listens (true for anything else)."""
    return bool(getattr(server, "started", True))
