"""What the worker drill runs and looks at, per framework: the demo worker, enqueueing, the queue.

One class per framework (as ``servers.py`` has one entry per HTTP server):
the demo worker's command line (``lastcall`` or ``--plain``), how the drill
enqueues the demo job on the broker, and where a job not completed is now:
``queued`` (on its queue: any worker may take it) or ``held`` (delivered and
not acknowledged: back only after the broker's timeout, or never). The
framework's client library is imported when a drill begins, in the drill's
own interpreter; a missing one is one line.
"""

from __future__ import annotations

import json
import secrets
import sys
from typing import Any, ClassVar

from lastcall.cli import demo_jobs
from lastcall.cli.plan import DrillError

QUEUED = "queued"
HELD = "held"


class Framework:
    """The demo worker's command, enqueueing, and the queue's state, for one framework."""

    name: ClassVar[str]
    extra: ClassVar[str]  # lastcall's extra that installs it
    default_queue: ClassVar[str]

    def __init__(self, broker: str, queue: str) -> None:
        self.broker = broker
        self.queue = queue

    @classmethod
    def missing(cls) -> str | None:
        """One line when the framework cannot be imported here."""
        try:
            __import__(cls.name)
        except ImportError:
            return f"{cls.name} is not installed: pip install 'lastcall[{cls.extra}]'"
        return None

    def demo_argv(self, *, plain: bool, nodename: str) -> list[str]:
        """The command that starts the demo worker."""
        raise NotImplementedError

    def enqueue(self, n: int, seconds: float, again: float) -> str:
        """Put job ``n`` on the queue; its id on the broker."""
        raise NotImplementedError

    def where(self, ids: list[str]) -> dict[str, str]:
        """Of ``ids``, those ``queued`` or ``held`` now; the others are on the broker no more."""
        raise NotImplementedError

    def close(self) -> None:
        """The drill's connections to the broker."""


class RQ(Framework):
    """RQ: ``rq worker --worker-class lastcall.rq.Worker``, one job at a time, in a work horse."""

    name = "rq"
    extra = "rq"
    default_queue = "default"
    FUNCTION = "lastcall.cli.demo_jobs.work"

    def __init__(self, broker: str, queue: str) -> None:
        super().__init__(broker, queue)
        import redis  # noqa: PLC0415  # the framework's own dependency
        from rq import Queue  # noqa: PLC0415

        self._redis = redis.Redis.from_url(broker)
        self._queue = Queue(queue, connection=self._redis)

    def demo_argv(self, *, plain: bool, nodename: str) -> list[str]:
        """``rq worker``, its settings module the demo's (where its hook is registered)."""
        worker = "rq.worker.Worker" if plain else "lastcall.rq.Worker"
        return [sys.executable, "-m", "rq.cli", "worker", "--url", self.broker,
                "--worker-class", worker, "--config", "lastcall.cli.demo_jobs",
                "--name", nodename, self.queue]  # fmt: skip

    def enqueue(self, n: int, seconds: float, again: float) -> str:
        """By the function's name: any RQ worker can import it."""
        return str(self._queue.enqueue(self.FUNCTION, n, seconds, again).id)

    def where(self, ids: list[str]) -> dict[str, str]:
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
    """Celery on Redis: ``celery -A lastcall.cli.demo_celery worker``, 4 prefork processes."""

    name = "celery"
    extra = "celery"
    default_queue = "celery"
    concurrency = 4  # the demo worker's processes

    def __init__(self, broker: str, queue: str) -> None:
        super().__init__(broker, queue)
        import celery  # noqa: PLC0415
        import redis  # noqa: PLC0415

        self._app = celery.Celery("lastcall-drill-client", broker=broker, set_as_current=False)
        self._redis = redis.Redis.from_url(broker)

    def demo_argv(self, *, plain: bool, nodename: str) -> list[str]:  # noqa: ARG002  # the app's
        """The demo app (``LastCall(app)`` in it unless ``--plain``), 4 prefork processes."""
        return [sys.executable, "-m", "celery", "-A", "lastcall.cli.demo_celery", "worker",
                "--loglevel", "INFO", "--concurrency", str(self.concurrency),
                "--without-mingle", "--without-gossip", "--hostname", f"{nodename}@%h"]  # fmt: skip

    def enqueue(self, n: int, seconds: float, again: float) -> str:
        """By the task's name: any worker that imports ``demo_celery`` has it."""
        task, args = demo_jobs.CELERY_TASK, (n, seconds, again)
        sent = self._app.send_task(task, args=args, queue=self.queue)
        return str(sent.id)

    def where(self, ids: list[str]) -> dict[str, str]:
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

    def close(self) -> None:
        """The drill's connections."""
        self._redis.close()
        self._app.close()


