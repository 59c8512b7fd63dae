"""Dramatiq on Redis and RabbitMQ: the adapter the drain runs through, in each worker process.

``lastcall.dramatiq`` is the face (the middleware's hooks, the start-up
lines); everything here reaches into Dramatiq, its brokers and pika, and
nothing else does. Tested with Dramatiq 1.17 to 2.2 (``versions.DRAMATIQ``).
The undocumented parts used, by the file they come from:

* ``dramatiq/worker.py``: ``Worker.consumers`` (queue name -> ``ConsumerThread``),
  ``Worker.work_queue`` (messages fetched, waiting for a worker thread; its items
  ``_WorkQueueItem`` since 2.0, ``(priority, message)`` before),
  ``ConsumerThread.consumer`` (the broker's consumer).
* ``dramatiq/worker.py``: ``ConsumerThread.running`` (False: it ends at its next
  turn and hands nothing more on).
* ``dramatiq/brokers/redis.py``: ``_RedisConsumer.prefetch`` (0: it fetches no
  more) and ``message_cache`` (fetched, not yet handed on); ``RedisBroker.do_fetch``
  (any call of the broker's script renews this worker's heartbeat), ``namespace``,
  ``broker_id``, ``client``.
* ``dramatiq/brokers/redis/dispatch.lua``: this worker's ack set of a queue is
  ``<namespace>:__acks__.<broker_id>.<queue>``, its messages' data in
  ``<namespace>:<queue>.msgs``.
* ``dramatiq/brokers/rabbitmq.py``: ``_RabbitmqConsumer.connection``, ``channel``,
  ``known_tags``; ``_RabbitmqMessage._tag`` (the delivery tag).
* ``pika/adapters/blocking_connection.py``: ``BlockingChannel._impl`` and
  ``_queue_consumer_generator.consumer_tag`` (to cancel the consumer while the
  generator Dramatiq iterates lives on).

How the door closes: Redis: each consumer's ``prefetch`` goes to 0, its thread
is told to end, and what it had fetched goes back (Dramatiq's own ``requeue``:
out of this worker's ack set, pushed on the queue). A fetch already under way
when the door closed still lands, and a worker thread may hold a message it
took before then: so the drain is over only once the consumer threads have
ended and nothing runs, and then whatever is left in this worker's ack sets
(Redis's own record of what it holds) goes back too, delayed messages
included. Nothing is left for another worker's maintenance to find after
``heartbeat_timeout``. This worker's heartbeat is renewed every second
meanwhile, or that maintenance would take the running messages (dramatiq#159).
RabbitMQ: the consumer is cancelled on its own thread (pika is not
thread-safe), and each message delivered but not started is rejected with
requeue; the consumer threads keep running, so acknowledgements go out and pika
answers the connection's heartbeats; what the connection still holds when the
process ends, RabbitMQ requeues at once.

Dramatiq's own shutdown events run as ``Worker.stop()`` would run them, once:
``before_worker_shutdown`` when the door has closed (``ShutdownNotifications``
raises ``Shutdown`` in the ``notify_shutdown`` actors then), and
``after_worker_shutdown`` once running actors are done or put back (the
``AsyncIO`` middleware stops its event loop there). ``Worker.stop()`` itself
is not called: it would wait for every worker thread, parked ones too.

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
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, TypeAlias

from dramatiq.middleware import Interrupt

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
_FLUSH_WAIT = 2.0  # seconds for a RabbitMQ consumer thread to send the acks queued for it,
# and for actors that returned as the budget ran out to be acknowledged


class Stopped(Interrupt):  # raised in an actor's thread, like TimeLimitExceeded
    """Raised in an actor that overran the drain budget: it was put back on its queue.

    An ``Interrupt``, as Dramatiq's own are: an async actor's coroutine is then
    cancelled (``dramatiq/asyncio.py``), not left running on the event loop.
    """


class DramatiqWorker:
    """One worker process's answers to the drain: stop consuming, wait, put back what overran."""

    def __init__(self, worker: Dramatiq, coordinator: Coordinator) -> None:
        self.worker = worker
        self.coordinator = coordinator
        self.stop_requested = Integration(coordinator).stop_requested
        self.on_rabbitmq = _is_broker(worker.broker, "rabbitmq", "RabbitmqBroker")
        self.on_redis = _is_broker(worker.broker, "redis", "RedisBroker")
        self.door_closed = False
        self.stop_began = False  # from then on every actor that ends is reported
        self.fetching_stopped = False
        self.prefetched_back = 0  # fetched, never started, put back
        self._lock = threading.Lock()
        # message id -> (message, thread ident, time.time() it started), until acknowledged
        self.running: dict[str, tuple[Dramatiq, int, float]] = {}
        self.finishing: set[str] = set()  # returned, to be acknowledged: never put back
        self.put_back_ids: set[str] = set()
        self.shutdown_events: set[str] = set()  # Dramatiq's before/after_worker_shutdown, emitted
        self._park = threading.Event()  # never set: parked threads wait for the process's end
        self._parked: set[int] = set()  # their idents
        self._last_beat = 0.0

    @property
    def name(self) -> str:
        return f"dramatiq worker process {os.getpid()}"

    # ------------------------------------------------------------ the middleware's calls

    def began(self, message: Dramatiq) -> None:
        """On a worker thread, before the actor: park instead once the stop signal came.

        Under the lock the door closes with: once it has, ``running`` is all that may run.
        From the stop signal on (its handler, before the stop's thread began the stop),
        and through the pre-stop delay, no actor starts: the message goes back.
        """
        with self._lock:
            closed = self.door_closed or self.stop_requested()
            if not closed:
                self.running[message.message_id] = (message, threading.get_ident(), time.time())
        if closed:
            self.put_back(message, "taken by a worker thread after the stop signal", time.time())
            self.park()

    def ended(self, message: Dramatiq) -> None:
        """On the worker thread, the actor returned or raised: park if it was put back.

        Otherwise it is Dramatiq's to acknowledge (or retry) now, and is never put back.
        """
        with self._lock:
            put_back = message.message_id in self.put_back_ids
            if not put_back and message.message_id in self.running:
                self.finishing.add(message.message_id)
        if put_back:
            self.park()  # never acknowledged, nor retried, here

    def settled(self, message: Dramatiq) -> None:
        """Acknowledged (or rejected) by Dramatiq: no longer in flight."""
        with self._lock:
            entry = self.running.pop(message.message_id, None)
            self.finishing.discard(message.message_id)
        if entry is not None and self.stop_began:
            self._note(message, "completed", entry[2])

    def note_stop_began(self) -> None:
        """As the stop begins: every actor that ends from now on is in the report."""
        with self._lock:
            self.stop_began = True

    def park(self) -> None:
        with self._lock:
            self._parked.add(threading.get_ident())
        self._park.wait()

    def shutdown_event(self, event: str) -> bool:
        """Whether Dramatiq's ``event`` is still to be emitted; from now on it is not."""
        with self._lock:
            first = event not in self.shutdown_events
            self.shutdown_events.add(event)
        return first

    def emit_shutdown(self, when: str) -> None:
        """Dramatiq's ``before_``/``after_worker_shutdown`` to every middleware, once."""
        if self.shutdown_event(when):
            getattr(self.worker.broker, f"emit_{when}")("worker_shutdown", self.worker)

    # ------------------------------------------------------------ the drain's questions

    def prestop_delay(self) -> float:
        """None here: the core's pre_stop phase already waited, readiness red."""
        return 0.0

    def stop_fetching(self) -> None:
        """The ``pre_stop`` hook: fetch no more; what was fetched and not started goes back.

        Not left to the door, which closes after the pre-stop delay: the messages would
        wait out the delay here. Actors still start nothing (``began``). Called again at
        the door: the consumers are told once, and what was handed on since goes back too.
        """
        if not self.fetching_stopped:
            self.fetching_stopped = True
            self._stop_consumers()
        now = time.time()
        self.prefetched_back += self._put_back_cached(now) + self._sweep(now)

    def _stop_consumers(self) -> None:
        for consumer_thread in list(self.worker.consumers.values()):
            consumer = consumer_thread.consumer
            if self.on_rabbitmq:
                if consumer is not None:
                    _call_on_consumer_thread(
                        consumer, functools.partial(_cancel_consumer, consumer)
                    )
                continue
            consumer_thread.running = False  # ends at its next turn, handing nothing more on
            if consumer is not None:
                consumer.prefetch = 0

    def close_door(self) -> int:
        """Fetch no more; put back what was fetched and not started; tell the actors; 0."""
        with self._lock:
            self.door_closed = True
        self.stop_fetching()
        log.log(
            logging.INFO,
            "%s stopped consuming; %d prefetched message(s) put back on their queues, %d running",
            self.name,
            self.prefetched_back,
            len(self.running),
        )
        self.emit_shutdown("before")  # as Worker.stop() begins: notify_shutdown actors told
        return 0

    def in_flight(self) -> int:
        return len(self.running)

    def wait_idle(self, timeout: float) -> bool:
        """Until no actor runs, their acknowledgements are out and nothing is held (``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            now = time.time()
            self._put_back_cached(now)
            self._sweep(now)
            self._heartbeat()
            if not self.running and self._consumers_ended():
                break
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(_POLL, max(0.0, deadline - time.monotonic())))
        self._put_back_held(time.time())
        self.flush(self._wait_limit())
        return True

    def close_idle(self) -> None:
        """Nothing: a worker keeps no idle connections to close."""

    def cancel(self) -> int:
        """Put each actor still running back on its queue; stop its thread; how many."""
        from dramatiq.middleware.threading import raise_thread_exception  # noqa: PLC0415

        with self._lock:
            running = [e for i, e in self.running.items() if i not in self.finishing]
            for message, _, _ in running:
                self.running.pop(message.message_id)
        now = time.time()
        for message, ident, began in running:
            self.put_back(message, "the drain budget ran out", began)
            # At its next bytecode (not inside sleep()), as Dramatiq's TimeLimit raises.
            raise_thread_exception(ident, Stopped)  # type: ignore[no-untyped-call]
        # Those that returned are acknowledged in a moment; a consumer thread ends at its turn;
        # an async actor's thread cancels its coroutine (before the AsyncIO middleware's
        # after_worker_shutdown stops the loop), within Dramatiq's interrupt check and 1 s.
        stopping = {ident for _, ident, _ in running} if _event_loop_running() else set()
        deadline = self._wait_limit()
        while time.monotonic() < deadline and (
            self.running or not self._consumers_ended() or not stopping <= self._parked
        ):
            time.sleep(_POLL)
        self._put_back_cached(now)
        self._sweep(now)
        self._put_back_held(now)
        self.flush(deadline)
        return len(running)

    def force(self) -> None:
        """A second signal, in its handler: everything not done goes back, now.

        RabbitMQ requeues what the connection held when the process ends, at once.
        """
        with self._lock:
            running = list(self.running.values())
            self.running.clear()
        now = time.time()
        for message, _, began in running:
            with contextlib.suppress(Exception):
                self.put_back(message, "forced (a second signal)", began)
        with contextlib.suppress(Exception):
            self._put_back_cached(now)
            self._sweep(now)
            self._put_back_held(now)

    def _wait_limit(self) -> float:
        """Until when (monotonic) the drain's last waits may go.

        ``_FLUSH_WAIT``, or half the stop's time left if less: the phases after the
        drain (the app's cleanup hooks) still get theirs.
        """
        left = self.coordinator.time_left()
        return time.monotonic() + (_FLUSH_WAIT if left is None else min(_FLUSH_WAIT, left / 2))

    def flush(self, deadline: float) -> None:
        """RabbitMQ: wait until each consumer thread has sent what was queued for it (acks)."""
        if not self.on_rabbitmq:
            return
        for consumer_thread in list(self.worker.consumers.values()):
            consumer = consumer_thread.consumer
            if consumer is not None:
                done = threading.Event()
                _call_on_consumer_thread(consumer, done.set)
                done.wait(max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------ putting back

    def _consumers_ended(self) -> bool:
        """Redis: every consumer thread has ended, so none hands a message on any more."""
        if self.on_rabbitmq:
            return True  # they go on: acknowledgements and heartbeats are theirs to send
        return not any(thread.is_alive() for thread in list(self.worker.consumers.values()))

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
        if not self._claim(message):
            return
        consumer = self.worker.consumers[message.queue_name].consumer
        if self.on_rabbitmq:
            tag = message._tag  # noqa: SLF001  # dramatiq/brokers/rabbitmq.py
            consumer.known_tags.discard(tag)  # Dramatiq must not ack it any more
            _call_on_consumer_thread(
                consumer, functools.partial(consumer.channel.basic_nack, tag, requeue=True)
            )
        else:
            consumer.requeue([message])  # out of this worker's ack set, onto the queue
        self._requeued(message, why, began)

    def _claim(self, message: Dramatiq) -> bool:
        """Whether ``message`` is still to be put back (once only); from now on it is not."""
        with self._lock:
            first = message.message_id not in self.put_back_ids
            self.put_back_ids.add(message.message_id)
        return first

    def _requeued(self, message: Dramatiq, why: str, began: float) -> None:
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

    def _put_back_cached(self, now: float) -> int:
        """Redis: messages fetched into a consumer's cache, not yet handed on; how many."""
        if not self.on_redis:
            return 0
        from dramatiq.message import Message  # noqa: PLC0415

        count = 0
        for consumer_thread in list(self.worker.consumers.values()):
            consumer = consumer_thread.consumer
            if consumer is None or not consumer.message_cache:
                continue
            cached, consumer.message_cache = consumer.message_cache, []
            messages = [Message.decode(data) for data in cached if data is not None]
            consumer.requeue(messages)
            for message in messages:
                if self._claim(message):
                    self._note(message, "requeued", now)
                    count += 1
        return count

    def _put_back_held(self, now: float) -> None:
        """Redis: what this worker's ack sets still hold, nothing running: back on its queue.

        A message a worker thread took just before the door closed, or that a fetch
        under way brought in after, or a delayed one waiting for its time: fetched,
        never started. Left there, only another worker's maintenance would requeue
        it, after this worker's heartbeat has been gone ``heartbeat_timeout``.
        """
        if not self.on_redis:
            return
        from dramatiq.message import Message  # noqa: PLC0415

        broker = self.worker.broker
        with self._lock:  # those that returned as the budget ran out are being acknowledged
            keep = {_text(m.options.get("redis_message_id")) for m, _, _ in self.running.values()}
        for queue_name in list(self.worker.consumers):
            acks = f"{broker.namespace}:__acks__.{broker.broker_id}.{queue_name}"
            held = [i for i in broker.client.smembers(acks) if _text(i) not in keep]
            if not held:
                continue
            found = broker.client.hmget(f"{broker.namespace}:{queue_name}.msgs", held)
            broker.do_requeue(queue_name, *held)  # Dramatiq's script: each pushed once
            messages = [Message.decode(data) for data in found if data is not None]
            for message in messages:
                if self._claim(message):
                    self._note(message, "requeued", now)
            log.log(
                logging.INFO,
                "%s: %d message(s) fetched from %s and never started put back from its ack set",
                self.name,
                len(held),
                queue_name,
            )

    def _heartbeat(self) -> None:
        """Redis: renew this worker's heartbeat (the consumers fetch no more, which did it)."""
        now = time.monotonic()
        if now - self._last_beat < _HEARTBEAT_EVERY:
            return
        self._last_beat = now
        if self.on_redis:
            for queue_name in list(self.worker.consumers)[:1]:  # one renews it for every queue
                with contextlib.suppress(Exception):
                    self.worker.broker.do_fetch(queue_name, 0)

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


def _is_broker(broker: Dramatiq, module: str, name: str) -> bool:
    """``isinstance(broker, dramatiq.brokers.<module>.<name>)``, importing nothing."""
    loaded = sys.modules.get(f"dramatiq.brokers.{module}")
    return loaded is not None and isinstance(broker, getattr(loaded, name))


def _event_loop_running() -> bool:
    """Dramatiq's AsyncIO middleware runs an event loop thread here (``dramatiq/asyncio.py``)."""
    from dramatiq.asyncio import get_event_loop_thread  # noqa: PLC0415

    return get_event_loop_thread() is not None


def _text(value: str | bytes | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


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
