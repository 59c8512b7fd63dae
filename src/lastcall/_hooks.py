"""Hook records, phases, and running a hook with a time limit.

A sync hook cannot be interrupted from outside, so the hooks run on a
runner thread while the coordinator watches the clock. When a hook
overruns, its runner is abandoned (a daemon thread, so it never holds the
process open) and a fresh runner takes the hooks after it. The runner does
not hand each hook back and forth, so 1,000 no-op hooks take about a
millisecond in all.

``import lastcall`` stays cheap (a budget of 15 ms): asyncio is imported
only when an async hook runs, the records are plain slotted classes rather
than dataclasses (which pull in ``inspect``), and no module on that path
imports ``typing`` at run time (4 ms with the ``re`` it needs): each names
``TYPE_CHECKING = False`` itself, which type checkers read as true.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
import traceback

from lastcall._config import check_seconds

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: see above
if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable
    from typing import Any, Literal, TypeAlias

    Phase: TypeAlias = Literal["pre_stop", "drain", "workers", "cleanup", "final"]
    Outcome: TypeAlias = Literal["ok", "error", "timeout", "skipped"]
    HookFunc: TypeAlias = Callable[[], Any]
else:
    Phase = Outcome = str

PHASES: tuple[Phase, ...] = ("pre_stop", "drain", "workers", "cleanup", "final")
# Async hooks are cancelled a little before the coordinator gives up on them,
# so the cancellation is what gets recorded.
ASYNC_CANCEL_MARGIN = 0.05
_STARTING_POLL = 0.005  # the watcher's look between two hooks (rarely needed: see Runner)
_WAKE_SLACK = 0.001  # a hook due this much sooner than the watcher's next look wakes it
_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE, without importing inspect


class Hook:
    """One registered shutdown callable and the rules it runs under."""

    __slots__ = ("func", "inherit", "is_async", "name", "phase", "timeout")

    def __init__(
        self,
        func: HookFunc,
        name: str,
        phase: Phase,
        timeout: float | None,
        inherit: bool,
    ) -> None:
        self.func = func
        self.name = name
        self.phase: Phase = phase
        self.timeout = timeout
        self.inherit = inherit
        self.is_async = is_coroutine_function(func)

    def __repr__(self) -> str:
        return f"<Hook {self.name} phase={self.phase} timeout={self.timeout}>"


def is_coroutine_function(func: object) -> bool:
    """``inspect.iscoroutinefunction``, seeing through partials, methods and instances."""
    while isinstance(func, functools.partial):
        func = func.func
    func = getattr(func, "__func__", func)
    code = getattr(func, "__code__", None)
    if code is None:
        call = getattr(type(func), "__call__", None)  # noqa: B004  # its code, not callability
        code = getattr(call, "__code__", None)
    return bool(code is not None and code.co_flags & _CO_COROUTINE)


def check_timeout(value: object, what: str) -> float | None:
    """Return a valid timeout in seconds, or raise naming what was wrong."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    return check_seconds(float(value), what)


def make_hook(
    func: object,
    *,
    phase: str,
    timeout: object,
    name: str | None,
    inherit: bool,
) -> Hook:
    """Validate registration arguments and build the hook record."""
    if not callable(func):
        raise TypeError(f"on_shutdown() needs a callable, got {type(func).__name__}: {func!r}")
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; choose one of {', '.join(PHASES)}")
    return Hook(
        func,
        name or describe(func),
        phase,
        check_timeout(timeout, "timeout"),
        bool(inherit),
    )


def describe(func: object) -> str:
    """A readable name for a callable: module.qualname where available."""
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None) or repr(func)
    return f"{module}.{qualname}" if module and module != "__main__" else qualname


class Finished:
    """What a runner reports back once a hook returns, raises or is cancelled."""

    __slots__ = ("error", "hook", "outcome", "stack")

    def __init__(
        self,
        hook: Hook,
        outcome: Outcome,
        error: str | None = None,
        stack: str | None = None,
    ) -> None:
        self.hook = hook
        self.outcome: Outcome = outcome
        self.error = error
        self.stack = stack  # where an overrunning hook was, innermost frame last


def call_hook(
    hook: Hook, timeout: float, loop: asyncio.AbstractEventLoop | None = None
) -> Finished:
    """Run one hook to completion on the current thread.

    Any BaseException is caught: a hook that calls ``sys.exit`` must not end
    the shutdown. Async hooks are cancelled after ``timeout``; they run on
    ``loop`` when one is given and still running (a server's own loop, so
    they can close clients bound to it), else on an event loop of their own.
    """
    _running.hook = hook
    try:
        if hook.is_async:
            import asyncio  # noqa: PLC0415  # only when needed: it is slow to import

            try:
                if loop is not None:
                    from lastcall._asyncio import run_on_loop  # noqa: PLC0415  # as asyncio

                    run_on_loop(hook.func, timeout, loop)
                else:
                    asyncio.run(asyncio.wait_for(_await(hook.func), timeout))
            except asyncio.TimeoutError:
                return Finished(hook, "timeout", f"cancelled after {timeout:.3g} s")
        else:
            hook.func()
    except SystemExit as exc:
        return Finished(hook, "error", f"hook called sys.exit({exc.code!r}); the rest still ran")
    except BaseException:
        return Finished(hook, "error", traceback.format_exc().rstrip())
    finally:
        _running.hook = None
    return Finished(hook, "ok")


