"""Celery workers that lose no task at a stop: ``LastCall(app)`` beside the app, nothing else.

::

    from celery import Celery
    from lastcall.celery import LastCall

    app = Celery("tasks", broker="redis://localhost:6379/0")
    LastCall(app)

then ``celery -A tasks worker`` as before (pools ``prefork``, ``threads``, ``solo`` and
``gevent``, brokers Redis and RabbitMQ, with or without ``acks_late``; ``-P eventlet`` is
refused at start-up in one line). On the first SIGTERM or SIGINT to the worker:

1. readiness goes red (``LASTCALL_HEALTH_PORT``: a worker's only probe) and
   no task starts after the signal: the worker stops consuming at once, and
   what it had prefetched goes back to the broker at once;
2. running tasks finish within the drain budget (``LASTCALL_GRACE`` less
   its reserve), acknowledged as they finish;
3. a task still running when the budget ends is stopped and put back at the
   head of its queue at once (never acknowledged as done, never left to
   Redis's hour-long visibility timeout); the report's ``jobs`` names it;
4. hooks run once in the process that registered them: each prefork pool
   process runs its own (registered in ``worker_process_init``) as it ends,
   the main process runs its own after the pool is closed; the worker ends
   by the signal (Celery alone exits 0). A second SIGINT puts back every task
   not done and ends at once.

SIGQUIT stays Celery's cold shutdown (with 5.5's ``worker_soft_shutdown_timeout``).
What does not fit is said in one line at start-up: a task time limit longer
than the drain budget, a ``visibility_timeout`` shorter than the grace, a pool
or broker this slice does not drain (those still get hooks and the exit status).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
from typing import TYPE_CHECKING, Any, TypeAlias

import lastcall
from lastcall._config import drain_reserve
from lastcall._integration import Integration
from lastcall._log import log, logger
from lastcall._servers.drain import drain
from lastcall._workers import celery as adapter

if TYPE_CHECKING:
    from lastcall._coordinator import Coordinator
    from lastcall._report import Report

__all__ = ("LastCall",)

# Celery objects (app, worker, consumer, task): untyped, reached by duck typing
Celery: TypeAlias = Any

_DEFAULT_VISIBILITY = 3600.0  # kombu/transport/redis.py: Channel.visibility_timeout
# Celery's own warm shutdown after the drain (closing the pool, then the channel) takes
# about 1.5 s with prefork (billiard's join polls): the tasks' budget leaves it this much.
_CELERY_STOP_MAX = 2.0
# gevent: Celery's loop (synloop) sees its stop flag only between 2 s waits for the broker
# (two of them: one more as it leaves), then its remote-control greenlet takes 1 s.
_CELERY_STOP_MAX_GREEN = 5.0
_CELERY_STOP_SHARE = 1 / 3
# eventlet runs Celery's worker_ready in a green thread, where no signal handler can be
# set, and cannot stop a running task: lastcall would neither drain nor run the hooks.
EVENTLET_REFUSED = (
    "lastcall.celery: the eventlet pool (-P eventlet) cannot keep lastcall's contract (no "
    "signal handler can be set from its green threads, no running task can be put back); "
    "use -P gevent for green threads, or -P threads"
)


def task_budget(coordinator: Coordinator, *, green: bool = False) -> float:
    """How long running tasks may take after the signal: the drain budget less Celery's stop."""
    budget = Integration(coordinator).drain_budget()
    stop = _CELERY_STOP_MAX_GREEN if green else _CELERY_STOP_MAX
    return max(0.0, budget - min(stop, budget * _CELERY_STOP_SHARE))


