"""The server versions each adapter is tested with, and what happens outside them.

An adapter reaches into a few undocumented parts of its server (each named,
with the server file it comes from, where it is touched). Those drift
between releases, so every adapter states the range CI runs it against
(the oldest and the newest release, two environments: ``tests/
test_oldest_servers.py``) and checks the installed version once at
start-up. A release older than the range gets one WARNING line naming the
range and what may not be drained; a newer one, which is how every release
of a server begins its life, gets one INFO line saying what to do if a stop
misbehaves (README: "When a server release breaks an adapter"); where a
version is known not to work lastcall refuses to start instead
(``Tested.refuse_below``).

The installed version is read from the distribution's metadata, not from
the server's module, so a test can fake it with a ``.dist-info`` of its
own ahead on ``sys.path`` while the real server runs.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass

from lastcall._log import logger

__all__ = (
    "AIOHTTP",
    "CELERY",
    "DAPHNE",
    "DJANGO",
    "DRAMATIQ",
    "GEVENT",
    "GRANIAN",
    "GRPC",
    "GUNICORN",
    "GUNICORN_ASGI",
    "GUNICORN_GTHREAD",
    "HYPERCORN",
    "KOMBU",
    "RQ",
    "TORNADO",
    "UVICORN",
    "WAITRESS",
    "WERKZEUG",
    "Tested",
)


def _release(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a version string: ``"24.0.0"`` -> ``(24, 0)``."""
    major, minor = [*(int(n) for n in re.findall(r"\d+", version)[:2]), 0, 0][:2]
    return major, minor


@dataclass(frozen=True)
class Tested:
    """One server's tested range (major.minor, both ends included) and what drifts outside it."""

    distribution: str
    oldest: str
    newest: str
    at_risk: str  # what may not be drained outside the range
    refuse_below: str | None = None  # known broken below this: refuse, do not warn

    @property
    def range(self) -> str:
        """``gunicorn 24.0 to 27.0``."""
        return f"{self.distribution} {self.oldest} to {self.newest}"

    def installed(self) -> str | None:
        """The installed version, from its metadata; None if it is not installed."""
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return None

    def check(self, version: str | None = None) -> str | None:
        """Log one line if ``version`` (default: the installed one) is outside the range.

        Older: WARNING, naming what may not be drained. Newer: INFO (a new release is
        not a fault; lastcall expects it to work until shown otherwise). Returns that
        line, or None when the version is in range. Raises RuntimeError, naming the
        fix, below ``refuse_below``.
        """
        version = version or self.installed()
        if version is None:
            return None
        release = _release(version)
        if self.refuse_below is not None and release < _release(self.refuse_below):
            raise RuntimeError(
                f"lastcall: {self.distribution} {version} is not supported ({self.at_risk}); "
                f"install {self.distribution}>={self.refuse_below}"
            )
        if release < _release(self.oldest):
            line = (
                f"{self.distribution} {version} is older than the versions lastcall is tested "
                f"with ({self.range}): {self.at_risk}; install {self.distribution}>={self.oldest}"
            )
            logger.warning("%s", line)
            return line
        if release > _release(self.newest):
            major, minor = release
            line = (
                f"{self.distribution} {version} is newer than the versions lastcall is tested "
                f"with ({self.range}); if a stop misbehaves, pin "
                f"'{self.distribution}<{major}.{minor}' and tell the lastcall developers"
            )
            logger.info("%s", line)
            return line
        return None


