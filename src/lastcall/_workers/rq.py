"""RQ on Redis (``Worker``, which forks a work horse per job, and ``SimpleWorker``): the adapter.

``lastcall.rq`` is the face (the worker classes users name, the start-up
lines); everything here reaches into RQ and redis-py, and nothing else does.
Tested with RQ 2.0 to 3.0 (``versions.RQ``). What is overridden, from
``rq/worker.py`` (2.x) or ``rq/worker/base.py`` and ``worker_classes.py``
(2.12 on):

* in the worker process: ``_install_signal_handlers`` (private: where
  ``work()`` takes SIGTERM and SIGINT once the worker listens; lastcall takes
  them there instead), ``dequeue_job_and_maintain_ttl`` (nothing is handed
  out once the stop began), the ``should_run_maintenance_tasks`` property
  (asked at the top of each turn of the dequeue loop: the turn after an
  unblocked ``BLMOVE`` ends the loop there), ``prepare_execution``,
  ``execute_job`` (a job lastcall stopped is put back, not failed),
  ``handle_work_horse_killed`` and ``handle_job_failure`` (the same, for a
  horse it had to kill), ``subscribe`` (RQ's pubsub thread takes no stop
  signal), ``register_death``;
* in the work horse (or, for ``SimpleWorker``, the worker's main thread):
  ``setup_work_horse_signals``, ``prepare_job_execution`` and
  ``handle_execution_ended`` (between those two the job's own code runs).

How the worker stops consuming: RQ waits for a job in one ``BLMOVE`` (one
queue) or ``BLPOP`` lasting minutes. That wait runs on a connection of its
own, named, so the drain can find it in ``CLIENT LIST`` and end it with
``CLIENT UNBLOCK``: Redis then either moved no job, or had already moved one,
which comes back to the worker and goes straight back to the head of its
queue. Closing the socket instead (what a signal raising in the wait does)
can leave a moved job in no one's hands (rq#2268).

How a running job is stopped: ``STOP_SIGNAL`` to the process running it (the
horse, or the ``SimpleWorker``'s main thread). Unless the job's code has
returned and its result is being written, the horse exits at once (and a
``SimpleWorker``'s main thread never returns to the job); the worker
then puts the job back at the head of its queue, out of ``StartedJobRegistry``,
status ``queued``, instead of failing it.

A worker killed with SIGKILL: its horses die with it (``PR_SET_PDEATHSIG``),
and a last-resort hook (``put_back_after_kill``, run by lastcall's watcher
process) puts the job it ran back on its queue.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, TypeAlias

from lastcall._integration import Integration
from lastcall._log import log
from lastcall._servers import versions
from lastcall._workers import load_prctl, signal_when_parent_dies

if TYPE_CHECKING:
    from collections.abc import Callable

    from lastcall._coordinator import Coordinator

__all__ = ("STOP_SIGNAL", "TESTED", "THREAD_MASK", "Overrides", "RQDrain")

# RQ and redis-py objects (worker, job, queue, execution, client): reached by duck typing
RQ: TypeAlias = Any

TESTED = versions.RQ

# Asks the process running a job to stop it. Not SIGTERM: systemd's default KillMode sends
# that to every process of the unit, the horses included (they ignore it here).
STOP_SIGNAL = signal.SIGUSR2
_DONE = frozenset({"finished", "failed", "stopped", "canceled"})  # JobStatus values: not put back
_ANSWER_WAIT = 0.5  # seconds a process has to stop its job before it is killed
_SETTLE_WAIT = 2.0  # seconds the worker has to put back a job whose horse had to be killed
_UNBLOCK_EVERY = 0.02  # seconds between CLIENT UNBLOCKs while the dequeue loop still waits
_BLOCKING = frozenset({"blmove", "blpop", "brpoplpush", "blmpop"})
# Signals no other thread of the worker may take: the kernel gives a process-directed
# signal to any thread not blocking it, and one taken by another thread does not wake the
# main thread from RQ's os.wait4 (a second Ctrl-C would wait for the job; RQ's SIGALRM
# for its heartbeat would not come). Blocked in RQ's pubsub thread and in the drain's.
THREAD_MASK = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGALRM})
_SIGKILL = int(signal.SIGKILL)
# The Redis connection settings the last resort reconnects with (JSON: no objects).
_CONNECTION_KEYS = ("host", "port", "db", "username", "password", "path", "socket_connect_timeout")


class _DoorClosed(Exception):  # noqa: N818  # control flow out of RQ's dequeue loop, not an error
    """Raised in RQ's dequeue loop, at the top of a turn, once the stop began."""


