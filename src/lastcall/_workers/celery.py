"""Celery on Redis and RabbitMQ (prefork, threads, solo, gevent pools): what the drain runs through.

``lastcall.celery`` is the face (Celery's signals, the settings, the start-up
lines); everything here reaches into Celery, kombu and billiard, and nothing
else does. Tested with Celery 5.7 and kombu 5.7 (``versions.CELERY``,
``versions.KOMBU``). The undocumented parts used, by the file they come from:

* ``celery/worker/consumer/consumer.py``: ``Consumer.hub``, ``pool``,
  ``controller``, ``task_consumer``, ``strategies`` (each value wrapped, so
  a message delivered once the stop began goes back instead of starting; the
  ack callback ``on_task_received`` passes them is wrapped too, for the kill);
  ``celery/worker/worker.py``: ``WorkController.semaphore`` (prefork's
  prefetched requests wait there for a free process); ``celery/worker/
  state.py``: ``active_requests``, ``reserved_requests``, ``should_stop``,
  ``task_ready``; ``celery/worker/request.py``: ``Request.message``,
  ``acknowledged``, ``time_start``, ``worker_pid``, ``reject``, ``cancel``,
  ``_apply_result``; ``celery/concurrency/thread.py``: ``TaskPool.on_apply``
  (wrapped: the results are held, and a thread that takes a task once the
  stop signal came gives it back), ``ApplyResult.f`` (the future a thread
  takes the task from); ``celery/concurrency/base.py``: ``apply_target``
  (calls ``accept_callback`` before the task, outside its ``try``);
  ``celery/concurrency/gevent.py``: ``TaskPool.on_apply``
  (wrapped: Celery's loop waits for a free place, a request that waited there
  as the stop began is put back, and the target notes the ``GreenletExit`` a
  cancel raises), ``TaskPool._pool`` (gevent's ``Pool.wait_available``);
  ``Request._apply_result`` is the task's greenlet there; ``Request.on_accepted``
  is the ``accept_callback`` the pool is given (its ``__self__``: the request).
* ``celery/concurrency/prefork.py``: ``TaskPool.on_apply`` (wrapped: a
  request handed to the pool once the stop signal came goes back),
  ``TaskPool._pool`` (billiard's ``AsynPool``); ``celery/concurrency/asynpool.py``:
  ``AsynPool.outbound_buffer`` (jobs no pool process has seen: taken out,
  their messages go back); ``billiard/pool.py``: ``Pool._pool`` (its
  processes), ``ApplyResult.discard``.
* ``kombu/asynchronous/hub.py``: ``Hub.add_reader``; ``kombu/transport/
  redis.py``: ``Channel._do_restore_message`` (the push that kombu's own
  ``restore_by_tag`` makes), ``QoS.unacked_key``, ``unacked_index_key``;
  ``QoS.append`` (wrapped: a delivery's tag is noted before it is written to
  the ``unacked`` hash); ``Channel._in_poll`` (the connection a ``BRPOP`` is
  outstanding on), ``Channel.client``, ``cycle._in_protected_read``;
  ``kombu/transport/virtual/base.py``: ``Message._raw`` (the payload as the
  broker holds it), ``QoS._delivered``, ``_dirty``, ``_quick_ack``; in the
  last-resort watcher, ``kombu/transport/redis.py``: ``QoS.restore_by_tag``.

How a task is put back: kombu's Redis transport keeps every delivered,
unacknowledged message in a hash (``unacked``) until it is acknowledged, and
restores the whole hash only when the channel closes (the end of a warm
shutdown) or when ``visibility_timeout`` (an hour) has passed. Here one
message is put back by itself at once: in one ``MULTI``, its entry leaves
the hash and its payload is pushed at the head of its queue, as kombu's
``restore_by_tag`` does; a task without ``acks_late`` (acknowledged as it
started, so no longer in the hash) is pushed from the payload the worker
holds. RabbitMQ keeps a delivered message until its channel acknowledges or
rejects it: an unacknowledged one is rejected with ``requeue`` (back at its
place in the queue at once), an acknowledged one published again.

How a running task is stopped: the process running it (a prefork child, or
the solo pool's main process) gets ``STOP_SIGNAL``. Its handler answers on a
pipe whether a task was running, and if so never returns to it: the task
cannot complete after it was put back. A child then runs its own hooks and
exits; the solo main thread waits there until the stop ends the process.

A thread cannot be stopped from outside. The threads pool's overrunning task
is put back at once all the same, and its thread is given ``TaskStopped``
(``PyThreadState_SetAsyncExc``), raised at its next Python bytecode: a task
sleeping or blocked in C code gets no further than its next Python call, so
it cannot complete after it was put back. Celery's own shutdown would wait
for that thread, so it is skipped; the process ends by the signal when the
stop is over, and the thread ends with it.

When the worker is killed (SIGKILL, the OOM killer) nothing in it runs. The
watcher process of ``lastcall.last_resort`` does: the worker writes each
delivered message's tag into a small memory-mapped file (``Delivered``: a
slice assignment per task, no system call), and the watcher, once the worker
is gone, puts back every tag of that file still in the ``unacked`` hash, as
kombu's ``restore_by_tag`` does: the prefetched tasks and the running ones
with ``acks_late``. A running task without ``acks_late`` was deleted from the
broker as it started (Celery's at-most-once): the worker copied its message
into the file as it was handed to the pool, and the watcher publishes it again
unless its result came back. ``TaskPool.on_apply`` (celery/concurrency/base.py)
is wrapped for that, and the task channel's ``basic_ack`` (kombu/transport/
redis.py, pyamqp.py: the ack at its start went out).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import marshal
import mmap
import os
import queue
import select
import signal
import struct
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import lastcall
from lastcall._integration import Integration
from lastcall._log import log, logger
from lastcall._servers import versions

if TYPE_CHECKING:
    from collections.abc import Callable

    from lastcall._coordinator import Coordinator

__all__ = (
    "STOP_SIGNAL",
    "CeleryWorker",
    "ChildSide",
    "Delivered",
    "TaskStopped",
    "WorkerLoop",
    "restore_after_kill",
)

# Celery, kombu and billiard objects: untyped, reached by duck typing
Celery: TypeAlias = Any

TESTED = versions.CELERY
TESTED_KOMBU = versions.KOMBU

# Asks a process to stop the task it runs. Not SIGTERM: systemd's default
# KillMode sends that to every process of the unit, children included.
STOP_SIGNAL = signal.SIGUSR2
_ANSWER = struct.Struct("=iB")  # (pid, 1 if a task was stopped, 0 if none ran)
_ANSWER_WAIT = 0.5  # seconds a process has to answer before it is killed
_POLL = 0.02  # seconds between looks at the requests in flight
SUPPORTED_POOLS = ("prefork", "solo", "threads", "gevent")
SUPPORTED_TRANSPORTS = ("redis", "amqp", "pyamqp")  # kombu's transport names in broker URLs
_TAG_SLOT = 64  # bytes per delivery in the file: a state byte, the tag (kombu's: 36 bytes)
# The state byte: delivered; Celery asked for its ack, or the task ended; copied as it was
# handed to the pool (no acks_late); copied, and its ack at the start sent
_HELD, _ACKED, _COPIED, _RUNNING = b"h", b"a", b"c", b"r"
_TAG_SLOTS = 4096  # the newest this many deliveries are known to the watcher
_TAG_REGION = _TAG_SLOT * _TAG_SLOTS
# After the tags: copies of the running messages without acks_late (marshal: a Celery
# message is about 1 KiB); tag slot i's copy is in copy slot i % _COPY_SLOTS.
_COPY_SLOT = 8192
_COPY_SLOTS = 512
_COPY_HEAD = struct.Struct(f"={_TAG_SLOT}sI")  # its tag, the copy's length
_FILE_SIZE = _TAG_REGION + _COPY_SLOT * _COPY_SLOTS


class TaskStopped(BaseException):  # not an error: the stop put the task back
    """Raised in a threads-pool thread whose task was put back: it never completes here.

    A ``BaseException``, so the task's own ``except Exception`` does not swallow it;
    Celery's tracer lets it through, and the thread pool keeps it in the task's future.
    """


def pool_kind(pool: Celery) -> str:
    """``prefork``, ``solo``, ``threads`` ...: the name of a Celery pool, from its module."""
    module = type(pool).__module__.rsplit(".", 1)[-1]
    return {"thread": "threads", "asynpool": "prefork"}.get(module, module)


def pool_class_kind(pool_cls: Celery) -> str:
    """The same name from ``WorkController.pool_cls`` (a name or a class, before the pool is made).

    ``celery/worker/worker.py``: ``pool_cls`` is still ``-P``'s value when ``worker_init``
    is sent; ``celery.concurrency.get_implementation`` turns it into the class.
    """
    from celery.concurrency import get_implementation  # noqa: PLC0415

    module = str(get_implementation(pool_cls).__module__).rsplit(".", 1)[-1]
    return {"thread": "threads"}.get(module, module)


class _Running:
    """Whether this process stopped its task; the threads pool's threads by task."""

    def __init__(self) -> None:
        self.stopping = False  # STOP_SIGNAL came: the task never resumes
        self.threads: dict[str, int] = {}  # threads pool: task id -> the thread running it