WERKZEUG = Tested(
    "werkzeug",
    "2.3",
    "3.1",
    "the dev server's drain, reloader and backlog handling may not work",
)
# 24.0.0's master cannot replace a worker ("Unhandled signal: cld"), fixed in 24.1.
GUNICORN = Tested(
    "gunicorn",
    "24.1",
    "27.0",
    "workers may not be drained; requests in flight may be cut at a stop",
)
# gthread workers only: before 24.0 they had no method_queue and another accept().
GUNICORN_GTHREAD = Tested(
    "gunicorn",
    "24.1",
    "27.0",
    "gthread workers are drained from gunicorn 24.0 on; use sync workers or upgrade",
    refuse_below="24.0",
)
# -k asgi only: gunicorn's own ASGI worker (gunicorn/workers/gasgi.py) is stable from 25.1
# (tests/test_gunicorn_asgi.py passes on 27.0.1; refused below).
GUNICORN_ASGI = Tested(
    "gunicorn",
    "25.1",
    "27.0",
    "-k asgi is drained from gunicorn 25.1 on; upgrade gunicorn",
    refuse_below="25.1",
)
# gunicorn -k gevent: gevent/baseserver.py's socket, pool, do_read, do_handle and
# start_accepting (tests/test_gunicorn_gevent.py passes on gevent 24.10.1 with gunicorn
# 24.1.0, and on 26.9.0 with 27.0.1; gunicorn's gevent worker needs 24.10.1 or later).
GEVENT = Tested(
    "gevent",
    "24.10",
    "26.9",
    "gunicorn's gevent workers may not serve the backlog or refuse new connections at a stop",
)
# What is read and patched: waitress/server.py, waitress/channel.py, waitress/task.py;
# python -m lastcall.waitress passes its serve() as waitress/runner.py run()'s _serve
# (the same in 3.0.0 to 3.0.2 and on waitress's main branch, whose parse_args changed).
WAITRESS = Tested(
    "waitress",
    "3.0",
    "3.0",
    "the drain, which takes the backlog and closes idle connections, may not work",
)
UVICORN = Tested(
    "uvicorn",
    "0.30",
    "0.55",
    "the stop signal may reach uvicorn before lastcall's pre-stop delay",
)
# What is read: the ``self`` of Server.run in daphne/server.py (its application and
# http_factory), and twisted/web/http.py's HTTPChannel.requests behind its
# _GenericHTTPChannelProtocol._channel (tests/test_daphne.py).
DAPHNE = Tested(
    "daphne",
    "4.0",
    "4.2",
    "the drain may not start, and daphne then cancels every request and WebSocket at a stop",
)
# What is read and patched: the local ``shutdown_event`` (granian's WorkerSignal) of the
# ASGI worker functions and the ``callback`` of the WSGI one in granian/server/mp.py, and
# granian/_signals.py's set_sync_signals (tests/test_granian.py passes on 2.8.0 and 2.8.9).
# Before 2.8 the master held the listening socket all along (a new connection could wait
# unanswered), before 2.5 the accept loop could drop what was queued (reset), and before
# 2.2.2 the handlers came after the lifespan start-up (nothing to take).
GRANIAN = Tested(
    "granian",
    "2.8",
    "2.8",
    "the worker may stop accepting before lastcall's pre-stop delay",
)
HYPERCORN = Tested(
    "hypercorn",
    "0.16",
    "0.18",
    "the worker may stop accepting before lastcall's pre-stop delay",
)
# What is read and patched: django/utils/autoreload.py, django/core/servers/basehttp.py,
# the server class of the runserver command, and the handler name in django/core/asgi.py
# (tests/test_django.py passes on 4.2.0, in the oldest leg, and on 5.2.19).
DJANGO = Tested(
    "django",
    "4.2",
    "5.2",
    "runserver's drain and autoreloader handling may not work",
)
# Queue workers. What is read and patched: celery/worker/consumer/consumer.py, worker.py,
# state.py and request.py, celery/concurrency/prefork.py, asynpool.py and thread.py,
# billiard/pool.py (lastcall/_workers/celery.py names each); tests/test_celery.py passes on 5.7.0.
CELERY = Tested(
    "celery",
    "5.7",
    "5.7",
    "tasks may start after the stop signal or not be put back when the drain budget runs out",
)
# kombu/transport/redis.py (Channel._do_restore_message, QoS.unacked_key, QoS.restore_by_tag) and
# kombu/transport/virtual/base.py (Message._raw, QoS._quick_ack), with celery 5.7.0.
KOMBU = Tested(
    "kombu",
    "5.7",
    "5.7",
    "a task that overruns the drain budget may not be put back on its Redis queue at once",
)
# dramatiq/worker.py (Worker.consumers, work_queue; ConsumerThread.consumer),
# dramatiq/brokers/redis.py (_RedisConsumer.prefetch, message_cache; RedisBroker.do_fetch)
# and rabbitmq.py (_RabbitmqConsumer.connection, channel, known_tags; _RabbitmqMessage._tag),
# and pika/adapters/blocking_connection.py: BlockingChannel._impl and its
# _queue_consumer_generator.
# tests/test_dramatiq.py passes on 2.2.1.
DRAMATIQ = Tested(
    "dramatiq",
    "1.17",
    "2.2",
    "messages may start after the stop signal or not be put back when the drain budget runs out",
)
# What is overridden: rq/worker.py (2.x; rq/worker/base.py and worker_classes.py from 2.12):
# BaseWorker._install_signal_handlers, dequeue_job_and_maintain_ttl, should_run_maintenance_tasks,
# execute_job, handle_job_failure, handle_work_horse_killed, setup_work_horse_signals,
# prepare_job_execution, handle_execution_ended (lastcall/_workers/rq.py names each);
# tests/test_rq.py passes on 2.0.0 and on 3.0.0.
RQ = Tested(
    "rq",
    "2.0",
    "3.0",
    "jobs may start after the stop signal or not be put back when the drain budget runs out",
)
# What is read: grpc/_server.py's _Server._state (its handler list and dict) and, on
# grpc.aio, the Cython AioServer's (grpc/_cython/_cygrpc/aio/server.pyx.pxi) through
# gc.get_referents; tests/test_grpc.py passes on 1.62.3 (with grpcio-health-checking
# 1.62.3: no registered methods yet) and on 1.85.4.
GRPC = Tested(
    "grpcio",
    "1.62",
    "1.85",
    "the drain may not count RPCs (it then waits for grpc's own stop) nor find the health service",
)
# What is read: asyncio's loop._signal_handlers (aiohttp's stop handlers, taken off the
# loop) and Server._protocol_factory (the door); aiohttp/worker.py's GunicornWebWorker
# wsgi, loop and _notify_waiter_done (tests/test_aiohttp.py passes on 3.9.0, in the oldest
# leg, and on 3.14.5).
AIOHTTP = Tested(
    "aiohttp",
    "3.9",
    "3.14",
    "its stop handlers may run before lastcall's pre-stop delay, its backlog be reset",
)
# What is read: tornado/tcpserver.py's TCPServer._sockets, _handlers, _handle_connection
# and _connections (tornado/httpserver.py), tornado/http1connection.py's _finish_future,
# tornado/routing.py's _RoutingDelegate.delegate and tornado/web.py's _HandlerDelegate.handler
# (tests/test_tornado.py passes on 6.3.3, in the oldest leg, and on 6.6.1).
TORNADO = Tested(
    "tornado",
    "6.3",
    "6.6",
    "the drain may not serve the backlog, count requests or tell WebSockets 1001",
)
