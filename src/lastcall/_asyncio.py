"""asyncio apps: async hooks on the app's own loop, and that loop kept alive for them.

Imported only where asyncio is in play (``use_loop``, an async hook when it
is registered, so that the stop imports nothing), so ``import lastcall``
never imports asyncio.

An async hook that closes a connection made on the app's loop must run on
that loop, and the stop usually runs on another thread (the dispatcher).
The hard case is ``asyncio.run()`` (``uvloop.run()``, ``asyncio.Runner``):
when the main coroutine returns (often right after ``await
lastcall.stopping``), the runner cancels every task, runs the loop until
they have finished, and closes it, while the hooks still want to run on it.

What is chosen, and why:

* **A guard task** on the loop (:class:`_Guard`). The runner's teardown
  (``_cancel_all_tasks``) calls ``cancel()`` on every task while the loop
  is stopped, then runs the loop until each has finished. The guard refuses
  that cancellation while a stop runs, so the teardown keeps the loop
  running until the stop is done (bounded: what is left of the grace plus
  a second). If no stop has begun, the loop ending is the app ending
  normally: the guard begins the stop there, on a thread of its own, as a
  normal exit would, so async hooks still run on the app's loop before it
  closes; the process then exits as it would have (status 0). A
  cancellation while the loop runs is the app cancelling its own tasks,
  not the loop ending: the guard accepts it (unless a stop runs).
  Other designs were weighed: an async generator finalised by
  ``shutdown_asyncgens`` comes after the cancel sweep, too late for hooks
  in flight; wrapping the main coroutine needs the app's co-operation.
* **Hook tasks that the teardown cannot cancel** (:class:`_HookTask`): a
  hook in flight when the runner cancels every task would be cancelled in
  the middle of closing its connection. The teardown's ``cancel()`` (loop
  stopped) and other tasks' are refused; the hook's own timeout and what
  the hook itself does (``asyncio.timeout``, a ``TaskGroup``) still cancel
  it. The teardown then waits for it, as it waits for the guard. Tasks the
  hook starts (``gather``, ``wait_for`` before 3.12) are hook tasks too,
  through a task factory set on the loop when the app has none (an app's
  own factory is left alone, and the tasks it makes are ordinary).
* A hook is sent to the loop while it runs, or while the guard lives (the
  runner stops the loop for a moment between the main coroutine and the
  cancel sweep). If the loop is closed, or stays stopped, before the hook
  began there, it runs on a loop of its own instead, as before.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sys
import threading
import time

from lastcall._stoptoken import resolve_future

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see _hooks)
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine
    from typing import Any, Literal, Protocol

    class _Settings(Protocol):
        @property
        def grace(self) -> float: ...

    class Coordinator(Protocol):  # what the guard asks of the coordinator of its loop
        @property
        def state(self) -> Literal["running", "stopping", "done"]: ...
        @property
        def settings(self) -> _Settings: ...
        @property
        def report(self) -> object | None: ...
        def when_done(self, callback: Callable[[Any], None]) -> None: ...
        def time_left(self) -> float | None: ...
        def _stops_at_exit(self) -> bool: ...
        def _stop_at_loop_end(self, error: BaseException | None) -> None: ...


_TEARDOWN_MARGIN = 1.0  # seconds the guard holds the loop past the grace at most
_POLL = 0.05  # how often a thread waiting for a hook checks that the loop still runs
_STOPPED_POLLS = 2  # polls in a row the loop may be stopped before the hook goes elsewhere

_guards: dict[int, _Guard] = {}  # id(loop) -> its guard, while it lives (it holds the loop)


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The loop running on this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def guard_loop(coordinator: Coordinator, loop: asyncio.AbstractEventLoop | None) -> None:
    """Keep a guard on ``loop`` (once per loop); release guards on any other loop."""
    for other_id, guard in list(_guards.items()):
        if guard.get_loop() is not loop and guard.coordinator is coordinator:
            del _guards[other_id]
            guard.release()
    if loop is None or loop.is_closed() or id(loop) in _guards:
        return
    if running_loop() is loop:
        _start_guard(coordinator, loop)
    else:  # another thread's loop, or one not running yet: start it when the loop runs
        loop.call_soon_threadsafe(_start_guard, coordinator, loop)


def _start_guard(coordinator: Coordinator, loop: asyncio.AbstractEventLoop) -> None:
    if id(loop) in _guards:
        return
    finished: asyncio.Future[None] = loop.create_future()
    guard = _Guard(_hold(finished), loop, coordinator, finished)
    _guards[id(loop)] = guard
    guard.add_done_callback(lambda _: _forget(loop, guard))


def _forget(loop: asyncio.AbstractEventLoop, guard: _Guard) -> None:
    if _guards.get(id(loop)) is guard:
        del _guards[id(loop)]


async def _hold(finished: asyncio.Future[None]) -> None:
    await finished


class _Guard(asyncio.Task[None]):
    """Pending while the app runs; holds the loop open through the runner's teardown."""

    def __init__(
        self,
        coro: Coroutine[Any, Any, None],
        loop: asyncio.AbstractEventLoop,
        coordinator: Coordinator,
        finished: asyncio.Future[None],
    ) -> None:
        self.coordinator = coordinator
        self._finished = finished
        self._released = False
        self._holding = False
        super().__init__(coro, loop=loop)
        # A loop closed without asyncio.run's teardown drops the guard: say nothing
        # (Lib/asyncio/tasks.py: Task.__del__ logs a pending task unless this is false).
        self._log_destroy_pending = False

    def release(self) -> None:
        """The loop is no longer the coordinator's: let the guard end (any thread)."""
        self._released = True
        with contextlib.suppress(RuntimeError):  # the loop is closed already
            self.get_loop().call_soon_threadsafe(resolve_future, self._finished)

    def cancel(self, msg: Any | None = None) -> bool:  # noqa: ANN401  # as asyncio.Task
        coordinator = self.coordinator
        state = coordinator.state
        if self._released or state == "done":
            return super().cancel(msg)
        loop = self.get_loop()
        if state == "running":
            if loop.is_running() or not coordinator._stops_at_exit():  # noqa: SLF001
                return super().cancel(msg)  # the app cancelling tasks, not the loop ending
            # The teardown runs in asyncio.run's finally: an error from the main
            # coroutine is the exception being handled (as _excepthook would see it).
            error = sys.exc_info()[1]
            threading.Thread(
                target=coordinator._stop_at_loop_end,  # noqa: SLF001
                args=(error,),
                name="lastcall-loop-end",
                daemon=True,
            ).start()
        if not self._holding:  # refused: end once the stop is done, or in time regardless
            self._holding = True
            coordinator.when_done(lambda _: self.release())
            if coordinator.report is not None:  # done before the callback was in place
                self.release()
            left = coordinator.time_left()
            bound = (coordinator.settings.grace if left is None else left) + _TEARDOWN_MARGIN
            loop.call_later(bound, resolve_future, self._finished)
        return False