_running = threading.local()  # .hook: the hook this thread is running, if any


def running_hook() -> Hook | None:
    """The hook the calling thread is running: a stop asked for from inside one is not waited on."""
    return getattr(_running, "hook", None)


async def _await(func: HookFunc) -> None:
    """Call an async hook where it will run: on the loop, not on the submitting thread."""
    await func()


class Runner:
    """Runs one phase's hooks back to back on a daemon thread, while the coordinator watches.

    The runner only notes which hook it is on and when that began; the
    coordinator sleeps until that hook's time is up and is woken once, when
    the last one is done. (Handing hooks over one by one cost two thread
    wake-ups each, tens of microseconds.) If the current hook is still the
    same when its time is up, the coordinator abandons it with this runner
    and starts a new runner for the rest.
    """

    def __init__(
        self,
        hooks: list[Hook],
        budget: Callable[[Hook], float],
        clock: Callable[[], float],
        loop: asyncio.AbstractEventLoop | None = None,
        mask: set[int | signal.Signals] | None = None,
    ) -> None:
        self.hooks = hooks
        self.results: list[tuple[Finished, float]] = []  # (how it went, seconds), in order
        self.current: tuple[int, float, float] | None = None  # index, began (monotonic), budget
        self._budget = budget
        self._clock = clock
        self._event_loop = loop
        self._cond = threading.Condition()
        self._done = False
        self._abandoned = False
        self._watch_until = 0.0  # when the watcher next looks (monotonic)
        self._pid = os.getpid()
        self._ident: int | None = None  # the thread running the hooks
        # The app's signal mask, for the hooks' thread and what they start (a subprocess
        # inherits it): the dispatcher that starts the thread has every signal blocked.
        self._mask = mask

    def start(self) -> None:
        """Start running the hooks.

        Not in ``__init__``: the coordinator makes this its current runner
        first, so a second Ctrl-C that lands once a hook has begun finds it.
        """
        thread = threading.Thread(
            target=self._run_on_own_thread, name="lastcall-hooks", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:
            # CPython 3.12.0/3.12.1 start no thread at interpreter shutdown: run
            # the hooks here, unwatched; the watchdog still bounds the stop.
            self._run()

    def stack(self) -> str | None:
        """Where the runner's thread is now, as a traceback prints it; None if it cannot be seen.

        Only asked for once a hook overran, so a stop that goes well costs nothing.
        (A gevent greenlet is not an OS thread: its frames are not in the list.)
        """
        frame = sys._current_frames().get(self._ident or 0)  # noqa: SLF001  # other threads' frames
        return "".join(traceback.format_stack(frame)) if frame is not None else None

    def _run_on_own_thread(self) -> None:
        if self._mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)
        self._run()

    def _run(self) -> None:
        self._ident = threading.get_ident()
        for index, hook in enumerate(self.hooks):
            budget = self._budget(hook)
            if budget <= 0:
                result: tuple[Finished, float] = (Finished(hook, "skipped"), 0.0)
            else:
                began = self._clock()
                now = time.monotonic()
                self.current = (index, now, budget)
                if now + budget < self._watch_until - _WAKE_SLACK:
                    with self._cond:  # due before the watcher would look: tell it now
                        self._cond.notify_all()
                inner = max(budget - ASYNC_CANCEL_MARGIN, 0.001) if hook.is_async else budget
                finished = call_hook(hook, inner, self._event_loop)
                if os.getpid() != self._pid:
                    # The hook forked and its child returned here: the rest of the
                    # phase belongs to the parent. End the child as fork() users expect.
                    os._exit(0)
                result = (finished, self._clock() - began)
            with self._cond:
                if self._abandoned:
                    return  # the coordinator has recorded this hook as timed out
                self.results.append(result)
        with self._cond:
            self.current = None
            self._done = True
            self._cond.notify_all()

    def watch(self) -> int | None:
        """Wait until every hook is done (None), or one overruns: abandon it, return its index."""
        with self._cond:
            while not self._done:
                current = self.current
                if current is None or current[0] < len(self.results):
                    self._cond.wait(_STARTING_POLL)  # between two hooks, or not begun yet
                    continue
                index, began, budget = current
                left = began + budget - time.monotonic()
                if left > 0:
                    self._watch_until = began + budget
                    self._cond.wait(left)
                    continue
                self._abandoned = True
                return index
        return None
