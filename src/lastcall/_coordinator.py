"""The coordinator: every way a process ends becomes one ordered, time-boxed stop.

States go ``running -> stopping -> done`` exactly once, under a lock. Who
runs the stop depends on how it began:

* a signal or ``trigger()``: the dispatcher thread, so the main thread
  keeps serving while the drain finishes what it accepted; when the stop
  is done the dispatcher wakes the main thread (``pthread_kill``) and the
  main thread ends the process the way the signal asked;
* normal interpreter exit, ``sys.exit`` or an unhandled exception: the
  main thread, when the interpreter runs ``threading``'s exit callbacks:
  before it waits for non-daemon threads, so a worker thread waiting on
  ``stopping`` ends instead of holding the exit forever (plain ``atexit``
  runs only after that wait). A forked ``multiprocessing`` child runs them
  too before its ``os._exit``, so its stop completes there;
* ``shutdown()``: the calling thread, and the process is left running.

Signal handlers never take a lock: they put the signal number on a
SimpleQueue that the dispatcher reads (see ``_signals``). The stop logs
through a hand-off thread (``_log.log``), and a stop that will end the
process arms the watchdog (``_watchdog``): nothing it waits on can hold
the process past the grace.

What the stop may wait on, and what it may not
----------------------------------------------
The stop runs when the process is at its worst: a container at its pids
limit, stderr a pipe nobody reads, another thread inside logging with its
lock held. So everything it needs is made at ``install()``, where a failure
is one line the app can act on: the dispatcher, the log thread, the
watchdog's ``/dev/null``, the report's checks (``_config``). During the stop:

* no new thread is needed: the hooks' runner starts one if it can and runs
  the hooks inline on the dispatcher if not (unwatched, each without its
  own ``timeout``); the watchdog falls back from its C thread to SIGALRM.
  What the stop went without is in the report's ``problems``;
* no lock another thread may hold: not logging's (lines go through
  ``log``, which takes none), not the log hand-off's, not a handler's; the
  coordinator's own ``_lock`` is only held for a few bytecodes, and never
  by a signal handler;
* no write that can block: log lines are written by the log thread, and
  waited for at most ``_LOG_FLUSH_WAIT``; the report is written to a
  regular file checked at ``install()``;
* what it cannot avoid waiting on (a hook, a drain, other libraries' atexit
  functions) is bounded by a hook's timeout, the drain budget, or, for all
  of it, the watchdog at grace + 2 s.

One registry for all coordinators: a single fork callback and a single
exit callback, whatever the number of coordinators made (tests make many).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import itertools
import logging
import os
import queue
import signal
import sys
import threading
import time
import weakref

from lastcall import _children, _crashes, _watchdog
from lastcall._busy import Busy, BusyWork
from lastcall._config import Settings, drain_reserve, parse_signals, resolve
from lastcall._hooks import PHASES, Finished, Hook, Runner, make_hook, running_hook
from lastcall._log import log, logger
from lastcall._report import HookResult, Report, prepare_writing
from lastcall._signals import SignalHandlers, main_thread_ident
from lastcall._stoptoken import StopToken
from lastcall._threads import start_daemon

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see _hooks)
if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Iterable
    from types import TracebackType
    from typing import Any, Literal, TypeAlias, TypeVar, overload

    from lastcall._config import SignalSpec
    from lastcall._health_port import HealthServer
    from lastcall._hooks import HookFunc

    F = TypeVar("F", bound=HookFunc)
    State: TypeAlias = Literal["running", "stopping", "done"]
    Clock: TypeAlias = Callable[[], float]

# Once the stop is over, how long the dispatcher lets the main thread end the
# process before ending it itself (the main thread may be stuck in C code).
_MAIN_THREAD_GRACE = 1.0
_WAKE_INTERVAL = 0.02
_LOG_FLUSH_WAIT = 0.5  # how long the end of a stop waits for its log lines to be written
_PARENT_POLL = 0.2  # seconds between checks that a parent lives (stop_when_parent_dies)


class Coordinator:
    """One per process: owns the hooks, the stop token and the stop itself.

    The module-level functions (``lastcall.on_shutdown`` ...) use a default
    instance; tests and embedders may make their own::

        coordinator = Coordinator(run_at_exit=False)
        coordinator.on_shutdown(close_pool)
        report = coordinator.shutdown()
    """

    def __init__(self, *, clock: Clock | None = None, run_at_exit: bool = True) -> None:
        self._clock = clock or time.monotonic
        self._run_at_exit = run_at_exit
        try:
            self._settings = resolve()
        except (TypeError, ValueError) as exc:
            # Not at import time: install() re-reads the environment and raises there.
            logger.warning("%s; using the defaults unless install() is called", exc)
            self._settings = Settings()
        self._force_signals: frozenset[int] = frozenset({signal.SIGINT})
        self.stopping = StopToken()
        self._reset_state()
        self._handlers: SignalHandlers | None = None
        self._main_ident: int | None = None  # the main thread's pthread id, for waking it
        # The main thread's signal mask, seen at install(): the stop's threads get it back.
        self._app_mask: set[int | signal.Signals] | None = None
        self._previous_excepthook: Callable[..., Any] | None = None
        self._watching_crashes = False  # stop_on_thread_crash: _crashes calls _on_thread_crash
        self._exit_wanted = False  # run the stop at interpreter exit (a hook, install ...)
        self._forked = False
        self._done_callbacks: list[Callable[[Report], None]] = []
        self._aside_callbacks: list[Callable[[str], None]] = []
        self._install_options: dict[str, Any] = {}
        self._stood_aside: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._not_ready: str | None = None  # set_ready(False, reason)
        # An integration said it will call serving(), or gave a test that says when it serves.
        self._starting: bool | Callable[[], bool] = False
        self._health: HealthServer | None = None
        # Who can list the requests in flight (the middlewares), asked only when a drain overruns.
        self._request_listers: list[weakref.WeakMethod[Callable[[], list[dict[str, Any]]]]] = []
        _coordinators.add(self)

    def _reset_state(self) -> None:
        self._lock = threading.Lock()
        # Registration order, by serial; _by_func finds a function's serials at once,
        # so unregistering is O(1) (functions that cannot be hashed are scanned for).
        self._hooks: dict[int, Hook] = {}
        self._by_func: dict[object, list[int]] = {}
        self._serials = itertools.count()
        self._phase: str | None = None  # the phase a stop is running
        self._busy = BusyWork()
        self._state: State = "running"
        self._done = threading.Event()
        self._report: Report | None = None
        self._events: queue.SimpleQueue[int | tuple[str, str, int]] = queue.SimpleQueue()
        self._dispatcher: threading.Thread | None = None
        self._runner: Runner | None = None  # running the hooks of the current phase
        self._in_progress: Report | None = None
        self._deadline: float | None = None
        self._exception: str | None = None
        # How the dispatcher will end the process: (exit status, signal to die by).
        self._plan: tuple[int, int | None] | None = None
        self._ending: tuple[int, int | None] | None = None  # set once ending has begun
        self._exit_funcs_ran = False  # atexit's functions: run once, by us or the interpreter
        self._main_ending = False  # the main thread is in _end_on_main_thread
        self._main_flushing = False  # ... and in its last flush before it ends the process

    # ------------------------------------------------------------ settings

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def state(self) -> State:
        return self._state

    @property
    def installed(self) -> bool:
        """Whether ``install()`` took the signals (and ``uninstall()`` did not give them back)."""
        return self._handlers is not None

    def use_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Run async hooks on ``loop`` (a server's own) instead of a private one.

        So an async hook can close clients bound to that loop. The stop must
        then run on another thread than the loop's, as it does when a signal or
        ``trigger()`` begins it; while the loop is not running (or the stop
        runs on its thread) async hooks fall back to a loop of their own.
        ``None`` goes back to that. While a loop is in use, a guard task on it
        keeps ``asyncio.run()`` from closing it before the hooks have run, and
        runs the stop there if the loop ends first (see ``_asyncio``).
        """
        self._loop = loop
        if loop is not None or sys.modules.get("lastcall._asyncio") is not None:
            from lastcall._asyncio import guard_loop  # noqa: PLC0415  # imports asyncio

            guard_loop(self, loop)

    def install(
        self,
        *,
        grace: float | None = None,
        signals: Iterable[SignalSpec] | None = None,
        exit_code: int | None = None,
        report: str | None = None,
        prestop_delay: float | None = None,
        force_signals: Iterable[SignalSpec] = ("SIGINT",),
        override_ignored: bool = False,
        stop_on_thread_crash: bool | None = None,
        health_port: int | None = None,
        health_host: str | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Coordinator:
        """Take over the stop signals and normal exit; safe to call again.

        Arguments win over ``LASTCALL_*`` environment variables, which win
        over the defaults (see ``lastcall._config``). ``force_signals``
        received during a stop end the process at once (a second Ctrl-C);
        other repeats are absorbed. A signal found ignored stays ignored
        unless ``override_ignored``. ``stop_on_thread_crash``: an unhandled
        exception in any thread begins the stop, exit status 1. ``health_port``:
        ``/livez`` and ``/readyz`` on a listener of their own. Async hooks
        run on ``loop`` (see ``use_loop``), by default on the loop running
        ``install()`` if any.
        """
        options = {
            "grace": grace,
            "signals": signals,
            "exit_code": exit_code,
            "report": report,
            "prestop_delay": prestop_delay,
            "force_signals": force_signals,
            "override_ignored": override_ignored,
            "stop_on_thread_crash": stop_on_thread_crash,
            "health_port": health_port,
            "health_host": health_host,
        }
        if getattr(sys.modules.get("__main__"), "LASTCALL_WATCHER", False):
            # The last-resort watcher importing an app module to run a hook:
            # the app's set-up must not take the watcher's signals.
            return self
        settings = resolve(
            grace=grace,
            signals=signals,
            exit_code=exit_code,
            report=report,
            prestop_delay=prestop_delay,
            stop_on_thread_crash=stop_on_thread_crash,
            health_port=health_port,
            health_host=health_host,
        )
        if settings.report:
            prepare_writing()  # what writing the report imports, now: not in the stop
        force = frozenset(int(s) for s in parse_signals(force_signals)) if force_signals else None
        SignalHandlers.check_main_thread()  # before anything is started
        self._renew_if_gevent_patched()
        self._main_ident = main_thread_ident()
        self._app_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        blocked = [sig.name for sig in settings.signals if sig in self._app_mask]
        if blocked:  # a mask survives fork and exec: a parent's blocked signals stay blocked
            logger.warning(
                "%s blocked on the main thread (a mask inherited from the parent process?): "
                "the stop begins only once it is unblocked",
                ", ".join(blocked),
            )
        # The threads the stop runs on, before the signals are ours: a stop begun
        # later starts none of its own (see "What the stop may wait on" above).
        try:
            self._start_dispatcher()
            log.start()
        except RuntimeError as exc:  # "can't start new thread"
            raise RuntimeError(
                f"lastcall.install() could not start its threads ({exc}): the process is at "
                "its thread limit (a container's pids.max, or ulimit -u); raise it"
            ) from None
        _watchdog.prepare()
        handlers = self._handlers or SignalHandlers(self._on_signal)
        handlers.install(settings.signals, override_ignored=override_ignored)  # no gap
        self._settings = settings
        self._force_signals = force or frozenset()
        self._handlers = handlers
        self._install_options = options
        if self._previous_excepthook is None:
            self._previous_excepthook = sys.excepthook
            sys.excepthook = self._excepthook
        if settings.stop_on_thread_crash:
            _crashes.watch(self._on_thread_crash)
            self._watching_crashes = True
        else:
            self._unwatch_crashes()
        self._want_exit_stop()
        self._start_health_listener(settings)
        if loop is None and sys.modules.get("asyncio") is not None:
            from lastcall._asyncio import running_loop  # noqa: PLC0415  # asyncio is imported

            loop = running_loop()
        if loop is not None:
            self.use_loop(loop)
        return self

    def _start_health_listener(self, settings: Settings) -> None:
        if settings.health_port is None or self._health is not None:
            return
        from lastcall import _health_port  # noqa: PLC0415  # socketserver only when asked for

        host, port = settings.health_host, settings.health_port
        try:
            self._health = _health_port.start(self.readiness, host, port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or not _health_port.a_sibling_may_serve_it():
                raise
            logger.warning(
                "LASTCALL_HEALTH_PORT=%d: %s:%d is taken, by a sibling worker most likely; this "
                "one answers probes on the app's port only (with `uvicorn --workers`, start "
                "`python -m lastcall.uvicorn` instead: its supervisor serves the port for all)",
                port,
                host,
                port,
            )

    @property
    def health_address(self) -> tuple[str, int] | None:
        """Where the health listener answers (``health_port=0`` picks a free port), or None."""
        if self._health is None:
            return None
        host, port = self._health.server_address[:2]
        return str(host), int(port)

    # ------------------------------------------------------------ readiness

    def set_not_ready(self, reason: str) -> None:
        """Turn readiness off at run time; ``reason`` is shown in ``/readyz``.

        For a service shedding load or waiting for a lost dependency: the load
        balancer stops sending it traffic while it stays alive. A stop still
        wins: once it begins, ``/readyz`` says ``stopping`` whatever this says.
        """
        if not isinstance(reason, str) or not reason:
            raise TypeError(f"set_not_ready() needs a reason, like 'shedding load', not {reason!r}")
        self._not_ready = reason

    def set_ready(self) -> None:
        """Turn readiness back on after ``set_not_ready()``."""
        self._not_ready = None

    def expect_serving(self, until: Callable[[], bool] | None = None) -> None:
        """For integrations: readiness is ``starting`` until ``serving()`` is called.

        Or until ``until()`` says so (a master counting its workers): asked only
        when readiness is, so nothing polls; once true, it is not asked again.
        """
        self._starting = until or True

    def serving(self) -> None:
        """For integrations: the server accepts requests and the app's start-up is done."""
        self._starting = False

    def readiness(self) -> tuple[str, str | None]:
        """``("ready" | "starting" | "not_ready" | "stopping", reason)``: what ``/readyz`` says."""
        if self._state != "running":
            return "stopping", None
        if self._not_ready is not None:
            return "not_ready", self._not_ready
        starting = self._starting
        if starting and (starting is True or not starting()):
            return "starting", None
        self._starting = False
        return "ready", None

    def _renew_if_gevent_patched(self) -> None:
        """Remake what greenlets wait on if gevent patched ``threading`` after we made it.

        ``monkey.patch_all()`` after ``import lastcall``: a greenlet waiting on
        one of the original Events or queues would block the whole hub.
        """
        if sys.modules.get("gevent.monkey") is None or isinstance(self._done, threading.Event):
            return
        if self._state == "running":
            self._done = threading.Event()
            self._events = queue.SimpleQueue()
            self.stopping._renew()  # noqa: SLF001  # the token's owner renews it
        log.renew()

    def reclaim_signals(self) -> None:
        """Install our handlers again, after a framework replaced them.

        Werkzeug's reloader sets its own SIGTERM handler after the app was
        imported; what it put there is dropped, not chained. Does nothing
        if ``install()`` was never called.
        """
        if self._handlers is None:
            return
        self.install(**self._install_options)

    def ensure_installed(self, **options: Any) -> Coordinator:  # noqa: ANN401
        """``install(**options)``, unless the app already called ``install()`` itself.

        For server integrations, which take the signals when the server
        starts: settings the app chose win over the integration's defaults,
        and our handlers go back in front of any the server set meanwhile.
        """
        if self.installed:
            self.reclaim_signals()
            return self
        return self.install(**options)

    def stop_when_parent_dies(self, parent: int, reason: str) -> None:
        """Begin the stop, as ``trigger(reason)`` does, once ``parent`` is no longer our parent.

        A reloader or pre-forking master that is SIGKILLed cannot tell its
        children, which would serve on as orphans. Polling ``getppid()``
        needs nothing from the parent; it is compared with ``parent``, not
        with 1, because a subreaper may adopt the orphan.
        """

        def watch() -> None:
            while not self.stopping.wait(_PARENT_POLL):
                if os.getppid() != parent:
                    log.log(logging.WARNING, "%s: stopping", reason)
                    self.trigger(reason=reason)
                    return

        start_daemon(watch, "lastcall-parent-watch")

    def stand_aside(self, reason: str) -> None:
        """Make this process a supervisor that runs no hooks of its own.

        For a parent that only watches the process doing the work (the
        Werkzeug reloader's parent imports the app too, but its hooks
        belong to the serving child): hooks registered so far are dropped,
        later ones ignored, and nothing runs at exit.
        """
        self._stood_aside = reason
        with self._lock:
            self._hooks.clear()
            self._by_func.clear()
        logger.debug("standing aside: %s", reason)
        for callback in self._aside_callbacks:
            callback(reason)

    def when_standing_aside(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` if this process stands aside.

        The last-resort watcher stands down then: the child owns the cleanup.
        """
        self._aside_callbacks.append(callback)

    @property
    def stood_aside(self) -> str | None:
        """Why this process stood aside, or None if it runs its own hooks."""
        return self._stood_aside

    def uninstall(self) -> None:
        """Give back the signal handlers and excepthook that were there before."""
        if self._handlers is not None:
            self._handlers.restore()
            self._handlers = None
        if self._previous_excepthook is not None:
            sys.excepthook = self._previous_excepthook
            self._previous_excepthook = None
        self._unwatch_crashes()

    def _unwatch_crashes(self) -> None:
        if self._watching_crashes:
            _crashes.unwatch()
            self._watching_crashes = False

    # ------------------------------------------------------------ hooks

    if TYPE_CHECKING:

        @overload
        def on_shutdown(
            self,
            func: F,
            /,
            *,
            phase: str = "cleanup",
            timeout: float | None = None,
            name: str | None = None,
            inherit: bool = False,
        ) -> F: ...

        @overload
        def on_shutdown(
            self,
            func: None = None,
            /,
            *,
            phase: str = "cleanup",
            timeout: float | None = None,
            name: str | None = None,
            inherit: bool = False,
        ) -> Callable[[F], F]: ...

    def on_shutdown(
        self,
        func: F | None = None,
        /,
        *,
        phase: str = "cleanup",
        timeout: float | None = None,
        name: str | None = None,
        inherit: bool = False,
    ) -> F | Callable[[F], F]:
        """Register ``func`` to run at shutdown: bare decorator, with options, or a call.

        Within a phase the last registered runs first, as with ``atexit``.
        ``timeout`` defaults to what remains of the grace period;
        ``inherit=True`` lets forked children run it too.
        """

        def register(target: F) -> F:
            hook = make_hook(target, phase=phase, timeout=timeout, name=name, inherit=inherit)
            if self._stood_aside:
                return target
            if hook.is_async:
                # What running it needs, now: a stop must not wait on the import lock.
                import lastcall._asyncio  # noqa: F401, PLC0415  # imports asyncio
            with self._lock:
                serial = next(self._serials)
                self._hooks[serial] = hook
                with contextlib.suppress(TypeError):  # unhashable: unregister() scans for it
                    self._by_func.setdefault(hook.func, []).append(serial)
                running = self._phase
            if running is not None and PHASES.index(hook.phase) <= PHASES.index(running):
                logger.warning(
                    "hook %s registered for the %s phase while the stop is in its %s phase: "
                    "it will not run",
                    hook.name,
                    hook.phase,
                    running,
                )
            self._want_exit_stop()
            return target

        # Validate options even when used as a decorator factory, so a typo
        # fails at the line that has it.
        make_hook(lambda: None, phase=phase, timeout=timeout, name=name, inherit=inherit)
        return register if func is None else register(func)

    def busy(self, name: str) -> Busy:
        """Mark work in progress that the ``drain`` phase waits for, as it waits for requests.

        ``with lastcall.busy("import"):``, ``async with ...``, or
        ``@lastcall.busy("nightly")`` on a function. The work should still
        watch ``stopping`` to wrap up; what is still busy when the drain's
        budget runs out is named in the report, with its stack.
        """
        return Busy(self._busy, name)

    def list_requests_with(self, lister: Callable[[], list[dict[str, Any]]]) -> None:
        """For integrations: ``lister()`` names the requests in flight (method, path, seconds).

        A bound method, held weakly; it is asked only when the drain's budget
        runs out with requests still in flight (``note_requests_in_flight``).
        """
        self._request_listers.append(weakref.WeakMethod(lister))

    def note_requests_in_flight(self) -> None:
        """The drain's budget ran out: put the requests still in flight in the report, at ERROR.

        Called by the drain before it cancels them, so they are still there to list.
        """
        requests = self._requests_in_flight()
        report = self._in_progress
        if report is not None:
            report.requests = requests
        for request in requests:
            log.log(
                logging.ERROR,
                "request %s %s still in flight after %.1f s when the drain budget ran out",
                request["method"],
                request["path"],
                request["seconds"],
            )

    def note_job(self, job: dict[str, Any]) -> None:
        """For worker integrations: a job the stop touched, in the report's ``jobs``.

        ``job`` has ``id``, ``name``, ``outcome`` (``completed`` or ``requeued``) and
        ``seconds``; noted while a stop runs, it is in the report file too. A job
        noted again (put back after it was noted running) replaces its entry.
        """
        report = self._in_progress
        if report is None:
            return
        report.jobs[:] = [j for j in report.jobs if j.get("id") != job.get("id")]
        report.jobs.append(job)

    def _requests_in_flight(self) -> list[dict[str, Any]]:
        listers = [ref() for ref in self._request_listers]
        return [request for lister in listers if lister is not None for request in lister()]

    def unregister(self, func: HookFunc) -> bool:
        """Remove every registration of ``func``; True if there was one."""
        with self._lock:
            try:
                hash(func)  # dict.pop() on an empty dict does not hash: ask first
                serials = self._by_func.pop(func, [])
            except TypeError:
                serials = [n for n, h in self._hooks.items() if h.func is func or h.func == func]
            for serial in serials:
                del self._hooks[serial]
        return bool(serials)

    @property
    def hooks(self) -> tuple[Hook, ...]:
        with self._lock:
            return tuple(self._hooks.values())

    # ------------------------------------------------------------ stopping

    def trigger(self, reason: str = "trigger() called") -> None:
        """Begin the stop from any thread; the process ends when it is done.

        From inside a hook the stop is already running: this returns at once.
        """
        if running_hook() is not None:
            logger.debug("trigger() from inside hook %s: the stop is already running", reason)
            return
        self._start_dispatcher()
        self._events.put(("manual", reason, 0))

    def shutdown(
        self, reason: str = "shutdown() called", *, prestop_delay: float | None = None
    ) -> Report:
        """Run the stop now on this thread and return its report; the process lives on.

        If a stop already began elsewhere, wait for it and return its report.
        ``prestop_delay`` replaces the setting for this stop (0 where nothing
        serves any more, so there is nothing to keep serving for). From inside
        a hook, returns the report so far at once instead of waiting on itself.
        """
        if self._begin():
            return self._run("manual", reason, exit_status=None, prestop_delay=prestop_delay)
        if running_hook() is not None and self._in_progress is not None:
            logger.debug("shutdown() from inside a hook: returning the report so far")
            return self._in_progress
        return self._wait_report()

    def when_done(self, callback: Callable[[Report], None]) -> None:
        """Call ``callback(report)`` once the stop is over, before the process ends.

        For integrations that must know the shutdown completed (the
        last-resort watcher stands down); runs on the thread that ran the stop.
        Like registering a hook, it makes a normal interpreter exit run the stop.
        """
        self._done_callbacks.append(callback)
        self._want_exit_stop()

    def time_left(self) -> float | None:
        """Seconds left of the grace period while a stop runs; None otherwise."""
        if self._deadline is None or self._state != "stopping":
            return None
        return max(0.0, self._deadline - self._clock())

    def drain_budget(self) -> float:
        """How long a ``drain`` hook may wait for work in flight.

        What is left of the grace, less a reserve (a tenth of the grace, at
        most 2 s) so the ``workers``, ``cleanup`` and ``final`` phases still
        get their turn when a request runs too long.
        """
        reserve = drain_reserve(self._settings.grace)
        left = self.time_left()
        return max(0.0, (self._settings.grace if left is None else left) - reserve)

    @property
    def report(self) -> Report | None:
        """The report of the stop, once it is done."""
        return self._report

    def _begin(self) -> bool:
        with self._lock:
            if self._state != "running":
                return False
            self._state = "stopping"
        self._busy.stop_began = True
        self.stopping._set()  # noqa: SLF001  # the token's owner sets it
        return True

    def _wait_report(self) -> Report:
        self._done.wait(self._settings.grace + _MAIN_THREAD_GRACE)
        if self._report is None:
            raise RuntimeError("the shutdown in progress did not finish within its grace period")
        return self._report

    def _run(
        self,
        trigger: str,
        reason: str,
        *,
        exit_status: int | None,
        prestop_delay: float | None = None,
        ends_process: bool = False,
    ) -> Report:
        """The stop sequence: every phase in order, each hook within its time."""
        settings = self._settings
        if prestop_delay is not None:
            settings = settings.replace(prestop_delay=prestop_delay)
        problem = _watchdog.arm(settings.grace) if ends_process else None
        began_since_boot = _children.clock()
        start = self._clock()
        deadline = self._deadline = start + settings.grace
        report = Report(trigger=trigger, reason=reason, pid=os.getpid(), started_at=time.time())
        self._in_progress = report
        if problem is not None:
            report.problems.append(problem)
            log.log(logging.ERROR, "%s", problem)
        log.log(
            logging.INFO,
            "shutdown started by %s (%s); grace %.3g s",
            trigger,
            reason,
            settings.grace,
        )
        loop = self._hook_loop()

        def budget(hook: Hook) -> float:
            remaining = deadline - self._clock()
            return min(hook.timeout or remaining, remaining)

        for phase in PHASES:
            with self._lock:
                self._phase = phase
                hooks = [h for h in reversed(self._hooks.values()) if h.phase == phase]
            while hooks:
                runner = self._runner = Runner(hooks, budget, self._clock, loop)
                runner.start()
                overran = runner.watch()
                report.hooks.extend(self._record(done, took) for done, took in runner.results)
                if overran is None:
                    break
                hook = hooks[overran]
                _, _, allowed = runner.current or (0, 0.0, 0.0)
                error = f"still running after {allowed:.3g} s; abandoned"
                finished = Finished(hook, "timeout", error, runner.stack())
                report.hooks.append(self._record(finished, allowed))
                hooks = hooks[overran + 1 :]  # a new runner for the rest
            if phase == "drain" and (len(self._busy) or self._busy.cancelled):
                report.hooks.append(self._wait_busy(report))
            if phase == "pre_stop" and settings.prestop_delay:
                delay = min(settings.prestop_delay, max(0.0, deadline - self._clock()))
                log.log(logging.INFO, "pre-stop delay: still serving for %.3g s", delay)
                self._done.wait(delay)
        self._runner = None
        self._phase = None
        self._note_what_was_left(report, began_since_boot, ends_process=ends_process)
        report.duration = self._clock() - start
        report.exit_status = exit_status
        self._finish(report)
        return report

    def _wait_busy(self, report: Report) -> HookResult:
        """The drain's last step: wait for ``busy`` blocks within the drain budget."""
        began = self._clock()
        idle = self._busy.wait_idle(self.drain_budget())
        took = self._clock() - began
        cut_off = self._note_cancelled_busy(report)
        if not idle:
            still = self._busy.in_progress()
            report.busy.extend(still)
            names = ", ".join(f"{b['name']} ({b['seconds']:.1f} s)" for b in still)
            for block in still:
                log.log(
                    logging.ERROR,
                    "busy work %s still running after the drain budget, at:\n%s",
                    block["name"],
                    block["stack"] or "(its stack cannot be seen)",
                )
            return HookResult(_BUSY_STEP, "drain", "timeout", took, f"still busy: {names}")
        if cut_off:
            return HookResult(_BUSY_STEP, "drain", "error", took, f"cancelled: {cut_off}")
        return HookResult(_BUSY_STEP, "drain", "ok", took)

    def _note_what_was_left(self, report: Report, began: float, *, ends_process: bool) -> None:
        """After the last phase: busy work cancelled late; the children of a hook that timed out."""
        self._note_cancelled_busy(report)  # asyncio.run's teardown may come after the drain
        if ends_process and any(h.outcome == "timeout" for h in report.hooks):
            for line in _children.end_children_started_since(began):
                report.problems.append(line)
                log.log(logging.ERROR, "%s", line)

    def _note_cancelled_busy(self, report: Report) -> str:
        """Put busy blocks the stop cancelled in the report, at ERROR; their names, or ''."""
        cancelled = self._busy.cancelled
        new = list(cancelled)  # a copy: a task may still be cancelled meanwhile
        del cancelled[: len(new)]
        report.busy.extend(new)
        for block in new:
            log.log(
                logging.ERROR,
                "busy work %s cancelled after %.1f s, before it finished (asyncio.run ends the "
                "tasks left when main returns: await them first), at:\n%s",
                block["name"],
                block["seconds"],
                block["stack"] or "(its stack cannot be seen)",
            )
        return ", ".join(f"{b['name']} ({b['seconds']:.1f} s)" for b in new)

    def _hook_loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop set with ``use_loop``, unless this thread is the one running it."""
        loop = self._loop
        if loop is None or sys.modules.get("asyncio") is None:
            return None
        import asyncio  # noqa: PLC0415  # already imported: whoever made the loop did

        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            return loop
        return None if current is loop else loop

    def _record(self, done: Finished, took: float) -> HookResult:
        hook = done.hook
        if done.outcome in ("error", "timeout"):
            log.log(
                logging.ERROR,
                "hook %s (%s) %s: %s%s",
                hook.name,
                hook.phase,
                done.outcome,
                done.error,
                f", at:\n{done.stack}" if done.stack else "",
            )
        return HookResult(hook.name, hook.phase, done.outcome, took, done.error, stack=done.stack)

    def _finish(self, report: Report) -> None:
        """Write, record and log the report, then release anyone waiting.

        The file first: it is written whatever the log handlers are doing.
        """
        self._write(report)
        self._report = report
        self._state = "done"  # no lock: this may run in a signal handler (see _force)
        report.log()
        for callback in self._done_callbacks:
            try:
                callback(report)
            except Exception as exc:
                log.log(logging.ERROR, "a when_done callback failed: %r", exc)
        if self._plan is None and self._ending is None:
            # No one ends the process after this (shutdown(), an exit the
            # interpreter completes): the lines must be out before we return.
            log.flush(_LOG_FLUSH_WAIT)
        self._done.set()

    def _write(self, report: Report) -> None:
        report_path = self._settings.report
        if not report_path:
            return
        try:
            path = report.write(report_path)
        except Exception as exc:  # any: the stop must end (kept in report.write_error)
            log.log(logging.ERROR, "could not write the report to %s: %s", report_path, exc)
        else:
            log.log(logging.DEBUG, "report written to %s", path)

    # ------------------------------------------------------------ the dispatcher

    def _start_dispatcher(self) -> None:
        with self._lock:
            if self._dispatcher is not None and self._dispatcher.is_alive():
                return
            # The stop runs the app's hooks on threads the dispatcher starts: they
            # get the app's signal mask back, not the dispatcher's (all blocked).
            app_mask = self._app_mask
            if app_mask is None:  # trigger() before install(): the caller's
                app_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
            self._dispatcher = start_daemon(self._dispatch, "lastcall-dispatcher", app_mask)

    def _on_signal(self, signum: int) -> None:
        """Runs in the signal handler, on the main thread: no locks, no logging."""
        if self._ending is not None and not self._main_flushing:
            self._end_on_main_thread()
        if self._state == "stopping" and signum in self._force_signals:
            self._force(signum)
        self._events.put(signum)

    def _dispatch(self, app_mask: set[int | signal.Signals]) -> None:
        # A signal number, or (trigger, reason, status) from trigger() or a thread's crash.
        item = self._events.get()
        signal.pthread_sigmask(signal.SIG_SETMASK, app_mask)
        if isinstance(item, int):
            trigger, reason = signal.Signals(item).name, "signal received"
            status, die_by = 128 + item, item
        else:
            trigger, reason, status = item
            die_by = None
        if self._settings.exit_code is not None and trigger != "exception":
            status, die_by = self._settings.exit_code, None  # a crash keeps its 1
        if self._begin():
            self._plan = (status, die_by)
            self._run(trigger, reason, exit_status=status, ends_process=True)
        else:
            self._done.wait(self._settings.grace + _MAIN_THREAD_GRACE)
            if self._report is not None and self._report.trigger in ("exit", "exception"):
                return  # the interpreter is already ending on its own terms
            self._plan = (status, die_by)
        self._end_process(self._plan)

    def _end_process(self, plan: tuple[int, int | None]) -> None:
        """From the dispatcher: have the main thread end the process, or do it here.

        The stop's log lines are written first, from here: once woken, the main
        thread may be inside a log handler it was interrupted in, holding the lock
        the log thread would need to write them.
        """
        log.flush(_LOG_FLUSH_WAIT)
        self._ending = plan
        handlers = self._handlers
        handled = handlers.handled if handlers else ()
        main = self._main_ident
        if handled and main is not None:
            _, die_by = plan
            wake = die_by if die_by in handled else handled[0]
            # Repeat the wake-up: one that lands while the main thread is still
            # inside our handler for the first signal is only noticed at its
            # next bytecode, which a blocking call like sleep() can delay.
            # (Under gevent this runs on the main thread itself: it wakes itself.)
            # Only while the handler is ours: one a server put back (SIG_DFL, Python's
            # KeyboardInterrupt) would end or break the main thread's end; it ends the
            # process itself when it reaches the interpreter's exit (_at_exit).
            until = time.monotonic() + _MAIN_THREAD_GRACE
            while time.monotonic() < until:
                if handlers is not None and handlers.ours(wake):
                    signal.pthread_kill(main, wake)
                time.sleep(_WAKE_INTERVAL)
            log.log(logging.WARNING, "the main thread did not end the process; ending it here")
        status, die_by = plan
        log.flush(_LOG_FLUSH_WAIT)
        os._exit(128 + die_by if die_by is not None else status)

    def _end_on_main_thread(self) -> None:
        assert self._ending is not None  # noqa: S101  # only called once it is set
        self._main_ending = True
        status, die_by = self._ending
        if not self._exit_funcs_ran:
            self._exit_funcs_ran = True
            # Other libraries' exit handlers still run, as they would have at a
            # normal exit; not in a forked multiprocessing child, which ends
            # with os._exit and never runs them, nor while another thread holds
            # logging's lock, which logging.shutdown() would wait on for ever.
            if self._forked and _started_by_multiprocessing():
                pass
            elif _logging_lock_held_elsewhere():
                log.log(
                    logging.ERROR,
                    "another thread holds logging's lock: exiting without atexit's functions",
                )
            else:
                atexit._run_exitfuncs()  # noqa: SLF001
        # A wake-up that lands during this flush returns at once instead of nesting another.
        self._main_flushing = True
        log.flush(_LOG_FLUSH_WAIT)
        # Not _signals.die_by, which flushes sys.stdout and sys.stderr without a bound: here
        # a stream may be a pipe nobody reads, and only the hand-off's bounded flush is safe.
        if die_by is not None and os.getpid() != 1:  # PID 1 ignores its own default signals
            signal.signal(die_by, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [die_by])
            os.kill(os.getpid(), die_by)
            time.sleep(_MAIN_THREAD_GRACE)  # the signal is on its way
        os._exit(128 + die_by if die_by is not None else status)

    def _force(self, signum: int) -> None:
        """A second Ctrl-C: say what is still running, write what we know, end now."""
        runner = self._runner
        running = runner.current if runner is not None else None
        report = self._in_progress
        detail = "nothing"
        if runner is not None and running is not None:
            index, began, _ = running
            hook = runner.hooks[index]
            took = time.monotonic() - began
            detail = f"{hook.name} ({hook.phase}, {took:.1f} s)"
            if report is not None:
                error = f"still running when {signal.Signals(signum).name} forced the exit"
                report.hooks.append(
                    self._record(Finished(hook, "timeout", error, runner.stack()), took)
                )
        log.log(
            logging.ERROR,
            "%s again during shutdown: exiting now; still running: %s",
            signal.Signals(signum).name,
            detail,
        )
        self._ending = (128 + signum, signum)
        if report is not None and self._report is None:
            report.busy = self._busy.in_progress()
            report.requests = self._requests_in_flight()
            report.forced = True
            report.exit_status = 128 + signum
            self._finish(report)
        self._end_on_main_thread()

    # ------------------------------------------------------------ interpreter exit

    def _want_exit_stop(self) -> None:
        if self._run_at_exit and not self._exit_wanted:
            self._exit_wanted = True
            _register_exit_callbacks()

    def _at_exit(self, in_atexit: bool) -> None:
        """The interpreter is ending: run the stop, or wait for the one under way."""
        if not self._exit_wanted or self._main_ending or self._stood_aside:
            return  # _end_on_main_thread is running the exit handlers, or none are ours
        self._exit_funcs_ran = self._exit_funcs_ran or in_atexit
        if self._ending is not None:
            # The dispatcher is ending the process and the main thread got here first
            # (the server's loop returned): end it as the stop asked, not with status 0.
            self._end_on_main_thread()
        if self._begin():
            trigger = "exception" if self._exception else "exit"
            status = 1 if self._exception else None
            reason = self._exception or "interpreter exiting"
            self._run(trigger, reason, exit_status=status, ends_process=True)
            return
        self._done.wait(self._settings.grace + _MAIN_THREAD_GRACE)
        if self._plan is not None:  # a signal or trigger() began it: end as it asked
            self._ending = self._plan
            self._end_on_main_thread()

    def _excepthook(
        self,
        exc_type: type[BaseException],
        exc: BaseException,
        tb: TracebackType | None,
    ) -> None:
        # The interpreter sets sys.last_value before it calls the hook for an exception that
        # ends the program (pythonrun.c, _PyErr_PrintEx); an app calling sys.excepthook itself
        # for one it handled does not, and its process does not end by it.
        if getattr(sys, "last_value", None) is exc:
            self._exception = f"{exc_type.__name__}: {exc}"
        previous = self._previous_excepthook or sys.__excepthook__
        previous(exc_type, exc, tb)

    def _on_thread_crash(self, reason: str) -> None:
        """``stop_on_thread_crash``: a thread that died of an exception stops the service.

        A background thread that crashed leaves a service serving half-broken;
        stopping lets the orchestrator start a whole one (as .NET's host does).
        """
        if self._state != "running":
            return
        self._start_dispatcher()
        self._events.put(("exception", reason, 1))

    # ------------------------------------------------------------ fork

    def _after_fork_in_child(self) -> None:
        """A forked child keeps only the hooks registered with ``inherit=True``."""
        inherited = [h for h in self._hooks.values() if h.inherit]
        self._reset_state()
        self._forked = True
        for hook in inherited:
            self.on_shutdown(
                hook.func, phase=hook.phase, timeout=hook.timeout, name=hook.name, inherit=True
            )
        self._loop = None  # the parent's loop is not running here
        self._starting = False  # the parent's start-up (a master's workers) is not this one's
        self.stopping._renew()  # noqa: SLF001
        if self._health is not None:  # the parent answers; its thread is not here
            self._health.forget()
            self._health = None
        if self._handlers is not None:
            self._main_ident = main_thread_ident()  # the forking thread is the child's only one
            try:
                self._start_dispatcher()
                log.start()
            except RuntimeError as exc:  # no thread to be had: say so, the parent's stop is safe
                log.log(logging.ERROR, "a forked child could not start lastcall's threads: %s", exc)


_BUSY_STEP = "lastcall: wait for busy work"


# ---------------------------------------------------------------- the registry

_coordinators: weakref.WeakSet[Coordinator] = weakref.WeakSet()
_exit_callbacks_registered = False


def _after_fork_in_child() -> None:
    for coordinator in list(_coordinators):
        coordinator._after_fork_in_child()  # noqa: SLF001  # the registry is the class's


def _at_threading_exit() -> None:
    for coordinator in list(_coordinators):
        coordinator._at_exit(in_atexit=False)  # noqa: SLF001


def _at_exit() -> None:
    for coordinator in list(_coordinators):
        coordinator._at_exit(in_atexit=True)  # noqa: SLF001


def _register_exit_callbacks() -> None:
    """Run stops at interpreter exit: first where threading ends, ``atexit`` as a backstop.

    ``threading._register_atexit`` (what ``concurrent.futures`` uses) runs
    before the interpreter joins non-daemon threads, and in a forked
    ``multiprocessing`` child before its ``os._exit``; ``atexit`` alone runs
    after the join, and never in such a child. Registered on first need, so
    libraries imported earlier (``concurrent.futures``) still shut down after us.
    """
    global _exit_callbacks_registered  # noqa: PLW0603  # once per process
    if _exit_callbacks_registered:
        return
    _exit_callbacks_registered = True
    register_threading_exit = getattr(threading, "_register_atexit", None)
    if register_threading_exit is not None:
        # "can't register atexit after shutdown": atexit still runs
        with contextlib.suppress(RuntimeError):
            register_threading_exit(_at_threading_exit)
    atexit.register(_at_exit)


def _logging_lock_held_elsewhere() -> bool:
    """Whether another thread holds ``logging``'s module lock (an RLock: ours is no bar)."""
    lock = getattr(logging, "_lock", None)  # logging/__init__.py, 3.10 to 3.13
    if lock is None or not lock.acquire(blocking=False):
        return lock is not None
    lock.release()
    return False


def _started_by_multiprocessing() -> bool:
    process = sys.modules.get("multiprocessing.process")
    return process is not None and process.parent_process() is not None


os.register_at_fork(after_in_child=_after_fork_in_child)
