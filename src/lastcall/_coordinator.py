"""The coordinator: every way a process ends becomes one ordered, time-boxed stop.

A façade over parts, each a file with one job:

* ``_registry``: the hooks, by phase and order;
* ``_triggers``: how a stop begins (signals, ``trigger()``, a thread's
  crash, an unhandled exception, interpreter exit, fork, a dead parent);
* ``_stop``: the stop itself (phases, budgets, the report);
* ``_ending``: how the process ends once the stop is over;
* ``_readiness``: what ``/readyz`` says, and the health listener.

What server and worker adapters need beyond the public methods is in
``_integration``, not here.

States go ``running -> stopping -> done`` exactly once, under a lock
(``_begin``). Who runs the stop depends on how it began:

* a signal or ``trigger()``: the dispatcher thread, so the main thread
  keeps serving while the drain finishes what it accepted; then the main
  thread ends the process the way the signal asked (``_ending``);
* normal interpreter exit, ``sys.exit`` or an unhandled exception: the
  main thread, when the interpreter runs ``threading``'s exit callbacks:
  before it waits for non-daemon threads, so a worker thread waiting on
  ``stopping`` ends instead of holding the exit forever (plain ``atexit``
  runs only after that wait). A forked ``multiprocessing`` child runs them
  too before its ``os._exit``, so its stop completes there;
* ``shutdown()``: the calling thread, and the process is left running.

What the stop may wait on, and what it may not
----------------------------------------------
The stop runs when the process is at its worst: a container at its pids
limit, stderr a pipe nobody reads, another thread inside logging with its
lock held. So everything it needs is made at ``install()``, where a failure
is one line the app can act on: the dispatcher, the log thread, the
watchdog's ``/dev/null``, the report's checks (``_config``) and what writing
it imports (``prepare_writing``), the modules an async hook needs (at its
registration). During the stop:

* no new thread is needed: the hooks' runner starts one if it can and runs
  the hooks inline on the dispatcher if not (unwatched, each without its
  own ``timeout``); the watchdog falls back from its C thread to SIGALRM.
  What the stop went without is in the report's ``problems``;
* no lock another thread may hold: not logging's (lines go through
  ``_log.log``, which takes none), not the import lock (nothing is imported),
  not a handler's; the coordinator's own ``_lock`` is only held for a few
  bytecodes, and never by a signal handler;
* no write that can block: log lines are written by the log thread, and
  waited for at most ``LOG_FLUSH_WAIT``; the report is written to a
  regular file checked at ``install()``;
* what it cannot avoid waiting on (a hook, a drain, other libraries' atexit
  functions) is bounded by a hook's timeout, the drain budget, or, for all
  of it, the watchdog at grace + 2 s.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

from lastcall import _crashes, _triggers, _watchdog
from lastcall._busy import Busy, BusyWork
from lastcall._config import Settings, parse_signals, resolve
from lastcall._ending import LOG_FLUSH_WAIT, MAIN_THREAD_GRACE, Ending
from lastcall._hooks import make_hook, running_hook
from lastcall._log import log, logger
from lastcall._readiness import Readiness
from lastcall._registry import HookRegistry
from lastcall._report import prepare_writing
from lastcall._signals import SignalHandlers, main_thread_ident
from lastcall._stop import Stop, write_report
from lastcall._stoptoken import StopToken

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see _hooks)
if TYPE_CHECKING:
    import asyncio
    import weakref
    from collections.abc import Callable, Iterable
    from typing import Any, Literal, TypeAlias, TypeVar, overload

    from lastcall._config import SignalSpec
    from lastcall._hooks import Hook, HookFunc
    from lastcall._report import Report

    F = TypeVar("F", bound=HookFunc)
    State: TypeAlias = Literal["running", "stopping", "done"]
    Clock: TypeAlias = Callable[[], float]

_HANDLER_POLL = 0.0005  # seconds between looks at a main thread still in our signal handler


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
        self._readiness = Readiness(self.stopping)
        self._dispatcher = _triggers.Dispatcher()
        self._excepthook = _triggers.Excepthook()
        self._handlers: SignalHandlers | None = None
        self._main_ident: int | None = None  # the main thread's pthread id, for waking it
        # The main thread's signal mask, seen at install(): the stop's threads get it back.
        self._app_mask: set[int | signal.Signals] | None = None
        self._watching_crashes = False  # stop_on_thread_crash: _crashes calls _on_thread_crash
        self._exit_wanted = False  # run the stop at interpreter exit (a hook, install ...)
        self._done_callbacks: list[Callable[[Report], None]] = []
        self._stopping_callbacks: list[Callable[[], None]] = []  # _integration.when_stopping
        self._install_options: dict[str, Any] = {}
        self._stood_aside: str | None = None  # _integration.stand_aside
        self._aside_callbacks: list[Callable[[str], None]] = []
        # Who can list the requests in flight (the middlewares), asked only when a drain overruns.
        self._request_listers: list[weakref.WeakMethod[Callable[[], list[dict[str, Any]]]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reset_state(forked=False)
        _triggers.track(self)

    def _reset_state(self, *, forked: bool) -> None:
        self._lock = threading.Lock()
        self._registry = HookRegistry()
        self._busy = BusyWork()
        self._state: State = "running"
        self.signalled = False  # a stop signal's handler ran: the stop's thread is on its way
        self._done = threading.Event()
        self._stop: Stop | None = None  # the stop under way, or the last one
        self._report: Report | None = None
        self._ending = Ending(forked=forked)

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
            self._dispatcher.start(self._app_mask, self._begin_from_dispatcher)
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
        self._excepthook.install()
        if settings.stop_on_thread_crash:
            _crashes.watch(self._on_thread_crash)
            self._watching_crashes = True
        else:
            self._unwatch_crashes()
        self._want_exit_stop()
        self._readiness.start_listener(settings)
        if loop is None and sys.modules.get("asyncio") is not None:
            from lastcall._asyncio import running_loop  # noqa: PLC0415  # asyncio is imported

            loop = running_loop()
        if loop is not None:
            self.use_loop(loop)
        return self

    def uninstall(self) -> None:
        """Give back the signal handlers and excepthook that were there before."""
        if self._handlers is not None:
            self._handlers.restore()
            self._handlers = None
        self._excepthook.uninstall()
        self._unwatch_crashes()

    def _unwatch_crashes(self) -> None:
        if self._watching_crashes:
            _crashes.unwatch()
            self._watching_crashes = False

    def _renew_if_gevent_patched(self) -> None:
        """Remake what greenlets wait on if gevent patched ``threading`` after we made it.

        ``monkey.patch_all()`` after ``import lastcall``: a greenlet waiting on
        one of the original Events or queues would block the whole hub.
        """
        if sys.modules.get("gevent.monkey") is None or isinstance(self._done, threading.Event):
            return
        if self._state == "running":
            self._done = threading.Event()
            self._dispatcher.renew_queue()
            self.stopping._renew()  # noqa: SLF001  # the token's owner renews it
        log.renew()

    # ------------------------------------------------------------ readiness

    @property
    def health_address(self) -> tuple[str, int] | None:
        """Where the health listener answers (``health_port=0`` picks a free port), or None."""
        return self._readiness.address

    def set_not_ready(self, reason: str) -> None:
        """Turn readiness off at run time; ``reason`` is shown in ``/readyz``.

        For a service shedding load or waiting for a lost dependency: the load
        balancer stops sending it traffic while it stays alive. A stop still
        wins: once it begins, ``/readyz`` says ``stopping`` whatever this says.
        """
        self._readiness.set_not_ready(reason)

    def set_ready(self) -> None:
        """Turn readiness back on after ``set_not_ready()``."""
        self._readiness.set_ready()

    def readiness(self) -> tuple[str, str | None]:
        """``("ready" | "starting" | "not_ready" | "stopping", reason)``: what ``/readyz`` says."""
        return self._readiness.state()

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
            self._registry.add(hook)
            self._want_exit_stop()
            return target

        # Validate options even when used as a decorator factory, so a typo
        # fails at the line that has it.
        make_hook(lambda: None, phase=phase, timeout=timeout, name=name, inherit=inherit)
        return register if func is None else register(func)

    def unregister(self, func: HookFunc) -> bool:
        """Remove every registration of ``func``; True if there was one."""
        return self._registry.remove(func)

    @property
    def hooks(self) -> tuple[Hook, ...]:
        return self._registry.all()

    def busy(self, name: str) -> Busy:
        """Mark work in progress that the ``drain`` phase waits for, as it waits for requests.

        ``with lastcall.busy("import"):``, ``async with ...``, or
        ``@lastcall.busy("nightly")`` on a function. The work should still
        watch ``stopping`` to wrap up; what is still busy when the drain's
        budget runs out is named in the report, with its stack.
        """
        return Busy(self._busy, name)

    # ------------------------------------------------------------ stopping

    def trigger(self, reason: str = "trigger() called") -> None:
        """Begin the stop from any thread; the process ends when it is done.

        From inside a hook the stop is already running: this returns at once.
        """
        if running_hook() is not None:
            logger.debug("trigger() from inside hook %s: the stop is already running", reason)
            return
        self._dispatcher.start(self._app_mask, self._begin_from_dispatcher)
        self._dispatcher.put("manual", reason, 0)

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
        stop = self._stop
        if running_hook() is not None and stop is not None:
            logger.debug("shutdown() from inside a hook: returning the report so far")
            return stop.report
        return self._wait_report()

    def when_done(self, callback: Callable[[Report], None]) -> None:
        """Call ``callback(report)`` once the stop is over, before the process ends.

        Runs on the thread that ran the stop. Like registering a hook, it
        makes a normal interpreter exit run the stop.
        """
        self._done_callbacks.append(callback)
        self._want_exit_stop()

    def time_left(self) -> float | None:
        """Seconds left of the grace period while a stop runs; None otherwise."""
        stop = self._stop
        if stop is None or self._state != "stopping":
            return None
        return stop.time_left()

    @property
    def report(self) -> Report | None:
        """The report of the stop, once it is done."""
        return self._report

    def _begin(self) -> bool:
        """``running -> stopping``, once: True for the one caller that gets to run the stop."""
        with self._lock:
            if self._state != "running":
                return False
            self._state = "stopping"
        self._busy.stop_began = True
        self.stopping._set()  # noqa: SLF001  # the token's owner sets it
        return True

    def _wait_report(self) -> Report:
        self._done.wait(self._settings.grace + MAIN_THREAD_GRACE)
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
        """Run the stop (``_stop``), then finish its report."""
        settings = self._settings
        if prestop_delay is not None:
            settings = settings.replace(prestop_delay=prestop_delay)
        stop = self._stop = Stop(
            self._registry, self._busy, settings, self._clock, trigger, reason, self._app_mask
        )
        for callback in self._stopping_callbacks:
            try:
                callback()
            except Exception as exc:
                log.log(logging.ERROR, "a when_stopping callback failed: %r", exc)
        report = stop.run(
            exit_status=exit_status,
            ends_process=ends_process,
            loop=self._hook_loop(),
            sleep=self._done.wait,
        )
        self._finish(report)
        return report

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

    def _finish(self, report: Report) -> None:
        """Write, record and log the report, then release anyone waiting.

        The file first: it is written whatever the log handlers are doing.
        """
        write_report(report, self._settings.report)
        self._report = report
        self._state = "done"  # no lock: this may run in a signal handler (see _force)
        report.log()
        for callback in self._done_callbacks:
            try:
                callback(report)
            except Exception as exc:
                log.log(logging.ERROR, "a when_done callback failed: %r", exc)
        if self._ending.plan is None and self._ending.under_way is None:
            # No one ends the process after this (shutdown(), an exit the
            # interpreter completes): the lines must be out before we return.
            log.flush(LOG_FLUSH_WAIT)
        self._done.set()

    # ------------------------------------------------------------ how a stop begins

    def _on_signal(self, signum: int) -> None:
        """Runs in the signal handler, on the main thread: no locks, no logging."""
        self.signalled = True  # first: a worker's gate reads it before the stop has begun
        self._ending.on_signal()
        if self._state == "stopping" and signum in self._force_signals:
            self._force(signum)
        self._dispatcher.put_signal(signum)

    def _begin_from_dispatcher(
        self, trigger: str, reason: str, status: int, die_by: int | None
    ) -> None:
        """On the dispatcher: a signal, ``trigger()`` or a crash; run the stop, end the process."""
        if self._settings.exit_code is not None and trigger != "exception":
            status, die_by = self._settings.exit_code, None  # a crash keeps its 1
        ending, plan = self._ending, (status, die_by)
        if die_by is not None:
            self._wait_main_out_of_handler()
        if self._begin():
            ending.plan = plan
            self._run(trigger, reason, exit_status=status, ends_process=True)
        else:
            self._done.wait(self._settings.grace + MAIN_THREAD_GRACE)
            if self._report is not None and self._report.trigger in ("exit", "exception"):
                return  # the interpreter is already ending on its own terms
            ending.plan = plan
        ending.from_dispatcher(plan, self._handlers, self._main_ident)

    def _wait_main_out_of_handler(self) -> None:
        """Begin a signal's stop once the main thread has left our handler (at most 1 s).

        A second Ctrl-C that lands while it is still inside (waiting for the GIL this
        thread holds, on a loaded machine) is not run until the main thread next runs
        bytecode (``SignalHandlers.main_in_handler``): the stop's first visible effects
        come after it left. It has almost always left already: this thread needed the
        GIL it held to get here.
        """
        handlers = self._handlers
        deadline = time.monotonic() + MAIN_THREAD_GRACE
        while handlers is not None and handlers.main_in_handler():
            if time.monotonic() >= deadline:
                return
            time.sleep(_HANDLER_POLL)

    def _on_thread_crash(self, reason: str) -> None:
        """``stop_on_thread_crash``: a thread that died of an exception stops the service.

        A background thread that crashed leaves a service serving half-broken;
        stopping lets the orchestrator start a whole one (as .NET's host does).
        """
        if self._state != "running":
            return
        self._dispatcher.start(self._app_mask, self._begin_from_dispatcher)
        self._dispatcher.put("exception", reason, 1)

    def _want_exit_stop(self) -> None:
        if self._run_at_exit and not self._exit_wanted:
            self._exit_wanted = True
            _triggers.register_exit_callbacks()

    def _at_exit(self, in_atexit: bool) -> None:
        """The interpreter is ending: run the stop, or wait for the one under way."""
        ending = self._ending
        if not self._exit_wanted or ending.main_ending or self._stood_aside:
            return  # on_main_thread is running the exit handlers, or none are ours
        ending.exit_funcs_ran = ending.exit_funcs_ran or in_atexit
        if ending.under_way is not None:
            # The dispatcher is ending the process and the main thread got here first
            # (the server's loop returned): end it as the stop asked, not with status 0.
            ending.on_main_thread()
        if self._begin():
            exception = self._excepthook.exception
            trigger = "exception" if exception else "exit"
            status = 1 if exception else None
            self._run(
                trigger, exception or "interpreter exiting", exit_status=status, ends_process=True
            )
            return
        self._done.wait(self._settings.grace + MAIN_THREAD_GRACE)
        if ending.plan is not None:  # a signal or trigger() began it: end as it asked
            ending.under_way = ending.plan
            ending.on_main_thread()

    def _stops_at_exit(self) -> bool:
        """Whether a normal interpreter exit would run this coordinator's stop."""
        return self._exit_wanted and not self._stood_aside

    def _stop_at_loop_end(self, error: BaseException | None) -> None:
        """The app's event loop is ending with no stop begun: run the one an exit would."""
        if not self._begin():
            return
        if error is None or isinstance(error, SystemExit):
            self._run("exit", "the event loop is ending", exit_status=None)
        else:
            self._run("exception", f"{type(error).__name__}: {error}", exit_status=1)

    def _force(self, signum: int) -> None:
        """A second Ctrl-C: say what is still running, write what we know, end now."""
        name = signal.Signals(signum).name
        stop = self._stop
        detail = stop.forced(name) if stop is not None else "nothing"
        log.log(
            logging.ERROR, "%s again during shutdown: exiting now; still running: %s", name, detail
        )
        self._ending.under_way = (128 + signum, signum)
        if stop is not None and self._report is None:
            report = stop.report
            report.busy = self._busy.in_progress()
            report.requests = self._requests_in_flight()
            report.forced = True
            report.exit_status = 128 + signum
            self._finish(report)
        self._ending.on_main_thread()

    def _requests_in_flight(self) -> list[dict[str, Any]]:
        listers = [ref() for ref in self._request_listers]
        return [request for lister in listers if lister is not None for request in lister()]

    def _after_fork_in_child(self) -> None:
        """A forked child keeps only the hooks registered with ``inherit=True``."""
        inherited = self._registry.inherited()
        self._reset_state(forked=True)
        self._stopping_callbacks = []  # what the parent's stop notes is the parent's
        self._dispatcher.after_fork()
        self._excepthook.exception = None
        for hook in inherited:
            self._registry.add(hook)
        self._loop = None  # the parent's loop is not running here
        self._readiness.after_fork()
        self.stopping._renew()  # noqa: SLF001
        if self._handlers is not None and _triggers.one_job_forks_of is None:
            self._main_ident = main_thread_ident()  # the forking thread is the child's only one
            try:
                self._dispatcher.start(self._app_mask, self._begin_from_dispatcher)
                log.start()
            except RuntimeError as exc:  # no thread to be had: say so, the parent's stop is safe
                log.log(logging.ERROR, "a forked child could not start lastcall's threads: %s", exc)
