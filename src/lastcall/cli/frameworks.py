"""What the worker drill runs and looks at, per framework: the demo worker, enqueueing, the queue.

One class per framework (as ``servers.py`` has one entry per HTTP server):
its pools (``--pool``: how the worker runs its jobs, the first one the
framework's default) and brokers, the demo worker's command line (``lastcall``
or ``--plain``), how the drill enqueues the demo job on the broker, and where
a job not completed is now: ``queued`` (on its queue: any worker may take it)
or ``held`` (delivered and not acknowledged: back only after the broker's
timeout, or never). On RabbitMQ, which tells how many messages a queue holds
but not which, the queued ones are counted, not named, and none is held once
its worker's connection is gone (RabbitMQ puts its messages back then). The
framework's client library is imported when a drill begins, in the drill's
own interpreter; a missing one is one line.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
from typing import Any, ClassVar

from lastcall.cli import demo_jobs
from lastcall.cli.broker import AMQP_SCHEMES

QUEUED = "queued"
HELD = "held"


class Framework:
    """The demo worker's command, enqueueing, and the queue's state, for one framework."""

    name: ClassVar[str]
    extra: ClassVar[str]  # lastcall's extra that installs it
    default_queue: ClassVar[str]
    pools: ClassVar[tuple[str, ...]]  # --pool's choices, the default first
    amqp_too: ClassVar[bool] = True  # RabbitMQ as well as Redis

    def __init__(self, broker: str, queue: str) -> None:
        self.broker = broker
        self.queue = queue
        self.amqp = broker.startswith(AMQP_SCHEMES)

    @classmethod
    def installed_pools(cls) -> list[str]:
        """The pools that run here (gevent's only where gevent is installed)."""
        return [p for p in cls.pools if p != "gevent" or importlib.util.find_spec("gevent")]

    @classmethod
    def pool_problem(cls, pool: str) -> str | None:
        """One line when ``pool`` is not one of this framework's, or does not run here."""
        if pool not in cls.pools:
            return f"--pool {pool} is not one of {cls.name}'s; choose one of {', '.join(cls.pools)}"
        if pool not in cls.installed_pools():
            return f"--pool {pool} needs {pool}, which is not installed: pip install {pool}"
        return None

    @classmethod
    def missing(cls) -> str | None:
        """One line when the framework cannot be imported here."""
        try:
            __import__(cls.name)
        except ImportError:
            return f"{cls.name} is not installed: pip install 'lastcall[{cls.extra}]'"
        return None

    def demo_argv(self, *, plain: bool, nodename: str, pool: str) -> list[str]:
        """The command that starts the demo worker."""
        raise NotImplementedError

    def enqueue(self, n: int, seconds: float, again: float) -> str:
        """Put job ``n`` on the queue; its id on the broker."""
        raise NotImplementedError

    def where(self, ids: list[str]) -> dict[str, str]:
        """Of ``ids`` (not completed, not running), those ``queued`` or ``held`` now.

        The others are on the broker no more. On RabbitMQ the first of ``ids`` are
        counted as queued, as many as its queues hold.
        """
        if self.amqp:
            return dict.fromkeys(ids[: self.ready()], QUEUED)
        return self.where_on_redis(ids)

    def where_on_redis(self, ids: list[str]) -> dict[str, str]:
        """``where`` on Redis, by each id."""
        raise NotImplementedError

    def ready(self) -> int:
        """On RabbitMQ: the messages waiting on the drill's queue (its delay queue too)."""
        raise NotImplementedError

    def close(self) -> None:
        """The drill's connections to the broker."""


class RQ(Framework):
    """RQ: ``rq worker --worker-class lastcall.rq.Worker``, one job at a time, in a work horse."""

    name = "rq"
    extra = "rq"
    default_queue = "default"
    pools = ("fork", "simple")  # Worker: a work horse forked per job; SimpleWorker: none
    amqp_too = False
    FUNCTION = "lastcall.cli.demo_jobs.work"
    _CLASSES: ClassVar[dict[tuple[str, bool], str]] = {
        ("fork", False): "lastcall.rq.Worker",
        ("fork", True): "rq.worker.Worker",
        ("simple", False): "lastcall.rq.SimpleWorker",
        ("simple", True): "rq.worker.SimpleWorker",
    }

    def __init__(self, broker: str, queue: str) -> None:
        super().__init__(broker, queue)
        import redis  # noqa: PLC0415  # the framework's own dependency
        from rq import Queue  # noqa: PLC0415

        self._redis = redis.Redis.from_url(broker)
        self._queue = Queue(queue, connection=self._redis)

    def demo_argv(self, *, plain: bool, nodename: str, pool: str) -> list[str]:
        """``rq worker``, its settings module the demo's (where its hook is registered)."""
        worker = self._CLASSES[pool, plain]
        return [sys.executable, "-m", "rq.cli", "worker", "--url", self.broker,
                "--worker-class", worker, "--config", "lastcall.cli.demo_jobs",
                "--name", nodename, self.queue]  # fmt: skip

    def enqueue(self, n: int, seconds: float, again: float) -> str:
        """By the function's name: any RQ worker can import it."""
        return str(self._queue.enqueue(self.FUNCTION, n, seconds, again).id)

    def where_on_redis(self, ids: list[str]) -> dict[str, str]:
        """By each job's status: ``started`` with no process running it is held."""
        from rq.job import Job  # noqa: PLC0415

        found = {}
        for job in Job.fetch_many(ids, connection=self._redis):
            status = None if job is None else job.get_status(refresh=False)
            if status in ("queued", "deferred", "scheduled"):
                found[job.id] = QUEUED  # type: ignore[union-attr]
            elif status == "started":
                found[job.id] = HELD  # type: ignore[union-attr]  # in StartedJobRegistry
        return found

    def close(self) -> None:
        """The drill's connection."""
        self._redis.close()


class Celery(Framework):
    """Celery: ``celery -A lastcall.cli.demo_celery worker -P POOL``, 4 at once (solo: 1)."""

    name = "celery"
    extra = "celery"
    default_queue = "celery"
    pools = ("prefork", "threads", "solo", "gevent")
    concurrency = 4  # the demo worker's processes, threads or greenlets

    def __init__(self, broker: str, queue: str) -> None:
        super().__init__(broker, queue)
        import celery  # noqa: PLC0415

        self._app = celery.Celery("lastcall-drill-client", broker=broker, set_as_current=False)
        self._redis: Any = None
        self._amqp: Any = None  # a kombu connection, for the queue's count
        if not self.amqp:
            import redis  # noqa: PLC0415

            self._redis = redis.Redis.from_url(broker)

    def demo_argv(self, *, plain: bool, nodename: str, pool: str) -> list[str]:  # noqa: ARG002  # the app's
        """The demo app (``LastCall(app)`` in it unless ``--plain``) on ``pool``."""
        concurrency = 1 if pool == "solo" else self.concurrency
        return [sys.executable, "-m", "celery", "-A", "lastcall.cli.demo_celery", "worker",
                "--loglevel", "INFO", "--pool", pool, "--concurrency", str(concurrency),
                "--without-mingle", "--without-gossip", "--hostname", f"{nodename}@%h"]  # fmt: skip

    def enqueue(self, n: int, seconds: float, again: float) -> str:
        """By the task's name: any worker that imports ``demo_celery`` has it."""
        task, args = demo_jobs.CELERY_TASK, (n, seconds, again)
        sent = self._app.send_task(task, args=args, queue=self.queue)
        return str(sent.id)

    def where_on_redis(self, ids: list[str]) -> dict[str, str]:
        """On kombu's Redis transport: a list for the queue, ``unacked`` for delivered ones."""
        wanted = set(ids)
        found = {}
        for raw in self._redis.lrange(self.queue, 0, -1):
            task = _celery_id(json.loads(raw))
            if task in wanted:
                found[task] = QUEUED
        for raw in self._redis.hvals("unacked"):
            task = _celery_id(json.loads(raw)[0])
            if task in wanted:
                found.setdefault(task, HELD)
        return found

    def ready(self) -> int:
        """A passive declare of the queue: its count of messages ready (0 if not declared yet)."""
        if self._amqp is None:
            self._amqp = self._app.connection_for_write()
        channel = self._amqp.channel()
        try:
            return int(channel.queue_declare(queue=self.queue, passive=True).message_count)
        except self._amqp.channel_errors:  # NOT_FOUND: no worker or message declared it yet
            return 0
        finally:
            with contextlib.suppress(Exception):
                channel.close()

    def close(self) -> None:
        """The drill's connections."""
        for connection in (self._redis, self._amqp):
            if connection is not None:
                connection.close()
        self._app.close()


def _celery_id(message: dict[str, Any]) -> str | None:
    task = message.get("headers", {}).get("id")
    return None if task is None else str(task)


class Dramatiq(Framework):
    """Dramatiq: ``python -m lastcall.dramatiq lastcall.cli.demo_dramatiq``, 4 threads.

    In 1 process (``threads``) or 2 (``processes``). Plain: ``dramatiq`` (``python -m
    dramatiq``), whose main process exits with its workers' status, 143 after Ctrl-C too.
    """

    name = "dramatiq"
    extra = "dramatiq"
    default_queue = "default"
    pools = ("threads", "processes")
    _OPTIONS: ClassVar[dict[str, list[str]]] = {
        "threads": ["--processes", "1", "--threads", "4"],
        "processes": ["--processes", "2", "--threads", "2"],
    }
    _NAMESPACE = "dramatiq"  # RedisBroker's default

    def __init__(self, broker: str, queue: str) -> None:
        super().__init__(broker, queue)
        if self.amqp:
            from dramatiq.brokers.rabbitmq import RabbitmqBroker  # noqa: PLC0415

            self._broker: Any = RabbitmqBroker(url=broker)
        else:
            from dramatiq.brokers.redis import RedisBroker  # noqa: PLC0415

            self._broker = RedisBroker(url=broker)  # type: ignore[no-untyped-call]

    def demo_argv(self, *, plain: bool, nodename: str, pool: str) -> list[str]:  # noqa: ARG002  # the app's
        """The demo module (its broker with lastcall's middleware unless ``--plain``)."""
        command = "dramatiq" if plain else "lastcall.dramatiq"
        return [sys.executable, "-m", command, "lastcall.cli.demo_dramatiq",
                *self._OPTIONS[pool]]  # fmt: skip

    def enqueue(self, n: int, seconds: float, again: float) -> str:
        """By the actor's name: it is declared in the worker, not here."""
        from dramatiq import Message  # noqa: PLC0415

        message: Any = Message(
            queue_name=self.queue,
            actor_name=demo_jobs.DRAMATIQ_ACTOR,
            args=(n, seconds, again),
            kwargs={},
            options={},
        )
        sent = self._broker.enqueue(message)
        return str(sent.message_id if self.amqp else sent.options["redis_message_id"])

    def ready(self) -> int:
        """The queue's messages and its delay queue's (Dramatiq's own count)."""
        ready, delayed, _ = self._broker.get_queue_message_counts(self.queue)
        return int(ready) + int(delayed)

    def where_on_redis(self, ids: list[str]) -> dict[str, str]:
        """The queue (and its delay queue) are lists of ids; delivered ids wait in ack sets."""
        client = self._broker.client
        wanted = set(ids)
        space, queue = self._NAMESPACE, self.queue
        found = {}
        for key in (f"{space}:{queue}", f"{space}:{queue}.DQ"):
            found.update(dict.fromkeys(wanted & set(_texts(client.lrange(key, 0, -1))), QUEUED))
        for key in client.scan_iter(match=f"{space}:__acks__.*.{queue}"):
            for message in wanted & set(_texts(client.smembers(key))):
                found.setdefault(message, HELD)
        return found

    def close(self) -> None:
        """The drill's connections."""
        self._broker.close()


def _texts(values: Any) -> list[str]:  # noqa: ANN401  # redis-py's replies
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


FRAMEWORKS: dict[str, type[Framework]] = {f.name: f for f in (RQ, Celery, Dramatiq)}
