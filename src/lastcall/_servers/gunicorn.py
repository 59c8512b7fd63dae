"""gunicorn (sync, gthread and gevent workers): the adapters the drain runs through.

``lastcall.gunicorn`` is the face (gunicorn's hooks, the settings, the
master's bookkeeping); everything here reaches into gunicorn itself, and
nothing else does. Tested with gunicorn 24.1 to 27.0 (``versions.
GUNICORN``); gthread workers are refused below 24.0, which had no
``method_queue``. The undocumented parts used, by the file they come from:

* ``gunicorn/arbiter.py``: ``Arbiter.kill_workers``, ``num_workers``,
  ``reexec_pid``, ``master_pid``, ``systemd``, and its SIGTERM/SIGINT
  handlers (wrapped); ``gunicorn/http/message.py``: ``Request.must_close``.
* ``gunicorn/workers/base.py``: ``Worker.wsgi``, ``sockets``, ``wait_fds``,
  ``PIPE``, ``alive``, ``aborted``, ``is_parent_alive``, ``run``, ``ppid``,
  ``cfg`` (its settings are documented), its SIGTERM/SIGINT handlers
  (replaced); ``gunicorn/glogging.py``: ``error_log``.
* ``gunicorn/workers/gthread.py``: ``method_queue`` (its ``defer``),
  ``enqueue_req``, ``accept(listener)``, ``keepalived_conns`` (each one's
  ``timeout``, set) and ``murder_keepalived``; ``gunicorn/workers/sync.py``:
  ``run_for_one``.
* ``gunicorn/workers/gasgi.py`` (``-k asgi``, gunicorn 25.1 on: ``TESTED_ASGI``):
  ``ASGIWorker.asgi`` (the app, read by each connection's protocol), ``loop``
  (its SIGTERM and SIGINT handlers, added with ``loop.add_signal_handler``,
  taken by the middleware) and ``alive``, which its SIGTERM handler clears;
  the listeners it makes with ``loop.create_server`` are closed by the
  middleware's door (``lastcall._servers.asgi``); the module's ``ASGIProtocol``
  (replaced, in the worker only, by a subclass whose instances are noted) and,
  from ``gunicorn/asgi/protocol.py`` 27.0, what says a connection is idle
  (``AsgiConnections``).
* ``gunicorn/workers/ggevent.py``: ``GeventWorker.server_class`` and the
  module's ``StreamServer`` (each replaced, in the worker only, by a subclass
  whose instances are noted); gevent's ``gevent/baseserver.py``:
  ``BaseServer.socket``, ``pool`` (its ``greenlets``), ``do_read``,
  ``do_handle``, ``start_accepting``, ``stop_accepting`` (``versions.GEVENT``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import logging
import mmap
import os
import signal
import socket
import threading
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any, TypeAlias

import lastcall
from lastcall._hooks import is_coroutine_function
from lastcall._integration import Integration
from lastcall._log import logger
from lastcall._servers import versions
from lastcall._servers.inflight import RequestsInFlight
from lastcall._servers.listener import take_backlog
from lastcall._signals import die_by
from lastcall.asgi import LastCallMiddleware as AsgiMiddleware
from lastcall.wsgi import LastCallMiddleware, middlewares_in

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = (
    "AsgiConnections",
    "GeventWorker",
    "GunicornWorker",
    "Listener",
    "request_began",
    "request_ended",
    "take_signals",
    "watch_master",
    "wrap_app",
)

# gunicorn objects (arbiter, worker, request, socket): untyped, reached by duck typing
Gunicorn: TypeAlias = Any

TESTED = versions.GUNICORN
TESTED_GTHREAD = versions.GUNICORN_GTHREAD
TESTED_ASGI = versions.GUNICORN_ASGI
_ASGI_WORKER = "gunicorn.workers.gasgi"  # the module of ASGIWorker, gunicorn's -k asgi


class _Shared:
    """Two flags in memory the master shares with every worker it forks."""

    STOP = 0  # the master began a full stop and holds the last copies of the listeners
    KEEP = 1  # another process (a re-exec'd master, systemd) shares the listeners

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, 2)

    def set(self, index: int) -> None:
        self._map[index] = 1

    def get(self, index: int) -> bool:
        return self._map[index] == 1


_shared = _Shared()


def serves_asgi(worker: Gunicorn) -> bool:
    """Whether ``worker`` serves an ASGI app, not a WSGI loop of gunicorn's.

    uvicorn's server (``uvicorn_worker.UvicornWorker``, the older
    ``uvicorn.workers.UvicornWorker``, and their H11 variants), or gunicorn's
    own ``-k asgi``.
    """
    return serves_gunicorn_asgi(worker) or type(worker).__module__.split(".")[0] in (
        "uvicorn",
        "uvicorn_worker",
    )


def serves_gunicorn_asgi(worker: Gunicorn) -> bool:
    """Whether ``worker`` is gunicorn's own ASGI worker (``-k asgi``) or a subclass of it."""
    return any(cls.__module__ == _ASGI_WORKER for cls in type(worker).__mro__)