class LastCall:
    """Connect lastcall to one Celery app's worker signals.

    Make it next to the app (at import, in the module ``celery -A`` names);
    the worker is started as usual. ``coordinator`` is for tests.
    """

    def __init__(self, app: Celery, *, coordinator: Coordinator | None = None) -> None:
        from celery import signals  # noqa: PLC0415  # celery is an optional extra

        self.app = app
        self.coordinator = coordinator or lastcall.default
        self.worker: adapter.CeleryWorker | None = None
        self._answers: tuple[int, int] | None = None  # pipe: pool processes -> main
        self._green = False  # the gevent pool: Celery's own stop takes longer
        signals.worker_init.connect(self._worker_init, weak=False)
        signals.worker_ready.connect(self._worker_ready, weak=False)
        signals.worker_shutdown.connect(self._worker_shutdown, weak=False)
        signals.worker_process_init.connect(self._process_init, weak=False)
        signals.worker_process_shutdown.connect(self._process_shutdown, weak=False)

    # ------------------------------------------------------------ main process

    def _ours(self, sender: Celery) -> bool:
        return getattr(sender, "app", None) is self.app

    def _worker_init(self, sender: Celery = None, **_: Any) -> None:  # noqa: ANN401
        """Main process, before the pool forks: the pipe pool processes answer on.

        The eventlet pool is refused here, before the worker consumes anything.
        """
        if not self._ours(sender) or self._answers is not None:
            return
        if adapter.pool_class_kind(sender.pool_cls) == "eventlet":
            raise SystemExit(EVENTLET_REFUSED)  # Celery's signal dispatch lets it through
        read, write = os.pipe()
        os.set_blocking(read, False)
        self._answers = (read, write)

    def _worker_ready(self, sender: Celery = None, **_: Any) -> None:  # noqa: ANN401
        """Main thread, the consumer is up: take SIGTERM and SIGINT, gate the strategies."""
        consumer = sender
        if not self._ours(consumer) or self.worker is not None:
            return
        adapter.TESTED.check()
        adapter.TESTED_KOMBU.check()
        coordinator = self.coordinator
        kind = adapter.pool_kind(consumer.pool)
        self._green = kind == "gevent"
        transport = consumer.app.connection_for_read().transport_cls
        if (
            (consumer.hub is None and kind != "gevent")
            or kind not in adapter.SUPPORTED_POOLS
            or transport not in adapter.SUPPORTED_TRANSPORTS
        ):
            logger.warning(
                "lastcall drains Celery's prefork, threads, solo and gevent pools on Redis and "
                "RabbitMQ; "
                "this worker (pool %s, broker %s) gets its hooks and exit status, not the drain",
                kind,
                transport,
            )
            self._take_signals()
            return
        self.worker = worker = adapter.CeleryWorker(
            consumer, coordinator, self._answers[0] if self._answers else None
        )
        worker.attach()
        worker.watch_for_kill()
        self._take_signals()
        coordinator.on_shutdown(phase="drain", name="celery worker drain")(
            functools.partial(self._drain, worker)
        )
        Integration(coordinator).when_stopping(worker.stop_taking_tasks)
        coordinator.when_done(functools.partial(self._done, worker))
        self._say_what_does_not_fit(consumer)

    def _take_signals(self) -> None:
        """Take SIGTERM and SIGINT from Celery (not chained); SIGQUIT stays Celery's."""
        coordinator = self.coordinator
        coordinator.uninstall()  # if the app called lastcall.install() itself
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        # gevent runs signal handlers on its hub, where lastcall's forced end cannot wait.
        force = () if self._green else ("SIGINT",)
        coordinator.install(signals=("SIGTERM", "SIGINT"), force_signals=force)
        if self._green:
            logger.warning(
                "a second SIGINT does not force this gevent worker's end (gevent runs signal "
                "handlers on its hub, where no wait is possible): the stop goes on, within "
                "LASTCALL_GRACE=%g s; SIGQUIT stays Celery's cold shutdown",
                coordinator.settings.grace,
            )
        log.log(
            logging.INFO,
            "lastcall: SIGTERM and SIGINT stop this worker within %.3g s; running tasks get "
            "%.3g s to finish",
            coordinator.settings.grace,
            task_budget(coordinator, green=self._green),
        )

    def _say_what_does_not_fit(self, consumer: Celery) -> None:
        """One line for each Celery setting that does not fit lastcall's budget."""
        from billiard.common import REMAP_SIGTERM  # noqa: PLC0415

        conf = consumer.app.conf
        budget = task_budget(self.coordinator, green=self._green)
        grace = self.coordinator.settings.grace
        for setting in ("task_soft_time_limit", "task_time_limit"):
            limit = conf.get(setting)
            if limit and float(limit) > budget:
                logger.warning(
                    "%s=%g s is longer than lastcall's drain budget %.3g s: a task still "
                    "running %.3g s after the stop signal is put back on its queue; raise "
                    "LASTCALL_GRACE to at least %g (and the orchestrator's grace with it) or "
                    "lower %s",
                    setting,
                    float(limit),
                    budget,
                    budget,
                    float(limit) + (grace - budget),
                    setting,
                )
        said = {conf.get("task_soft_time_limit"), conf.get("task_time_limit")}
        for task in consumer.app.tasks.values():
            limit = getattr(task, "soft_time_limit", None) or getattr(task, "time_limit", None)
            if limit and float(limit) > budget and limit not in said:  # a task's own
                logger.warning(
                    "task %s has a time limit of %g s, longer than lastcall's drain budget "
                    "%.3g s: at a stop it is put back on its queue after %.3g s",
                    task.name,
                    float(limit),
                    budget,
                    budget,
                )
        options = conf.get("broker_transport_options") or {}
        visibility = float(options.get("visibility_timeout", _DEFAULT_VISIBILITY))
        on_redis = self.worker is not None and not self.worker.amqp  # RabbitMQ has none
        if on_redis and visibility <= grace:
            logger.warning(
                "broker_transport_options visibility_timeout=%g s is not longer than "
                "LASTCALL_GRACE=%g s: another worker may take a task this one still runs; "
                "raise visibility_timeout above %g",
                visibility,
                grace,
                grace,
            )
        if REMAP_SIGTERM:
            logger.info(
                "REMAP_SIGTERM=%s: lastcall takes SIGTERM in the main process (a drain "
                "bounded by %.3g s, then the overrunning tasks are put back), so the remap is "
                "not needed; SIGQUIT stays Celery's cold shutdown",
                REMAP_SIGTERM,
                budget,
            )
        soft = conf.get("worker_soft_shutdown_timeout") or 0
        if soft:
            logger.info(
                "worker_soft_shutdown_timeout=%g s applies to SIGQUIT (Celery's cold "
                "shutdown) only; SIGTERM and SIGINT drain within lastcall's budget %.3g s",
                float(soft),
                budget,
            )

    def _drain(self, worker: adapter.CeleryWorker) -> None:
        """The drain hook: the drain sequence, then Celery's own shutdown of pool and channel.

        First Celery's ``worker_shutting_down``, as its own SIGTERM/SIGINT handler sends it
        (celery/apps/worker.py), for the app's receivers; here on the stop's thread.
        """
        from celery import signals  # noqa: PLC0415

        coordinator = self.coordinator
        signals.worker_shutting_down.send(
            sender=worker.consumer.hostname,
            sig=Integration(coordinator).stop_trigger or "SIGTERM",
            how="Warm",
            exitcode=0,
        )
        drain(worker, coordinator, budget=task_budget(coordinator, green=self._green), jobs=True)
        left = coordinator.time_left()
        wait = max(
            0.5,
            (coordinator.settings.grace if left is None else left)
            - drain_reserve(coordinator.settings.grace),
        )
        if not worker.stop_celery(wait) and not worker.frozen.is_set():
            log.log(logging.ERROR, "Celery's own shutdown did not end within %.3g s", wait)

    def _done(self, worker: adapter.CeleryWorker, report: Report) -> None:
        if os.getpid() != worker.pid:
            return  # a prefork pool process's own stop (replaced, or closed by Celery's)
        if report.forced:
            worker.force()  # the last-resort watcher runs too, and finds nothing left
            path = self.coordinator.settings.report
            if path:  # written before this callback: again, with the tasks just put back
                with contextlib.suppress(Exception):  # the failure is in report.write_error
                    report.write(path)
        elif worker.delivered is not None:
            worker.delivered.remove()

    def _worker_shutdown(self, sender: Celery = None, **_: Any) -> None:  # noqa: ANN401
        """Celery's warm shutdown is over: the pool is closed, the connection too."""
        if self.worker is not None and self._ours(sender):
            self.worker.celery_stopped.set()

    # ------------------------------------------------------------ pool processes

    def _process_init(self, **_: Any) -> None:  # noqa: ANN401
        """A prefork pool process, started: it answers stop requests on the pipe."""
        if self._answers is not None:
            adapter.ChildSide(self._answers[1]).attach()

    def _process_shutdown(self, **_: Any) -> None:  # noqa: ANN401
        """A prefork pool process, ending: its hooks run here, once."""
        adapter.ChildSide.exiting()
