"""gunicorn that stops without dropping a request: ``gunicorn -c python:lastcall.gunicorn app:app``.

Or, in an existing ``gunicorn.conf.py``, ``from lastcall.gunicorn import *``
(a hook of your own with the same name must call ours, e.g.
``lastcall.gunicorn.post_worker_init(worker)``). Sync, gthread and gevent
workers, gunicorn's own ASGI worker (``-k asgi``, gunicorn 25.1 on), and
uvicorn's ``UvicornWorker`` (``-k uvicorn_worker.UvicornWorker``): an ASGI
app goes into ``lastcall.asgi.LastCallMiddleware`` and is drained on the
worker's event loop; and aiohttp's ``GunicornWebWorker`` (``-k
aiohttp.GunicornWebWorker``), drained by ``lastcall.aiohttp.LastCall``. What
lastcall does not drain (another worker kind, gunicorn's dirty arbiter,
HTTP/2 connections) is named in one line at start-up.

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
* **Health port.** With ``LASTCALL_HEALTH_PORT`` set, the master serves
  ``/livez`` and ``/readyz`` on it for every worker (the workers bind
  nothing): ``starting`` until every worker has booted, 503 ``stopping``
  from the master's SIGTERM, SIGINT or SIGQUIT, and answered even while
  every worker is busy.
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
import functools
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, TypeAlias

import lastcall
from lastcall import _health_port
from lastcall._config import check_drain_time, check_report_per_process, resolve
from lastcall._integration import Integration
from lastcall._log import logger
from lastcall._servers import aiohttp as aiohttp_adapter
from lastcall._servers import gunicorn as adapter
from lastcall._servers.drain import drain

__all__ = (
    "child_exit",
    "on_exit",
    "on_starting",
    "post_request",
    "post_worker_init",
    "pre_exec",
    "pre_request",
    "when_ready",
    "worker_abort",
)

# gunicorn objects (arbiter, worker, request, socket): untyped, reached by duck typing
Gunicorn: TypeAlias = Any

_MARGIN = 1.0  # seconds a worker keeps back from graceful_timeout, to exit
_WORKER_BOOT_ERROR = 3  # gunicorn/arbiter.py: the master halts rather than retry the worker


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
    error_log = adapter.error_log(server)
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
        settings = resolve()
        check_report_per_process(settings.report, "gunicorn's master and each of its workers")
    except (TypeError, ValueError) as exc:
        raise RuntimeError(f"lastcall: {exc}") from None  # gunicorn prints it and exits 1
    adapter.check_versions(server)
    _bridge_logging(server)
    if _state["hook_dir"] is None:
        _state["hook_dir"] = tempfile.mkdtemp(prefix="lastcall-gunicorn-")
    Integration(lastcall.default).expect_serving(until=functools.partial(_workers_booted, server))
    try:
        _state["health"] = _health_port.serve_for_workers(_master_readiness, settings)
    except OSError as exc:
        raise RuntimeError(f"lastcall: {exc}") from None


def when_ready(server: Gunicorn) -> None:
    """Master, listeners open: note a SIGTERM that makes this a full stop; SIGINT graceful."""
    adapter.listeners_shared(server)
    if _state["master_watched"]:
        return
    _state["master_watched"] = True
    adapter.watch_master(server)


def _workers_booted(server: Gunicorn) -> bool:
    """Whether every worker has loaded the app: each writes its hook file then (``_Worker``)."""
    directory = _state["hook_dir"]
    try:
        booted = sum(1 for _ in Path(directory).iterdir()) if directory else 0
    except OSError:
        return False
    return booted >= adapter.workers_wanted(server)


def _master_readiness() -> tuple[str, str | None]:
    """What the master's health port says: stopping from its stop signal; else starting, ready."""
    if adapter.master_signalled():
        return "stopping", None
    return lastcall.default.readiness()


def pre_exec(server: Gunicorn) -> None:
    """A new master is about to exec (USR2): it will share the listeners."""
    adapter.listeners_shared(server, reexec=True)


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
        if adapter.was_aborted(worker)
        else "killed (SIGKILL, or out of memory)"
    )
    server.log.error(
        "lastcall: worker %s was %s before its shutdown finished; hooks that may not have run: %s",
        worker.pid,
        how,
        ", ".join(names) or "none",
    )


def on_exit(server: Gunicorn) -> None:  # noqa: ARG001  # gunicorn passes the arbiter
    """Master, last: run the hooks registered in the master, once; end by the stop signal."""
    coordinator = lastcall.default
    # The workers are gone and nothing serves here: a pre-stop delay would only wait.
    coordinator.shutdown(reason="gunicorn master stopped", prestop_delay=0)
    directory = _state["hook_dir"]
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
    adapter.end_master_by_its_signal()


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


def pre_request(worker: Gunicorn, req: Gunicorn) -> None:
    """One more request in flight; begun while stopping, it closes its connection.

    Under ``-k asgi`` (which calls these hooks too) the ASGI middleware counts instead.
    """
    if adapter.serves_gunicorn_asgi(worker):
        return
    adapter.request_began(req, closing=lastcall.default.stopping.is_set())


def post_request(worker: Gunicorn, req: Gunicorn, environ: Any, resp: Any) -> None:  # noqa: ARG001, ANN401  # gunicorn's signature
    """The response is written: one fewer in flight (the middleware wraps no response)."""
    if adapter.serves_gunicorn_asgi(worker):
        return
    adapter.request_ended(req)


# ---------------------------------------------------------------- the worker side


