"""The worker drill's demo job: it sleeps, and records in Redis when it started and completed.

RQ runs :func:`work` from here by name; ``demo_celery`` and ``demo_dramatiq``
wrap it as a task and an actor. Records are keyed by job number, so the drill
counts each job's completions exactly, whichever process ran it:
``{keys}started:{n}`` and ``{keys}completed:{n}``, lists of ``"worker pid time"``.
A job's first run lasts ``seconds``, a run after it was put back ``again``:
the drill's long job is longer than the budget only the first time.

Environment: ``LASTCALL_DRILL_STORE`` (the records' Redis URL),
``LASTCALL_DRILL_KEYS`` (their prefix). Where the drill starts the demo worker
itself (``LASTCALL_DRILL_DEMO=1``: no ``--cmd``), importing this module also
registers the demo's shutdown hook, with lastcall, or with ``atexit`` for
``--plain`` (``LASTCALL_DRILL_PLAIN=1``); a user's worker (``--cmd``) keeps
its own hooks, untouched.
"""

from __future__ import annotations

import atexit
import os
import time
from typing import Any

import lastcall
from lastcall.cli._events import record

STORE = "LASTCALL_DRILL_STORE"
KEYS = "LASTCALL_DRILL_KEYS"
DEMO = "LASTCALL_DRILL_DEMO"
PLAIN = "LASTCALL_DRILL_PLAIN"
BROKER = "LASTCALL_DRILL_BROKER"
QUEUE = "LASTCALL_DRILL_QUEUE"
WORKER = "LASTCALL_DRILL_WORKER"  # A or B: which of the drill's workers runs the job
CELERY_TASK = "lastcall.drill.work"  # demo_celery's task
DRAMATIQ_ACTOR = "lastcall_drill_work"  # demo_dramatiq's actor
_TICK = 0.05  # seconds: a job sleeps in short steps, so that a stop can end it between two

_store: Any = None  # redis-py's client, made at the first job (after a fork, in the child)
_store_pid = 0


def _records() -> Any:  # noqa: ANN401  # redis.Redis
    global _store, _store_pid  # one connection per process
    if _store is None or _store_pid != os.getpid():
        import redis  # noqa: PLC0415  # the workers' dependency, not lastcall's

        _store, _store_pid = redis.Redis.from_url(os.environ[STORE]), os.getpid()
    return _store


def work(n: int, seconds: float, again: float) -> int:
    """Job ``n``: say it started, sleep, say it completed."""
    store = _records()
    keys = os.environ[KEYS]
    where = f"{os.environ.get(WORKER, '?')} {os.getpid()}"
    attempt = int(store.incr(f"{keys}attempt:{n}"))
    store.rpush(f"{keys}started:{n}", f"{where} {time.time()}")
    end = time.monotonic() + (seconds if attempt == 1 else again)
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(_TICK, left))
    store.rpush(f"{keys}completed:{n}", f"{where} {time.time()}")
    return n


def close_records() -> None:
    """The demo's shutdown hook: the connection to the records, closed once, where it ran."""
    started = time.time()
    if _store is not None and _store_pid == os.getpid():
        _store.close()
    record("close_records", started)


if os.environ.get(DEMO) == "1":
    if os.environ.get(PLAIN) == "1":
        atexit.register(close_records)
    else:
        lastcall.on_shutdown(close_records)
