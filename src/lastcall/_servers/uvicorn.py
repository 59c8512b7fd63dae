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

Tested with uvicorn 0.30 to 0.55 (``versions.UVICORN``). Undocumented:
``Server.started`` (``uvicorn/server.py``), read for readiness and
systemd's ``READY=1``; ``Server.servers``, the listeners, for the door;
``Server.server_state.connections`` and ``Server._captured_signals``
(``uvicorn/server.py``) and the
``shutdown()`` of its WebSocket protocols (``uvicorn/protocols/websockets/``
``websockets_impl.py``, ``websockets_sansio_impl.py``, ``wsproto_impl.py``).

``uvicorn --workers N``: the supervisor
---------------------------------------
uvicorn's supervisor (``Multiprocess``, ``uvicorn/supervisors/
multiprocess.py``) never imports the app, so lastcall is not in it unless
started through ``python -m lastcall.uvicorn``, which runs uvicorn's own
command line with ``Supervisor`` around that class. On SIGTERM or the
first SIGINT the supervisor's readiness turns red, it writes a ``stopping``
file in a directory it shares with its workers (``LASTCALL_UVICORN_
SUPERVISOR`` in their environment), then does what uvicorn's own stop
does (``should_exit``: SIGTERM to each worker) and waits for them. Each
worker drains as under plain uvicorn, and because the file says every
worker stops, the last thing its door does is shut the shared listening
socket, so new connections are refused; without the file (a worker
replaced alone: SIGHUP, SIGTTOU) it leaves the socket to its siblings.
The supervisor registers no hook of the app's and ends by the signal.
A worker writes ``serving-PID`` there once its server is serving, which
is what the supervisor's ``/readyz`` waits for (``starting`` until then).
What is used of ``Multiprocess``: ``run`` (subclassed), ``should_exit``,
``processes`` (each with ``pid`` and its ``process``), ``processes_num``,
and ``uvicorn.main.Multiprocess``, the name ``uvicorn.main.run`` starts it
by; the same from 0.30 to 0.55.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import sys
import tempfile
import time
from multiprocessing.connection import wait as wait_for_exits
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lastcall
from lastcall._config import settings_or_exit
from lastcall._integration import Integration
from lastcall._log import logger
from lastcall._servers import versions

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType

__all__ = (
    "TESTED",
    "Supervisor",
    "listeners",
    "note_serving",
    "started",
    "supervise",
    "supervisor_stopping",
    "take_signal",
    "wrap_every_app",
)

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
    """The server's own stop (run on its loop), leaving out the WebSockets open now.

    uvicorn notes the signal its handler saw (``Server._captured_signals``,
    ``uvicorn/server.py``, 0.29 on) and raises it again once ``serve`` returns,
    after putting back the handlers it found, SIG_DFL for SIGTERM: that SIGTERM
    would end the process by itself, before lastcall ends it by the signal it was
    sent (a SIGINT stop ended 143). lastcall ends the process; uvicorn need not.
    """
    connections = getattr(getattr(server, "server_state", None), "connections", ())
    for connection in list(connections):
        if type(connection).__module__.startswith(_WEBSOCKET_PROTOCOLS):
            connection.shutdown = _leave_open  # this connection only: an instance attribute
    handle_exit(sig, None)
    captured = getattr(server, "_captured_signals", None)
    if isinstance(captured, list):
        captured.clear()


_WEBSOCKET_PROTOCOLS = "uvicorn.protocols.websockets."


def _leave_open() -> None:
    """A WebSocket's ``shutdown()`` while lastcall drains: nothing; the drain ends it."""


def started(server: object) -> bool:
    """Whether uvicorn's ``Server`` says it listens (true for anything else)."""
    return bool(getattr(server, "started", True))


def listeners(server: object) -> list[Any]:
    """The listeners uvicorn's ``Server`` opened (``Server.servers``), for the door."""
    return list(getattr(server, "servers", ()))


# ---------------------------------------------------------------- uvicorn --workers

SUPERVISOR_ENV = "LASTCALL_UVICORN_SUPERVISOR"  # "PID:DIRECTORY", set by the supervisor
_STOPPING = "stopping"
_MARGIN = 1.0  # seconds the supervisor's grace exceeds its workers', to see them out
_MARK_WAIT = 0.3  # at most, for a worker stopped by a group's SIGINT to see the stopping file
_MARK_POLL = 0.02


def supervise(main_module: ModuleType) -> None:
    """Have ``uvicorn.main`` start ``--workers N`` under ``Supervisor``; before its ``main``."""
    multiprocess: Any = getattr(main_module, "Multiprocess")  # noqa: B009  # uvicorn/main.py's name

    class LastCallMultiprocess(multiprocess):  # type: ignore[misc]
        def run(self) -> None:
            Supervisor(self).start()
            super().run()

    setattr(main_module, "Multiprocess", LastCallMultiprocess)  # noqa: B010