def _celery_id(message: dict[str, Any]) -> str | None:
    task = message.get("headers", {}).get("id")
    return None if task is None else str(task)


class Dramatiq(Framework):
    """Dramatiq on Redis: ``python -m lastcall.dramatiq lastcall.cli.demo_dramatiq``, 1 x 4 threads.

    Plain: ``dramatiq`` (``python -m dramatiq``), whose main process exits with its
    workers' status, 143 after Ctrl-C too.
    """

    name = "dramatiq"
    extra = "dramatiq"
    default_queue = "default"
    concurrency = 4  # the demo worker's threads
    _NAMESPACE = "dramatiq"  # RedisBroker's default

    def __init__(self, broker: str, queue: str) -> None:
        super().__init__(broker, queue)
        from dramatiq.brokers.redis import RedisBroker  # noqa: PLC0415

        self._broker = RedisBroker(url=broker)  # type: ignore[no-untyped-call]

    def demo_argv(self, *, plain: bool, nodename: str) -> list[str]:  # noqa: ARG002  # the app's
        """The demo module (its broker with lastcall's middleware unless ``--plain``)."""
        command = "dramatiq" if plain else "lastcall.dramatiq"
        return [sys.executable, "-m", command, "lastcall.cli.demo_dramatiq",
                "--processes", "1", "--threads", str(self.concurrency)]  # fmt: skip

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
        return str(self._broker.enqueue(message).options["redis_message_id"])

    def where(self, ids: list[str]) -> dict[str, str]:
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


class Records:
    """The demo job's records in Redis (``demo_jobs``), keyed by job number, read by the drill."""

    def __init__(self, url: str) -> None:
        """Connect, and see Redis answer: a broker that does not is one line, before any worker."""
        import redis  # noqa: PLC0415  # every framework here brings redis-py

        try:
            self._client = redis.Redis.from_url(url, decode_responses=True)
            self._client.ping()
        except (ValueError, redis.RedisError) as exc:
            raise DrillError(
                f"--broker {url}: no Redis answers there ({exc}); start it or fix the URL, or "
                "leave out --broker for a private redis-server"
            ) from None
        self.keys = f"lastcall-drill:{secrets.token_hex(4)}:"  # this drill's, on any broker

    def started(self, n: int) -> bool:
        """Whether job ``n`` began."""
        return bool(self._client.exists(f"{self.keys}started:{n}"))

    def completed(self, n: int) -> bool:
        """Whether job ``n`` completed."""
        return bool(self._client.exists(f"{self.keys}completed:{n}"))

    def runs(self, jobs: int) -> list[tuple[list[str], list[str]]]:
        """Each job's ``(started, completed)`` records, lists of ``"pid time"``."""
        pipe = self._client.pipeline(transaction=False)
        for n in range(jobs):
            pipe.lrange(f"{self.keys}started:{n}", 0, -1)
            pipe.lrange(f"{self.keys}completed:{n}", 0, -1)
        replies = pipe.execute()
        return [(replies[2 * n], replies[2 * n + 1]) for n in range(jobs)]

    def close(self) -> None:
        """The records (a user's broker keeps none of the drill's), then the connection."""
        try:
            for key in self._client.scan_iter(match=f"{self.keys}*"):
                self._client.delete(key)
        finally:
            self._client.close()


FRAMEWORKS: dict[str, type[Framework]] = {f.name: f for f in (RQ, Celery, Dramatiq)}
