"""The stop's logging: lines handed to a thread of their own, so a stalled handler cannot hold it.

The thread is started at ``install()``: a handler writing to a pipe nobody
reads (a stalled log collector) blocks that thread, never the stop, and the
stop takes no lock to log, not even logging's own (``Logger.isEnabledFor``
takes the module lock on a cache miss, and a ``dictConfig`` reload holds it
while it writes). Where no such thread runs (``shutdown()`` without
``install()``) lines are logged inline, on the caller's thread.
"""

from __future__ import annotations

import _thread
import logging
import os
import queue
import sys
import threading

from lastcall._threads import start_daemon

logger = logging.getLogger("lastcall")


class LogHandoff:
    """Log lines emitted by a thread of their own, so a stalled handler cannot hold the stop.

    ``log`` and ``flush`` take no lock and start no thread: they run in the stop,
    and the end of a stop runs in a signal handler on a main thread that may be
    inside ``start`` (``install()``), holding ``_lock``.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._queue: queue.SimpleQueue[tuple[int, str, tuple[object, ...]] | _thread.LockType]
        self._queue = queue.SimpleQueue()
        self._allocate_lock = _thread.allocate_lock  # set again as the thread starts
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # start() only
        self._pid = os.getpid()

    def log(self, level: int, msg: str, *args: object) -> None:
        """``logger.log(level, msg, *args)``, without waiting for the handlers or their locks."""
        if self._running():
            self._queue.put((level, msg, args))  # the level is checked on the log thread
        else:
            logger.log(level, msg, *args)

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the lines so far, then flush handlers and std streams."""
        if not self._running():
            _flush_all()
            return True
        flushed = self._allocate_lock()
        flushed.acquire()
        self._queue.put(flushed)  # the log thread releases it once it got there
        return flushed.acquire(timeout=timeout)

    def renew(self) -> None:
        """Remake the queue if gevent patched ``threading`` and no thread reads it yet."""
        with self._lock:
            if self._thread is None:
                self._queue = queue.SimpleQueue()
                self._lock = threading.Lock()

    def start(self) -> None:
        """Start the thread (at ``install()``, and in a forked child that installed).

        RuntimeError if no thread can be started (a container at its pids limit):
        ``install()`` says so in one line, where the app can still act on it.
        """
        if self._pid != os.getpid():  # a forked child has the queue, not the thread
            self._reset()
        with self._lock:
            if self._thread is None:
                # The flush's lock is of the kind this thread is: a real one for a real
                # thread, even once gevent has patched ``_thread`` (install() before the
                # patch), where a greenlet's would switch out of a signal handler.
                self._allocate_lock = _thread.allocate_lock
                self._thread = start_daemon(self._emit, "lastcall-log")

    def _running(self) -> bool:
        return self._thread is not None and self._pid == os.getpid()

    def _emit(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, tuple):
                level, msg, args = item
                logger.log(level, msg, *args)
            else:
                _flush_all()
                item.release()


def _flush_all() -> None:
    """What the interpreter would flush on a normal exit, since the stop may skip it."""
    handlers = [*logging.getLogger().handlers, *logger.handlers]
    streams = [s for s in (sys.stdout, sys.stderr) if s is not None]
    for flushable in (*handlers, *streams):
        try:
            flushable.flush()
        except Exception:  # noqa: S112  # a closed stream is nothing to flush
            continue


log = LogHandoff()