def has_asgi_worker() -> bool:
    """Whether the installed gunicorn has an ASGI worker lastcall drains (25.1 or later)."""
    try:
        TESTED_ASGI.check()
    except RuntimeError:
        return False
    return importlib.util.find_spec(_ASGI_WORKER) is not None


def master_stopping() -> bool:
    """In a worker: whether its master began a full stop (every worker stops)."""
    return _shared.get(_Shared.STOP)


def serves_gevent(worker: Gunicorn) -> bool:
    """Whether ``worker`` is gunicorn's ``-k gevent`` (or ``gevent_pywsgi``) worker."""
    return any(
        cls.__name__ == "GeventWorker" and cls.__module__ == "gunicorn.workers.ggevent"
        for cls in type(worker).__mro__
    )


def _every_worker_stopping(ppid: int) -> bool:
    """Whether every worker of master ``ppid`` is stopping, so that nobody else will accept."""
    parent_died = os.getppid() != ppid
    return _shared.get(_Shared.STOP) or (parent_died and not _shared.get(_Shared.KEEP))


def wrap_app(worker: Gunicorn) -> None:
    """The worker's app in the middleware, for the health endpoints; we count requests."""
    if not isinstance(worker.wsgi, LastCallMiddleware):
        worker.wsgi = LastCallMiddleware(worker.wsgi, coordinator=lastcall.default)
    outer: LastCallMiddleware = worker.wsgi
    _requests.health = (outer.livez_path, outer.readyz_path)
    for middleware in middlewares_in(outer):
        middleware.count_with(lambda: _requests.count)
    Integration(lastcall.default).list_requests_with(_requests.listing)


def wrap_asgi_app(worker: Gunicorn) -> AsgiMiddleware | None:
    """An ASGI worker's app in lastcall's ASGI middleware; None, said, if it is not an ASGI app.

    ``Worker.wsgi`` (``gunicorn/workers/base.py``) holds the app that
    uvicorn's worker serves as an ASGI app; gunicorn's ``-k asgi`` keeps it
    in ``ASGIWorker.asgi`` instead (``gunicorn/workers/gasgi.py``, ``load_wsgi``),
    where each new connection's protocol reads it.
    """
    attribute = "asgi" if serves_gunicorn_asgi(worker) else "wsgi"
    app = getattr(worker, attribute)
    if isinstance(app, AsgiMiddleware):
        return app
    if not is_coroutine_function(app):
        logger.error(
            "gunicorn's %s serves ASGI apps, an async callable taking (scope, receive, "
            "send); %r is not one (a WSGI app runs with -k sync or -k gthread)",
            type(worker).__name__,
            app,
        )
        return None
    wrapped = AsgiMiddleware(app, coordinator=lastcall.default)
    setattr(worker, attribute, wrapped)
    return wrapped


