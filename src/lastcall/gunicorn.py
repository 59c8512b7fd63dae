"""gunicorn that stops without dropping a request: ``gunicorn -c python:lastcall.gunicorn app:app``.

Or, in an existing ``gunicorn.conf.py``, ``from lastcall.gunicorn import *``
(a hook of your own with the same name must call ours, e.g.
``lastcall.gunicorn.post_worker_init(worker)``). Sync and gthread workers.

What it changes, process by process:

* **Workers.** The app is wrapped in ``LastCallMiddleware`` (``/livez``,
  ``/readyz``); lastcall takes SIGTERM. When the master stops (SIGTERM),
  ``/readyz`` goes red in every worker at once, each keeps serving for
  ``LASTCALL_PRESTOP_DELAY`` seconds, then takes every connection still
  queued in the listen backlog, shuts the listening socket (new
  connections are refused, not accepted and reset), serves what it took
  and what it held, and runs the hooks registered in that worker. A worker
  recycled alone (``max_requests``, HUP reload, TTOU) stops accepting at
  once and leaves the shared backlog to its siblings.
* **Parent death.** A thread in each worker checks for the master every
  0.2 s (gunicorn's own check can wait ``timeout / 2``); if it died, the
  worker stops as above.
* **Master.** Hooks registered there (config file, or the app with
  ``--preload``) run once, when the master exits (``on_exit``); forked
  workers keep only hooks registered with ``inherit=True``. When a worker
  dies without finishing its stop (SIGKILL, or SIGKILL after a WORKER
  TIMEOUT), the master logs the hooks that worker had registered.

One setting drives the grace period: gunicorn's ``graceful_timeout``.
Each worker's lastcall grace is ``graceful_timeout`` minus 1 s (a quarter
of it, if that is less), so it is done before the master's SIGKILL.
``LASTCALL_GRACE`` may shorten it; one longer than that, or a
``LASTCALL_PRESTOP_DELAY`` that leaves no time to drain, stops gunicorn at
start-up with one line naming the setting to change. lastcall never
changes ``graceful_timeout`` itself. The first SIGINT (Ctrl-C) stops as
SIGTERM does; gunicorn's quick shutdown is the second SIGINT, or SIGQUIT,
and the worker's hooks still run on the way out.

Module-level names that match gunicorn settings are read by gunicorn, so
this module defines only hooks at the top level.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import lastcall
from lastcall._config import check_drain_time, resolve
from lastcall._report import logger
from lastcall._servers import versions
from lastcall.wsgi import LastCallMiddleware

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = (
    "child_exit",
    "on_exit",
    "on_starting",
    "post_worker_init",
    "pre_exec",
    "pre_request",
    "when_ready",
    "worker_abort",
)

# gunicorn objects (arbiter, worker, request, socket): untyped, reached by duck typing
Gunicorn: TypeAlias = Any

_MARGIN = 1.0  # seconds a worker keeps back from graceful_timeout, to exit


class _Shared:
    """Two flags in memory the master shares with every worker it forks."""

    _STOP = 0  # the master began a full stop and holds the last copies of the listeners
    _KEEP = 1  # another process (a re-exec'd master, systemd) shares the listeners

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, 2)

    def set(self, index: int) -> None:
        self._map[index] = 1

    def get(self, index: int) -> bool:
        return self._map[index] == 1


_shared = _Shared()
_state: dict[str, Any] = {"hook_dir": None, "master_watched": False}


# ---------------------------------------------------------------- settings


def _worker_grace(graceful_timeout: float) -> tuple[float, float]:
    """The grace and pre-stop delay a worker runs with; ValueError names the fix."""
    settings = resolve()  # LASTCALL_* variables; a bad one raises here
    limit = graceful_timeout - min(_MARGIN, graceful_timeout / 4)
    grace = limit
    if os.environ.get("LASTCALL_GRACE", "").strip():
        if settings.grace > limit:
            raise ValueError(
                f"LASTCALL_GRACE={settings.grace:g} does not fit in gunicorn's "
                f"graceful_timeout={graceful_timeout:g} (its master kills workers then): lower "
                f"LASTCALL_GRACE to at most {limit:g} or raise --graceful-timeout to at least "
                f"{settings.grace + _MARGIN:g}"
            )
        grace = settings.grace
    check_drain_time(
        grace,
        settings.prestop_delay,
        grace_name="the worker's grace (--graceful-timeout less 1 s)",
        delay_name="LASTCALL_PRESTOP_DELAY",
    )
    return grace, settings.prestop_delay


def _bridge_logging(server: Gunicorn) -> None:
    """Send lastcall's log lines to gunicorn's error log, unless logging is set up."""
    ours = logging.getLogger("lastcall")
    error_log = getattr(getattr(server, "log", None), "error_log", None)
    if ours.handlers or logging.getLogger().handlers or error_log is None:
        return
    for handler in error_log.handlers:
        ours.addHandler(handler)
    ours.setLevel(error_log.level)
    ours.propagate = False


def _hook_file(pid: int) -> Path | None:
    directory = _state["hook_dir"]
    return Path(directory, str(pid)) if directory else None


# ---------------------------------------------------------------- master hooks


def on_starting(server: Gunicorn) -> None:
    """Master, before anything is bound: check the settings; set up logging and the hook list."""
    try:
        _worker_grace(float(server.cfg.graceful_timeout))
    except (TypeError, ValueError) as exc:
        raise RuntimeError(f"lastcall: {exc}") from None  # gunicorn prints it and exits 1
    worker_class = getattr(server.cfg, "worker_class", None)
    if getattr(worker_class, "__module__", "") == "gunicorn.workers.gthread":
        versions.GUNICORN_GTHREAD.check()  # refuses below 24.0, where it cannot drain
    versions.GUNICORN.check()
    _bridge_logging(server)
    if _state["hook_dir"] is None:
        _state["hook_dir"] = tempfile.mkdtemp(prefix="lastcall-gunicorn-")


def when_ready(server: Gunicorn) -> None:
    """Master, listeners open: note a SIGTERM that makes this a full stop."""
    if getattr(server, "systemd", False) or getattr(server, "master_pid", 0):
        _shared.set(_Shared._KEEP)  # noqa: SLF001
    if _state["master_watched"]:
        return
    _state["master_watched"] = True
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Gunicorn) -> None:
        # The arbiter's own handler only queues the signal; before it does,
        # say whether the workers are the last holders of the listeners.
        if not getattr(server, "reexec_pid", 0) and not _shared.get(_Shared._KEEP):  # noqa: SLF001
            _shared.set(_Shared._STOP)  # noqa: SLF001
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
    interrupted = threading.Event()

    def on_int(signum: int, frame: Gunicorn) -> None:  # noqa: ARG001  # a signal handler
        # gunicorn's SIGINT is a quick shutdown (gunicorn/arbiter.py, handle_int);
        # the first one is a graceful stop here, the second the quick one. The
        # master is then inside its stop loop, which reads no queued signal.
        if not interrupted.is_set():
            interrupted.set()
            on_term(signal.SIGTERM, frame)
        else:
            server.kill_workers(signal.SIGQUIT)

    signal.signal(signal.SIGINT, on_int)


def pre_exec(server: Gunicorn) -> None:  # noqa: ARG001  # gunicorn passes the arbiter
    """A new master is about to exec (USR2): it will share the listeners."""
    _shared.set(_Shared._KEEP)  # noqa: SLF001


def child_exit(server: Gunicorn, worker: Gunicorn) -> None:
    """Master, a worker reaped: if its stop never completed, say which hooks it had."""
    path = _hook_file(worker.pid)
    if path is None or not path.exists():
        return
    try:
        names = [line.strip() for line in path.read_text("utf-8").splitlines() if line.strip()]
        path.unlink()
    except OSError:
        return
    how = (
        "killed after WORKER TIMEOUT (SIGABRT, then SIGKILL)"
        if getattr(worker, "aborted", False)
        else "killed (SIGKILL, or out of memory)"
    )
    server.log.error(
        "lastcall: worker %s was %s before its shutdown finished; hooks that may not have run: %s",
        worker.pid,
        how,
        ", ".join(names) or "none",
    )


def on_exit(server: Gunicorn) -> None:  # noqa: ARG001  # gunicorn passes the arbiter
    """Master, last: run the hooks registered in the master, once."""
    coordinator = lastcall.default
    # The workers are gone and nothing serves here: a pre-stop delay would only wait.
    coordinator.shutdown(reason="gunicorn master stopped", prestop_delay=0)
    directory = _state["hook_dir"]
    if directory:
        shutil.rmtree(directory, ignore_errors=True)


# ---------------------------------------------------------------- worker hooks


def post_worker_init(worker: Gunicorn) -> None:
    """Worker, app loaded, just before its loop: wrap the app and take over SIGTERM."""
    _Worker(worker).start()


def worker_abort(worker: Gunicorn) -> None:
    """Worker, SIGABRT from the master's timeout: say so; the hooks run on the way out."""
    logger.error(
        "worker %s timed out (WORKER TIMEOUT): running its shutdown hooks before the master "
        "kills it",
        worker.pid,
    )