_running = _Running()


def _current_task() -> str | None:
    """The id of the task this thread runs now, or None (from a signal handler too).

    Celery's task stack (``celery/_state.py``: ``get_current_task``), pushed as a
    task starts and popped as it ends, in the thread that runs it: no Celery signal
    (``task_prerun`` costs every task a few microseconds once it has a receiver).
    """
    from celery._state import get_current_task  # noqa: PLC0415  # imported already by Celery

    task = get_current_task()
    return None if task is None else str(task.request.id or "(starting)")


def _stop_thread(task_id: str) -> None:
    """Raise ``TaskStopped`` in the thread running ``task_id``, at its next Python bytecode."""
    ident = _running.threads.get(task_id)
    if ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(ident), ctypes.py_object(TaskStopped)
        )


class ChildSide:
    """What a prefork child does: answer a stop request; run its hooks once on the way out."""

    def __init__(self, answer_fd: int) -> None:
        self.answer_fd = answer_fd

    def attach(self) -> None:
        """In the child, after Celery's ``process_initializer`` reset its signals."""
        signal.signal(STOP_SIGNAL, self._stop_requested)

    def _stop_requested(self, signum: int, _frame: object) -> None:
        if _running.stopping:
            return  # already stopping: Celery's Request.cancel sends the signal again
        task_id = _current_task()
        _answer(self.answer_fd, stopped=task_id is not None)
        if task_id is None:
            return  # the task had just finished: its result is on its way
        _running.stopping = True
        # The task never resumes. This process's hooks run, then it ends.
        lastcall.default.shutdown(reason=f"task {task_id} stopped: the drain budget ran out")
        os._exit(128 + signum)

    @staticmethod
    def exiting() -> None:
        """Celery's ``worker_process_shutdown``: the pool is closing this process."""
        if not _running.stopping:
            lastcall.default.shutdown(reason="Celery's pool is closing this process")


def _answer(fd: int, *, stopped: bool) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, _ANSWER.pack(os.getpid(), int(stopped)))


class WorkerLoop:
    """Run callables on Celery's event loop (kombu's hub), woken at once through a pipe."""

    def __init__(self, hub: Celery) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        hub.add_reader(self._read, self._run_calls)

    def _run_calls(self) -> None:
        with contextlib.suppress(OSError):
            os.read(self._read, 4096)
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                return
            call()

    def post(self, func: Callable[[], None]) -> threading.Event:
        """Have the loop run ``func`` at its next turn; the event is set once it has run."""
        done = threading.Event()

        def run() -> None:
            try:
                func()
            except Exception:
                logger.exception("lastcall: %r failed on Celery's loop", func)
            finally:
                done.set()

        self._calls.put(run)
        with contextlib.suppress(OSError):  # a full pipe already wakes the loop
            os.write(self._write, b".")
        return done

    def call(self, func: Callable[[], None], timeout: float) -> bool:
        """Run ``func`` on the loop; wait up to ``timeout`` for it; whether it ran."""
        return self.post(func).wait(timeout)


class GreenLoop:
    """gevent: Celery's loop (``synloop``) has no hub to post to; a call runs in this greenlet.

    Greenlets take turns, so Celery's state is never touched by two at once.
    """

    @staticmethod
    def call(func: Callable[[], None], timeout: float) -> bool:  # noqa: ARG004  # WorkerLoop's
        """Run ``func`` now; whether it ran."""
        try:
            func()
        except Exception:
            logger.exception("lastcall: %r failed on Celery's loop", func)
        return True