def worker_loop(worker: Gunicorn) -> asyncio.AbstractEventLoop | None:
    """``-k asgi``: the event loop the worker made, not yet running (``ASGIWorker.loop``)."""
    if not serves_gunicorn_asgi(worker):
        return None
    loop = getattr(worker, "loop", None)
    return loop if isinstance(loop, asyncio.AbstractEventLoop) else None


def take_asgi_worker_signals(loop: asyncio.AbstractEventLoop) -> None:
    """``-k asgi``: the worker's SIGTERM and SIGINT handlers out of its loop, before lastcall's.

    ``ASGIWorker.init_signals`` (``gunicorn/workers/gasgi.py``) adds them with
    ``loop.add_signal_handler``: SIGTERM clears ``alive`` (its loop then stops
    accepting within a second), SIGINT is its quick shutdown. Left on the
    loop, either would still run beside lastcall's handler, through the
    loop's wake-up file descriptor; removed, the first SIGINT is graceful
    and a second one forces, as for every worker kind. Its SIGQUIT (quick
    shutdown), SIGUSR1, SIGWINCH and SIGABRT handlers stay.
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)


def asgi_worker_stop(worker: Gunicorn) -> Callable[[], object] | None:
    """``-k asgi``: how its own graceful stop is begun, once lastcall's drain closed the door.

    ``ASGIWorker.handle_exit_signal`` (``gunicorn/workers/gasgi.py``), what its
    SIGTERM ran: ``alive`` cleared; within a second its loop closes its
    servers, waits for its connections, and sends the lifespan shutdown,
    which tells the drain that it is done. With ``asgi_lifespan = "off"`` no
    lifespan shutdown would come: gunicorn is not told, and the drain waits
    for the requests the middleware counts.
    """
    if getattr(worker.cfg, "asgi_lifespan", "auto") == "off":
        return None
    stop: Callable[[], object] = worker.handle_exit_signal
    return stop


def asgi_worker_listeners(worker: Gunicorn) -> list[Any]:
    """``-k asgi``: the asyncio servers the worker listens with (``ASGIWorker.servers``)."""
    return list(getattr(worker, "servers", ()))


class AsgiConnections:
    """``-k asgi``: the worker's connections, noted as made, whose idle keep-alive ones can end.

    gunicorn's own stop waits for every connection, an idle keep-alive one
    until ``--keep-alive`` (which may be long behind a load balancer), and the
    drain waits for gunicorn's stop. The module's ``ASGIProtocol``, which the
    worker's protocol factory names at each connection (``gunicorn/workers/
    gasgi.py``), is replaced in this worker by a subclass whose instances are
    noted. An idle one is what gunicorn would time out itself
    (``gunicorn/asgi/protocol.py``, 27.0: ``_awaiting_request`` with no
    ``_finishing_calls`` after a first request, ``req_count``, and nothing
    arrived, ``_request_ready``): its ``_keepalive_timeout()`` runs now.
    Before 27.0 those are not there, and the idle ones end as gunicorn ends them.
    """

    def __init__(self) -> None:
        self._noted: weakref.WeakSet[Any] = weakref.WeakSet()

    def attach(self) -> None:
        """Note the worker's connections from now (in this worker process only)."""
        from gunicorn.workers import gasgi  # noqa: PLC0415  # -k asgi only

        noted = self._noted

        class Noted(gasgi.ASGIProtocol):  # type: ignore[misc]
            def connection_made(self, transport: Any) -> None:  # noqa: ANN401
                noted.add(self)
                super().connection_made(transport)

        Noted.__name__ = Noted.__qualname__ = gasgi.ASGIProtocol.__name__
        gasgi.ASGIProtocol = Noted

    def close_idle(self) -> None:
        """On the worker's loop: end the keep-alive connections waiting for a next request."""
        for protocol in list(self._noted):
            ready = getattr(protocol, "_request_ready", None)
            if (
                getattr(protocol, "_awaiting_request", False)
                and getattr(protocol, "req_count", 0) > 1
                and not getattr(protocol, "_finishing_calls", True)
                and not getattr(protocol, "_closed", True)
                and ready is not None
                and not ready.is_set()
            ):
                protocol._keepalive_timeout()  # noqa: SLF001  # gunicorn's own expiry