def pre_request(worker: Gunicorn, req: Gunicorn) -> None:  # noqa: ARG001  # gunicorn's signature
    """A request begun while stopping closes its connection (gunicorn drops the app's header)."""
    if lastcall.default.stopping.is_set():
        req.must_close = True


# ---------------------------------------------------------------- the worker side


class _Listener:
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

    def close_door(self, *, take_backlog: bool) -> int:
        """Stop accepting; with take_backlog, first take what is queued, then refuse new ones."""
        taken = 0
        with self._lock:
            if self._closed:
                return taken  # a sibling shut the shared socket first
            self._closed = True
            if not take_backlog:
                return taken
            try:
                self._sock.setblocking(False)  # noqa: FBT003  # socket API
                while True:
                    try:
                        self._held.append(self._sock.accept())
                    except ConnectionAbortedError:
                        continue
                    taken += 1
            except OSError:
                pass  # EAGAIN: the backlog is empty; EINVAL: a sibling shut it meanwhile
            # Shared by every worker: from now the kernel refuses new connections.
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RD)
        return taken


class _Worker:
    """lastcall inside one gunicorn worker process."""

    def __init__(self, worker: Gunicorn) -> None:
        self.worker = worker
        self.pid = os.getpid()
        self.ppid = worker.ppid
        self.loop_done = threading.Event()
        if hasattr(worker, "method_queue") and hasattr(worker, "enqueue_req"):
            self.kind = "gthread"
        elif hasattr(worker, "run_for_one"):
            self.kind = "sync"
        else:
            self.kind = ""
        self.listeners: list[_Listener] = []

    def start(self) -> None:
        worker = self.worker
        coordinator = lastcall.default
        if not isinstance(worker.wsgi, LastCallMiddleware):
            worker.wsgi = LastCallMiddleware(worker.wsgi, coordinator=coordinator)
        try:
            grace, self.prestop = _worker_grace(float(worker.cfg.graceful_timeout))
        except (TypeError, ValueError) as exc:
            logger.error("%s; using the defaults", exc)
            grace, self.prestop = float(worker.cfg.graceful_timeout) * 0.75, 0.0
        if not self.kind:
            logger.warning(
                "%s workers are not drained by lastcall (sync and gthread are); "
                "hooks still run when the worker exits",
                type(worker).__name__,
            )
            self._write_hook_file()
            return
        self.listeners = [_Listener(s, self._finish_loop) for s in worker.sockets]
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
        self._take_sigterm(grace)
        coordinator.on_shutdown(phase="drain", name="gunicorn worker drain")(self._drain)
        self._write_hook_file()
        coordinator.stop_when_parent_dies(self.ppid, f"gunicorn master {self.ppid} died")

    def _take_sigterm(self, grace: float) -> None:
        """Let lastcall take SIGTERM alone; gunicorn keeps its other handlers."""
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

    def _write_hook_file(self) -> None:
        """Tell the master which hooks this worker has, in case it dies before running them."""
        ours = {"gunicorn worker drain"}
        names = [f"{h.name} ({h.phase})" for h in lastcall.default.hooks if h.name not in ours]
        logger.info("worker %s ready; its shutdown hooks: %s", self.pid, ", ".join(names) or "none")
        path = _hook_file(self.pid)
        if path is None:
            return
        try:
            path.write_text("".join(f"{name}\n" for name in names), "utf-8")
        except OSError as exc:
            logger.warning("could not record this worker's hooks in %s: %s", path, exc)
            return
        lastcall.default.when_done(lambda _report: self._forget_hook_file(path))

    def _forget_hook_file(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            path.unlink()
        if os.getppid() != self.ppid:  # the master is gone: the last worker out tidies up
            with contextlib.suppress(OSError):
                path.parent.rmdir()

    def _full_stop(self) -> bool:
        """Whether every worker of this master is stopping, so that nobody else will accept."""
        if _shared.get(_Shared._STOP):  # noqa: SLF001
            return True
        parent_died = os.getppid() != self.ppid
        return parent_died and not _shared.get(_Shared._KEEP)  # noqa: SLF001

    def _drain(self) -> None:
        """The drain hook: pre-stop delay, take the backlog, close, wait for the loop to end."""
        if self.loop_done.is_set():
            # The loop ended on its own: max_requests, a quick shutdown, or a
            # sibling worker shut the shared socket first.
            logger.info("worker %s stopped accepting; its loop had already ended", self.pid)
            return
        full = self._full_stop()
        if full and self.prestop:
            logger.info(
                "pre-stop delay: worker %s still serving for %.3g s", self.pid, self.prestop
            )
            self.loop_done.wait(self.prestop)
        reuse_port = bool(getattr(self.worker.cfg, "reuse_port", False))
        taken = sum(
            listener.close_door(take_backlog=full or reuse_port) for listener in self.listeners
        )
        logger.info(
            "worker %s stopped accepting; serving %d connection(s) taken from the backlog",
            self.pid,
            taken,
        )
        if self.kind == "gthread":
            self.worker.method_queue.defer(self._take_held)
        else:
            self._wake()
        # Bounded, so the hooks after this one keep their time if a request overruns.
        if not self.loop_done.wait(lastcall.default.drain_budget()):
            logger.warning("worker %s: requests still in flight; going on", self.pid)

    def _take_held(self) -> None:
        """gthread, on its loop thread: hand the held connections to the pool, then stop."""
        for listener in self.listeners:
            while listener.held:
                self.worker.accept(listener)
        self._finish_loop()

    def _finish_loop(self) -> None:
        self.worker.alive = False
        self._wake()

    def _wake(self) -> None:
        if self.kind == "gthread":
            self.worker.method_queue.defer(lambda: None)
        else:
            with contextlib.suppress(OSError):
                os.write(self.worker.PIPE[1], b".")
