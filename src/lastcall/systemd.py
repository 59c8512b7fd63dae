"""systemd's notify protocol: ``READY=1`` once serving, ``STOPPING=1`` when the stop begins.

With ``Type=notify`` systemd waits for ``READY=1`` before it counts a unit as
started (and starts what is ordered after it), and ``STOPPING=1`` tells it
the service has begun to stop on its own. The protocol is one datagram per
message on the ``AF_UNIX`` socket named by ``NOTIFY_SOCKET``: a path, or a
name in the abstract namespace written with a leading ``@``. Without that
variable every function here does nothing, so it is safe to call anywhere.

A worker process of a pre-fork server is not the unit's main process: give
the unit ``NotifyAccess=all`` so systemd accepts what the worker sends.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

import lastcall
from lastcall._log import logger

if TYPE_CHECKING:
    from lastcall import Coordinator

__all__ = ("attach", "notify", "ready", "stopping")

_attached: set[int] = set()  # id() of coordinators that send STOPPING=1


def notify(*assignments: str) -> bool:
    """Send ``KEY=value`` lines to systemd; True if a datagram went out.

    Never raises: a service must not fail because its supervisor went away.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or not assignments:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        logger.debug("NOTIFY_SOCKET=%r is not a path or @name; not notifying", address)
        return False
    message = "\n".join(assignments).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        logger.warning("could not notify systemd at NOTIFY_SOCKET: %s", exc)
        return False
    return True


def ready(status: str | None = None) -> bool:
    """Tell systemd the service is up: ``READY=1`` (and ``STATUS=`` if given)."""
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def stopping() -> bool:
    """Tell systemd the service has begun to stop: ``STOPPING=1``."""
    return notify("STOPPING=1", "STATUS=stopping")


def attach(coordinator: Coordinator | None = None) -> None:
    """Send ``STOPPING=1`` the moment ``coordinator``'s stop begins; once per coordinator.

    It is the first ``pre_stop`` hook to run (registered last, and
    ``pre_stop`` runs last-registered-first), so systemd hears before the
    pre-stop delay, not after it.
    """
    coordinator = coordinator or lastcall.default
    if id(coordinator) in _attached:
        return
    _attached.add(id(coordinator))
    coordinator.on_shutdown(phase="pre_stop", name="systemd STOPPING=1", timeout=1)(_send_stopping)


def _send_stopping() -> None:
    stopping()
