"""How a stop begins: each way a process is told to end, turned into one call.

* a signal (our handler, on the main thread) or ``trigger()`` or a thread's
  crash (any thread): an item on a queue the **dispatcher** thread reads; it
  calls ``begin(trigger, reason, status, die_by)``, so the stop runs there
  while the main thread goes on serving;
* interpreter exit, ``sys.exit`` and an unhandled exception (recorded by
  ``Excepthook``): the process-wide exit callbacks call each coordinator's
  ``_at_exit``, on the main thread;
* a fork: the same registry calls each one's ``_after_fork_in_child``;
* a parent that died: ``watch_parent`` calls ``trigger()``.

Signal handlers never take a lock: they only put the signal number on the
dispatcher's ``SimpleQueue``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import signal
import sys
import threading
import weakref

from lastcall._log import log
from lastcall._threads import start_daemon

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see _hooks)
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType
    from typing import Any, Protocol

    from lastcall._stoptoken import StopToken

    class _Owner(Protocol):  # the coordinator, as the exit and fork callbacks see it
        def _at_exit(self, in_atexit: bool) -> None: ...
        def _after_fork_in_child(self) -> None: ...


_PARENT_POLL = 0.2  # seconds between checks that a parent lives (watch_parent)


class Dispatcher:
    """The thread a signal, ``trigger()`` or a thread's crash hands the stop to.

    Started at ``install()`` (or by the first ``trigger()``), so a stop begun
    later starts no thread of its own; it reads one item and calls ``begin``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # A signal number, or (trigger, reason, status) from trigger() or a thread's crash.
        self._events: queue.SimpleQueue[int | tuple[str, str, int]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(
        self,
        app_mask: set[int | signal.Signals] | None,
        begin: Callable[[str, str, int, int | None], None],
    ) -> None:
        """Start the thread if it is not running; RuntimeError if no thread can start.

        ``begin`` (the coordinator's) is held by the thread, not here: the coordinator
        holds this dispatcher, and a cycle would keep one nothing refers to any more
        alive until the garbage collector ran, to run its hooks at the exit.
        """
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            # Installed, the dispatcher keeps every signal blocked while it runs the stop,
            # so a second Ctrl-C finds the main thread and forces the end there; the hook
            # threads it starts take the app's mask themselves (Runner). Before install()
            # (trigger()) no handler of ours waits for a signal: it takes the caller's mask.
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, []) if app_mask is None else None
            self._thread = start_daemon(self._dispatch, "lastcall-dispatcher", mask, begin)

    def put_signal(self, signum: int) -> None:
        """From the signal handler: no lock, no logging."""
        self._events.put(signum)

    def put(self, trigger: str, reason: str, status: int) -> None:
        self._events.put((trigger, reason, status))

    def renew_queue(self) -> None:
        """Remake the queue: gevent patched ``threading`` after it was made."""
        self._events = queue.SimpleQueue()

    def after_fork(self) -> None:
        """A forked child has the queue, not the thread: start afresh."""
        self._lock = threading.Lock()
        self._events = queue.SimpleQueue()
        self._thread = None

    def _dispatch(
        self,
        mask: set[int | signal.Signals] | None,
        begin: Callable[[str, str, int, int | None], None],
    ) -> None:
        item = self._events.get()
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if isinstance(item, int):
            begin(signal.Signals(item).name, "signal received", 128 + item, item)
        else:
            trigger, reason, status = item
            begin(trigger, reason, status, None)


class Excepthook:
    """``sys.excepthook``'s stand-in: remembers the exception that ends the program."""

    def __init__(self) -> None:
        self.exception: str | None = None  # "Type: message", for the exit's stop
        self._previous: Callable[..., Any] | None = None

    def install(self) -> None:
        if self._previous is None:
            self._previous = sys.excepthook
            sys.excepthook = self._hook

    def uninstall(self) -> None:
        if self._previous is not None:
            sys.excepthook = self._previous
            self._previous = None

    def _hook(
        self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        # The interpreter sets sys.last_value before it calls the hook for an exception that
        # ends the program (pythonrun.c, _PyErr_PrintEx); an app calling sys.excepthook itself
        # for one it handled does not, and its process does not end by it.
        if getattr(sys, "last_value", None) is exc:
            self.exception = f"{exc_type.__name__}: {exc}"
        previous = self._previous or sys.__excepthook__
        previous(exc_type, exc, tb)


def watch_parent(
    parent: int, reason: str, stopping: StopToken, trigger: Callable[[str], None]
) -> None:
    """Call ``trigger(reason)`` once ``parent`` is no longer our parent.

    A reloader or pre-forking master that is SIGKILLed cannot tell its
    children, which would serve on as orphans. Polling ``getppid()``
    needs nothing from the parent; it is compared with ``parent``, not
    with 1, because a subreaper may adopt the orphan.
    """

    def watch() -> None:
        while not stopping.wait(_PARENT_POLL):
            if os.getppid() != parent:
                log.log(logging.WARNING, "%s: stopping", reason)
                trigger(reason)
                return

    start_daemon(watch, "lastcall-parent-watch")


# ---------------------------------------------------------------- exit and fork, process-wide

# One registry for all coordinators: a single fork callback and a single exit
# callback, whatever the number of coordinators made (tests make many).
_owners: weakref.WeakSet[_Owner] = weakref.WeakSet()
_exit_callbacks_registered = False
# The PID forking while an adapter forks children that run one job and no stop (RQ's work
# horses; Integration.forking_without_threads): lastcall leaves those children as they are.
one_job_forks_of: int | None = None


def track(owner: _Owner) -> None:
    """Tell ``owner`` of forks and of the interpreter's exit from now on (held weakly)."""
    _owners.add(owner)


def forked_for_one_job() -> bool:
    """Whether this is a child forked inside ``forking_without_threads`` (not a child of one)."""
    return one_job_forks_of is not None and one_job_forks_of == os.getppid()


def _after_fork_in_child() -> None:
    if forked_for_one_job():
        return  # no reset: it runs no stop, and each job would pay its copy-on-write faults
    for owner in list(_owners):
        owner._after_fork_in_child()  # noqa: SLF001  # the registry is the coordinators'


def _at_threading_exit() -> None:
    for owner in list(_owners):
        owner._at_exit(in_atexit=False)  # noqa: SLF001


def _at_exit() -> None:
    for owner in list(_owners):
        owner._at_exit(in_atexit=True)  # noqa: SLF001


def register_exit_callbacks() -> None:
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


os.register_at_fork(after_in_child=_after_fork_in_child)