def take_signals(grace: float) -> None:
    """Let lastcall take SIGTERM and SIGINT in a worker; gunicorn keeps its other handlers."""
    # If the app called lastcall.install() itself, give gunicorn its own back first.
    lastcall.default.uninstall()
    kept = (signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGABRT)
    saved = {sig: signal.getsignal(sig) for sig in kept}
    # Not chained: gunicorn's handlers would stop the loop before the pre-stop
    # delay (SIGTERM) or quit at once (SIGINT, a terminal's Ctrl-C): here the
    # first SIGINT is graceful and a second one forces; SIGQUIT stays quick.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    lastcall.default.install(
        signals=("SIGTERM", "SIGINT"), grace=grace, prestop_delay=0, force_signals=("SIGINT",)
    )
    for sig, handler in saved.items():
        if handler is not None:
            signal.signal(sig, handler)


class _Requests(RequestsInFlight):
    """Requests between gunicorn's ``pre_request`` and ``post_request`` hooks (health ones aside).

    gunicorn calls ``post_request`` once the response is written, in a
    ``finally`` (``gunicorn/workers/sync.py``, ``gthread.py``), so this count
    is exact without wrapping a response.
    """

    def __init__(self) -> None:
        super().__init__()
        self.health: tuple[str | None, ...] = ()
        self.gevent: GeventWorker | None = None  # a gevent worker also notes its greenlets

    @property
    def count(self) -> int:
        return len(self)

    def request_began(self, req: Gunicorn) -> None:
        if req.path not in self.health:
            self.began(id(req), req.method, req.path)


_requests = _Requests()


def request_began(req: Gunicorn, *, closing: bool) -> None:
    """One more in flight (gunicorn's ``pre_request``); ``closing``: its connection ends after it.

    gunicorn drops a ``Connection`` header from the app; its request's
    ``must_close`` (``gunicorn/http/message.py``) closes the connection instead.
    """
    _requests.request_began(req)
    if closing:
        req.must_close = True
    if _requests.gevent is not None:
        _requests.gevent.request_began()


def request_ended(req: Gunicorn) -> None:
    """One fewer in flight (gunicorn's ``post_request``)."""
    _requests.ended(id(req))
    if _requests.gevent is not None:
        _requests.gevent.request_ended()


def workers_wanted(server: Gunicorn) -> int:
    """How many workers the master keeps: ``Arbiter.num_workers`` (``gunicorn/arbiter.py``)."""
    return int(server.num_workers)


def error_log(server: Gunicorn) -> logging.Logger | None:
    """The error logger of gunicorn (``gunicorn/glogging.py``, ``Logger.error_log``), if any."""
    found = getattr(getattr(server, "log", None), "error_log", None)
    return found if isinstance(found, logging.Logger) else None


def was_aborted(worker: Gunicorn) -> bool:
    """Whether the master aborted this worker after its timeout (``gunicorn/workers/base.py``)."""
    return bool(getattr(worker, "aborted", False))


def check_versions(server: Gunicorn) -> None:
    """At the master's start: one line outside the tested range; refusals below a gate.

    gthread is refused below 24.0, ``-k asgi`` below 25.1. Whatever lastcall
    does not drain (a worker kind, the dirty arbiter, HTTP/2) is named in one line.
    """
    worker_class = getattr(server.cfg, "worker_class", None)
    module = getattr(worker_class, "__module__", "")
    if module == "gunicorn.workers.gthread":
        TESTED_GTHREAD.check()
    elif module == "gunicorn.workers.ggevent":
        versions.GEVENT.check()
    elif isinstance(worker_class, type) and any(
        cls.__module__ == _ASGI_WORKER for cls in worker_class.__mro__
    ):
        TESTED_ASGI.check()
    TESTED.check()
    left_out = not_drained(server.cfg)
    if left_out:
        logger.warning("not drained by lastcall at a stop: %s", "; ".join(left_out))