class _Worker:
    """lastcall inside one gunicorn worker process: settings, hooks, the drain hook."""

    def __init__(self, worker: Gunicorn) -> None:
        self.worker = worker
        self.pid = os.getpid()
        self.ppid = os.getppid()  # the master, which forked this worker

    def start(self) -> None:
        worker = self.worker
        coordinator = lastcall.default
        try:
            grace, prestop = _worker_grace(float(worker.cfg.graceful_timeout))
        except (TypeError, ValueError) as exc:
            logger.error("%s; using the defaults", exc)
            grace, prestop = float(worker.cfg.graceful_timeout) * 0.75, 0.0
        if adapter.serves_asgi(worker):
            self._start_asgi(grace, prestop)
            return
        if aiohttp_adapter.serves_aiohttp(worker):
            self._start_aiohttp(grace, prestop)
            return
        server: adapter.GunicornWorker | adapter.GeventWorker = (
            adapter.GeventWorker(worker, prestop)
            if adapter.serves_gevent(worker)
            else adapter.GunicornWorker(worker, prestop)
        )
        adapter.wrap_app(worker)
        if not server.kind:
            # The master said so at start-up, once (adapter.not_drained).
            logger.debug("%s workers are not drained by lastcall", type(worker).__name__)
            self._write_hook_file()
            return
        server.attach()
        adapter.take_signals(grace)
        coordinator.on_shutdown(phase="drain", name="gunicorn worker drain")(
            functools.partial(drain, server, coordinator)
        )
        self._write_hook_file()
        self._watch_master()

    def _take_signals(self, grace: float) -> None:
        """SIGTERM and SIGINT are lastcall's, in a worker whose own loop it drains."""
        lastcall.default.install(
            signals=("SIGTERM", "SIGINT"),
            grace=grace,
            prestop_delay=0,
            force_signals=("SIGINT",),
        )

    def _watch_master(self) -> None:
        """Stop if the master dies: a SIGKILLed master cannot tell its workers."""
        Integration(lastcall.default).stop_when_parent_dies(
            self.ppid, f"gunicorn master {self.ppid} died"
        )

    def _start_asgi(self, grace: float, prestop: float) -> None:
        """UvicornWorker or ``-k asgi``: an ASGI server runs the app here, drained on its loop.

        The app goes into ``lastcall.asgi.LastCallMiddleware`` (its lifespan, the
        health paths, the drain on the server's loop); the socket is shut for
        everyone only when the master stops every worker. uvicorn's server is
        adapted at lifespan start-up, as under uvicorn; gunicorn's own ASGI
        worker here, its loop made and its signal handlers set.
        """
        worker = self.worker
        app = adapter.wrap_asgi_app(worker)
        if app is None:
            sys.exit(_WORKER_BOOT_ERROR)
        app.share_listeners(adapter.master_stopping, prestop)  # the delay on a full stop only
        loop = adapter.worker_loop(worker)  # -k asgi: its loop, made before this hook
        if loop is not None:
            adapter.take_asgi_worker_signals(loop)
        self._take_signals(grace)
        self._write_hook_file()  # the app's hooks, before lastcall's own drain hook
        if loop is not None:
            # gunicorn's own worker: started now, in gunicorn's hook, so that a lifespan
            # switched off (asgi_lifespan) still leaves it drained.
            connections = adapter.AsgiConnections()
            connections.attach()
            app.serve_on(
                loop,
                stop=adapter.asgi_worker_stop(worker),
                listeners=functools.partial(adapter.asgi_worker_listeners, worker),
                close_idle=connections.close_idle,
            )
        self._watch_master()

    def _start_aiohttp(self, grace: float, prestop: float) -> None:
        """Aiohttp's ``GunicornWebWorker``: its app's ``LastCall`` drains it on the worker's loop.

        The app gets one (``lastcall.aiohttp.LastCall.of``) here, or as the
        worker's app factory makes it; the worker's SIGTERM handler is what
        the drain runs once the door is closed, and the socket is shut for
        everyone only when the master stops every worker.
        """
        from lastcall.aiohttp import LastCall  # noqa: PLC0415  # aiohttp workers only

        worker = self.worker
        stop = aiohttp_adapter.take_worker_signals(worker)

        def adapt(app: Any) -> None:  # noqa: ANN401  # an aiohttp Application
            LastCall.of(app).in_gunicorn_worker(stop, adapter.master_stopping, prestop)

        if not aiohttp_adapter.worker_app(worker, adapt):
            logger.error(
                "aiohttp's GunicornWebWorker serves a web.Application or a coroutine function "
                "making one; %r is neither",
                worker.wsgi,
            )
            sys.exit(_WORKER_BOOT_ERROR)
        self._take_signals(grace)
        self._write_hook_file()
        self._watch_master()

    def _write_hook_file(self) -> None:
        """Tell the master which hooks this worker has, in case it dies before running them.

        The file first, then the "ready" line: whoever reads the line (a test, an
        operator's SIGKILL) finds the file written.
        """
        ours = {"gunicorn worker drain"}
        names = [f"{h.name} ({h.phase})" for h in lastcall.default.hooks if h.name not in ours]
        path = _hook_file(self.pid)
        if path is not None:
            try:
                path.write_text("".join(f"{name}\n" for name in names), "utf-8")
            except OSError as exc:
                logger.warning("could not record this worker's hooks in %s: %s", path, exc)
            else:
                lastcall.default.when_done(lambda _report: self._forget_hook_file(path))
        logger.info("worker %s ready; its shutdown hooks: %s", self.pid, ", ".join(names) or "none")

    def _forget_hook_file(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            path.unlink()
        if os.getppid() != self.ppid:  # the master is gone: the last worker out tidies up
            with contextlib.suppress(OSError):
                path.parent.rmdir()
