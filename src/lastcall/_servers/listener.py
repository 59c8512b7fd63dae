"""A listening socket at the end of its life: its backlog served, nobody after it reset.

Shutting a listening socket (or closing its last copy) resets every
connection still in its backlog, and a client whose handshake completes
between the server's last ``accept()`` and the shutdown is one of them:
accepted by the kernel, then reset. Measured with two uvicorn workers and a
client connecting every 5 ms: one stop in five reset a connection. So on
Linux the socket first gets a filter that drops every packet reaching it:
from then no connection enters the backlog, which can only shrink. A client
whose SYN was dropped sends it again (after 1 s, TCP's first retransmission)
and by then is refused. Only a handshake caught halfway at that instant (a
few microseconds on loopback) can still end in a reset. Elsewhere the
window stays as it was.

One socket is shared by every process that holds a copy (gunicorn and
uvicorn workers, a reloader's parent): the filter and the shutdown reach
them all, which is what a full stop wants and a worker recycled alone must
not do.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

__all__ = (
    "CLOSE_WAIT",
    "admit_no_more_to",
    "listening",
    "native_listeners",
    "stop_listening",
    "take_backlog",
    "wait_closed",
)

_SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)  # <asm-generic/socket.h>
_DROP_EVERYTHING = struct.pack("HBBI", 0x06, 0, 0, 0)  # one BPF instruction: BPF_RET|BPF_K, 0
CLOSE_WAIT = 1.0  # seconds, at most, for a server's own code to close its listening sockets
_CLOSE_POLL = 0.005
_LISTEN = "0A"  # TCP_LISTEN, as /proc/net/tcp writes a socket's state
_STATE, _INODE = 3, 9  # columns of /proc/net/tcp


def take_backlog(sock: socket.socket, *, refuse: bool = True) -> list[tuple[socket.socket, Any]]:
    """Accept every connection the backlog holds, without waiting for another.

    With ``refuse``, no new connection is let in first, and the socket stops
    listening after (for every process holding it): new connections are
    refused. The socket goes non-blocking, for the server's own accept loop
    too, which then just finds nothing.
    """
    if refuse:
        _admit_no_more(sock)
    with contextlib.suppress(OSError):
        sock.setblocking(False)  # noqa: FBT003  # positional only
    taken: list[tuple[socket.socket, Any]] = []
    while True:
        try:
            taken.append(sock.accept())
        except ConnectionAbortedError:
            continue
        except OSError:  # BlockingIOError: the backlog is empty; EINVAL: shut already
            break
    if refuse:
        stop_listening(sock)
    return taken


def stop_listening(sock: socket.socket) -> None:
    """Refuse new connections from now, for every holder; this wakes a blocked ``accept()``."""
    _admit_no_more(sock)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _admit_no_more(sock: socket.socket) -> None:
    """Linux: drop every packet reaching the listener, so no handshake completes any more."""
    if not sys.platform.startswith("linux"):
        return
    program = ctypes.create_string_buffer(_DROP_EVERYTHING, len(_DROP_EVERYTHING))
    fprog = struct.pack("HP", 1, ctypes.addressof(program))  # struct sock_fprog
    with contextlib.suppress(OSError):  # the kernel copies the program before returning
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)


def native_listeners() -> dict[int, int]:
    """Linux: listening sockets a server opened outside Python, inode -> fd: none elsewhere.

    This process's TCP sockets in LISTEN that no Python socket holds (grpc's core
    opens them in C at ``add_insecure_port`` and names them nowhere); read once the
    server listens.
    """
    found = listening()
    held = set()
    for obj in gc.get_objects():
        if isinstance(obj, socket.socket):
            with contextlib.suppress(OSError, ValueError):
                held.add(os.fstat(obj.fileno()).st_ino)
    return {inode: fd for inode, fd in found.items() if inode not in held}


def listening() -> dict[int, int]:
    """The process's TCP sockets in LISTEN, inode -> fd (Linux; elsewhere empty)."""
    if not sys.platform.startswith("linux"):
        return {}
    sockets = {}
    with contextlib.suppress(OSError):
        for link in Path("/proc/self/fd").iterdir():
            with contextlib.suppress(OSError, ValueError):
                target = str(link.readlink())
                if target.startswith("socket:["):
                    sockets[int(target[8:-1])] = int(link.name)
    found = {}
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), (Path("/proc/self/net") / table).open() as lines:
            next(lines, None)
            for line in lines:
                fields = line.split()  # sl local remote st ... inode: /proc/net/tcp's columns
                if len(fields) > _INODE and fields[_STATE] == _LISTEN:
                    inode = int(fields[_INODE])
                    if inode in sockets:
                        found[inode] = sockets[inode]
    return found


def admit_no_more_to(sockets: dict[int, int]) -> None:
    """No new connection completes its handshake on these sockets (see ``listener``)."""
    for inode, fd in sockets.items():
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_ino != inode:
                continue  # closed, and its number reused
            with socket.socket(
                fileno=os.dup(fd)
            ) as sock:  # the same socket; the server keeps its fd
                _admit_no_more(sock)


def wait_closed(sockets: dict[int, int]) -> bool:
    """Until the server has closed these listening sockets, at most ``CLOSE_WAIT``."""
    deadline = time.monotonic() + CLOSE_WAIT
    while sockets and not sockets.keys().isdisjoint(listening()):
        if time.monotonic() > deadline:
            return False
        time.sleep(_CLOSE_POLL)
    return True