_DRAINED_WORKERS = (
    ("gunicorn.workers.sync", "SyncWorker"),
    ("gunicorn.workers.gthread", "ThreadWorker"),
    ("gunicorn.workers.ggevent", "GeventWorker"),
    (_ASGI_WORKER, "ASGIWorker"),
    ("aiohttp.worker", "GunicornWebWorker"),
)


def drained_worker_class(worker_class: object) -> bool:
    """Whether lastcall drains workers of ``worker_class``: sync, gthread, gevent, ASGI, aiohttp."""
    if not isinstance(worker_class, type):
        return False
    return any(
        (cls.__module__, cls.__name__) in _DRAINED_WORKERS
        or cls.__module__.split(".")[0] in ("uvicorn", "uvicorn_worker")
        for cls in worker_class.__mro__
    )


def not_drained(cfg: Gunicorn) -> list[str]:
    """What of gunicorn's set-up lastcall does not drain, one phrase each; empty if nothing.

    Read from gunicorn's documented settings (``gunicorn/config.py``): the
    worker class, ``dirty_workers`` and ``dirty_apps`` (gunicorn 25 on),
    ``http_protocols`` (HTTP/2, gunicorn 25 on).
    """
    left_out = []
    worker_class = getattr(cfg, "worker_class", None)
    if not drained_worker_class(worker_class):
        name = getattr(worker_class, "__name__", str(worker_class))
        left_out.append(
            f"{name} workers (lastcall drains sync, gthread, gevent, asgi, UvicornWorker and "
            "aiohttp's; these stop as gunicorn stops them, and run their hooks as they exit)"
        )
    if getattr(cfg, "dirty_workers", 0) and getattr(cfg, "dirty_apps", None):
        left_out.append(
            "the dirty arbiter and its dirty workers (dirty_apps), stopped by gunicorn's own "
            "signals, without lastcall's pre-stop delay or drain"
        )
    protocols = getattr(cfg, "http_protocols", None) or ()
    if "h2" in protocols:
        left_out.append(
            "HTTP/2 connections (http_protocols h2): a request on one is drained, but the "
            "connection gets no GOAWAY before the worker stops accepting"
        )
    return left_out


def listeners_shared(server: Gunicorn, *, reexec: bool = False) -> None:
    """Note whether another process (systemd, a re-exec'd master) holds the listeners too."""
    if reexec or getattr(server, "systemd", False) or getattr(server, "master_pid", 0):
        _shared.set(_Shared.KEEP)


_master_stop: list[int] = []  # in the master: the signals that began its graceful stop
_master_quit = threading.Event()  # in the master: SIGQUIT, gunicorn's quick shutdown


def master_signalled() -> bool:
    """In the master: whether SIGTERM, SIGINT or SIGQUIT began its stop (readiness red)."""
    return bool(_master_stop) or _master_quit.is_set()


def end_master_by_its_signal() -> None:
    """In the master, last: end by the signal that stopped it, as an unhandled one would.

    gunicorn's master exits 0 after a graceful stop (``Arbiter.halt``); a
    service stopped by SIGTERM or SIGINT ends by it here, like any process
    lastcall stops. Nothing to do when no such signal stopped it.
    """
    if _master_stop:
        die_by(_master_stop[0], exit_functions=True)


