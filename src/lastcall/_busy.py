"""Work in progress that the drain waits for: ``lastcall.busy(name)``.

A request is not the only work a stop must not cut off: a thread importing a
file, a queue consumer, a batch job. Marked with ``busy``, the ``drain``
phase waits for them as it waits for requests, within the same budget, and
names what is still busy at the end, with where it was (its stack).

Entering and leaving costs a set add and a set remove, and two clock reads
(about 1.4 times a bare ``with nullcontext()``: ``benchmarks/core.py``):
no lock, because each block is its own member and CPython's set operations
are atomic; no counter, because the block is the key. Nothing is collected
unless the drain ends with work still busy.

A block can also end because the stop cut it off: ``asyncio.run`` cancels
every task left when ``main`` returns (the ``await lastcall.stopping``
pattern), so a busy task is gone before the drain could wait for it. An
``async with`` block that ends in ``CancelledError`` once the stop has
begun is noted in ``cancelled``, and the report names it.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
import traceback

from lastcall._hooks import is_coroutine_function

_monotonic = time.monotonic
_get_ident = threading.get_ident

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see _hooks)
if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable
    from types import TracebackType
    from typing import Any, TypeVar

    F = TypeVar("F", bound=Callable[..., Any])


class BusyWork:
    """The blocks in progress, and a way to wait until there are none."""

    def __init__(self) -> None:
        self.blocks: set[Busy] = set()
        self._idle = threading.Condition()
        self.waiting = False  # someone waits in wait_idle(): leaving must notify
        self.stop_began = False  # set by the coordinator: a cancellation now is the stop's doing
        # Blocks the stop cut off (name, seconds, where): list.append is atomic, no lock.
        self.cancelled: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.blocks)

    def notify_idle(self) -> None:
        with self._idle:
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no block is in progress, at most ``timeout`` seconds; True if none is."""
        deadline = time.monotonic() + timeout
        with self._idle:
            self.waiting = True
            try:
                while self.blocks:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._idle.wait(min(left, 0.1))  # a leave racing our check is seen soon
            finally:
                self.waiting = False
        return True

    def in_progress(self) -> list[dict[str, Any]]:
        """What is still busy: name, seconds so far, and the stack where it is, innermost last."""
        frames = sys._current_frames()  # noqa: SLF001  # the documented way to see other threads
        now = time.monotonic()
        busy = []
        for block in list(self.blocks):
            task = block.task
            if task is not None:
                stack = "".join(traceback.format_list(_task_frames(task)))
            elif block.thread in frames:
                stack = "".join(traceback.format_stack(frames[block.thread]))
            else:
                stack = None
            seconds = round(now - block.began, 3)
            busy.append({"name": block.name, "seconds": seconds, "stack": stack})
        return busy


def _task_frames(task: asyncio.Task[Any]) -> traceback.StackSummary:
    return traceback.StackSummary.extract((f, f.f_lineno) for f in task.get_stack())


class Busy:
    """``with``, ``async with`` or a decorator: the work inside holds the drain until it ends.

    One block at a time per ``Busy``: ``busy()`` makes a new one each call.
    """

    __slots__ = ("_work", "began", "name", "task", "thread")

    def __init__(self, work: BusyWork, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"busy() needs a name for the work, like busy('import'), not {name!r}")
        self._work = work
        self.name = name
        self.task: asyncio.Task[Any] | None = None

    def __enter__(self) -> Busy:  # noqa: PYI034  # no subclasses: Self would need typing
        self.began = _monotonic()
        self.thread = _get_ident()
        self._work.blocks.add(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        work = self._work
        work.blocks.discard(self)
        if work.waiting and not work.blocks:
            work.notify_idle()

    async def __aenter__(self) -> Busy:  # noqa: PYI034
        import asyncio  # noqa: PLC0415  # already imported: we are in a coroutine

        self.task = asyncio.current_task()
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Noted before the block leaves, so a drain that sees it leave sees why.
        if exc_type is not None and self._work.stop_began and exc_type.__name__ == "CancelledError":
            self._work.cancelled.append(
                {
                    "name": self.name,
                    "seconds": round(_monotonic() - self.began, 3),
                    "stack": "".join(traceback.format_tb(tb)) or None,
                    "cancelled": True,
                }
            )
        self.__exit__(exc_type, exc, tb)

    def __call__(self, func: F) -> F:
        """As a decorator: each call of ``func`` is a busy block of its own."""
        work, name = self._work, self.name
        if is_coroutine_function(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
                async with Busy(work, name):
                    return await func(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
            with Busy(work, name):
                return func(*args, **kwargs)

        return run  # type: ignore[return-value]
