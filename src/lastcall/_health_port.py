"""Health on a port of its own (``LASTCALL_HEALTH_PORT``): probes that always get an answer.

The ``/livez`` and ``/readyz`` the middlewares answer share the app's
listener and workers: with every sync worker busy, or once the listener has
closed for the drain, a probe gets no answer and an orchestrator may kill a
healthy process. This small listener runs on a daemon thread of its own, so
it answers whatever the workers do, until the process is gone.

One thread, whatever the clients do: a ``selectors`` loop over non-blocking
sockets, not a thread per connection. A thread per connection let anyone who
can reach the port hold hundreds of threads (a slow client kept one for as
long as it trickled bytes), and in a container at its pids limit the stop then
had no thread left to start. Here each connection has ``_REQUEST_SECONDS``
from its accept to send its request, however it trickles, and at most
``open_limit()`` wait at once (1024, less under a low descriptor limit, so
that slow clients never take the app's descriptors). One more drops the
oldest, the slowest to speak, once that one has had ``_PATIENCE`` to send
its request; before then (a burst of clients slow to write after
connecting) the next ones wait in the kernel's backlog until a place frees,
so a burst of probes is delayed, not reset. A request already complete when
it is accepted (a probe's usual case) is answered at once and takes no
place. The backlog is ``_BACKLOG`` (the
kernel caps it at ``net.core.somaxconn``): with a short one, a burst of
probes waited out a 1 s SYN retry, the kubelet's default probe timeout.

Why a dozen lines of HTTP rather than ``http.server``: the standard library,
nothing to install, and probes are tiny; ``http.server`` would bring
``http.client``, ``email`` and ``ssl`` with it, about 8 MiB of resident
memory in every process for two fixed answers (``benchmarks/core.py``,
figure f). Loopback by default (kubelet probes a pod on its own address:
set ``LASTCALL_HEALTH_HOST=0.0.0.0``, or ``::``, which also takes IPv4 where
the system allows).

Under a master with workers (gunicorn's arbiter, ``uvicorn --workers``'s
supervisor) one listener serves the whole service, in the master: it is
up before any worker, knows when the stop begins, and outlives every
worker. It takes ``LASTCALL_HEALTH_PORT`` out of the environment the
workers inherit, so none of them tries to bind the port too
(``serve_for_workers``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import selectors
import socket
import sys
import time

from lastcall._threads import start_daemon

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see _hooks)
if TYPE_CHECKING:
    from collections.abc import Callable

    from lastcall._config import Settings

    # ("ready" | "starting" | "not_ready" | "stopping", reason): Coordinator.readiness
    Readiness = Callable[[], tuple[str, str | None]]


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
_BACKLOG = 1024  # connections the kernel completes before we accept them
_MAX_OPEN = 1024  # connections waiting for their request at once, at most (open_limit)
_MIN_OPEN = 64  # ... and at least, however low the descriptor limit
_FD_SHARE = 8  # ... and no more than this fraction of the process's descriptor limit
_PATIENCE = 0.25  # seconds the oldest may take to speak before a newer one may drop it
_REQUEST_SECONDS = 2.0  # from accept to the end of the headers, however slowly they come
_MAX_REQUEST = 16384  # bytes of request line and headers read; then answered on what came
_ACCEPTS_PER_TURN = 64  # so the connections already open are served between bursts
_FD_PAUSE = 0.1  # seconds without accepting when the process is out of descriptors
_OUT_OF_FDS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class _Connection:
    """One client: what it sent so far, what is left to send, when it must be done."""

    __slots__ = ("accepted", "deadline", "received", "sock", "unsent")

    def __init__(self, sock: socket.socket, accepted: float) -> None:
        self.sock = sock
        self.accepted = accepted
        self.deadline = accepted + _REQUEST_SECONDS
        self.received = b""
        self.unsent = b""


class HealthServer:
    """``/livez`` (200 while the process lives) and ``/readyz`` (what ``readiness()`` says)."""

    def __init__(self, readiness: Readiness, host: str, port: int) -> None:
        self.readiness = readiness
        family, address = _address(host, port)
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # "::" takes IPv4 too, where the system allows
                with contextlib.suppress(OSError):  # some always keep IPv6 apart
                    self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self.socket.bind(address)
            self.socket.listen(_BACKLOG)
            self.socket.setblocking(False)  # noqa: FBT003  # positional only
        except OSError:
            self.socket.close()
            raise
        bound_host, bound_port = self.socket.getsockname()[:2]  # IPv6 adds flow and scope
        self.server_address = (str(bound_host), int(bound_port))
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.socket, selectors.EVENT_READ)
        self._open: dict[socket.socket, _Connection] = {}  # oldest first: deadlines in order
        self._limit = open_limit()
        self._accepting_at = 0.0  # when to select the listener again; 0.0: it is selected
        self._until_room = False  # paused for a full table: a place freed resumes it too

    def start(self) -> None:
        start_daemon(self.serve_forever, "lastcall-health")

    def serve_forever(self) -> None:
        """The one thread: accept, read, answer, and drop what overstays, until the process ends."""
        while True:
            now = time.monotonic()
            wake = [next(iter(self._open.values())).deadline] if self._open else []
            if self._accepting_at > now:
                wake.append(self._accepting_at)
            elif self._accepting_at:
                self._resume()
            events = self._selector.select(max(0.0, min(wake) - now) if wake else None)
            # Connections first: answering them frees places before new ones take any.
            events.sort(key=lambda event: event[0].data is None)
            for key, _mask in events:
                if key.data is None:
                    self._accept()
                elif key.data.sock in self._open:  # not dropped by an accept this turn
                    self._serve(key.data, key.events)
            self._expire(time.monotonic())

    def forget(self) -> None:
        """In a forked child: close the inherited descriptors; the parent's thread serves them."""
        for sock in [self.socket, *self._open]:
            sock.close()
        self._selector.close()
        self._open = {}

    # ------------------------------------------------------------ connections

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_TURN):
            try:
                sock, _peer = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_FDS:
                    self._out_of_fds()
                return  # ECONNABORTED and the like: that client is gone
            sock.setblocking(False)  # noqa: FBT003  # positional only
            connection = _Connection(sock, time.monotonic())
            wanted = self._step(connection)
            if wanted is None:  # answered already (a probe's usual case), or gone
                self._close(connection)
                continue
            room = self._make_room()
            self._open[sock] = connection
            self._selector.register(sock, wanted, connection)
            if not room:  # one over the limit, and no more until a place frees
                return

    def _make_room(self) -> bool:
        """Drop the oldest while full, each once it had its chance to speak; else pause."""
        while len(self._open) >= self._limit:
            oldest = next(iter(self._open.values()))
            if time.monotonic() - oldest.accepted < _PATIENCE:
                self._pause(oldest.accepted + _PATIENCE, until_room=True)
                return False
            self._close(oldest)
        return True

    def _out_of_fds(self) -> None:
        """Free a descriptor by dropping the oldest, or stop accepting a moment: never spin."""
        if self._open:
            self._close(next(iter(self._open.values())))
        else:
            self._pause(time.monotonic() + _FD_PAUSE)

    def _pause(self, until: float, *, until_room: bool = False) -> None:
        """Stop selecting the listener until ``until``; new connections wait in the backlog."""
        self._selector.unregister(self.socket)
        self._accepting_at = until
        self._until_room = until_room

    def _resume(self) -> None:
        self._selector.register(self.socket, selectors.EVENT_READ)
        self._accepting_at = 0.0
        self._until_room = False

    def _serve(self, connection: _Connection, waited_for: int) -> None:
        try:
            wanted = self._step(connection)
        except Exception:  # whatever it was, the one thread must go on
            wanted = None
        if wanted is None:
            self._close(connection)
        elif wanted != waited_for:
            self._selector.modify(connection.sock, wanted, connection)

    def _step(self, connection: _Connection) -> int | None:
        """Read, answer, send what can be now: the event to wait for next, None once done."""
        if not connection.unsent:
            wanted = self._read(connection)
            if wanted is not None or not connection.unsent:
                return wanted
        try:
            sent = connection.sock.send(connection.unsent)
        except (BlockingIOError, InterruptedError):
            return selectors.EVENT_WRITE
        except OSError:
            return None
        connection.unsent = connection.unsent[sent:]
        return selectors.EVENT_WRITE if connection.unsent else None

    def _read(self, connection: _Connection) -> int | None:
        """EVENT_READ while the headers are still coming; None with the answer made (or none)."""
        try:
            while True:
                data = connection.sock.recv(_MAX_REQUEST)
                connection.received += data
                if not data or _complete(connection.received):
                    break
        except (BlockingIOError, InterruptedError):
            return selectors.EVENT_READ
        except OSError:
            return None
        if connection.received:  # nothing at all before the end: nothing to answer
            try:
                connection.unsent = _answer(connection.received, self.readiness)
            except Exception:  # readiness() raised: closed unanswered, as before
                connection.unsent = b""
        return None

    def _expire(self, now: float) -> None:
        while self._open:
            oldest = next(iter(self._open.values()))
            if oldest.deadline > now:
                return
            self._close(oldest)

    def _close(self, connection: _Connection) -> None:
        if self._open.pop(connection.sock, None) is not None:  # registered while open
            self._selector.unregister(connection.sock)
            if self._until_room:
                self._resume()
        connection.sock.close()