class _HookTask(asyncio.Task[object]):
    """An async hook on the app's loop, or a task it started: the teardown spares it.

    Refused: a cancellation while the loop is stopped (``asyncio.run``'s
    teardown) or from a task that is not a hook's (an app cancelling every
    task). Allowed: the hook's timeout, and what the hook does itself:
    ``asyncio.timeout`` and ``wait_for`` cancel from a timer callback or
    from inside the hook, a ``TaskGroup`` from a done callback or inside.
    """

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any],
        loop: asyncio.AbstractEventLoop,
        **options: Any,  # noqa: ANN401  # as loop.create_task passes them
    ) -> None:
        self.timed_out = False
        super().__init__(coro, loop=loop, **options)

    def cancel(self, msg: Any | None = None) -> bool:  # noqa: ANN401  # as asyncio.Task
        loop = self.get_loop()
        if not loop.is_running():
            return False  # the runner's teardown
        current = asyncio.current_task(loop)
        if current is not None and not isinstance(current, _HookTask):
            return False  # another task cancelling every task
        return super().cancel(msg)

    def time_out(self) -> None:
        if not self.done():
            self.timed_out = True
            super().cancel()


def _task_factory(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, Any],
    /,
    **options: Any,  # noqa: ANN401  # as loop.create_task passes them
) -> asyncio.Task[Any]:
    """Tasks started from inside a hook are hook tasks too; others as without a factory."""
    if isinstance(asyncio.current_task(loop), _HookTask):
        return _HookTask(coro, loop, **options)
    return asyncio.Task(coro, loop=loop, **options)


