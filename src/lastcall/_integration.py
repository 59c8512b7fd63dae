"""What server and worker adapters ask of a coordinator, beyond what apps use.

One small interface the adapters hold (``Integration(lastcall.default)``),
so the coordinator's public face stays what an app calls. It is a view: it
keeps no state of its own, and reaches into the coordinator it was made for,
the one module allowed to.
"""

from __future__ import annotations

import os
import weakref

from lastcall import _triggers
from lastcall._config import drain_reserve
from lastcall._log import logger

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see _hooks)
if TYPE_CHECKING:
    import contextlib
    from collections.abc import Callable
    from typing import Any

    from lastcall._coordinator import Coordinator


class Integration:
    """A server or worker adapter's handle on ``coordinator``."""

    __slots__ = ("coordinator",)

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    # ------------------------------------------------------------ signals

    def ensure_installed(self, **options: Any) -> Coordinator:  # noqa: ANN401
        """``install(**options)``, unless the app already called ``install()`` itself.

        For server integrations, which take the signals when the server
        starts: settings the app chose win over the integration's defaults,
        and our handlers go back in front of any the server set meanwhile.
        """
        if self.coordinator.installed:
            self.reclaim_signals()
            return self.coordinator
        return self.coordinator.install(**options)

    def reclaim_signals(self) -> None:
        """Install our handlers again, after a framework replaced them.

        Werkzeug's reloader sets its own SIGTERM handler after the app was
        imported; what it put there is dropped, not chained. Does nothing
        if ``install()`` was never called.
        """
        coordinator = self.coordinator
        if coordinator.installed:
            coordinator.install(**coordinator._install_options)  # noqa: SLF001

    def stop_when_parent_dies(self, parent: int, reason: str) -> None:
        """Begin the stop, as ``trigger(reason)`` does, once ``parent`` is no longer our parent."""
        coordinator = self.coordinator
        _triggers.watch_parent(parent, reason, coordinator.stopping, coordinator.trigger)

    def forking_without_threads(self) -> contextlib.AbstractContextManager[None]:
        """Children forked inside get none of lastcall's after-fork work, threads included.

        For a child that runs one job, takes no stop signal, never runs a stop and
        ends with ``os._exit`` (RQ's work horse, one per job): the reset a forked
        child gets (fresh hooks, state, locks; the watcher's and the health port's
        descriptors closed; lastcall's threads) costs each fork a few hundred
        microseconds of copy-on-write page faults, a few percent of a short job,
        for nothing. Such a child keeps the parent's lastcall state as it was, so it
        must not outlive the parent (RQ's horse: ``PR_SET_PDEATHSIG``); the
        children it forks in turn get the reset (without threads).
        """
        return _ONE_JOB_FORKS

    # ------------------------------------------------------------ readiness

    def expect_serving(self, until: Callable[[], bool] | None = None) -> None:
        """Readiness is ``starting`` until ``serving()`` is called.

        Or until ``until()`` says so (a master counting its workers): asked only
        when readiness is, so nothing polls; once true, it is not asked again.
        """
        self.coordinator._readiness.expect_serving(until)  # noqa: SLF001

    def serving(self) -> None:
        """The server accepts requests and the app's start-up is done."""
        self.coordinator._readiness.serving()  # noqa: SLF001

    # ------------------------------------------------------------ supervisors

    def stand_aside(self, reason: str) -> None:
        """Make this process a supervisor that runs no hooks of its own.

        For a parent that only watches the process doing the work (the
        Werkzeug reloader's parent imports the app too, but its hooks
        belong to the serving child): hooks registered so far are dropped,
        later ones ignored, and nothing runs at exit.
        """
        coordinator = self.coordinator
        coordinator._stood_aside = reason  # noqa: SLF001
        coordinator._registry.clear()  # noqa: SLF001
        logger.debug("standing aside: %s", reason)
        for callback in coordinator._aside_callbacks:  # noqa: SLF001
            callback(reason)

    def when_standing_aside(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` if this process stands aside.

        The last-resort watcher stands down then: the child owns the cleanup.
        """
        self.coordinator._aside_callbacks.append(callback)  # noqa: SLF001

    @property
    def stood_aside(self) -> str | None:
        """Why this process stood aside, or None if it runs its own hooks."""
        return self.coordinator._stood_aside  # noqa: SLF001

    @property
    def stop_trigger(self) -> str | None:
        """What began the stop under way (``SIGTERM``, ``manual``, ``exit`` ...), or None."""
        stop = self.coordinator._stop  # noqa: SLF001
        return stop.report.trigger if stop is not None else None

    # ------------------------------------------------------------ the drain

    def drain_budget(self) -> float:
        """How long a ``drain`` hook may wait for work in flight.

        What is left of the grace, less a reserve (a tenth of the grace, at
        most 2 s) so the ``workers``, ``cleanup`` and ``final`` phases still
        get their turn when a request runs too long.
        """
        coordinator = self.coordinator
        stop = coordinator._stop  # noqa: SLF001
        if stop is not None and coordinator.state == "stopping":
            return stop.drain_budget()
        grace = coordinator.settings.grace
        return max(0.0, grace - drain_reserve(grace))

    def list_requests_with(self, lister: Callable[[], list[dict[str, Any]]]) -> None:
        """``lister()`` names the requests in flight (method, path, seconds).

        A bound method, held weakly; it is asked only when the drain's budget
        runs out with requests still in flight (``note_requests_in_flight``).
        """
        self.coordinator._request_listers.append(weakref.WeakMethod(lister))  # noqa: SLF001

    def note_requests_in_flight(self) -> None:
        """The drain's budget ran out: put the requests still in flight in the report, at ERROR.

        Called by the drain before it cancels them, so they are still there to list.
        """
        coordinator = self.coordinator
        stop = coordinator._stop  # noqa: SLF001
        if stop is not None:
            stop.note_requests_in_flight(coordinator._requests_in_flight())  # noqa: SLF001

    def stop_requested(self) -> bool:
        """Whether a stop signal came or the stop began: a worker starts no job from then.

        True from the first line of the signal's handler, on the main thread, before
        the stop's own thread (which may wait for the GIL and a CPU) has begun it.
        """
        coordinator = self.coordinator
        return coordinator.signalled or coordinator.stopping.is_set()

    def when_stopping(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` as a stop begins, before its first hook and its first line.

        On the thread that runs the stop, right after ``stopping`` is set: a worker
        notes the jobs running then, so one that ends during the pre-stop delay is
        in the report too. Not kept by a forked child.
        """
        self.coordinator._stopping_callbacks.append(callback)  # noqa: SLF001

    def note_job(self, job: dict[str, Any]) -> None:
        """A job the stop touched, in the report's ``jobs``.

        ``job`` has ``id``, ``name``, ``outcome`` (``completed`` or ``requeued``) and
        ``seconds``; noted while a stop runs, it is in the report file too. A job
        noted again (put back after it was noted running) replaces its entry.
        """
        stop = self.coordinator._stop  # noqa: SLF001
        if stop is not None:
            stop.note_job(job)


class _OneJobForks:
    """``forking_without_threads()``: a class, not a generator, since it is entered per job.

    Each Python function the worker runs per job costs it page faults after each fork.
    """

    def __enter__(self) -> None:
        _triggers.one_job_forks_of = os.getpid()

    def __exit__(self, *_exc: object) -> None:
        _triggers.one_job_forks_of = None


_ONE_JOB_FORKS = _OneJobForks()
