"""Dramatiq workers that lose no message at a stop: one broker middleware.

::

    import dramatiq
    import lastcall.dramatiq
    from dramatiq.brokers.redis import RedisBroker  # or RabbitmqBroker

    broker = RedisBroker(url="redis://localhost:6379/0")
    broker.add_middleware(lastcall.dramatiq.LastCall())
    dramatiq.set_broker(broker)

then ``dramatiq tasks`` as before. Dramatiq's main process runs none of the
app's code: it forks the worker processes, which import the broker module,
and on SIGTERM or SIGINT it sends SIGTERM to each of them. In each worker
process, on that signal:

1. readiness goes red (``LASTCALL_HEALTH_PORT``, served by the first worker
   process to bind it) and no message starts after the signal: the consumers
   fetch no more, and what was fetched but not started goes back at once;
2. running actors finish within the drain budget (``LASTCALL_GRACE`` less its
   reserve), acknowledged as they finish, heartbeats kept (dramatiq#159);
3. an actor still running when the budget ends is put back on its queue at
   once and never acknowledged here; the report's ``jobs`` names it;
4. Dramatiq's own shutdown events reach every middleware once, where
   ``Worker.stop()`` would send them: ``before_worker_shutdown`` at the signal
   (actors declared ``notify_shutdown=True`` get Dramatiq's ``Shutdown``),
   ``after_worker_shutdown`` once running actors are done or put back (the
   AsyncIO middleware stops its event loop); then the app's lastcall hooks
   run once, in each worker process (where the app registered them); the
   process exits 143 (128 + SIGTERM), which Dramatiq's main process passes
   on as its own status (Dramatiq alone exits 0 after a SIGTERM; a worker
   ended by a signal would make it 1). A second signal to the main process
   (it turns Ctrl-C into SIGTERM) puts back everything not done and ends at
   once, as Dramatiq's own second signal kills.

A ``--worker-shutdown-timeout`` longer than the drain budget is said in one
line at start-up (lastcall's budget wins: the stop must end within the grace).

The main process, though, is Dramatiq's own: after Ctrl-C it exits with its
workers' 143 (they only ever get SIGTERM). Started as::

    python -m lastcall.dramatiq tasks --processes 2 --threads 8

(Dramatiq's command line, options and errors unchanged), it ends by the
signal it got: 130 after Ctrl-C or SIGINT, 143 after SIGTERM. SIGHUP still
reloads (``--watch``), into the same command.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import multiprocessing
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

import lastcall
from lastcall._config import exit_if_missing, settings_or_exit

try:
    from dramatiq import Middleware
except ModuleNotFoundError as missing:  # python -m lastcall.dramatiq, without Dramatiq
    if __name__ == "__main__":
        exit_if_missing(missing, "dramatiq")
    raise
from lastcall._integration import Integration
from lastcall._log import log, logger
from lastcall._servers.drain import drain
from lastcall._signals import die_by, stop_signals_seen
from lastcall._workers import dramatiq as adapter
from lastcall._workers import load_prctl, signal_when_parent_dies

if TYPE_CHECKING:
    from dramatiq import Broker, Worker
    from dramatiq.broker import MessageProxy

    from lastcall._coordinator import Coordinator
    from lastcall._report import Report

__all__ = ("LastCall", "main")

# dramatiq/cli.py: the worker processes turn the stop signal into this exit status.
_EXIT_STATUS = 128 + signal.SIGTERM
# dramatiq/cli.py watch_logs: once its workers are gone, Dramatiq's main process still waits
# for its log thread, which reads the workers' pipes with a 1 s timeout (measured: 1.05 s from
# the last worker's end to its own). The worker processes end that much inside the grace, so
# the process the user started does too.
_MAIN_PROCESS_EXIT = 1.2
# What a worker process is sent as Dramatiq's main process dies: a real-time signal no one
# else here uses (Linux only: elsewhere the watch alone).
_PARENT_DIED: int | None = signal.SIGRTMAX - 1 if sys.platform == "linux" else None


class LastCall(Middleware):
    """Drain each Dramatiq worker process within lastcall's budget on SIGTERM/SIGINT.

    ``coordinator`` is for tests; by default ``lastcall.default``.
    """

    def __init__(self, *, coordinator: Coordinator | None = None) -> None:
        self.coordinator = coordinator or lastcall.default
        self.worker: adapter.DramatiqWorker | None = None
        self._booted = False  # after_worker_boot took the signals
        self._sent_at_boot = False  # a SIGTERM came before that

    # ------------------------------------------------------------ worker process, main thread

    def before_worker_boot(self, _broker: Broker, worker: Worker) -> None:
        """Before the consumers and worker threads start: count every message from the first.

        A SIGTERM before ``after_worker_boot`` (another middleware's boot can be slow) is
        held until lastcall's handler is in: Dramatiq's would stop the worker alone.
        """
        if self.worker is not None:
            return
        adapter.TESTED.check()
        self.worker = adapter.DramatiqWorker(worker, self.coordinator)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._hold)

    def _hold(self, _signum: int, _frame: object) -> None:
        self._sent_at_boot = True

    def after_worker_boot(self, _broker: Broker, _worker: Worker) -> None:
        """The consumers and worker threads are up: take the signals, register the drain."""
        drainer = self.worker
        if drainer is None or self._booted:
            return
        self._booted = True
        coordinator = self.coordinator
        coordinator.uninstall()  # if the app called lastcall.install() itself
        # Not chained: Dramatiq's own handler would run Worker.stop() beside the drain, and
        # its worker process would exit 0 once that returned, hooks or not.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        settings = coordinator.settings
        status = settings.exit_code
        # SIGINT stays ignored, as Dramatiq set it in its worker processes: its main process
        # forwards Ctrl-C as SIGTERM (a terminal's Ctrl-C reaching both would count twice).
        # So a second SIGTERM forces, as Dramatiq's own second signal kills.
        coordinator.install(
            grace=settings.grace - min(_MAIN_PROCESS_EXIT, settings.grace / 2),
            signals=("SIGTERM",),
            force_signals=("SIGTERM",),
            exit_code=_EXIT_STATUS if status is None else status,
        )
        coordinator.on_shutdown(phase="pre_stop", name="dramatiq stop fetching")(
            drainer.stop_fetching
        )
        coordinator.on_shutdown(phase="drain", name="dramatiq worker drain")(
            functools.partial(self._drain, drainer)
        )
        # Dramatiq's Worker.stop() ends with it: after the drain, before the app's cleanup hooks.
        coordinator.on_shutdown(phase="workers", name="dramatiq after_worker_shutdown")(
            functools.partial(drainer.emit_shutdown, "after")
        )
        Integration(coordinator).when_stopping(drainer.note_stop_began)
        coordinator.when_done(functools.partial(self._done, drainer))
        if self._sent_at_boot:
            os.kill(os.getpid(), signal.SIGTERM)  # held at boot: lastcall's now
        parent = multiprocessing.parent_process()  # Dramatiq's main process
        if parent is not None and parent.pid is not None:
            # SIGKILLed, it forwards no signal: this process would take jobs on, orphaned.
            # The kernel says so at once (Linux); the watch, every 0.2 s, where it cannot.
            reason = f"Dramatiq's main process {parent.pid} died"
            _stop_when_told_parent_died(coordinator, reason)
            Integration(coordinator).stop_when_parent_dies(parent.pid, reason)
        budget = Integration(coordinator).drain_budget()
        log.log(
            logging.INFO,
            "lastcall: SIGTERM stops this worker process within %.3g s; running actors get "
            "%.3g s to finish",
            coordinator.settings.grace,
            budget,
        )
        self._say_what_does_not_fit(budget)

    def _say_what_does_not_fit(self, budget: float) -> None:
        """One line when ``--worker-shutdown-timeout`` is longer than the drain budget."""
        timeout = _shutdown_timeout_given()
        if timeout is None or timeout / 1000 <= budget:
            return
        grace = self.coordinator.settings.grace
        logger.warning(
            "--worker-shutdown-timeout=%d ms is longer than lastcall's drain budget %.3g s: an "
            "actor still running %.3g s after the stop signal is put back on its queue; raise "
            "LASTCALL_GRACE to at least %g (and the orchestrator's grace with it) or lower "
            "--worker-shutdown-timeout",
            timeout,
            budget,
            budget,
            timeout / 1000 + (grace - budget),
        )

    @staticmethod
    def _drain(drainer: adapter.DramatiqWorker) -> None:
        drain(drainer, drainer.coordinator, jobs=True)

    @staticmethod
    def _done(drainer: adapter.DramatiqWorker, report: Report) -> None:
        if report.forced:
            drainer.force()

    def before_worker_shutdown(self, _broker: Broker, _worker: Worker) -> None:
        """Emitted (by the drain, or by Dramatiq's own ``Worker.stop()``): not again."""
        if self.worker is not None:
            self.worker.shutdown_event("before")

    def after_worker_shutdown(self, _broker: Broker, _worker: Worker) -> None:
        """Emitted: not again."""
        if self.worker is not None:
            self.worker.shutdown_event("after")

    # ------------------------------------------------------------ worker threads

    def before_process_message(self, _broker: Broker, message: MessageProxy) -> None:
        """A worker thread, about to run an actor: it does not once the stop began."""
        if self.worker is not None:
            self.worker.began(message)

    def after_process_message(
        self,
        _broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,  # noqa: ANN401, ARG002  # Dramatiq's signature
        exception: BaseException | None = None,  # noqa: ARG002
    ) -> None:
        """The actor returned or raised: one put back meanwhile is not acknowledged."""
        if self.worker is not None:
            self.worker.ended(message)

    def after_skip_message(self, _broker: Broker, message: MessageProxy) -> None:
        """Like ``after_process_message``, for a message a middleware skipped."""
        if self.worker is not None:
            self.worker.ended(message)

    def after_ack(self, _broker: Broker, message: MessageProxy) -> None:
        """Acknowledged: no longer in flight."""
        if self.worker is not None:
            self.worker.settled(message)

    def after_nack(self, _broker: Broker, message: MessageProxy) -> None:
        """Rejected (to the dead-letter queue): no longer in flight."""
        if self.worker is not None:
            self.worker.settled(message)


def _stop_when_told_parent_died(coordinator: Coordinator, reason: str) -> None:
    """Begin the stop when the kernel sends ``_PARENT_DIED`` (``PR_SET_PDEATHSIG``, Linux).

    It comes once per thread of Dramatiq's main process as they end (the child is handed
    from a dying thread to the next): so not SIGTERM, which a second time forces the
    end, but a signal of its own that only begins the stop. Left to the watch where the
    app handles that signal itself.
    """
    if _PARENT_DIED is None or signal.getsignal(_PARENT_DIED) != signal.SIG_DFL:
        return
    if load_prctl():
        signal.signal(_PARENT_DIED, lambda _signum, _frame: coordinator.trigger(reason))
        signal_when_parent_dies(_PARENT_DIED)


def _shutdown_timeout_given() -> int | None:
    """``--worker-shutdown-timeout`` (ms) from the ``dramatiq`` command line, when given there.

    A forked worker process has its parent's ``sys.argv``; Dramatiq hands the parsed
    arguments to no middleware.
    """
    if not any(arg.startswith("--worker-shutdown-timeout") for arg in sys.argv):
        return None
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--worker-shutdown-timeout", type=int)
    known, _ = parser.parse_known_args(sys.argv[1:])
    return known.worker_shutdown_timeout  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    """Run Dramatiq's command line (``dramatiq.cli.main``) here; end by its stop signal.

    Its main process turns SIGINT into SIGTERM for the workers and exits with
    their status, 143 either way: which signal it got is read here, through
    ``signal.set_wakeup_fd`` (``stop_signals_seen``), touching nothing of Dramatiq's.
    """
    settings = settings_or_exit()  # before Dramatiq starts, in one line
    from dramatiq import cli  # noqa: PLC0415  # the command line's only: not in each worker

    args = sys.argv[1:] if argv is None else argv
    parser = cli.make_argument_parser()  # type: ignore[no-untyped-call]
    parser.prog = "python -m lastcall.dramatiq"
    parsed = parser.parse_args(args)
    # SIGHUP (--watch) reloads with os.execvp(sys.argv[0], sys.argv) (dramatiq/cli.py main):
    # this module's file is no program; the interpreter running it again is.
    sys.argv[:] = [sys.executable, "-m", "lastcall.dramatiq", *args]
    main_pid = os.getpid()
    with stop_signals_seen() as seen:
        os.register_at_fork(after_in_child=functools.partial(_forget_wakeup_fd, main_pid))
        status = cli.main(parsed)  # type: ignore[no-untyped-call]
    # 0: workers without lastcall's middleware, which Dramatiq stopped gracefully. Dramatiq's
    # RET_KILLED after a second signal: lastcall's forced workers died by the SIGTERM it sent.
    stopped = status in (0, _EXIT_STATUS) or (status == cli.RET_KILLED and len(seen) > 1)
    if seen and settings.exit_code is None and stopped:
        die_by(seen[0], exit_functions=True)
    return int(status)


def _forget_wakeup_fd(main_pid: int) -> None:
    """In a process Dramatiq's main process forks: its signals are not the main process's."""
    if os.getppid() == main_pid:
        with contextlib.suppress(ValueError):  # not on the main thread: nothing to forget
            signal.set_wakeup_fd(-1)


if __name__ == "__main__":
    sys.exit(main())