def _after_fork_in_child() -> None:
    _guards.clear()  # the parent's loops: not running here


os.register_at_fork(after_in_child=_after_fork_in_child)


def loop_usable(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether an async hook should be sent to ``loop`` (see the module's note)."""
    guard = _guards.get(id(loop))
    guarded = guard is not None and guard.get_loop() is loop and not guard.done()
    return not loop.is_closed() and (loop.is_running() or guarded)


def run_on_loop(
    func: Callable[[], Awaitable[object]], timeout: float, loop: asyncio.AbstractEventLoop
) -> None:
    """Run the async hook ``func`` on ``loop`` from another thread, within ``timeout``.

    Raises ``asyncio.TimeoutError`` if it was cancelled for time, or what the
    hook raised.
    """
    if not loop_usable(loop):
        asyncio.run(asyncio.wait_for(_call(func), timeout))
        return
    result: concurrent.futures.Future[None] = concurrent.futures.Future()
    claim = threading.Lock()  # held by whoever runs the hook: the loop, or this thread

    def start() -> None:
        if not claim.acquire(blocking=False):
            return  # the waiting thread gave up on this loop and runs the hook itself
        if loop.get_task_factory() is None:  # the app set none: the hook's own tasks too
            loop.set_task_factory(_task_factory)  # type: ignore[arg-type]  # typeshed's is generic
        task = _HookTask(_call(func), loop)
        timer = loop.call_later(timeout, task.time_out)
        task.add_done_callback(lambda done: _settle(done, timer, result))

    began = time.monotonic()
    with contextlib.suppress(RuntimeError):  # closed meanwhile: _wait sees it
        loop.call_soon_threadsafe(start)
    if _wait(result, claim, loop, began + timeout + _TEARDOWN_MARGIN):
        result.result()
    else:
        left = max(began + timeout - time.monotonic(), 0.001)
        asyncio.run(asyncio.wait_for(_call(func), left))


def _wait(
    result: concurrent.futures.Future[None],
    claim: threading.Lock,
    loop: asyncio.AbstractEventLoop,
    deadline: float,
) -> bool:
    """Wait for the hook sent to ``loop``: True once it ended there, False to run it here."""
    stopped = 0
    while not result.done():
        if claim.locked():  # begun on the loop: its own timeout cancels it there
            if time.monotonic() > deadline:
                raise asyncio.TimeoutError  # the loop stopped with the hook on it
        else:
            stopped = 0 if loop.is_running() else stopped + 1
            given_up = loop.is_closed() or stopped >= _STOPPED_POLLS
            if (given_up or time.monotonic() > deadline) and claim.acquire(blocking=False):
                return False  # the loop never began it
        concurrent.futures.wait([result], _POLL)
    return True


def _settle(
    task: _HookTask, timer: asyncio.TimerHandle, result: concurrent.futures.Future[None]
) -> None:
    timer.cancel()
    loop = task.get_loop()
    if loop.get_task_factory() is _task_factory:
        loop.set_task_factory(None)  # the loop goes on as the app left it
    if task.cancelled():
        result.set_exception(asyncio.TimeoutError() if task.timed_out else asyncio.CancelledError())
    elif (error := task.exception()) is not None:
        result.set_exception(error)
    else:
        result.set_result(None)


async def _call(func: Callable[[], Awaitable[object]]) -> None:
    await func()
