"""How the process ends once a stop that ends it is over: one path, bounded.

The stop ran on the dispatcher thread, but only the main thread can end the
process the way the signal asked (run other libraries' ``atexit`` functions,
then die by the signal): the dispatcher wakes it with ``pthread_kill``, our
handler on the main thread runs ``on_main_thread``, and if the main thread
has not ended the process within ``MAIN_THREAD_GRACE`` (stuck in C code)
the dispatcher ends it itself. The watchdog, armed when the stop began,
bounds all of it at grace + 2 s. Nothing here takes a lock or starts a thread.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import time

from lastcall._log import log

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see _hooks)
if TYPE_CHECKING:
    from typing import NoReturn, TypeAlias

    from lastcall._signals import SignalHandlers

    Plan: TypeAlias = tuple[int, int | None]  # (exit status, signal to die by)

# Once the stop is over, how long the dispatcher lets the main thread end the
# process before ending it itself (the main thread may be stuck in C code).
MAIN_THREAD_GRACE = 1.0
_WAKE_INTERVAL = 0.02
LOG_FLUSH_WAIT = 0.5  # how long the end of a stop waits for its log lines to be written


class Ending:
    """The end of one process: what the stop asked for, and who is carrying it out."""

    def __init__(self, *, forked: bool = False) -> None:
        self.plan: Plan | None = None  # how a signal's or trigger()'s stop asks to end
        self.under_way: Plan | None = None  # the plan carried out, once the end has begun
        self.forked = forked
        self.exit_funcs_ran = False  # atexit's functions: run once, by us or the interpreter
        self.main_ending = False  # the main thread is in on_main_thread
        self._main_flushing = False  # ... and in its last flush before it ends the process

    def on_signal(self) -> None:
        """In our signal handler: the dispatcher's wake-up, once it has begun the end."""
        if self.under_way is not None and not self._main_flushing:
            self.on_main_thread()

    def from_dispatcher(
        self, plan: Plan, handlers: SignalHandlers | None, main: int | None
    ) -> NoReturn:
        """Have the main thread end the process, or end it here.

        The stop's log lines are written first, from here: once woken, the main
        thread may be inside a log handler it was interrupted in, holding the lock
        the log thread would need to write them.
        """
        log.flush(LOG_FLUSH_WAIT)
        self.under_way = plan
        handled = handlers.handled if handlers else ()
        if handlers is not None and handled and main is not None:
            _, die_by = plan
            wake = die_by if die_by in handled else handled[0]
            # Repeat the wake-up: one that lands while the main thread is still
            # inside our handler for the first signal is only noticed at its
            # next bytecode, which a blocking call like sleep() can delay.
            # (Under gevent this runs on the main thread itself: it wakes itself.)
            # Only while the handler is ours: one a server put back (SIG_DFL, Python's
            # KeyboardInterrupt) would end or break the main thread's end; it ends the
            # process itself when it reaches the interpreter's exit (Coordinator._at_exit).
            until = time.monotonic() + MAIN_THREAD_GRACE
            while time.monotonic() < until:
                if handlers.ours(wake):
                    signal.pthread_kill(main, wake)
                time.sleep(_WAKE_INTERVAL)
            log.log(logging.WARNING, "the main thread did not end the process; ending it here")
        status, die_by = plan
        log.flush(LOG_FLUSH_WAIT)
        os._exit(128 + die_by if die_by is not None else status)

    def on_main_thread(self) -> NoReturn:
        """Run other libraries' exit functions, flush, and die as ``under_way`` says."""
        assert self.under_way is not None  # noqa: S101  # only called once it is set
        self.main_ending = True
        status, die_by = self.under_way
        if not self.exit_funcs_ran:
            self.exit_funcs_ran = True
            # Other libraries' exit handlers still run, as they would have at a
            # normal exit; not in a forked multiprocessing child, which ends
            # with os._exit and never runs them, nor while another thread holds
            # logging's lock, which logging.shutdown() would wait on for ever.
            if self.forked and _started_by_multiprocessing():
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
        log.flush(LOG_FLUSH_WAIT)
        # Not _signals.die_by, which flushes sys.stdout and sys.stderr without a bound: here
        # a stream may be a pipe nobody reads, and only the hand-off's bounded flush is safe.
        if die_by is not None and os.getpid() != 1:  # PID 1 ignores its own default signals
            signal.signal(die_by, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [die_by])
            os.kill(os.getpid(), die_by)
            time.sleep(MAIN_THREAD_GRACE)  # the signal is on its way
        os._exit(128 + die_by if die_by is not None else status)


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