def open_limit() -> int:
    """How many connections may wait at once: 1024, or an eighth of the descriptor limit."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return _MAX_OPEN
    return max(_MIN_OPEN, min(_MAX_OPEN, soft // _FD_SHARE))


def _complete(received: bytes) -> bool:
    """Whether the headers have ended (a blank line after the request line), or are too long."""
    if len(received) >= _MAX_REQUEST:
        return True
    lines = received.split(b"\n")[1:-1]  # the last one has no newline yet
    return any(not line.strip() for line in lines)


def _answer(request: bytes, readiness: Readiness) -> bytes:
    """The response to a request (line and headers), HEAD without its body."""
    words = request.split(b"\n", 1)[0].split()
    method, target = [*words, b"", b""][:2]
    path = target.split(b"?", 1)[0]
    body: dict[str, object]
    if method not in (b"GET", b"HEAD"):
        code, body = 405, {"status": "method not allowed"}
    elif path == b"/livez":
        code, body = 200, {"status": "alive"}
    elif path == b"/readyz":
        status, reason = readiness()
        body = {"status": status}
        if reason:
            body["reason"] = reason
        code = 200 if status == "ready" else 503
    else:
        code, body = 404, {"status": "not found", "paths": ["/livez", "/readyz"]}
    data = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {code} {_REASONS[code]}\r\n"
        "Content-Type: application/json\r\n"
        "Cache-Control: no-store\r\n"
        f"Content-Length: {len(data)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + (b"" if method == b"HEAD" else data)


class _BadHostError(OSError):
    """A host that names no address: said in one line of its own, not as a busy port."""


def _address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[object, ...]]:
    """The family and address to bind for ``host``: IPv4 for a name that has both, as before."""
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        found = socket.getaddrinfo(name, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except (OSError, UnicodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        error = _BadHostError(
            f"LASTCALL_HEALTH_HOST={host!r} is not an address to listen on ({reason}); "
            "set an IP address of this host, e.g. 127.0.0.1, ::1, 0.0.0.0 or ::"
        )
        error.errno = errno.EADDRNOTAVAIL
        raise error from None
    found.sort(key=lambda info: info[0] != socket.AF_INET)
    return found[0][0], found[0][4]


def start(readiness: Readiness, host: str, port: int) -> HealthServer:
    """Bind now (an error names the port at start-up), then answer on a daemon thread."""
    try:
        server = HealthServer(readiness, host, port)
    except OSError as exc:
        if isinstance(exc, _BadHostError):  # said already; raised as the OSError it is
            error = OSError(str(exc))
            error.errno = exc.errno
            raise error from None
        advice = {
            errno.EADDRINUSE: "choose a free port",
            errno.EADDRNOTAVAIL: "LASTCALL_HEALTH_HOST must be an address of this host",
            errno.EACCES: "a port below 1024 needs privileges; choose a higher one",
        }.get(exc.errno or 0, "check LASTCALL_HEALTH_HOST and LASTCALL_HEALTH_PORT")
        where = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
        error = OSError(
            f"LASTCALL_HEALTH_PORT={port}: cannot listen on {where} ({exc.strerror}); {advice}"
        )
        error.errno = exc.errno  # EADDRINUSE: maybe a sibling worker has it (the coordinator)
        raise error from None
    server.start()
    return server


def a_sibling_may_serve_it() -> bool:
    """A worker of a multiprocessing supervisor lastcall is not in (plain ``uvicorn --workers``).

    Each such worker tries the port; the first one serves it, the others must
    still start (an error in the ASGI lifespan start-up makes uvicorn run the
    app without it, silently).
    """
    multiprocessing = sys.modules.get("multiprocessing")
    return multiprocessing is not None and multiprocessing.parent_process() is not None


def serve_for_workers(readiness: Readiness, settings: Settings) -> HealthServer | None:
    """In a master: the one listener for every worker; the workers it starts will not bind one.

    None when ``LASTCALL_HEALTH_PORT`` is unset. Workers are started after
    this (forked or spawned), so the environment they get lacks the port.
    """
    if settings.health_port is None:
        return None
    server = start(readiness, settings.health_host, settings.health_port)
    os.environ.pop("LASTCALL_HEALTH_PORT", None)
    # A forked worker must not hold the port open: were the master killed, probes
    # would queue there unanswered instead of being refused.
    os.register_at_fork(after_in_child=server.socket.close)
    return server
