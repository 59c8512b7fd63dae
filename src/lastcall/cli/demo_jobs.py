"""The worker drill's demo job: it sleeps, and records when it started and completed.

RQ runs :func:`work` from here by name; ``demo_celery`` and ``demo_dramatiq``
wrap it as a task and an actor. The records are rows in a SQLite file of the
drill's own (:class:`Records`), not on the broker: the drill counts each
job's starts and completions the same way on Redis and RabbitMQ, whichever
process ran it. A row is ``(job, event, worker, pid, time)``, ``event``
``started`` or ``completed``. A job's first run lasts ``seconds``, a run
after it was put back ``again``: the drill's long job is longer than the
budget only the first time.

Environment: ``LASTCALL_DRILL_STORE`` (the records' file). Where the drill
starts the demo worker itself (``LASTCALL_DRILL_DEMO=1``: no ``--cmd``),
importing this module also registers the demo's shutdown hook, with
lastcall, or with ``atexit`` for ``--plain`` (``LASTCALL_DRILL_PLAIN=1``); a
user's worker (``--cmd``) keeps its own hooks, untouched.
"""

from __future__ import annotations

import atexit
import os
import sqlite3
import threading
import time

import lastcall
from lastcall.cli._events import record

STORE = "LASTCALL_DRILL_STORE"
DEMO = "LASTCALL_DRILL_DEMO"
PLAIN = "LASTCALL_DRILL_PLAIN"
BROKER = "LASTCALL_DRILL_BROKER"
QUEUE = "LASTCALL_DRILL_QUEUE"
ACKS_LATE = "LASTCALL_DRILL_ACKS_LATE"  # "1": demo_celery's task acknowledged as it ends
WORKER = "LASTCALL_DRILL_WORKER"  # A or B: which of the drill's workers runs the job
CELERY_TASK = "lastcall.drill.work"  # demo_celery's task
DRAMATIQ_ACTOR = "lastcall_drill_work"  # demo_dramatiq's actor
_TICK = 0.05  # seconds: a job sleeps in short steps, so that a stop can end it between two
_BUSY = 30.0  # seconds a write waits for another process's (each takes microseconds)
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS runs (job INTEGER, event TEXT, worker TEXT, pid INTEGER, at REAL)"
)


class Records:
    """The drill's records file: written by every job, read by the drill (WAL: both at once)."""

    def __init__(self, path: str) -> None:
        self.path = path
        # Any thread of the process (threads pools, gevent), one statement at a time.
        self._db = sqlite3.connect(path, timeout=_BUSY, check_same_thread=False)
        self._lock = threading.Lock()

    @classmethod
    def create(cls, path: str) -> Records:
        """The file, new, for one drill."""
        records = cls(path)
        with records._lock, records._db:
            records._db.execute("PRAGMA journal_mode=WAL")
            records._db.execute(_SCHEMA)
        return records

    def started(self, job: int, where: str) -> int:
        """Note that ``job`` started; which attempt this is (1 for its first run)."""
        worker, pid = where.split()
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO runs VALUES (?, 'started', ?, ?, ?)",
                (job, worker, int(pid), time.time()),
            )
            (count,) = self._db.execute(
                "SELECT COUNT(*) FROM runs WHERE job = ? AND event = 'started'", (job,)
            ).fetchone()
        return int(count)

    def completed(self, job: int, where: str) -> None:
        """Note that ``job`` completed."""
        worker, pid = where.split()
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO runs VALUES (?, 'completed', ?, ?, ?)",
                (job, worker, int(pid), time.time()),
            )

    def runs(self) -> dict[int, tuple[list[tuple[str, int, float]], list[tuple[str, int, float]]]]:
        """Each job's ``(started, completed)`` rows, ``(worker, pid, time)``, in order."""
        found: dict[int, tuple[list[tuple[str, int, float]], list[tuple[str, int, float]]]] = {}
        with self._lock:
            rows = self._db.execute("SELECT job, event, worker, pid, at FROM runs ORDER BY rowid")
            for job, event, worker, pid, at in rows.fetchall():
                started, completed = found.setdefault(int(job), ([], []))
                (started if event == "started" else completed).append((worker, int(pid), at))
        return found

    def close(self) -> None:
        """The connection of the process that made it."""
        with self._lock:
            self._db.close()


_records: Records | None = None  # the job's process's, made at its first job (after a fork)
_records_pid = 0
_records_lock = threading.Lock()


def _store() -> Records:
    global _records, _records_pid  # one connection per process
    with _records_lock:
        if _records is None or _records_pid != os.getpid():
            _records, _records_pid = Records(os.environ[STORE]), os.getpid()
        return _records


def work(n: int, seconds: float, again: float) -> int:
    """Job ``n``: say it started, sleep, say it completed."""
    store = _store()
    where = f"{os.environ.get(WORKER, '?')} {os.getpid()}"
    attempt = store.started(n, where)
    end = time.monotonic() + (seconds if attempt == 1 else again)
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(_TICK, left))
    store.completed(n, where)
    return n


def close_records() -> None:
    """The demo's shutdown hook: the connection to the records, closed once, where it ran."""
    global _records  # noqa: PLW0603  # a job after it (none is expected) opens another
    started = time.time()
    with _records_lock:
        if _records is not None and _records_pid == os.getpid():
            _records.close()
            _records = None
    record("close_records", started)


if os.environ.get(DEMO) == "1":
    if os.environ.get(PLAIN) == "1":
        atexit.register(close_records)
    else:
        lastcall.on_shutdown(close_records)
