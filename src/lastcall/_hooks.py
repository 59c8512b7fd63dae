"""Hook records, phases, and running a hook with a time limit.

A sync hook cannot be interrupted from outside, so each one runs on a
runner thread while the coordinator waits with a timeout. When a hook
overruns, its runner is abandoned (a daemon thread, so it never holds the
process open) and the next hook gets a fresh runner. Reusing one runner
for hooks that finish keeps 1,000 no-op hooks well under a millisecond
each, where a thread per hook would not.

``import lastcall`` stays cheap (a budget of 15 ms): asyncio is imported
only when an async hook runs, the records are plain slotted classes rather
than dataclasses (which pull in ``inspect``), and no module on that path
imports ``typing`` at run time (4 ms with the ``re`` it needs): each names
``TYPE_CHECKING = False`` itself, which type checkers read as true.
"""

from __future__ import annotations

import functools
import math
import queue
import threading
import traceback

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
    seconds = float(value)
    if math.isnan(seconds) or seconds <= 0:
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
    return seconds


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

    __slots__ = ("error", "hook", "outcome")

    def __init__(self, hook: Hook, outcome: Outcome, error: str | None = None) -> None:
        self.hook = hook
        self.outcome: Outcome = outcome
        self.error = error


def call_hook(
    hook: Hook, timeout: float, loop: asyncio.AbstractEventLoop | None = None
) -> Finished:
    """Run one hook to completion on the current thread.

    Any BaseException is caught: a hook that calls ``sys.exit`` must not end
    the shutdown. Async hooks are cancelled after ``timeout``; they run on
    ``loop`` when one is given and still running (a server's own loop, so
    they can close clients bound to it), else on an event loop of their own.
    """
    try:
        if hook.is_async:
            import asyncio  # noqa: PLC0415  # only when needed: it is slow to import

            bounded = asyncio.wait_for(_await(hook.func), timeout)
            try:
                if loop is not None and loop.is_running() and not loop.is_closed():
                    asyncio.run_coroutine_threadsafe(bounded, loop).result()
                else:
                    asyncio.run(bounded)
            except asyncio.TimeoutError:
                return Finished(hook, "timeout", f"cancelled after {timeout:.3g} s")
        else:
            hook.func()
    except SystemExit as exc:
        return Finished(hook, "error", f"hook called sys.exit({exc.code!r}); the rest still ran")
    except BaseException:
        return Finished(hook, "error", traceback.format_exc().rstrip())
    return Finished(hook, "ok")


async def _await(func: HookFunc) -> None:
    """Call an async hook where it will run: on the loop, not on the submitting thread."""
    await func()


class Runner:
    """A daemon thread that runs hooks handed to it, one at a time."""

    def __init__(
        self, done: Callable[[Finished], None], loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self._done = done
        self._event_loop = loop
        self._inbox: queue.SimpleQueue[tuple[Hook, float] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="lastcall-hook", daemon=True)
        self._thread.start()

    def submit(self, hook: Hook, timeout: float) -> None:
        self._inbox.put((hook, timeout))

    def close(self) -> None:
        """Let the thread end after its current hook; never waits for it."""
        self._inbox.put(None)

    def _loop(self) -> None:
        while (job := self._inbox.get()) is not None:
            hook, timeout = job
            self._done(call_hook(hook, timeout, self._event_loop))