def watch_master(server: Gunicorn) -> None:
    """In the master: note its stop signal; say when a stop is a full one; first SIGINT graceful.

    Each handler runs before the arbiter's own (``gunicorn/arbiter.py``),
    which only queues the signal.
    """
    previous = signal.getsignal(signal.SIGTERM)
    previous_quit = signal.getsignal(signal.SIGQUIT)

    def on_term(signum: int, frame: Gunicorn) -> None:
        # The arbiter's own handler only queues the signal; before it does,
        # say whether the workers are the last holders of the listeners.
        if not getattr(server, "reexec_pid", 0) and not _shared.get(_Shared.KEEP):
            _shared.set(_Shared.STOP)
        _master_stop.append(signum)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)

    def on_int(signum: int, frame: Gunicorn) -> None:  # noqa: ARG001  # a signal handler
        # gunicorn's SIGINT is a quick shutdown (gunicorn/arbiter.py, handle_int);
        # the first one is a graceful stop here, the second the quick one. The
        # master is then inside its stop loop, which reads no queued signal.
        if signal.SIGINT not in _master_stop:
            _master_stop.append(signal.SIGINT)
            on_term(signal.SIGTERM, frame)
        else:
            server.kill_workers(signal.SIGQUIT)

    signal.signal(signal.SIGINT, on_int)

    def on_quit(signum: int, frame: Gunicorn) -> None:
        _master_quit.set()
        if callable(previous_quit):
            previous_quit(signum, frame)

    signal.signal(signal.SIGQUIT, on_quit)


class Listener:
    """A worker's listening socket, which can hand out connections taken from the backlog."""

    def __init__(self, sock: Gunicorn, on_exhausted: Callable[[], None]) -> None:
        self._sock = sock
        self._held: deque[tuple[socket.socket, Any]] = deque()
        self._closed = False
        self._on_exhausted = on_exhausted
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Gunicorn:
        return getattr(self._sock, name)

    def __str__(self) -> str:
        return str(self._sock)

    def fileno(self) -> int:
        return int(self._sock.fileno())

    @property
    def held(self) -> int:
        return len(self._held)

    def accept(self) -> tuple[socket.socket, Any]:
        """What gunicorn's loop calls: held connections first, then the socket itself."""
        with self._lock:
            if self._held:
                return self._held.popleft()
            if not self._closed:
                try:
                    return self._sock.accept()  # type: ignore[no-any-return]
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    self._closed = True  # a sibling shut the shared socket
        self._on_exhausted()
        raise BlockingIOError(errno.EAGAIN, "lastcall: no longer accepting")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._sock.close()

    def close_door(self, *, refuse: bool) -> int:
        """Stop accepting; with refuse, first take what is queued, then refuse new ones."""
        with self._lock:
            closed, self._closed = self._closed, True
            if closed or not refuse:
                return 0  # closed already: a sibling may have shut the shared socket first
            # Shared by every worker: from now the kernel refuses new connections.
            backlog = take_backlog(self._sock)
            self._held.extend(backlog)
        return len(backlog)


class _WorkerAdapter:
    """What every worker kind answers alike: who it is, whether the stop is full, cancel."""

    def __init__(self, worker: Gunicorn, prestop: float) -> None:
        self.worker = worker
        self.pid = os.getpid()
        self.ppid = worker.ppid
        self.prestop = prestop
        self._full: bool | None = None

    @property
    def name(self) -> str:
        """``worker 1234``."""
        return f"worker {self.pid}"

    def in_flight(self) -> int:
        raise NotImplementedError

    def cancel(self) -> int:
        """A request cannot be cancelled here; the master SIGKILLs at graceful_timeout."""
        return self.in_flight()

    def _full_stop(self) -> bool:
        """Whether every worker of this master is stopping, so that nobody else will accept."""
        if self._full is None:
            self._full = _every_worker_stopping(self.ppid)
        return self._full


