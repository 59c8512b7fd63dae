"""granian: how its worker is told to stop once lastcall's drain begins, and its master's end.

granian is a Python supervisor around Rust workers. Each worker process
(``granian/server/mp.py``) loads the app, makes a ``WorkerSignal`` (Rust)
and hands it to the Rust server; ``granian/_signals.py`` sets it from the
worker's SIGTERM and SIGINT handlers. Set, the Rust accept loop stops and
drops its listening socket (each worker binds its own, ``SO_REUSEPORT``),
the connections are shut down gracefully (hyper's ``graceful_shutdown``:
what is in flight finishes, idle keep-alive connections close), and once
every connection has ended the ASGI lifespan shutdown is sent. Measured on
granian 2.8.9 as shipped: no pre-stop window, no bound on the wait (its
``--workers-kill-timeout`` is off by default), and the master exits 0.

* **The worker** (``--interface asgi``): at lifespan start-up, which granian
  runs after installing its handlers, the ``WorkerSignal`` is found in the
  frame of granian's worker function (its local ``shutdown_event``) and its
  handlers are taken off the loop: lastcall's run instead (readiness red,
  pre-stop delay while still serving), and the signal is set when the drain
  begins. That is the only moment: granian's handlers are on the loop, where
  uvloop (granian's default when installed) keeps them out of Python's reach,
  and the Rust server names its listening socket nowhere.
* **The door**: the Rust listener is found in ``/proc/self/fd``
  (``listener.native_listeners``), and before the signal is set it admits no
  new handshake; the Rust accept loop takes what is queued before it looks
  at the signal (a ``biased`` select, ``src/workers.rs``), then drops the
  socket: a new client's SYN is dropped, sent again a second later, and
  refused.
* **The master** handles the signal in Python (``granian/server/common.py``:
  SIGTERM to each worker, ``join`` with no timeout, exit 0), so ``python -m
  lastcall.granian`` ends it by the signal instead, as for hypercorn.

Tested with granian 2.5 to 2.8 (``versions.GRANIAN``). Undocumented: the
local ``shutdown_event`` of the worker functions in ``granian/server/mp.py``
(the same from 2.5 to 2.8). The free-threaded build runs workers as threads
(``granian/server/mt.py``) and is not adapted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lastcall._servers import versions
from lastcall._servers.listener import admit_no_more_to, listening

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable
    from types import FrameType

    from lastcall._coordinator import Coordinator

__all__ = ("TESTED", "hold_worker_signal")

TESTED = versions.GRANIAN
_WORKER_FILE = ("granian", "server", "mp.py")


def hold_worker_signal(
    loop: asyncio.AbstractEventLoop, coordinator: Coordinator
) -> Callable[[], None] | None:
    """In granian's worker, take its stop signal off ``loop``; how to stop it, or None.

    Called from the lifespan start-up granian runs in its worker function
    (``_spawn_asgi_lifespan_worker``), which holds the ``WorkerSignal`` as
    ``shutdown_event``; anywhere else, None and nothing is touched.
    """
    if "granian" not in sys.modules:
        return None
    frame: FrameType | None = sys._getframe(1)  # noqa: SLF001  # the worker function is up here
    while frame is not None:
        if Path(frame.f_code.co_filename).parts[-3:] == _WORKER_FILE:
            worker_signal = frame.f_locals.get("shutdown_event")
            if worker_signal is not None:
                break
        frame = frame.f_back
    else:
        return None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)  # granian/_signals.py set_loop_signals added them

    def stop() -> None:
        """No new handshake on granian's listener; then granian's own stop."""
        admit_no_more_to(_granian_listeners(coordinator.health_address))
        worker_signal.set()

    return stop


def _granian_listeners(health: tuple[str, int] | None) -> dict[int, int]:
    """Granian's listening sockets in this worker (all but lastcall's health port), by inode.

    granian 2.8 binds one per worker in Rust; before, the master's, inherited (which a
    Python socket object of granian's holds too, in the worker's copy of the master).
    """
    found = {}
    for inode, fd in listening().items():
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
            address = sock.getsockname()
            if health is None or not isinstance(address, tuple) or address[1] != health[1]:
                found[inode] = fd
    return found
