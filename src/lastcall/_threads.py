"""lastcall's own threads, started so that no signal is ever delivered to them.

The kernel hands a process-directed signal to any thread that does not block
it when the main thread cannot take it at that instant (one already pending
there, for one). Python runs its handlers only on the main thread, and a
signal delivered to another thread does not wake the main thread from a
blocking call: an app whose main thread sits in ``time.sleep(60)`` would
begin its stop a minute late. lastcall's threads wait idle for most of their
lives, so they must never be that other thread.
"""

from __future__ import annotations

import signal
import threading

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see _hooks)
if TYPE_CHECKING:
    from collections.abc import Callable

# Raised by the faulting thread itself: blocking them would turn a crash into a hang.
_SYNCHRONOUS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL}


def start_daemon(target: Callable[..., object], name: str, *args: object) -> threading.Thread:
    """Start ``target(*args)`` on a daemon thread with every signal blocked."""
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - _SYNCHRONOUS)
    try:
        thread.start()  # a new thread inherits the mask of the one starting it
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return thread
