"""RQ workers that lose no job at a stop: ``rq worker --worker-class lastcall.rq.Worker``.

::

    rq worker --worker-class lastcall.rq.Worker high default low
    rq worker --worker-class lastcall.rq.SimpleWorker default    # no fork per job

(or ``Worker``/``SimpleWorker`` from here wherever RQ's own are made). On the
first SIGTERM or SIGINT to the worker:

1. readiness goes red (``LASTCALL_HEALTH_PORT``: a worker's only probe) and
   no job starts after the signal: RQ's wait for a job is ended at once, and a
   job Redis handed out meanwhile goes back to the head of its queue;
2. the running job finishes within its budget (``LASTCALL_GRACE`` less the
   hooks' reserve and the time a cancel takes: ``job_budget``), heartbeats kept;
3. a job still running when the budget ends is stopped (the work horse
   exits; a ``SimpleWorker`` never returns to it) and put back at the head of
   its queue at once, out of ``StartedJobRegistry``, not failed; the report's
   ``jobs`` names it;
4. hooks run once, in the worker process (not in the horses RQ forks per
   job); the worker ends by the signal. A second SIGINT (RQ alone ignores
   one within 1 s of the first) kills the horse, puts its job back and ends.

What does not fit is said in one line: a job timeout longer than the drain
budget (at start-up for RQ's default, 180 s; at the first job with a longer
one of its own), since such a job is put back at a stop instead of waited for.
"""

from __future__ import annotations

import functools
import logging
import signal
from typing import TYPE_CHECKING

from rq.logutils import setup_loghandlers
from rq.worker import SimpleWorker as _SimpleWorker
from rq.worker import Worker as _Worker

import lastcall
from lastcall._config import drain_reserve
from lastcall._integration import Integration
from lastcall._log import log, logger
from lastcall._servers.drain import drain
from lastcall._workers import rq as adapter

if TYPE_CHECKING:
    from lastcall._report import Report

__all__ = ("SimpleWorker", "Worker", "job_budget")

_DEREGISTER_WAIT = 2.0  # seconds, at most, for RQ's teardown to take the worker off its registry
# Stopping an overrunning job and putting it back takes up to a second under load (0.5 s for
# the process running it to answer): the job's budget leaves that much of the drain budget.
_CANCEL_MAX = 1.0
_CANCEL_SHARE = 1 / 4


def job_budget(coordinator: lastcall.Coordinator) -> float:
    """How long the running job may take after the signal: the drain budget less its cancel."""
    budget = Integration(coordinator).drain_budget()
    return max(0.0, budget - min(_CANCEL_MAX, budget * _CANCEL_SHARE))


class _LastCall(adapter.Overrides):
    def _install_signal_handlers(self) -> None:
        """RQ's ``work()`` takes SIGTERM and SIGINT here, once it listens: lastcall does."""
        _attach(self)


class Worker(_LastCall, _Worker):
    """RQ's ``Worker`` (a work horse forked per job), stopped by lastcall."""


class SimpleWorker(_LastCall, _SimpleWorker):
    """RQ's ``SimpleWorker`` (jobs on the main thread, no fork), stopped by lastcall."""


def _attach(worker: _LastCall) -> None:
    # lastcall's lines where RQ's go, at RQ's level (unless the app configured logging itself)
    setup_loghandlers(logging.getLogger("rq.worker").getEffectiveLevel(), name=logger.name)
    adapter.TESTED.check()
    coordinator = lastcall.default
    drainer = adapter.RQDrain(worker, coordinator)
    worker.lastcall_drain = drainer
    coordinator.uninstall()  # if the app called lastcall.install() itself
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # taken, not chained
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    coordinator.install(signals=("SIGTERM", "SIGINT"), force_signals=("SIGINT",))
    drainer.attach()
    coordinator.on_shutdown(phase="drain", name="rq worker drain")(
        functools.partial(_drain, drainer)
    )
    coordinator.when_done(functools.partial(_done, drainer))
    last_resort = drainer.last_resort_args()
    if last_resort is not None:  # SIGKILL, the OOM killer: the job goes back all the same
        lastcall.last_resort(
            "lastcall._workers.rq:put_back_after_kill", *last_resort, name="rq: put back the job"
        )
    else:
        logger.info(
            "lastcall: a Sentinel or TLS connection is not handed to the last resort: after a "
            "SIGKILL the running job waits for RQ's own cleanup of StartedJobRegistry"
        )
    budget = drainer.budget = job_budget(coordinator)
    log.log(
        logging.INFO,
        "lastcall: SIGTERM and SIGINT stop this worker within %.3g s; a running job gets "
        "%.3g s to finish",
        coordinator.settings.grace,
        budget,
    )
    drainer.unfit = functools.partial(_say_timeout_does_not_fit, coordinator)
    drainer.check_timeout(adapter.default_timeout(worker), "RQ's default job timeout")


def _say_timeout_does_not_fit(coordinator: lastcall.Coordinator, timeout: float, what: str) -> None:
    """One line: a job timeout longer than the drain budget: put back, not waited for."""
    budget = job_budget(coordinator)
    grace = coordinator.settings.grace
    shown = "none (-1)" if timeout < 0 else f"{timeout:g} s"
    logger.warning(
        "%s %s is longer than lastcall's drain budget %.3g s: a job still running %.3g s "
        "after the stop signal is put back on its queue and runs again from the start; raise "
        "LASTCALL_GRACE to at least %g (and the orchestrator's grace with it) or give such "
        "jobs a shorter job_timeout",
        what,
        shown,
        budget,
        budget,
        max(timeout, 0) + (grace - budget),
    )


def _drain(drainer: adapter.RQDrain) -> None:
    """The drain hook: the drain sequence, then RQ's own deregistering of the worker."""
    coordinator = drainer.coordinator
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, adapter.THREAD_MASK)  # this thread's
    try:
        drain(drainer, coordinator, budget=job_budget(coordinator), jobs=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    left = coordinator.time_left()
    grace = coordinator.settings.grace
    # RQ deregisters the worker as soon as its loop ends; the hooks keep their reserve.
    wait = min(_DEREGISTER_WAIT, max(0.0, (grace if left is None else left) - drain_reserve(grace)))
    if not drainer.wait_deregistered(wait):
        log.log(logging.ERROR, "RQ did not deregister the worker within %.3g s", wait)


def _done(drainer: adapter.RQDrain, report: Report) -> None:
    if report.forced:
        drainer.force()