class _Running:
    """The job this process's own code runs now (in a horse, or a SimpleWorker's main thread)."""

    def __init__(self) -> None:
        self.job_id: str | None = None  # prepare_job_execution .. handle_execution_ended
        self.finishing = False  # the job's code returned: its result is being written
        self.stopped = threading.Event()  # SimpleWorker: the main thread stopped its job
        self.idle = threading.Event()  # SimpleWorker: the main thread had no job to stop


_running = _Running()


class _Job:
    """A job the worker process runs: what the report and a put-back need."""

    def __init__(self, job: RQ, queue: RQ) -> None:
        self.job = job
        self.queue = queue
        self.execution: RQ = None
        self.began = time.time()
        self.outcome = "completed"
        self.claim = threading.Lock()  # taken by the one put-back

    @property
    def name(self) -> str:
        try:
            return str(self.job.func_name)
        except Exception:  # a payload RQ cannot read: the id still says which
            return "?"

    def entry(self) -> dict[str, Any]:
        return {
            "id": self.job.id,
            "name": self.name,
            "outcome": self.outcome,
            "seconds": round(time.time() - self.began, 3),
        }


if TYPE_CHECKING:
    from rq.worker import BaseWorker as _Base
else:
    _Base = object


class Overrides(_Base):
    """The RQ methods lastcall overrides; mixed in before ``rq.Worker`` or ``rq.SimpleWorker``."""

    lastcall_drain: RQDrain | None = None

    # ------------------------------------------------------------ worker process

    def fork_work_horse(self, job: RQ, queue: RQ) -> None:
        """RQ's fork, without lastcall's threads in the horse: it ignores the stop signals."""
        # rq.Worker's (rq/worker/worker_classes.py, rq/worker.py before 2.12), not BaseWorker's.
        fork = super().fork_work_horse  # type: ignore[misc]
        drain = self.lastcall_drain
        if drain is None:
            fork(job, queue)
            return
        with drain.integration.forking_without_threads():
            fork(job, queue)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, *args: Any) -> RQ:  # noqa: ANN401
        """RQ's dequeue, on the drain's own connection; nothing handed out once the stop began."""
        drain = self.lastcall_drain
        if drain is None:
            return super().dequeue_job_and_maintain_ttl(timeout, *args)
        drain.dequeuing(self)  # first: the drain waits for this block to end
        try:
            if drain.door_closed():
                return None
            try:
                result = super().dequeue_job_and_maintain_ttl(timeout, *args)
            except _DoorClosed:
                return None
            if result is None:
                return None
            job, queue = result
            job.connection = queue.connection = drain.connection
            if drain.door_closed():
                drain.put_back_unstarted(job, queue)
                return None
        finally:
            drain.dequeued(self)
        return result

    @property
    def should_run_maintenance_tasks(self) -> bool:
        """Asked at the top of each turn of RQ's dequeue loop: the stop ends the loop there."""
        drain = self.lastcall_drain
        if drain is not None and drain.in_dequeue and drain.door_closed():
            raise _DoorClosed
        return bool(super().should_run_maintenance_tasks)

    def prepare_execution(self, job: RQ) -> RQ:
        execution = super().prepare_execution(job)
        if self.lastcall_drain is not None and self.lastcall_drain.running is not None:
            self.lastcall_drain.running.execution = execution
        return execution

    def execute_job(self, job: RQ, queue: RQ) -> None:
        drain = self.lastcall_drain
        if drain is None:
            super().execute_job(job, queue)
            return
        drain.began(job, queue)
        try:
            super().execute_job(job, queue)
            if drain.stopped_here(job) and not _over(job):
                drain.put_back_running("the drain budget ran out")  # the horse stopped it
        finally:
            drain.ended()

    def handle_work_horse_killed(self, job: RQ, *args: Any) -> None:  # noqa: ANN401
        if self.lastcall_drain is None or not self.lastcall_drain.stopped_here(job):
            super().handle_work_horse_killed(job, *args)  # type: ignore[no-untyped-call]

    def handle_job_failure(self, job: RQ, queue: RQ, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
        """A horse lastcall had to kill (SIGKILL) died with its job: it goes back, not failed."""
        drain = self.lastcall_drain
        if drain is not None and not self.is_horse and drain.stopped_here(job):
            drain.put_back_running("the drain budget ran out")
            return
        super().handle_job_failure(job, queue, *args, **kwargs)

    def subscribe(self) -> None:
        """RQ's pubsub thread, started with the stop signals blocked (see ``THREAD_MASK``)."""
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, THREAD_MASK)
        try:
            super().subscribe()  # type: ignore[no-untyped-call]
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def register_death(self) -> None:
        """RQ's teardown deregisters the worker first (its pubsub thread may take a minute more)."""
        try:
            super().register_death()  # type: ignore[no-untyped-call]
        finally:
            if self.lastcall_drain is not None and not self.is_horse:
                self.lastcall_drain.deregistered.set()

    # ------------------------------------------------------------ the job's own process

    def setup_work_horse_signals(self) -> None:
        """The horse: SIGTERM and SIGINT are the worker's to act on; STOP_SIGNAL stops the job.

        It dies with the worker (``PR_SET_PDEATHSIG``): a worker killed with SIGKILL
        has its job put back by the last resort, which must not then complete here.
        """
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(STOP_SIGNAL, _horse_stop_requested)
        drain = self.lastcall_drain
        if (
            drain is not None
            and signal_when_parent_dies(_SIGKILL)
            and os.getppid() != drain.worker_pid  # the worker died before the prctl
        ):
            os._exit(1)

    def prepare_job_execution(self, job: RQ, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
        _running.job_id = job.id
        _running.finishing = False
        super().prepare_job_execution(job, *args, **kwargs)

    def handle_execution_ended(self, job: RQ, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
        _running.finishing = True  # the job's code returned (or raised): its result is written now
        _running.job_id = None
        super().handle_execution_ended(job, *args, **kwargs)


def _over(job: RQ) -> bool:
    """Whether a job finished or failed (its result written), or is gone with its result."""
    try:
        status = job.get_status(refresh=True)
    except Exception:  # rq 3.0's InvalidJobOperation: completed, and its hash expired
        return True
    return status is None or status in _DONE


def _horse_stop_requested(_signum: int, _frame: object) -> None:
    """In a horse: exit now, unless the job's result is being written (then it ends by itself).

    With status 0: RQ then neither logs the job as failed nor calls its work-horse-killed
    handler; the worker finds the job neither finished nor failed, and puts it back.
    """
    if not _running.finishing:
        os._exit(os.EX_OK)


def _simple_stop_requested(_signum: int, _frame: object) -> None:
    """On a SimpleWorker's main thread: the job that runs never resumes."""
    if _running.stopped.is_set():
        return
    if _running.job_id is None:
        _running.idle.set()
        return
    signal.setitimer(signal.ITIMER_REAL, 0)  # RQ's job timeout (SIGALRM) must not fail it now
    _running.stopped.set()
    while True:  # the stop's end wakes this thread with its signal, and ends the process
        with contextlib.suppress(Exception):
            time.sleep(1.0)


class RQDrain:
    """One RQ worker's answers to the drain: stop dequeuing, wait, put back what overran."""

    def __init__(self, worker: RQ, coordinator: Coordinator) -> None:
        import redis  # noqa: PLC0415  # rq's own dependency
        from rq.worker import SimpleWorker  # noqa: PLC0415

        self.worker = worker
        self.coordinator = coordinator
        self.integration = Integration(coordinator)
        self.forks = not isinstance(worker, SimpleWorker)  # a subclass of Worker before 2.12
        self.running: _Job | None = None
        self.idle = threading.Event()
        self.idle.set()
        self.deregistered = threading.Event()  # RQ's teardown took the worker off its registry
        self.unfit: Callable[[float, str], None] | None = None  # says a timeout does not fit
        self._timeouts_said: set[float] = set()
        self.budget = Integration(
            coordinator
        ).drain_budget()  # what a stop gives a job (the face sets it)
        self.in_dequeue = False
        self.left_dequeue = threading.Event()
        self.left_dequeue.set()
        self._stopping: str | None = None  # the job id cancel() stopped
        self._closed = False
        self._started = 0.0
        self.connection = worker.connection
        self.worker_pid = os.getpid()
        pool = self.connection.connection_pool
        # A connection of its own for the dequeue wait, named (again at a reconnect), so
        # CLIENT LIST finds it.
        self.client_name = f"lastcall-dequeue-{os.getpid()}"
        self.dequeue_client = redis.Redis(connection_pool=pool, single_connection_client=True)
        if self.dequeue_client.connection is not None:
            self.dequeue_client.connection.client_name = self.client_name
        self.dequeue_client.client_setname(self.client_name)
        # The drain's and the forced stop's own commands: never wait on the pool's lock.
        self.client = redis.Redis(connection_pool=pool, single_connection_client=True)
        self.force_client = redis.Redis(connection_pool=pool, single_connection_client=True)
        self._cleanup_takes_execution = (
            "execution" in inspect.signature(worker.cleanup_execution).parameters
        )  # rq 3.0 on: cleanup_execution(job, pipeline, execution)

    @property
    def name(self) -> str:
        return f"rq worker {self.worker.name}"

    def attach(self) -> None:
        """On the main thread as the worker starts listening."""
        if not self.forks:
            signal.signal(STOP_SIGNAL, _simple_stop_requested)
        else:
            load_prctl()  # here, not in each horse

    def last_resort_args(self) -> tuple[dict[str, Any], str, list[str]] | None:
        """What ``put_back_after_kill`` needs, as JSON; None where it cannot reconnect."""
        pool = self.connection.connection_pool
        if type(pool).__name__ != "ConnectionPool" or "SSL" in pool.connection_class.__name__:
            return None  # Sentinel, TLS: their settings do not travel as JSON
        kwargs = pool.connection_kwargs
        settings = {key: kwargs[key] for key in _CONNECTION_KEYS if kwargs.get(key) is not None}
        if "path" in settings:
            settings["unix_socket_path"] = settings.pop("path")
        return settings, self.worker.name, [queue.name for queue in self.worker.queues]

    # ------------------------------------------------------------ the main thread's side

    def door_closed(self) -> bool:
        return self._closed or self.integration.stop_requested()

    def dequeuing(self, worker: RQ) -> None:
        """RQ's dequeue loop runs on ``dequeue_client`` (the job and queue it returns do not)."""
        self.left_dequeue.clear()
        self.in_dequeue = True
        worker.connection = self.dequeue_client

    def dequeued(self, worker: RQ) -> None:
        worker.connection = self.connection
        self.in_dequeue = False
        self.left_dequeue.set()

    def began(self, job: RQ, queue: RQ) -> None:
        timeout = job.timeout
        if timeout is not None and not 0 <= timeout <= self.budget:
            self.check_timeout(float(timeout), f"job {job.id}'s job_timeout")
        self.running = _Job(job, queue)
        self.idle.clear()

    def ended(self) -> None:
        running = self.running
        if running is not None and self.coordinator.stopping.is_set():
            Integration(self.coordinator).note_job(running.entry())
        self.running = None
        self.idle.set()

    def check_timeout(self, timeout: float, what: str) -> None:
        """Say once per value when a job timeout is longer than the drain budget (or none)."""
        fits = 0 <= timeout <= self.budget
        if fits or timeout in self._timeouts_said or self.unfit is None:
            return
        self._timeouts_said.add(timeout)
        self.unfit(timeout, what)

    def stopped_here(self, job: RQ) -> bool:
        return self._stopping is not None and self._stopping == job.id

    def put_back_unstarted(self, job: RQ, queue: RQ) -> None:
        """A job the dequeue handed out after the stop began: back at the head of its queue."""
        with self.client.pipeline() as pipe:
            pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            pipe.lpush(queue.key, job.id)
            pipe.execute()
        Integration(self.coordinator).note_job(
            {"id": job.id, "name": _Job(job, queue).name, "outcome": "requeued", "seconds": 0.0}
        )
        log.log(
            logging.INFO, "%s: job %s handed out as the stop began; put back", self.name, job.id
        )

    def put_back_running(self, why: str, client: RQ = None) -> None:
        """The running job, stopped: out of StartedJobRegistry, back at the head of its queue."""
        running = self.running
        # Claimed once, without waiting: a second Ctrl-C's handler may run on the main thread
        # in the middle of this (it then leaves the job to this call, or to the last resort).
        if running is None or not running.claim.acquire(blocking=False):
            return
        job, queue = running.job, running.queue
        extra = (running.execution,) if self._cleanup_takes_execution else ()
        with (client or self.client).pipeline() as pipe:
            self.worker.cleanup_execution(job, pipe, *extra)
            job.set_status("queued", pipeline=pipe)
            pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            pipe.lpush(queue.key, job.id)
            pipe.execute()
        running.outcome = "requeued"
        entry = running.entry()
        Integration(self.coordinator).note_job(entry)
        log.log(
            logging.WARNING,
            "job %s[%s] put back on queue %s after %.1f s: %s",
            running.name,
            job.id,
            queue.name,
            entry["seconds"],
            why,
        )

    # ------------------------------------------------------------ the drain's questions

    def prestop_delay(self) -> float:
        """None here: the core's pre_stop phase already waited, readiness red."""
        return 0.0

    def close_door(self) -> int:
        """Stop dequeuing: end RQ's wait for a job; 0, a worker takes no backlog."""
        self._closed = True
        self._started = time.monotonic()
        self._unblock()
        log.log(
            logging.INFO,
            "%s stopped dequeuing; %d job(s) running",
            self.name,
            0 if self.running is None else 1,
        )
        return 0

    def _unblock(self) -> None:
        """``CLIENT UNBLOCK`` the dequeue's wait, if it waits (as if its timeout had come)."""
        try:
            for client in self.client.client_list():
                if client.get("name") == self.client_name and client.get("cmd") in _BLOCKING:
                    self.client.client_unblock(int(client["id"]))
        except Exception as exc:  # CLIENT refused (an ACL): the stop ends the wait with the process
            log.log(logging.WARNING, "%s: could not end RQ's wait for a job: %s", self.name, exc)
            self.left_dequeue.set()

    def in_flight(self) -> int:
        return 0 if self.idle.is_set() else 1

    def wait_idle(self, timeout: float) -> bool:
        """Until no job runs and RQ's dequeue loop has ended (up to ``timeout``)."""
        deadline = time.monotonic() + timeout
        while not self.left_dequeue.wait(
            min(_UNBLOCK_EVERY, max(0.0, deadline - time.monotonic()))
        ):
            if time.monotonic() >= deadline:
                return False
            self._unblock()  # RQ's loop may have begun another BLMOVE meanwhile
        return self.idle.wait(max(0.0, deadline - time.monotonic()))

    def close_idle(self) -> None:
        """Nothing: a worker keeps no idle connections to close."""

    def cancel(self) -> int:
        """Stop the job still running and put it back on its queue at once; how many (0 or 1)."""
        running = self.running
        if running is None:
            return 0
        self._stopping = running.job.id
        if self.forks:
            return self._cancel_horse(running)
        return self._cancel_on_main_thread()

    def _cancel_horse(self, running: _Job) -> int:
        pid = self.worker.horse_pid
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, STOP_SIGNAL)
        if not self.idle.wait(_ANSWER_WAIT) and pid:
            log.log(logging.ERROR, "work horse %d did not stop its job; killed (SIGKILL)", pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            self.idle.wait(_SETTLE_WAIT)
        if pid:  # what the job started in the horse's process group goes with it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        return 1 if running.outcome == "requeued" else 0

    def _cancel_on_main_thread(self) -> int:
        main = threading.main_thread().ident
        if main is None:
            return 0
        signal.pthread_kill(main, STOP_SIGNAL)
        deadline = time.monotonic() + _ANSWER_WAIT
        while not (_running.stopped.is_set() or _running.idle.is_set()):
            if time.monotonic() >= deadline:
                log.log(
                    logging.ERROR,
                    "%s: the main thread did not stop its job within %.1f s (in C code?); put "
                    "back all the same, and the process ends when the stop does",
                    self.name,
                    _ANSWER_WAIT,
                )
                break
            _running.stopped.wait(_UNBLOCK_EVERY)
        if _running.idle.is_set() and not _running.stopped.is_set():
            return 0  # it had just finished: its result is being written
        self.put_back_running("the drain budget ran out")
        with contextlib.suppress(Exception):
            self.worker.register_death()  # the main thread will not get to RQ's teardown
        return 1

    # ------------------------------------------------------------ after the drain

    def wait_deregistered(self, timeout: float) -> bool:
        """Let RQ's own teardown take the worker off its registry; whether it did."""
        if _running.stopped.is_set():
            return True  # SimpleWorker: the main thread stays where its job was stopped
        return self.deregistered.wait(timeout)

    def force(self) -> None:
        """A second Ctrl-C: end the horse, put its job back; now.

        In a signal handler on the main thread: RQ's own calls on it are stopped
        where they were, so only ``force_client`` is used.
        """
        pid = self.worker.horse_pid if self.forks else 0
        if pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        if self.running is not None:
            with contextlib.suppress(Exception):
                self.put_back_running("forced (a second SIGINT)", self.force_client)
        log.log(logging.ERROR, "%s: forced; the running job (if any) put back", self.name)


def default_timeout(worker: RQ) -> float:
    """The job timeout RQ gives a job enqueued without one (``Queue.DEFAULT_TIMEOUT``)."""
    return float(worker.queue_class.DEFAULT_TIMEOUT)


def put_back_after_kill(settings: dict[str, Any], worker_name: str, queues: list[str]) -> None:
    """The last resort, in the watcher once the worker died without a stop (SIGKILL, OOM).

    The job it ran (its horse died with it) is taken out of its queue's
    ``StartedJobRegistry`` and pushed at the head of the queue, as the drain does;
    in plain Redis commands, so nothing of RQ is imported here.
    """
    import redis  # noqa: PLC0415  # rq's own dependency

    client: RQ = redis.Redis(**settings, decode_responses=True)
    try:
        for queue in queues:
            registry = f"rq:wip:{queue}"
            for member in client.zrange(registry, 0, -1):
                job_id = str(member).split(":", 1)[0]  # rq 3.0: job_id:execution_id
                job_key = f"rq:job:{job_id}"
                if client.hget(job_key, "worker_name") != worker_name:
                    continue
                with client.pipeline() as pipe:
                    pipe.zrem(registry, member)
                    pipe.hset(job_key, "status", "queued")
                    pipe.lrem(f"rq:queue:{queue}:intermediate", 1, job_id)
                    pipe.lpush(f"rq:queue:{queue}", job_id)
                    pipe.execute()
                print(  # noqa: T201  # the watcher's log is its stderr
                    f"lastcall: job {job_id} put back on queue {queue}: worker {worker_name} died",
                    file=sys.stderr,
                )
    finally:
        client.close()