class Delivered:
    """The newest deliveries' tags, in a memory-mapped file the last-resort watcher reads.

    A ring: one slot per delivered message, overwritten once ``_TAG_SLOTS`` newer
    ones came (more than that many unacknowledged at once, as with many ETA tasks,
    leaves the oldest to ``visibility_timeout`` after a kill). A slot is marked the
    moment Celery asks for its message's ack: Celery sends acks from its loop a
    moment later (``call_soon``), and a message whose ack was asked for is done
    (acks_late: the task completed), to be acknowledged, never put back.

    A task without ``acks_late`` is acknowledged (deleted from the broker) as it starts.
    As it is handed to the pool its message is copied into the file too (``copied``),
    and the ack at its start marks it running once it is sent (``sent``); its end (its
    result back, before Celery's own callbacks) marks it done. The watcher publishes a
    running one again; on Redis also a copied one no longer in the ``unacked`` hash.
    """

    def __init__(self) -> None:
        directory = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # noqa: S108  # memory, not disk
        fd, self.path = tempfile.mkstemp(prefix="lastcall-celery-", suffix=".tags", dir=directory)
        try:
            os.ftruncate(fd, _FILE_SIZE)
            self._map = mmap.mmap(fd, _FILE_SIZE)
        finally:
            os.close(fd)
        self._next = 0
        self._tags: list[str | None] = [None] * _TAG_SLOTS  # the tag in each slot
        self._slots: dict[str, int] = {}  # tag -> its slot, until the slot is reused
        self.said = False  # that a task could not be copied (said once)

    def note(self, tag: str) -> None:
        """A message is being delivered: before kombu writes it to the ``unacked`` hash.

        One delivered again (put back at the stop's start, and taken again before the
        door closed) keeps its slot: a second slot could say it was done.
        """
        index = self._slots.get(tag)
        if index is None:
            index = self._next
            self._next = (index + 1) % _TAG_SLOTS
            overwritten = self._tags[index]
            if overwritten is not None:
                self._slots.pop(overwritten, None)
            self._tags[index] = tag
            self._slots[tag] = index
        start = index * _TAG_SLOT
        self._map[start : start + _TAG_SLOT] = (_HELD + tag.encode())[:_TAG_SLOT].ljust(
            _TAG_SLOT, b"\0"
        )

    def _slot(self, tag: str) -> int:
        index = self._slots.get(tag)
        if index is None:  # delivered on a channel noted nowhere (a new connection)
            self.note(tag)
            index = self._slots[tag]
        return index

    def _setter(self, index: int, state: bytes, *, unless: bytes = b"") -> Callable[[], None]:
        """What sets ``index``'s state byte later, if the slot was not reused meanwhile."""
        start = index * _TAG_SLOT
        mapped = self._map
        slot = mapped[start + 1 : start + _TAG_SLOT]

        def mark() -> None:
            if (
                mapped[start + 1 : start + _TAG_SLOT] == slot
                and mapped[start : start + 1] != unless
            ):
                mapped[start] = state[0]

        return mark

    def marker(self, tag: str) -> Callable[[], None]:
        """In Celery's strategy: what marks ``tag`` acked when Celery asks for its ack.

        Not a copied one's: its ack is asked for as it starts (no ``acks_late``).
        """
        return self._setter(self._slot(tag), _ACKED, unless=_COPIED)

    def copied(self, tag: str, copy: bytes) -> Callable[[], None] | None:
        """A task without ``acks_late`` starts: keep ``copy``; what marks it done at its end.

        None if ``copy`` does not fit: that task is lost if the worker is killed as it runs.
        """
        if len(copy) > _COPY_SLOT - _COPY_HEAD.size:
            self.not_kept(f"a task message of {len(copy)} bytes does not fit its copy's slot")
            return None
        index = self._slot(tag)
        start = _TAG_REGION + (index % _COPY_SLOTS) * _COPY_SLOT
        end = start + _COPY_HEAD.size + len(copy)
        self._map[start:end] = _COPY_HEAD.pack(tag.encode(), len(copy)) + copy
        self._map[index * _TAG_SLOT] = _COPIED[0]
        return self._setter(index, _ACKED)

    def not_kept(self, why: str) -> None:
        """Say once that a task without ``acks_late`` could not be copied, and why."""
        if not self.said:
            self.said = True
            logger.warning(
                "lastcall: %s: such a task without acks_late is lost if the worker is "
                "killed (SIGKILL) while it runs, as with plain Celery (acks_late keeps it)",
                why,
            )

    def sent(self, tag: str) -> None:
        """``tag``'s ack went to the broker: a copied task runs, acknowledged."""
        index = self._slots.get(tag)
        if index is not None and self._map[index * _TAG_SLOT] == _COPIED[0]:
            self._map[index * _TAG_SLOT] = _RUNNING[0]

    def done(self, tag: str) -> None:
        """``tag``'s task is finished with here (put back on its queue): never published again."""
        index = self._slots.get(tag)
        if index is not None:
            self._setter(index, _ACKED)()

    def remove(self) -> None:
        """The worker stopped cleanly: nothing for the watcher."""
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # noqa: PTH108  # os: as the rest of the module


def _read_delivered(data: bytes) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """A ``Delivered`` file: each tag's state byte; each running tag's copy."""
    states = {}
    for start in range(0, _TAG_REGION, _TAG_SLOT):
        slot = data[start : start + _TAG_SLOT].rstrip(b"\0")
        if slot:
            states[slot[1:].decode()] = slot[:1]
    copies = {}
    for start in range(_TAG_REGION, len(data), _COPY_SLOT):
        raw_tag, size = _COPY_HEAD.unpack_from(data, start)
        tag = raw_tag.rstrip(b"\0").decode()
        if states.get(tag) in (_COPIED, _RUNNING):
            copies[tag] = data[start + _COPY_HEAD.size : start + _COPY_HEAD.size + size]
    return states, copies


def restore_after_kill(path: str, url: str, options: dict[str, Any]) -> None:
    """Last resort, in the watcher once the worker died: its unfinished messages go back.

    Redis: each tag of ``path`` still in the ``unacked`` hash (one HMGET finds them) is
    put back at the head of its queue by kombu's own ``restore_by_tag``; one whose ack
    Celery had asked for is acknowledged instead (taken out of the hash), as the worker
    would have a moment later. A running task acknowledged as it started is pushed
    there from its copy, as ``restore_by_tag`` pushes a hash entry. RabbitMQ put back
    the unacknowledged ones itself as the connection died: only those are published.
    """
    from kombu.connection import Connection  # noqa: PLC0415  # in the watcher, when needed

    try:
        with open(path, "rb") as file:  # noqa: PTH123
            data = file.read()
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # noqa: PTH108
    states, copies = _read_delivered(data)
    if not states:
        return
    with Connection(url, transport_options=options) as connection:  # type: ignore[no-untyped-call]
        if connection.transport.driver_type == "amqp":
            running = [copies[tag] for tag in copies if states[tag] == _RUNNING]
            _publish_again_amqp(connection, running)
            print(  # noqa: T201  # the watcher's output goes to the worker's stderr
                f"lastcall: {len(running)} running task(s) of the killed Celery worker, "
                "acknowledged at their start, published again"
            )
            return
        _restore_redis(connection, states, copies)