def wrap_every_app(main_module: ModuleType) -> None:
    """Have ``uvicorn.main.run`` build its ``Config`` as lastcall's, whose app is always wrapped.

    ``uvicorn/main.py`` names the class ``Config`` (0.30 to 0.55); the
    subclass, ``lastcall._servers.uvicorn_config.Config``, goes to each
    worker with the pickled configuration.
    """
    from lastcall._servers import uvicorn_config  # noqa: PLC0415  # imports uvicorn

    setattr(main_module, "Config", uvicorn_config.Config)  # noqa: B010


class Supervisor:
    """lastcall in uvicorn's supervisor: health port, readiness, the workers stopped together."""

    def __init__(self, multiprocess: Any) -> None:  # noqa: ANN401  # uvicorn's Multiprocess
        self.multiprocess = multiprocess
        self.directory = Path(tempfile.mkdtemp(prefix="lastcall-uvicorn-"))

    def start(self) -> None:
        """Before the first worker starts: settings, health port, signals."""
        from lastcall import _health_port  # noqa: PLC0415  # socketserver, in the supervisor only

        TESTED.check()
        workers = int(self.multiprocess.processes_num)
        # A bad LASTCALL_* setting stops here, in one line, before any worker starts.
        settings = settings_or_exit(report_shared_by=f"each of uvicorn's {workers} workers")
        coordinator = lastcall.default
        Integration(coordinator).expect_serving(until=self._workers_serving)
        try:
            self.health = _health_port.serve_for_workers(coordinator.readiness, settings)
        except OSError as exc:  # the port taken, a host not this machine's: said in one line
            sys.exit(f"Error: lastcall: {exc}")
        os.environ[SUPERVISOR_ENV] = f"{os.getpid()}:{self.directory}"
        coordinator.on_shutdown(phase="drain", name="uvicorn supervisor: stop every worker")(
            self._stop_workers
        )
        coordinator.when_done(lambda _report: shutil.rmtree(self.directory, ignore_errors=True))
        # After Multiprocess.__init__ took every signal: SIGTERM and SIGINT become
        # lastcall's; the workers do the pre-stop delay, so the supervisor has none.
        # No report here: no hook of the app's runs here, and at a path without
        # {pid} the supervisor, last out, would overwrite a worker's report.
        report = os.environ.pop("LASTCALL_REPORT", None)
        try:
            coordinator.install(
                signals=("SIGTERM", "SIGINT"),
                grace=settings.grace + _MARGIN,
                prestop_delay=0,
                health_port=None,
            )
        finally:
            if report is not None:
                os.environ["LASTCALL_REPORT"] = report  # for the workers, spawned next

    def _workers_serving(self) -> bool:
        serving = sum(1 for path in self.directory.glob("serving-*"))
        return serving >= max(1, int(self.multiprocess.processes_num))

    def _stop_workers(self) -> None:
        """The drain hook: say it is a full stop, then uvicorn's own stop; wait for every worker."""
        (self.directory / _STOPPING).touch()
        self.multiprocess.should_exit.set()  # its loop sends each worker SIGTERM, then joins
        processes = list(self.multiprocess.processes)
        running = {p.process.sentinel: p.pid for p in processes if p.process.exitcode is None}
        left = lastcall.default.time_left()
        deadline = time.monotonic() + max(0.0, (left or 0.0) - _MARGIN / 2)
        logger.info("uvicorn supervisor: waiting for %d worker(s) to finish", len(running))
        while running and time.monotonic() < deadline:
            for sentinel in wait_for_exits(list(running), deadline - time.monotonic()):
                running.pop(sentinel)
        if running:
            logger.error(
                "uvicorn supervisor: worker(s) %s still running at the end of the grace; killed",
                ", ".join(map(str, running.values())),
            )
            for pid in running.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _supervisor_directory() -> Path | None:
    """In a worker of lastcall's supervisor (its parent), the directory they share."""
    value = os.environ.get(SUPERVISOR_ENV, "")
    pid, _, directory = value.partition(":")
    if not directory or not pid.isdigit() or int(pid) != os.getppid():
        return None
    return Path(directory)


def note_serving() -> None:
    """In a worker: tell lastcall's supervisor, if it is ours, that this worker serves."""
    directory = _supervisor_directory()
    if directory is not None:
        with contextlib.suppress(OSError):
            (directory / f"serving-{os.getpid()}").touch()


def supervisor_stopping() -> Callable[[], bool] | None:
    """In a worker of lastcall's supervisor: a check whether every worker is stopping.

    None elsewhere. A SIGINT from a terminal reaches the workers and the
    supervisor at once, so the check waits a moment for its file.
    """
    directory = _supervisor_directory()
    if directory is None:
        return None
    marker = directory / _STOPPING

    def stopping() -> bool:
        deadline = time.monotonic() + _MARK_WAIT
        while not marker.exists():
            if time.monotonic() > deadline:
                return False
            time.sleep(_MARK_POLL)
        return True

    return stopping
