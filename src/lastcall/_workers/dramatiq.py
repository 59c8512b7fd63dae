"""Dramatiq on Redis and RabbitMQ: the adapter the drain runs through, in each worker process.

``lastcall.dramatiq`` is the face (the middleware's hooks, the start-up
lines); everything here reaches into Dramatiq, its brokers and pika, and
nothing else does. Tested with Dramatiq 1.17 to 2.2 (``versions.DRAMATIQ``).
The undocumented parts used, by the file they come from:

* ``dramatiq/worker.py``: ``Worker.consumers`` (queue name -> ``ConsumerThread``),
  ``Worker.work_queue`` (messages fetched, waiting for a worker thread; its items
  ``_WorkQueueItem`` since 2.0, ``(priority, message)`` before),
  ``ConsumerThread.consumer`` (the broker's consumer).
* ``dramatiq/brokers/redis.py``: ``_RedisConsumer.prefetch`` (0: it fetches no
  more) and ``message_cache`` (fetched, not yet handed on); ``RedisBroker.do_fetch``
  (any call of the broker's script renews this worker's heartbeat).
* ``dramatiq/brokers/rabbitmq.py``: ``_RabbitmqConsumer.connection``, ``channel``,
  ``known_tags``; ``_RabbitmqMessage._tag`` (the delivery tag).
* ``pika/adapters/blocking_connection.py``: ``BlockingChannel._impl`` and
  ``_queue_consumer_generator.consumer_tag`` (to cancel the consumer while the
  generator Dramatiq iterates lives on).

How the door closes: Redis: each consumer's ``prefetch`` goes to 0 and what it
had fetched goes back (Dramatiq's own ``requeue``: out of this worker's ack
set, pushed on the queue). RabbitMQ: the consumer is cancelled on its own
thread (pika is not thread-safe), and each message delivered but not started
is rejected with requeue. Either way the consumer threads keep running, so
acknowledgements go out and heartbeats go on while running actors finish
(Redis: this worker's heartbeat is renewed every second, or another worker's
maintenance would take its messages after ``heartbeat_timeout``, dramatiq#159;
RabbitMQ: pika answers the connection's heartbeats as the consumer iterates).

A worker thread that takes a message once the door is closed never starts it:
it puts it back and parks until the process ends. An actor still running when
the budget ends is put back the same way; its thread gets an exception (as
Dramatiq's ``TimeLimit`` raises one) and parks before Dramatiq could
acknowledge or retry it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, TypeAlias

from lastcall._integration import Integration
from lastcall._log import log
from lastcall._servers import versions

if TYPE_CHECKING:
    from lastcall._coordinator import Coordinator

__all__ = ("TESTED", "DramatiqWorker", "Stopped")

# Dramatiq, broker and pika objects: untyped, reached by duck typing
Dramatiq: TypeAlias = Any

TESTED = versions.DRAMATIQ
_POLL = 0.02  # seconds between looks at the actors running
_HEARTBEAT_EVERY = 1.0  # seconds, Redis; Dramatiq's heartbeat_timeout is 60 s by default
_FLUSH_WAIT = 2.0  # seconds for a RabbitMQ consumer thread to send the acks queued for it


class Stopped(BaseException):  # raised in an actor's thread, like TimeLimitExceeded
    """Raised in an actor that overran the drain budget: it was put back on its queue."""


class DramatiqWorker:
    """One worker process's answers to the drain: stop consuming, wait, put back what overran."""

    def __init__(self, worker: Dramatiq, coordinator: Coordinator) -> None:
        self.worker = worker
        self.coordinator = coordinator
        self.door_closed = False
        self._lock = threading.Lock()
        # message id -> (message, thread ident, time.time() it started)
        self.running: dict[str, tuple[Dramatiq, int, float]] = {}
        self.put_back_ids: set[str] = set()
        self._park = threading.Event()  # never set: parked threads wait for the process's end
        self._last_beat = 0.0

    @property
    def name(self) -> str:
        return f"dramatiq worker process {os.getpid()}"

    # ------------------------------------------------------------ the middleware's calls

    def began(self, message: Dramatiq) -> None:
        """On a worker thread, before the actor: park instead once the door is closed."""
        if self.door_closed:
            self.put_back(message, "taken by a worker thread after the stop signal", time.time())
            self.park()
        with self._lock:
            self.running[message.message_id] = (message, threading.get_ident(), time.time())

    def ended(self, message: Dramatiq) -> None:
        """On the worker thread, the actor returned or raised: park if it was put back."""
        if message.message_id in self.put_back_ids:
            self.park()  # never acknowledged, nor retried, here

    def settled(self, message: Dramatiq) -> None:
        """Acknowledged (or rejected) by Dramatiq: no longer in flight."""
        with self._lock:
            entry = self.running.pop(message.message_id, None)
        if entry is not None and self.door_closed:
            self._note(message, "completed", entry[2])

    def park(self) -> None:
        self._park.wait()

    # ------------------------------------------------------------ the drain's questions

    def prestop_delay(self) -> float:
        """None here: the core's pre_stop phase already waited, readiness red."""
        return 0.0

    def close_door(self) -> int:
        """Stop fetching; put back what was fetched and not started; 0 (no backlog to serve)."""
        self.door_closed = True
        now = time.time()
        for consumer_thread in list(self.worker.consumers.values()):
            consumer = consumer_thread.consumer
            if consumer is None:
                continue
            if _on_rabbitmq(consumer):
                _call_on_consumer_thread(consumer, functools.partial(_cancel_consumer, consumer))
            else:
                consumer.prefetch = 0
                cached, consumer.message_cache = consumer.message_cache, []
                self._put_back_raw(consumer, cached)
        put_back = self._sweep(now)
        log.log(
            logging.INFO,
            "%s stopped consuming; %d prefetched message(s) put back on their queues, %d running",
            self.name,
            put_back,
            len(self.running),
        )
        return 0

    def in_flight(self) -> int:
        return len(self.running)

    def wait_idle(self, timeout: float) -> bool:
        """Until no actor runs and their acknowledgements are out (up to ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            self._sweep(time.time())
            self._heartbeat()
            if not self.running:
                break
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(_POLL, max(0.0, deadline - time.monotonic())))
        self.flush()
        return True

    def close_idle(self) -> None:
        """Nothing: a worker keeps no idle connections to close."""

    def cancel(self) -> int:
        """Put each actor still running back on its queue; stop its thread; how many."""
        from dramatiq.middleware.threading import raise_thread_exception  # noqa: PLC0415

        with self._lock:
            running = list(self.running.values())
            self.running.clear()
        now = time.time()
        for message, ident, began in running:
            self.put_back(message, "the drain budget ran out", began)
            # At its next bytecode (not inside sleep()), as Dramatiq's TimeLimit raises.
            raise_thread_exception(ident, Stopped)  # type: ignore[no-untyped-call]
        self._sweep(now)
        self.flush()
        return len(running)

    def force(self) -> None:
        """A second signal, in its handler: everything not done goes back, now.

        RabbitMQ requeues what the connection held when the process ends, at once.
        """
        with self._lock:
            running = list(self.running.values())
        for message, _, began in running:
            with contextlib.suppress(Exception):
                self.put_back(message, "forced (a second signal)", began)
        with contextlib.suppress(Exception):
            self._sweep(time.time())

    def flush(self) -> None:
        """RabbitMQ: wait until each consumer thread has sent what was queued for it (acks)."""
        for consumer_thread in list(self.worker.consumers.values()):
            consumer = consumer_thread.consumer
            if consumer is not None and _on_rabbitmq(consumer):
                done = threading.Event()
                _call_on_consumer_thread(consumer, done.set)
                done.wait(_FLUSH_WAIT)

    # ------------------------------------------------------------ putting back

    def _sweep(self, now: float) -> int:
        """Take every message waiting for a worker thread and put it back; how many."""
        from dramatiq.common import iter_queue  # noqa: PLC0415

        items = list(iter_queue(self.worker.work_queue))  # type: ignore[no-untyped-call]
        for item in items:
            # dramatiq/worker.py: a _WorkQueueItem since 2.0, a (priority, message) tuple before
            message = item[1] if isinstance(item, tuple) else item.message
            self.put_back(message, "prefetched, never started", now)
        return len(items)

    def put_back(self, message: Dramatiq, why: str, began: float) -> None:
        """Back on its queue now: Redis pushes it again, RabbitMQ requeues the delivery."""
        with self._lock:
            if message.message_id in self.put_back_ids:
                return
            self.put_back_ids.add(message.message_id)
        consumer = self.worker.consumers[message.queue_name].consumer
        if _on_rabbitmq(consumer):
            tag = message._tag  # noqa: SLF001  # dramatiq/brokers/rabbitmq.py
            consumer.known_tags.discard(tag)  # Dramatiq must not ack it any more
            _call_on_consumer_thread(
                consumer, functools.partial(consumer.channel.basic_nack, tag, requeue=True)
            )
        else:
            consumer.requeue([message])  # out of this worker's ack set, onto the queue
        seconds = self._note(message, "requeued", began)
        if why != "prefetched, never started":
            log.log(
                logging.WARNING,
                "message %s[%s] put back on its queue after %.1f s: %s",
                message.actor_name,
                message.message_id,
                seconds,
                why,
            )

    def _put_back_raw(self, consumer: Dramatiq, cached: list[Any]) -> None:
        """Redis: messages fetched into the consumer's cache, not yet decoded."""
        from dramatiq.message import Message  # noqa: PLC0415

        messages = [Message.decode(data) for data in cached if data is not None]
        if messages:
            consumer.requeue(messages)
        now = time.time()
        for message in messages:
            self.put_back_ids.add(message.message_id)
            self._note(message, "requeued", now)

    def _heartbeat(self) -> None:
        """Redis: renew this worker's heartbeat (the consumers fetch no more, which did it)."""
        now = time.monotonic()
        if now - self._last_beat < _HEARTBEAT_EVERY:
            return
        self._last_beat = now
        for queue_name, consumer_thread in list(self.worker.consumers.items()):
            consumer = consumer_thread.consumer
            if consumer is not None and not _on_rabbitmq(consumer):
                with contextlib.suppress(Exception):
                    consumer.broker.do_fetch(queue_name, 0)
                return  # one call renews the heartbeat for every queue

    def _note(self, message: Dramatiq, outcome: str, began: float) -> float:
        seconds = round(max(0.0, time.time() - began), 3)
        Integration(self.coordinator).note_job(
            {
                "id": message.message_id,
                "name": message.actor_name,
                "queue": message.queue_name,
                "outcome": outcome,
                "seconds": seconds,
            }
        )
        return seconds


def _on_rabbitmq(consumer: Dramatiq) -> bool:
    return hasattr(consumer, "known_tags")  # dramatiq/brokers/rabbitmq.py: _RabbitmqConsumer


def _call_on_consumer_thread(consumer: Dramatiq, func: Any) -> None:  # noqa: ANN401
    """Run ``func`` on the consumer thread (pika's connection is that thread's) as it iterates."""
    with contextlib.suppress(Exception):  # a closed connection requeues on its own
        consumer.connection.add_callback_threadsafe(func)


def _cancel_consumer(consumer: Dramatiq) -> None:
    """On the consumer thread: no more deliveries; the generator Dramatiq iterates lives on.

    ``BlockingChannel.cancel()`` would end that generator, and Dramatiq would then
    close the connection (every unacknowledged message back to the queue, the
    running ones too) and start consuming again. What arrives after the cancel,
    pika rejects with requeue itself.
    """
    channel = consumer.channel
    generator = channel._queue_consumer_generator  # noqa: SLF001
    if generator is not None:
        channel._impl.basic_cancel(generator.consumer_tag)  # noqa: SLF001