def _restore_redis(connection: Celery, states: dict[str, bytes], copies: dict[str, bytes]) -> None:
    tags = list(states)
    qos = connection.default_channel.qos
    with qos.channel.conn_or_acquire() as client:
        entries = client.hmget(qos.unacked_key, tags)
        held = [tag for tag, entry in zip(tags, entries, strict=True) if entry]
        done = [tag for tag in held if states[tag] == _ACKED]
        if done:
            client.pipeline().zrem(qos.unacked_index_key, *done).hdel(
                qos.unacked_key, *done
            ).execute()
        for tag in held:
            if states[tag] != _ACKED:
                qos.restore_by_tag(tag, client)
        again = [copies[tag] for tag in copies.keys() - set(held)]
        if again:
            pipe = client.pipeline()
            for copy in again:
                message, exchange, routing_key = marshal.loads(copy)  # noqa: S302  # ours
                qos.channel._do_restore_message(message, exchange, routing_key, pipe)  # noqa: SLF001
            pipe.execute()
    print(  # noqa: T201  # the watcher's output goes to the worker's stderr
        f"lastcall: {len(held) - len(done)} task(s) of the killed Celery worker put back on "
        f"their queues, {len(again)} running one(s) acknowledged at their start published "
        f"again, {len(done)} acknowledged (done)"
    )


def _publish_again_amqp(connection: Celery, copies: list[bytes]) -> None:
    """RabbitMQ: each copy published as ``_put_back_amqp`` publishes an acknowledged one."""
    channel = connection.default_channel
    for copy in copies:
        _publish_amqp(channel, *marshal.loads(copy))  # noqa: S302  # ours


def _publish_amqp(
    channel: Celery, body: bytes, properties: dict[str, Any], exchange: str | None, key: str
) -> None:
    """RabbitMQ: a task's message published again, as Celery's consumer received it."""
    import amqp  # noqa: PLC0415  # Celery's AMQP client

    message = amqp.Message(body, **properties)
    channel.basic_publish(message, exchange=exchange or "", routing_key=key)