class GunicornWorker(_WorkerAdapter):
    """One worker's answers to the drain: its listeners, its loop, its requests."""

    def __init__(self, worker: Gunicorn, prestop: float) -> None:
        super().__init__(worker, prestop)
        self.loop_done = threading.Event()
        if hasattr(worker, "method_queue") and hasattr(worker, "enqueue_req"):
            self.kind = "gthread"
        elif hasattr(worker, "run_for_one"):
            self.kind = "sync"
        else:
            self.kind = ""
        self.listeners: list[Listener] = []

    def attach(self) -> None:
        """Put our listeners in the loop's place and note when the loop ends."""
        worker = self.worker
        self.listeners = [Listener(s, self._finish_loop) for s in worker.sockets]
        worker.sockets = self.listeners
        worker.wait_fds = [*self.listeners, worker.PIPE[0]]
        worker.is_parent_alive = lambda: True  # ours answers within 0.2 s: stop_when_parent_dies
        run = worker.run

        def run_then_note() -> None:
            try:
                run()
            finally:
                self.loop_done.set()

        worker.run = run_then_note

    # ------------------------------------------------------------ the drain's questions

    def prestop_delay(self) -> float:
        """On a full stop only: a worker recycled alone has siblings to take the traffic."""
        return self.prestop if self._full_stop() and not self.loop_done.is_set() else 0.0

    def close_door(self) -> int:
        """Take the backlog (on a full stop), shut the shared socket, let the loop finish."""
        if self.loop_done.is_set():
            return 0  # the loop ended on its own: max_requests, a quick shutdown, a sibling
        reuse_port = bool(getattr(self.worker.cfg, "reuse_port", False))
        take = self._full_stop() or reuse_port
        taken = sum(listener.close_door(refuse=take) for listener in self.listeners)
        if self.kind == "gthread":
            self.worker.method_queue.defer(self._take_held)
        else:
            self._wake()
        return taken

    def in_flight(self) -> int:
        """Requests the middleware counts in flight."""
        return 0 if self.loop_done.is_set() else _requests.count

    def wait_idle(self, timeout: float) -> bool:
        """Until the worker's loop has ended, having served what it held."""
        return self.loop_done.wait(timeout)

    def close_idle(self) -> None:
        """gthread: idle keep-alive connections time out now (sync workers keep none).

        gunicorn 24-26 wait for them after the loop stops, up to their keep-alive timeout.
        """
        if self.kind == "gthread" and not self.loop_done.is_set():
            self.worker.method_queue.defer(self._expire_keepalive)

    # ------------------------------------------------------------ inside

    def _take_held(self) -> None:
        """gthread, on its loop thread: hand the held connections to the pool, then stop."""
        for listener in self.listeners:
            while listener.held:
                self.worker.accept(listener)
        self._finish_loop()

    def _expire_keepalive(self) -> None:
        """On gthread's loop thread: ``keepalived_conns`` and ``murder_keepalived`` (gthread.py)."""
        now = time.monotonic()
        for conn in list(getattr(self.worker, "keepalived_conns", ())):
            conn.timeout = now
        self.worker.murder_keepalived()

    def _finish_loop(self) -> None:
        self.worker.alive = False
        self._wake()

    def _wake(self) -> None:
        if self.kind == "gthread":
            self.worker.method_queue.defer(lambda: None)
        else:
            with contextlib.suppress(OSError):
                os.write(self.worker.PIPE[1], b".")


