"""Borrowing signal handlers, chaining to the ones we found, and giving them back.

The handler only records: it hands the signal number to a callback that
must not block or take locks (the coordinator puts it on a SimpleQueue),
because a Python signal handler runs on the main thread between two
bytecodes of whatever that thread was doing, possibly while it holds one
of our locks.

What we find installed is respected: a signal that was ignored when we
arrived (``nohup``, a shell's background job ignoring SIGINT) stays
ignored unless the caller overrides it (and a line says so), and a
Python-level handler a framework installed before us is still called after
ours.

Installing again (new settings, or taking back handlers a framework
replaced) never puts the old handler back first: a signal arriving in
between would find the default action and kill the process with no stop.
"""

from __future__ import annotations

import _thread
import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import FrameType

from lastcall._log import logger

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see _hooks)
if TYPE_CHECKING:
    from typing import NoReturn

Handler = Callable[[int, FrameType | None], object] | int | None

# What to do instead of install() on a thread a server runs the app on, by
# the thread's name; filled in by the server adapters (the core names none).
OFF_MAIN_HINTS: dict[str, str] = {}


def main_thread_ident() -> int:
    """The calling thread's pthread id, for ``signal.pthread_kill``; call it on the main thread.

    gevent's ``monkey.patch_all()`` makes ``threading`` report greenlet ids,
    which ``pthread_kill`` rejects (ProcessLookupError): ask the original.
    """
    get_ident = _thread.get_ident
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("_thread"):
        get_ident = monkey.get_original("_thread", "get_ident")
    return int(get_ident())


class SignalHandlers:
    """Our handlers for a set of signals, and what they replaced."""

    def __init__(self, on_signal: Callable[[int], None]) -> None:
        self._on_signal = on_signal
        self._previous: dict[signal.Signals, Handler] = {}
        self.left_ignored: tuple[signal.Signals, ...] = ()
        # How many of our handlers the main thread is inside (they nest): see main_in_handler.
        self._depth = 0

    @property
    def handled(self) -> tuple[signal.Signals, ...]:
        return tuple(self._previous)

    @staticmethod
    def check_main_thread() -> None:
        """RuntimeError, naming what to do instead, unless this is the main thread."""
        thread = threading.current_thread()
        if thread is not threading.main_thread():
            hint = OFF_MAIN_HINTS.get(thread.name, "call it at start-up")
            raise RuntimeError(
                "lastcall.install() must be called from the main thread, because Python "
                f"only lets the main thread set signal handlers (this is {thread.name!r}); {hint}"
            )

    def install(self, signals: Iterable[signal.Signals], *, override_ignored: bool) -> None:
        """Handle ``signals``: ours stays where it is, others' are replaced, the rest given back."""
        self.check_main_thread()
        wanted = tuple(signals)
        for sig in [s for s in self._previous if s not in wanted]:
            self._give_back(sig)
        ignored = []
        for sig in wanted:
            current = signal.getsignal(sig)
            if current == self._handle:
                continue
            if sig not in self._previous:  # new to us (else a framework replaced ours)
                if current == signal.SIG_IGN and not override_ignored:
                    ignored.append(sig)
                    continue
                self._previous[sig] = current
            signal.signal(sig, self._handle)
        for sig in ignored:
            # A shell's background job ignores SIGINT as a matter of course; say so
            # quietly there, and out loud for a signal an orchestrator sends.
            level = logging.INFO if sig == signal.SIGINT else logging.WARNING
            logger.log(
                level,
                "%s is ignored in this process (nohup, a background job); lastcall leaves it "
                "ignored: pass override_ignored=True to handle it",
                sig.name,
            )
        self.left_ignored = tuple(ignored)

    def ours(self, sig: int) -> bool:
        """Whether lastcall's handler is still the one for ``sig``.

        A server may have put back what it found, as uvicorn does when ``serve`` returns.
        """
        return bool(signal.getsignal(sig) == self._handle)

    def restore(self) -> None:
        """Put back what was there before; main thread only."""
        for sig in list(self._previous):
            self._give_back(sig)

    def _give_back(self, sig: signal.Signals) -> None:
        previous = self._previous.pop(sig)
        signal.signal(sig, previous if previous is not None else signal.SIG_DFL)

    def main_in_handler(self) -> bool:
        """Whether the main thread is still inside our handler.

        A signal that arrives while it is, after the handler's last bytecode check,
        is only run once the main thread next runs bytecode: after a ``sleep(60)``
        it returns to, or never, in a C call that does not return. Python's loop
        over the pending handlers has already passed that signal's number.
        """
        return self._depth > 0

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._depth += 1  # plain attribute stores: a handler takes no lock
        try:
            self._on_signal(signum)
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
        finally:
            self._depth -= 1


def _is_asyncio_interrupt(handler: Callable[..., object]) -> bool:
    """Whether ``handler`` is the SIGINT handler ``asyncio.Runner.run`` installs."""
    # Lib/asyncio/runners.py: Runner.run installs functools.partial(self._on_sigint, ...)
    func = getattr(handler, "func", None)
    return getattr(func, "__qualname__", None) == "Runner._on_sigint"


def die_by(signum: int, *, exit_functions: bool = False) -> NoReturn:
    """End this process by ``signum``'s default action: what a shell shows as 128+N.

    For a process that stopped gracefully on ``signum`` and must end the way
    an unhandled one would (a reloader's parent, a pre-fork master). With
    ``exit_functions``, the ``atexit`` functions run first, as at a normal
    exit (a master's own; a reloader's parent holds only copies of the
    app's). As PID 1 the kernel ignores a signal's default action, so it
    exits 128+N instead.
    """
    if exit_functions:
        atexit._run_exitfuncs()  # noqa: SLF001  # what the interpreter runs at exit
    sys.stdout.flush()
    sys.stderr.flush()
    if os.getpid() != 1:
        with contextlib.suppress(OSError):  # SIGKILL's action cannot be set, nor needs to be
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
        os.kill(os.getpid(), signum)
        time.sleep(1.0)  # the signal is on its way
    os._exit(128 + signum)


@contextlib.contextmanager
def stop_signals_seen() -> Iterator[list[int]]:
    """The SIGTERMs and SIGINTs this process took while inside, in order (filled in on leaving).

    For a master that handles them itself and returns 0 (hypercorn's,
    ``hypercorn/run.py``; granian's), so that it can still end by the signal.
    Read through ``signal.set_wakeup_fd``, where the interpreter writes each
    signal's number before any handler runs: nothing of the master's is touched.
    """
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)  # positional only
    os.set_blocking(write_end, False)  # positional only
    previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    seen: list[int] = []
    try:
        yield seen
    finally:
        signal.set_wakeup_fd(previous)
        with contextlib.suppress(BlockingIOError):
            numbers = os.read(read_end, 4096)
            seen += [n for n in numbers if n in (signal.SIGTERM, signal.SIGINT)]
        os.close(read_end)
        os.close(write_end)
