"""Borrowing signal handlers, chaining to the ones we found, and giving them back.

The handler only records: it hands the signal number to a callback that
must not block or take locks (the coordinator puts it on a SimpleQueue),
because a Python signal handler runs on the main thread between two
bytecodes of whatever that thread was doing, possibly while it holds one
of our locks.

What we find installed is respected: a signal that was ignored when we
arrived (``nohup``, a shell's background job ignoring SIGINT) stays
ignored unless the caller overrides it, and a Python-level handler a
framework installed before us is still called after ours.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType

Handler = Callable[[int, FrameType | None], object] | int | None


class SignalHandlers:
    """Our handlers for a set of signals, and what they replaced."""

    def __init__(self, on_signal: Callable[[int], bool]) -> None:
        # on_signal returns False when the previous handler must not be called
        # (the delivery was lastcall's own wake-up, not a signal from outside).
        self._on_signal = on_signal
        self._previous: dict[signal.Signals, Handler] = {}
        self.left_ignored: tuple[signal.Signals, ...] = ()

    @property
    def handled(self) -> tuple[signal.Signals, ...]:
        return tuple(self._previous)

    def install(self, signals: Iterable[signal.Signals], *, override_ignored: bool) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "lastcall.install() must be called from the main thread, because Python "
                "only lets the main thread set signal handlers; call it at start-up"
            )
        ignored = []
        for sig in signals:
            current = signal.getsignal(sig)
            if current == self._handle:
                continue
            if current == signal.SIG_IGN and not override_ignored:
                ignored.append(sig)
                continue
            self._previous[sig] = current
            signal.signal(sig, self._handle)
        self.left_ignored = tuple(ignored)

    def restore(self) -> None:
        """Put back what was there before; main thread only."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self._on_signal(signum):
            return
        previous = self._previous.get(signal.Signals(signum))
        # Python's own SIGINT handler would raise KeyboardInterrupt in the
        # middle of the drain: that is exactly what lastcall replaces. So is
        # asyncio.run's, which cancels the main task and closes the loop.
        if (
            callable(previous)
            and previous is not signal.default_int_handler
            and not _is_asyncio_interrupt(previous)
        ):
            previous(signum, frame)


def _is_asyncio_interrupt(handler: Callable[..., object]) -> bool:
    """Whether ``handler`` is the SIGINT handler ``asyncio.Runner.run`` installs."""
    func = getattr(handler, "func", None)  # a functools.partial of Runner._on_sigint
    return getattr(func, "__qualname__", None) == "Runner._on_sigint"