class GeventWorker(_WorkerAdapter):
    """A ``-k gevent`` worker's answers to the drain, given on its hub.

    gunicorn's gevent worker serves each listener with a gevent server made in
    ``run()``, and on SIGTERM closes it, which drops what the backlog holds and
    leaves new connections queued until the last worker exits. Here the
    servers are noted as they are made (a subclass of the class gunicorn
    uses, in this worker only) so that the drain can close them its own way.
    The drain runs in a greenlet (``threading`` is patched), so nothing runs
    between the steps of ``close_door``.
    """

    def __init__(self, worker: Gunicorn, prestop: float) -> None:
        import gevent  # noqa: PLC0415  # a gevent worker only

        super().__init__(worker, prestop)
        self.kind = "gevent"
        self._current = gevent.getcurrent
        self.servers: list[Gunicorn] = []
        self._door_closed = False
        # greenlets that have served a request and wait for the next one (idle keep-alive)
        self._between: weakref.WeakSet[Any] = weakref.WeakSet()

    def attach(self) -> None:
        """Have the worker's gevent servers noted as ``run()`` makes them."""
        from gunicorn.workers import ggevent  # noqa: PLC0415  # a gevent worker only

        if self.worker.server_class is not None:  # gevent_pywsgi
            self.worker.server_class = self._noted(self.worker.server_class)
        else:  # gunicorn/workers/ggevent.py serves with the module's StreamServer
            ggevent.StreamServer = self._noted(ggevent.StreamServer)
        _requests.gevent = self

    def request_began(self) -> None:
        """From gunicorn's ``pre_request``, on the connection's greenlet."""
        self._between.discard(self._current())

    def request_ended(self) -> None:
        """From gunicorn's ``post_request``: the connection may now idle, kept alive."""
        self._between.add(self._current())

    # ------------------------------------------------------------ the drain's questions

    def prestop_delay(self) -> float:
        """On a full stop only: a worker recycled alone has siblings to take the traffic."""
        return self.prestop if self._full_stop() else 0.0

    def close_door(self) -> int:
        """Stop each server accepting, serve what the backlog holds; on a full stop, refuse.

        The servers are not closed: their listening socket stays open in this
        worker (gunicorn's handler reads its name for each connection, and a
        sibling recycled alone still accepts on it), but they never accept again.
        """
        take = self._full_stop() or bool(getattr(self.worker.cfg, "reuse_port", False))
        self._door_closed = True  # no server starts accepting again (Noted.start_accepting)
        taken: list[tuple[Gunicorn, socket.socket, Any]] = []
        for server in self.servers:
            server.stop_accepting()
            if not take:
                continue
            with socket.socket(fileno=os.dup(server.socket.fileno())) as listening:
                # Shared by every worker: from now the kernel refuses new connections.
                taken += [(server, conn, address) for conn, address in take_backlog(listening)]
        for server, conn, address in taken:
            server.do_handle(conn, address)  # in the server's pool (waits for a free place)
        return len(taken)

    def in_flight(self) -> int:
        """Connections being served: each pool's greenlets but those idle between requests."""
        return sum(
            1
            for server in self.servers  # gunicorn gives each a pool (gevent.pool.Pool)
            for greenlet in server.pool.greenlets
            if greenlet not in self._between
        )

    def wait_idle(self, timeout: float) -> bool:
        """Whether nothing is in flight, after up to ``timeout`` seconds (the hub serves)."""
        if not self.in_flight():
            return True
        threading.Event().wait(timeout)  # patched: a greenlet's wait
        return not self.in_flight()

    def close_idle(self) -> None:
        """Nothing: an idle keep-alive connection ends with the process, or its own timeout."""

    # ------------------------------------------------------------ inside

    def _noted(self, server_class: type[Any]) -> type[Any]:
        """``server_class``, whose instances this adapter notes and can keep from accepting."""
        adapter = self

        class Noted(server_class):  # type: ignore[misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
                super().__init__(*args, **kwargs)
                adapter.servers.append(self)

            def start_accepting(self) -> None:
                # gevent starts accepting again whenever its pool frees a place
                # (gevent/baseserver.py, _start_accepting_if_started).
                if not adapter._door_closed:  # the adapter's own flag
                    super().start_accepting()

            def do_read(self) -> Any:  # noqa: ANN401  # gevent/baseserver.py, _do_read
                try:
                    return super().do_read()
                except OSError as exc:
                    # A sibling shut the shared socket: stop accepting here too,
                    # without gevent's "ERROR: ... failed with EINVAL" and traceback.
                    if exc.errno != errno.EINVAL:
                        raise
                    adapter._door_closed = True
                    self.stop_accepting()
                    return None

        Noted.__name__ = Noted.__qualname__ = server_class.__name__
        return Noted