class CeleryWorker:
    """A Celery worker's answers to the drain: stop consuming, wait, put back what overran."""

    def __init__(self, consumer: Celery, coordinator: Coordinator, answer_fd: int | None) -> None:
        from celery.worker import state  # noqa: PLC0415  # celery is an optional extra

        self.consumer = consumer
        self.coordinator = coordinator
        self.state = state
        self.kind = pool_kind(consumer.pool)
        self.answers = answer_fd
        self.loop: WorkerLoop | GreenLoop = (
            GreenLoop() if consumer.hub is None else WorkerLoop(consumer.hub)
        )
        self.green_stopped: set[str] = set()  # gevent: tasks whose greenlet the cancel ended
        self.door_closed = False  # no task starts any more; the door is closing
        self.door_shut = False  # the loop closed it (_close_door_on_loop ran)
        # solo: the main thread stopped its task; threads: a thread still holds one. Either
        # way Celery's own shutdown would wait for it, so the stop ends the process instead.
        self.frozen = threading.Event()
        self.finished = threading.Event()  # solo: the main thread had no task to stop
        self.celery_stopped = threading.Event()  # Celery's worker_shutdown signal
        self.main_ident = threading.main_thread().ident
        # kombu/transport/pyamqp.py: Transport.driver_type ("redis" for kombu's Redis)
        self.amqp = consumer.connection.transport.driver_type == "amqp"
        self.forcing = False  # force() runs: in a signal handler on the main thread
        self.put_back_tags: set[Any] = set()
        self.jobs: dict[str, dict[str, Any]] = {}  # running as the stop began: id -> its entry
        self.delivered: Delivered | None = None  # for the last resort, once it is set up
        self.pid = os.getpid()  # a prefork pool process, forked later, is not the worker

    @property
    def name(self) -> str:
        return f"celery worker {self.consumer.hostname}"

    # ------------------------------------------------------------ set-up

    def attach(self) -> None:
        """On the main thread at ``worker_ready``: gate the strategies; answer STOP_SIGNAL."""
        strategies = self.consumer.strategies
        for task_name, strategy in list(strategies.items()):
            strategies[task_name] = self._gated(strategy)
        if self.kind == "solo":
            signal.signal(STOP_SIGNAL, self._solo_stop_requested)
        if self.kind == "prefork":
            self._gate_processes()
        if self.kind == "threads":
            self._gate_threads()
        if self.kind == "gevent":
            self._gate_greenlets()

    def _gate_processes(self) -> None:
        """Prefork: a process that comes free once the stop signal came starts no task.

        A prefetched request waits for a free process (``WorkController.semaphore``);
        the loop hands it to the pool (``TaskPool.on_apply``) as a task ends there. The
        door clears the semaphore, but only once the stop's thread posted it and the
        loop ran it: a task ending in between would start one. It goes back instead.
        """
        pool = self.consumer.pool
        apply = pool.on_apply
        stop_requested = Integration(self.coordinator).stop_requested

        def on_apply(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
            if stop_requested():
                self._put_back_late(kwargs["accept_callback"].__self__)
                return None
            return apply(*args, **kwargs)

        pool.on_apply = on_apply

    def _gate_threads(self) -> None:
        """Threads: a thread that comes free once the stop signal came starts no task.

        A prefetched task waits in the pool's executor (celery/concurrency/thread.py)
        for a free thread. The door cancels those waits, but only once the loop runs
        it: a thread that takes one first gives it back to the loop (``_put_back_late``)
        instead. ``apply_target`` (celery/concurrency/base.py) calls ``accept_callback``
        before the task, outside its ``try``: what it raises ends the work item with the
        task never run and no result callback (the future keeps the exception; no one
        reads it).

        Each task's thread is noted as it accepts the task (``Request.on_accepted``,
        celery/worker/request.py), and its ``ApplyResult`` is kept until done:
        ``Request._apply_result`` is a weak reference and the pool keeps no other, so
        the door could not find the futures to cancel.
        """
        pool = self.consumer.pool
        loop = cast("WorkerLoop", self.loop)  # a threads pool runs on Celery's hub
        apply = pool.on_apply
        held: set[Any] = set()
        threads = _running.threads
        stop_requested = Integration(self.coordinator).stop_requested

        def on_apply(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
            accepted = kwargs["accept_callback"]
            request = accepted.__self__

            def accept(*accept_args: Any) -> Any:  # noqa: ANN401
                if stop_requested():
                    loop.post(functools.partial(self._put_back_late, request))
                    raise TaskStopped(request.id)
                threads[request.id] = threading.get_ident()
                return accepted(*accept_args)

            def done(_future: object) -> None:
                held.discard(result)
                threads.pop(request.id, None)

            result = apply(*args, **{**kwargs, "accept_callback": accept})
            held.add(result)
            result.f.add_done_callback(done)
            return result

        pool.on_apply = on_apply

    def _gate_greenlets(self) -> None:
        """gevent: no task starts once the stop began; note the tasks the cancel ends.

        Celery's strategy hands a request to ``TaskPool.on_apply`` (celery/concurrency/
        gevent.py), whose ``Pool.spawn`` blocks Celery's loop while the pool is full. Here
        the loop waits for a free place first, and a request that waited there while the
        stop began is put back instead of spawned. The task's target is wrapped (inside
        Celery's own ``_make_killable_target``): the ``GreenletExit`` the cancel raises in
        it marks it put back before Celery's ``on_success`` could acknowledge it as done.
        """
        from gevent import GreenletExit  # noqa: PLC0415  # a gevent pool only

        pool = self.consumer.pool
        apply = pool.on_apply
        stop_requested = Integration(self.coordinator).stop_requested
        stopped = self.green_stopped

        def on_apply(target: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
            request = kwargs["accept_callback"].__self__  # Request.on_accepted
            pool._pool.wait_available()  # noqa: SLF001  # gevent.pool.Pool
            if stop_requested() or self.door_closed:
                self._put_back_late(request)
                return None

            def noted(*target_args: Any, **target_kwargs: Any) -> Any:  # noqa: ANN401
                try:
                    return target(*target_args, **target_kwargs)
                except GreenletExit:
                    stopped.add(request.id)
                    request.acknowledged = True  # Celery must neither ack nor reject it
                    raise

            return apply(noted, *args, **kwargs)

        pool.on_apply = on_apply

    def _gated(self, strategy: Callable[..., Any]) -> Callable[..., Any]:
        """A strategy that starts nothing once the stop signal came: the message goes back."""
        stop_requested = Integration(self.coordinator).stop_requested

        def gated(message: Celery, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
            if stop_requested() or self.door_closed:
                message.reject_log_error(logger, (), requeue=True)  # kombu puts it back
                self._close_door_soon()  # or the queue hands it back at once, again and again
                return None
            if self.delivered is not None:  # args: consumer.py's (payload, ack, reject, callbacks)
                acked, ack = self.delivered.marker(str(message.delivery_tag)), args[1]

                def ack_noted(*ack_args: Any) -> Any:  # noqa: ANN401
                    acked()
                    return ack(*ack_args)

                args = (args[0], ack_noted, *args[2:])
            return strategy(message, *args, **kwargs)

        return gated

    def watch_for_kill(self) -> None:
        """Have the last-resort watcher put back what this worker holds if it is killed.

        Redis: what the ``unacked`` hash holds, and the running tasks without ``acks_late``;
        RabbitMQ itself puts back what a dead connection held, at once: only the latter.
        """
        if_killed = (
            "its tasks running without acks_late are lost"
            if self.amqp
            else "its tasks wait for visibility_timeout instead of going back at once"
        )
        if self.kind == "gevent":
            logger.warning(
                "%s: if this gevent worker is killed (SIGKILL), %s: lastcall's last-resort "
                "watcher cannot watch a gevent process (gevent makes the watcher's channel "
                "non-blocking, and it quits at once)",
                self.name,
                if_killed,
            )
            return
        connection = self.consumer.connection
        options = dict(self.consumer.app.conf.get("broker_transport_options") or {})
        try:
            delivered = Delivered()
            lastcall.last_resort(
                "lastcall._workers.celery:restore_after_kill",
                delivered.path,
                connection.as_uri(include_password=True),
                options,
                name=f"put back the tasks of {self.name}",
                timeout=5,
            )
        except (OSError, TypeError, ValueError, RuntimeError) as exc:
            logger.warning(
                "%s: if this worker is killed (SIGKILL), %s: %s", self.name, if_killed, exc
            )
            return
        channel = self.consumer.task_consumer.channel
        if not self.amqp:
            qos = channel.qos  # kombu/transport/redis.py: QoS
            append = qos.append

            def noted_append(message: Celery, delivery_tag: str) -> None:
                delivered.note(delivery_tag)  # first: a kill between the two leaves it known
                append(message, delivery_tag)

            qos.append = noted_append
        basic_ack = channel.basic_ack  # kombu's Message.ack calls it

        def noted_ack(delivery_tag: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
            result = basic_ack(delivery_tag, *args, **kwargs)
            delivered.sent(str(delivery_tag))
            return result

        channel.basic_ack = noted_ack
        self.delivered = delivered
        self._copy_running_messages(delivered)

    def _copy_running_messages(self, delivered: Delivered) -> None:
        """A task without ``acks_late`` is copied into ``delivered`` as it is handed to the pool.

        ``TaskPool.on_apply`` (celery/concurrency/base.py calls it for every task; wrapped
        here outermost, so ``accept_callback`` is still ``Request.on_accepted``). The copy
        (``marshal``: a microsecond, where JSON takes ten) is what it takes to publish the
        message again: on Redis what kombu's ``QoS.append`` writes to the ``unacked``
        hash (kombu/transport/redis.py), on RabbitMQ what ``_put_back_amqp`` publishes.
        The task's result callbacks (the pool's, before Celery's own) mark it done.
        """
        pool = self.consumer.pool
        apply = pool.on_apply
        amqp = self.amqp

        def on_apply(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
            request = kwargs["accept_callback"].__self__
            if request.task.acks_late:
                return apply(*args, **kwargs)  # unacknowledged until it ends
            message = request.message
            info = message.delivery_info
            kept = (
                (message.body, message.properties) if amqp else (message._raw,)  # noqa: SLF001
            )
            try:
                copy = marshal.dumps((*kept, info.get("exchange"), info.get("routing_key")))
            except ValueError as exc:  # a header marshal cannot write
                delivered.not_kept(f"a task message cannot be copied ({exc})")
                return apply(*args, **kwargs)
            done = delivered.copied(str(message.delivery_tag), copy)
            if done is None:
                return apply(*args, **kwargs)
            callback, error_callback = kwargs["callback"], kwargs["error_callback"]

            def succeeded(*result: Any, **more: Any) -> Any:  # noqa: ANN401
                done()
                return callback(*result, **more)

            def failed(*result: Any, **more: Any) -> Any:  # noqa: ANN401
                done()
                return error_callback(*result, **more)

            return apply(*args, **{**kwargs, "callback": succeeded, "error_callback": failed})

        pool.on_apply = on_apply

    # ------------------------------------------------------------ the drain's questions

    def prestop_delay(self) -> float:
        """None here: the core's pre_stop phase already waited, readiness red."""
        return 0.0

    def stop_taking_tasks(self) -> None:
        """As the stop begins: note the tasks running; have Celery's loop close the door now.

        The tasks running now are in the report, however they end. The door is not left
        to the drain, after the pre-stop delay: a pool place that came free meanwhile
        started a task that had waited for it (gevent's door stays with the drain).
        """
        now = time.time()
        for request in list(self.state.active_requests):
            self.jobs.setdefault(request.id, _job(request, "completed", now))
        self._close_door_soon()

    def close_door(self) -> int:
        """Stop consuming and put back what was prefetched; 0: a worker takes no backlog."""
        self.door_closed = True
        now = time.time()
        # Solo: the loop may be running a task; the gated strategies keep the door shut
        # until it is free, and the door closes then.
        timeout = 0.5 if self.kind == "solo" else 5.0
        self.loop.call(self._close_door_on_loop, timeout)  # after any posted before
        for request in self.running():  # threads: taken by a thread, not yet accepted
            self.jobs.setdefault(request.id, _job(request, "completed", now))
        return 0

    def _close_door_soon(self) -> None:
        """Have the loop close the door at its next turn, once (gevent: the drain closes it).

        From the stop's thread as the stop begins, and from the loop itself as it first
        turns a task away: the loop may see the signal before the stop's thread has run.
        """
        if isinstance(self.loop, WorkerLoop) and not self.door_closed:
            self.door_closed = True
            self.loop.post(self._close_door_on_loop)

    def _close_door_on_loop(self) -> None:
        if self.door_shut:
            return  # posted by both the loop and the stop's thread
        self.door_shut = True
        consumer = self.consumer
        task_consumer = consumer.task_consumer
        if task_consumer is not None:
            with contextlib.suppress(Exception):
                task_consumer.cancel()  # kombu's basic_cancel: no more BRPOP on the queues
            self._end_pending_brpop(read_reply=False)
        semaphore = getattr(consumer.controller, "semaphore", None)
        if semaphore is not None:
            semaphore.clear()  # prefork: requests waiting for a free process never start
        unwritten = self._unwritten_jobs()
        put_back = 0
        for request in list(self.state.reserved_requests):
            if request in self.state.active_requests or not _never_started(request, unwritten):
                continue  # being written to a pool process: it runs, and the drain waits
            self._put_back_reserved(request)
            put_back += 1
        log.log(
            logging.INFO,
            "%s stopped consuming; %d prefetched task(s) put back on their queues, %d running",
            self.name,
            put_back,
            len(self.running()),
        )

    def _end_pending_brpop(self, *, read_reply: bool) -> None:
        """Redis: end the ``BRPOP`` still outstanding; a message it took goes back at once.

        kombu's cancel sends no new ``BRPOP`` but leaves the one under way (up to
        ``brpop_timeout``) to pop a message enqueued meanwhile. Read by a process that is
        ending (a second Ctrl-C), that message would be lost: popped from its queue, in
        no ``unacked`` hash. ``CLIENT UNBLOCK`` ends it now, from another connection.

        At the door (on the loop, which goes on) kombu reads the reply itself, and a
        message in it meets the closed door: put back. Read here, its reply could be
        the one the loop's current poll already found, and kombu's ``_brpop_read`` would
        then wait forever on the socket, the loop with it (1 run in 45 under load). At
        a forced end (``read_reply``: the loop never runs again) it is read here, and a
        message in it pushed back where ``BRPOP`` took it.
        """
        if self.amqp or self.consumer.task_consumer is None:
            return
        channel = self.consumer.task_consumer.channel
        polling = getattr(channel, "_in_poll", None)  # kombu/transport/redis.py: Channel
        if not polling or channel.connection.cycle._in_protected_read:  # noqa: SLF001
            return  # none, or its reply half read by the loop this handler interrupted
        try:
            with channel.conn_or_acquire() as client:
                address = polling._sock.getsockname()  # noqa: SLF001  # redis-py Connection
                here = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else None
                for entry in client.client_list():
                    if entry.get("addr") == here:
                        client.client_unblock(entry["id"])
                if not read_reply:
                    return
                if not polling.can_read(timeout=_ANSWER_WAIT):
                    return  # not found to unblock (a Unix socket), and no message came
                reply = channel.client.parse_response(polling, "BRPOP")
                channel._in_poll = None  # noqa: SLF001  # as kombu's _brpop_read leaves it
                if not reply:
                    return
                key, payload = reply
                prefix = (getattr(channel, "global_keyprefix", None) or "").encode()
                client.rpush(key[len(prefix) :] if prefix else key, payload)  # where it was
        except Exception as exc:  # the stop goes on: one line says what
            logger.warning("%s: its last BRPOP could not be ended: %r", self.name, exc)
            return
        log.log(logging.INFO, "%s: the message its last BRPOP took put back", self.name)

    def _unwritten_jobs(self) -> set[int]:
        """Prefork: take the jobs no pool process has seen out of the pool; their ids.

        ``AsynPool.outbound_buffer`` (asynpool.py) holds the jobs waiting for a
        process's pipe to be writable; one a writer has begun, or a process has,
        is not there. (``AsynPool.flush`` drops more: every job whose acceptance
        has not come back yet, some already running in a process.)
        """
        inner = getattr(self.consumer.pool, "_pool", None)  # celery/concurrency/prefork.py
        outbound = getattr(inner, "outbound_buffer", None)
        if self.kind != "prefork" or outbound is None:
            return set()
        taken = set()
        for job in list(outbound):
            outbound.remove(job)
            job.discard()  # billiard/pool.py: out of the pool's cache
            taken.add(id(job))
        return taken

    def running(self) -> list[Celery]:
        """The requests running: accepted by a pool process or the solo main thread.

        Threads, once the door is closed: every reserved request left, as the ones no
        thread had taken went back, and a thread may have taken one it has not accepted.
        """
        if self.kind in ("threads", "gevent") and self.door_closed:
            return list(self.state.reserved_requests)
        return list(self.state.active_requests)

    def in_flight(self) -> int:
        """Tasks running."""
        return len(self.running())

    def wait_idle(self, timeout: float) -> bool:
        """Until no task runs and their acknowledgements have gone out (up to ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            self._note_finished()
            if not self.running():
                break
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(_POLL, max(0.0, deadline - time.monotonic())))
        # One turn of the loop: the acks Celery queued when the last task finished go out.
        return self.loop.call(lambda: None, max(0.1, deadline - time.monotonic()))

    def close_idle(self) -> None:
        """Nothing: a worker keeps no idle connections to close."""

    def cancel(self) -> int:
        """Stop each task still running, put it back on its queue at once; how many."""
        requests = self.running()
        if not requests:
            return 0
        if self.kind == "solo":
            return self._cancel_solo(requests)
        if self.kind == "threads":
            return self._cancel_threads(requests)
        if self.kind == "gevent":
            return self._cancel_greenlets(requests)
        if self.kind != "prefork" or self.answers is None:
            log.log(logging.ERROR, "%s: %s pool tasks cannot be stopped", self.name, self.kind)
            return 0
        return self._cancel_prefork(requests)

    def _cancel_prefork(self, requests: list[Celery]) -> int:
        """Each pool process running a task is asked to stop it; it answers whether it did."""
        by_pid = {request.worker_pid: request for request in requests if request.worker_pid}
        for pid in by_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, STOP_SIGNAL)
        answers = self._read_answers(set(by_pid), _ANSWER_WAIT)
        stopped = []
        for pid, request in by_pid.items():
            answer = answers.get(pid)
            if answer is None:  # stuck in C code, or the signal was blocked: no choice
                log.log(logging.ERROR, "pool process %d did not answer; killed (SIGKILL)", pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            elif not answer:
                continue  # it had just finished; its result is on its way
            self.put_back(request)
            stopped.append(request)

        def bookkeeping() -> None:
            pool = self.consumer.pool
            for request in stopped:
                # Celery's own cancel: no ack, no failure recorded, off the active list.
                request.cancel(pool, signal=STOP_SIGNAL, emit_retry=False)

        self.loop.call(bookkeeping, 2.0)
        return len(stopped)

    def _cancel_solo(self, requests: list[Celery]) -> int:
        """The solo pool runs the task on the main thread: stop it there, then put it back."""
        main = self.main_ident
        if main is None:
            return 0
        signal.pthread_kill(main, STOP_SIGNAL)
        deadline = time.monotonic() + _ANSWER_WAIT
        while not (self.frozen.is_set() or self.finished.is_set()):
            if time.monotonic() >= deadline:
                log.log(
                    logging.ERROR,
                    "%s: the main thread did not stop its task within %.1f s (in C code?); "
                    "put back all the same, and the process ends when the stop does",
                    self.name,
                    _ANSWER_WAIT,
                )
                break
            self.frozen.wait(_POLL)
        if self.finished.is_set() and not self.frozen.is_set():
            return 0  # it had just finished: acknowledged as done, not put back
        for request in requests:
            self.put_back(request)
        return len(requests)

    def _cancel_threads(self, requests: list[Celery]) -> int:
        """A thread cannot be stopped: put its task back, and let it go no further.

        A request no thread runs now has either not begun (it will, within a moment) or
        just finished (it leaves the reserved list within a moment): wait to tell which.
        """
        reserved = self.state.reserved_requests
        deadline = time.monotonic() + _ANSWER_WAIT
        while time.monotonic() < deadline and any(
            r.id not in _running.threads and r in reserved for r in requests
        ):
            time.sleep(_POLL)
        requests = [request for request in requests if request in reserved]
        if not requests:
            return 0
        self.frozen.set()
        for request in requests:
            _stop_thread(request.id)
            self.put_back(request)

        def bookkeeping() -> None:
            for request in requests:
                self.state.task_ready(request)  # off the reserved and active lists

        self.loop.call(bookkeeping, 2.0)
        return len(requests)

    def _cancel_greenlets(self, requests: list[Celery]) -> int:
        """Kill each task's greenlet (``GreenletExit``, as Celery's ``terminate_job``); put it back.

        One whose greenlet had not begun never will: put back too. One that completed
        as the kill came was acknowledged as done: not put back.
        """
        import gevent  # noqa: PLC0415  # a gevent pool only

        greenlets = {}
        for request in requests:
            ref = getattr(request, "_apply_result", None)  # celery/worker/request.py
            greenlet = ref() if ref is not None else None
            if greenlet is not None:
                greenlets[request.id] = (greenlet, bool(greenlet) or greenlet.dead)  # begun?
        gevent.killall([g for g, _ in greenlets.values()], block=True, timeout=_ANSWER_WAIT)
        put_back = 0
        for request in requests:
            greenlet, begun = greenlets.get(request.id, (None, False))
            if greenlet is not None and not greenlet.dead:
                log.log(
                    logging.ERROR,
                    "%s: task %s[%s] did not stop within %.1f s (a greenlet that never "
                    "yields?); put back all the same",
                    self.name,
                    request.name,
                    request.id,
                    _ANSWER_WAIT,
                )
            elif begun and request.id not in self.green_stopped:
                continue  # it had just completed: acknowledged as done
            self.put_back(request)
            self.state.task_ready(request)
            put_back += 1
        return put_back

    def _solo_stop_requested(self, _signum: int, _frame: object) -> None:
        """On the solo main thread: the task that runs never resumes."""
        if _running.stopping:
            return
        if _current_task() is None:
            self.finished.set()
            return
        _running.stopping = True
        self.frozen.set()
        while True:  # the stop's end wakes this thread with its signal, and ends the process
            time.sleep(1.0)

    def _read_answers(self, pids: set[int], timeout: float) -> dict[int, bool]:
        answers: dict[int, bool] = {}
        fd = self.answers
        assert fd is not None  # noqa: S101  # checked by the caller
        deadline = time.monotonic() + timeout
        buffer = b""
        while pids - answers.keys():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            with contextlib.suppress(BlockingIOError):
                buffer += os.read(fd, 4096)
            while len(buffer) >= _ANSWER.size:
                pid, stopped = _ANSWER.unpack(buffer[: _ANSWER.size])
                buffer = buffer[_ANSWER.size :]
                answers[pid] = bool(stopped)
        return answers

    # ------------------------------------------------------------ putting back

    def put_back(self, request: Celery, why: str = "the drain budget ran out") -> None:
        """Put ``request``'s message back on its queue now (Redis: at its head)."""
        message = request.message
        tag = message.delivery_tag
        if tag in self.put_back_tags:
            return
        self.put_back_tags.add(tag)
        request.acknowledged = True  # Celery must neither ack nor reject it any more
        if self.delivered is not None:
            self.delivered.done(str(tag))  # never published again by the last resort
        if self.amqp:
            self._put_back_amqp(message)
        else:
            self._put_back_redis(message)
        self.note(request, "requeued", time.time())
        log.log(
            logging.WARNING,
            "task %s[%s] put back on its queue after %.1f s: %s",
            request.name,
            request.id,
            self.jobs[request.id]["seconds"],
            why,
        )

    @staticmethod
    def _put_back_redis(message: Celery) -> None:
        """Out of the unacked hash and pushed at the head of its queue, in one ``MULTI``."""
        tag = message.delivery_tag
        channel = message.channel
        qos = channel.qos
        info = message.delivery_info
        exchange, routing_key = info.get("exchange"), info.get("routing_key")

        def transaction(pipe: Celery) -> None:
            pipe.multi()
            pipe.zrem(qos.unacked_index_key, tag).hdel(qos.unacked_key, tag)
            channel._do_restore_message(message._raw, exchange, routing_key, pipe)  # noqa: SLF001

        with channel.conn_or_acquire() as client:
            client.transaction(transaction, qos.unacked_key)
        qos._quick_ack(tag)  # noqa: SLF001  # not restored again when the channel closes

    def _put_back_amqp(self, message: Celery) -> None:
        """RabbitMQ: rejected with requeue if unacknowledged, else published again.

        Acknowledged: without ``acks_late``, or by Celery as the task's process was lost.
        A channel is used by Celery's loop only: the reject runs there (or here, when the
        solo main thread is parked where its task was stopped). From a signal handler (a
        second SIGINT) the unacknowledged ones are left to the connection's close, which
        RabbitMQ answers by requeueing them at once; the process ends right after.
        """

        def restore() -> None:
            if not message.acknowledged:
                message.reject(requeue=True)
                return
            info = message.delivery_info
            with self.consumer.app.connection_for_write() as connection:  # thread-safe: its own
                _publish_amqp(
                    connection.default_channel,
                    message.body,
                    message.properties,
                    info.get("exchange"),
                    info.get("routing_key"),
                )

        if self.forcing:
            if message.acknowledged:
                restore()
        elif threading.get_ident() == self.main_ident or self.frozen.is_set():
            restore()
        else:
            self.loop.call(restore, 2.0)

    def force(self) -> None:
        """A second Ctrl-C: end every pool process, put back every task not done; now.

        In a signal handler on the main thread, which runs Celery's loop: nothing else
        touches Celery's state meanwhile.
        """
        self.forcing = True
        self._end_pending_brpop(read_reply=True)
        inner = getattr(self.consumer.pool, "_pool", None)
        for process in list(getattr(inner, "_pool", None) or ()):  # billiard/pool.py
            with contextlib.suppress(ProcessLookupError, TypeError):
                os.kill(process.pid, signal.SIGKILL)
        # Reserved requests include the active ones (celery/worker/state.py).
        pending = {r.id: r for r in [*self.state.reserved_requests, *self.state.active_requests]}
        for request in pending.values():
            _stop_thread(request.id)
            with contextlib.suppress(Exception):
                self.put_back(request, "forced (a second SIGINT)")
        log.log(
            logging.ERROR,
            "%s: forced; %d task(s) put back on their queues",
            self.name,
            len(pending),
        )

    # ------------------------------------------------------------ after the drain

    def stop_celery(self, timeout: float) -> bool:
        """Let Celery's own warm shutdown close the pool and the connection; whether it did."""
        if self.frozen.is_set():
            return False  # a stopped task holds the main thread (solo) or a thread

        def stop() -> None:
            self.state.should_stop = 0  # state.maybe_shutdown() raises WorkerShutdown(0)

        self.loop.call(stop, timeout)
        return self.celery_stopped.wait(timeout)

    # ------------------------------------------------------------ the report

    def _note_finished(self) -> None:
        now = time.time()
        running = {request.id for request in self.running()}
        for task_id, job in self.jobs.items():
            if task_id not in running and job.get("_open"):
                job["seconds"] = round(now - job.pop("_open"), 3)
                Integration(self.coordinator).note_job(
                    {k: v for k, v in job.items() if k != "_open"}
                )

    def _put_back_reserved(self, request: Celery) -> None:
        """A task received but never started: back on its queue, out of Celery's books, noted.

        Its copy for the last resort (one handed to the pool without ``acks_late``) is
        marked done after the reject: a kill in between publishes it twice, never none.
        """
        request.reject(requeue=True)
        if self.delivered is not None:
            self.delivered.done(str(request.message.delivery_tag))
        self.state.task_ready(request)
        self.note(request, "requeued", time.time())

    def _put_back_late(self, request: Celery) -> None:
        """On the loop: a task about to start once the stop signal came goes back instead."""
        self._close_door_soon()
        if request not in self.state.reserved_requests:
            return  # the door put it back already
        self._put_back_reserved(request)
        log.log(
            logging.INFO,
            "task %s[%s] not started (the stop signal came first): put back on its queue",
            request.name,
            request.id,
        )

    def note(self, request: Celery, outcome: str, now: float) -> None:
        job = self.jobs.get(request.id) or _job(request, outcome, now)
        began = job.pop("_open", None)
        job["outcome"] = outcome
        job["seconds"] = round(now - began, 3) if began else 0.0
        self.jobs[request.id] = job
        Integration(self.coordinator).note_job(dict(job))


def _job(request: Celery, outcome: str, now: float) -> dict[str, Any]:
    started = request.time_start
    entry: dict[str, Any] = {"id": request.id, "name": request.name, "outcome": outcome}
    entry["seconds"] = 0.0
    if started:
        entry["_open"] = started
    else:
        entry["_open"] = now
    return entry


def _never_started(request: Celery, unwritten: set[int]) -> bool:
    """Whether a reserved request never reached a pool process (and never will)."""
    ref = getattr(request, "_apply_result", None)  # celery/worker/request.py
    job = ref() if ref is not None else None
    if job is None:
        return True  # waiting for the semaphore
    future = getattr(job, "f", None)  # threads: celery/concurrency/thread.py ApplyResult.f
    if future is not None:
        return bool(future.cancel())  # no thread had taken it: none ever will
    return id(job) in unwritten  # taken back from the pool
