"""Rolling restart of 3 workers while jobs of 0.2-2 s flow: lost, completed twice, longest delay.

For Celery (Redis and RabbitMQ), RQ and Dramatiq (Redis, or RabbitMQ with
``--frameworks dramatiq-rabbitmq``), the same run measures the framework as
shipped and with lastcall, started as users start them::

    celery -A bench_celery worker -c 2                 # LastCall(app) in bench_celery
    rq worker --worker-class lastcall.rq.Worker QUEUE  # as shipped: no --worker-class
    dramatiq bench_dramatiq --processes 1 --threads 2  # broker.add_middleware(LastCall())

Brokers are private ``redis-server`` and ``rabbitmq-server`` processes
(``tests/brokers.py``: free ports, a temporary directory, stopped by PID).
Three workers take jobs of 0.2-2 s (a fixed random mix) enqueued at 70 % of
their capacity; once a quarter of the jobs is enqueued, the workers are
replaced one by one as a Kubernetes Deployment of 3 does by default (max
surge 1, max unavailable 0): a new worker starts, and once it is ready the
oldest gets SIGTERM; whatever of it still runs ``--kill-after`` seconds later
(Kubernetes' 30 s grace) is ended with SIGKILL, as a pod's container is, and
so is whatever it leaves behind when its main process exits. lastcall keeps its
default grace (25 s; with a shorter ``--kill-after``, 5/6 of it).

Each job records its completion in Redis keyed by its number (a count, and
the delay from its enqueue to its first completion), so lost and completed
twice are counted exactly. A job not completed once the flow has ended and
no job has completed for 15 s is lost (Celery's Redis transport would hand it
out again after its visibility timeout, an hour, if at all; Dramatiq's Redis
broker after its 60 s heartbeat timeout; RQ marks a killed horse's job failed).
The restart's wall time runs
from the first new worker's start to the last old worker's end.

The issue's figure is 1,000 jobs a run (about half an hour in all); the
default, 100, runs in about five minutes on a 2-core machine.
Run: python benchmarks/worker_rolling_restart.py [--jobs N] [--kill-after S]
     [--frameworks celery-redis,celery-rabbitmq,rq,dramatiq-redis] [--acks-late]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from lastcall.cli import cleanup

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from brokers import RabbitMQ, Redis  # noqa: E402  # the tests' private brokers

BIN = Path(sys.executable).parent
WORKERS = 3
CONCURRENCY = 2  # jobs at once per worker (RQ: one)
SHORTEST, LONGEST = 0.2, 2.0  # a job's seconds
LOAD = 0.7  # jobs enqueued per second, as a share of what the workers can do
READY_WAIT = 60.0  # a worker's start on a loaded machine
SETTLE = 15.0  # no completion for this long after the flow: the rest is lost
DEFAULT_GRACE = 25.0  # lastcall's own default (src/lastcall/_config.py)

RECORD = """
import os, time
import redis

_store = redis.Redis.from_url(os.environ["STORE"])


def job(n, seconds, enqueued):
    time.sleep(seconds)
    with _store.pipeline() as pipe:  # one transaction: the count, the first delay
        pipe.hincrby("done", n, 1).hsetnx("delay", n, time.time() - enqueued).execute()


def ready():
    _store.sadd("ready", os.environ["WORKER"])
"""

CELERY_APP = """
import os
from celery import Celery, signals
import bench_record

app = Celery("bench_celery", broker=os.environ["BROKER"])
app.conf.task_default_queue = os.environ["QUEUE"]
app.conf.task_acks_late = os.environ.get("ACKS_LATE") == "1"
app.conf.broker_connection_retry_on_startup = True
if os.environ.get("PLAIN") != "1":
    from lastcall.celery import LastCall

    LastCall(app)


@app.task(name="job")
def job(n, seconds, enqueued):
    bench_record.job(n, seconds, enqueued)


@signals.worker_ready.connect
def ready(**_):
    bench_record.ready()
"""

DRAMATIQ_APP = """
import os
import dramatiq
import bench_record

if os.environ["BROKER"].startswith("amqp"):
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
    broker = RabbitmqBroker(url=os.environ["BROKER"])
else:
    from dramatiq.brokers.redis import RedisBroker
    broker = RedisBroker(url=os.environ["BROKER"])
if os.environ.get("PLAIN") != "1":
    import lastcall.dramatiq

    broker.add_middleware(lastcall.dramatiq.LastCall())


class Ready(dramatiq.Middleware):
    def after_worker_boot(self, broker, worker):
        bench_record.ready()


broker.add_middleware(Ready())
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=os.environ["QUEUE"], actor_name="job")
def job(n, seconds, enqueued):
    bench_record.job(n, seconds, enqueued)
"""


@dataclass
class Framework:
    name: str
    broker: str  # "redis" or "rabbitmq"
    per_worker: int  # jobs at once

    def argv(self, worker: str, queue: str, broker_url: str, *, lastcall: bool) -> list[str]:
        if self.name == "celery":
            return [str(BIN / "celery"), "-A", "bench_celery", "worker", "-P", "prefork",
                    "-c", str(CONCURRENCY), "-n", f"{worker}@%h", "-l", "info"]  # fmt: skip
        if self.name == "rq":
            argv = [str(BIN / "rq"), "worker", "-u", broker_url, "-n", worker]
            return [*argv, *(["--worker-class", "lastcall.rq.Worker"] if lastcall else []), queue]
        return [str(BIN / "dramatiq"), "bench_dramatiq", "--processes", "1",
                "--threads", str(CONCURRENCY)]  # fmt: skip


FRAMEWORKS = {
    "celery-redis": Framework("celery", "redis", CONCURRENCY),
    "celery-rabbitmq": Framework("celery", "rabbitmq", CONCURRENCY),
    "rq": Framework("rq", "redis", 1),
    "dramatiq-redis": Framework("dramatiq", "redis", CONCURRENCY),
    "dramatiq-rabbitmq": Framework("dramatiq", "rabbitmq", CONCURRENCY),
}


class Worker:
    """One worker process as a pod runs it: SIGTERM, then SIGKILL to all it left after the grace."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = env["WORKER"]
        self.mark = cleanup.new_mark()  # found again by it: lastcall's watcher has its own session
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                env={**env, cleanup.OWNER: self.mark},
                cwd=log.parent,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.signalled = False
        self.killed = False
        self.ended: float | None = None
        self.status: int | None = None

    def stop_soon(self, kill_after: float) -> threading.Thread:
        """:meth:`terminate` on a thread of its own, begun now."""
        self.signalled = True
        thread = threading.Thread(target=self.terminate, args=(kill_after,))
        thread.start()
        return thread

    def terminate(self, kill_after: float) -> None:
        """SIGTERM; SIGKILL after ``kill_after`` s; then, as the container ends, all it left."""
        self.signalled = True
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.status = self.proc.wait(kill_after)
        except subprocess.TimeoutExpired:
            self.killed = True
        cleanup.end(self.mark, self.proc.pid)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        status = self.proc.wait()
        self.status = status if self.status is None else self.status
        self.ended = time.monotonic()


@dataclass
class Result:
    jobs: int
    lost: int = 0
    twice: int = 0
    longest: float = 0.0
    median: float = 0.0
    restart: float = 0.0
    killed: int = 0
    statuses: list[int] = field(default_factory=list)
    flow_ended_first: bool = False


class Run:
    """One framework, as shipped or with lastcall: 3 workers, the flow, the rolling restart."""

    def __init__(
        self, framework: Framework, broker_url: str, store: redis.Redis, args: argparse.Namespace
    ) -> None:
        self.framework = framework
        self.broker_url = broker_url
        self.store = store
        self.args = args
        self.directory = Path(args.directory)
        self.workers: list[Worker] = []
        self.count = 0

    def env(self, queue: str, *, lastcall: bool) -> dict[str, str]:
        env = {**os.environ, "BROKER": self.broker_url, "QUEUE": queue, "STORE": self.store_url,
               "PYTHONPATH": str(self.directory), "PLAIN": "0" if lastcall else "1",
               "ACKS_LATE": "1" if self.args.acks_late else "0"}  # fmt: skip
        if lastcall and self.args.kill_after < 30:
            env["LASTCALL_GRACE"] = f"{self.args.kill_after * DEFAULT_GRACE / 30:.3g}"
        return env

    @property
    def store_url(self) -> str:
        port = self.store.connection_pool.connection_kwargs["port"]
        return f"redis://127.0.0.1:{port}/1"

    def start_worker(self, queue: str, tag: str, *, lastcall: bool) -> Worker:
        self.count += 1
        name = f"{tag}-{self.count}"
        env = {**self.env(queue, lastcall=lastcall), "WORKER": name}
        argv = self.framework.argv(name, queue, self.broker_url, lastcall=lastcall)
        worker = Worker(argv, env, self.directory / f"{name}.log")
        deadline = time.monotonic() + READY_WAIT
        while not self._ready(worker):
            if time.monotonic() > deadline or worker.proc.poll() is not None:
                worker.terminate(0)
                tail = (self.directory / f"{name}.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"worker {name} did not start:\n{tail}")
            time.sleep(0.05)
        return worker

    def _ready(self, worker: Worker) -> bool:
        if self.framework.name == "rq":  # RQ registers a worker as it begins to listen
            with redis.Redis.from_url(self.broker_url) as broker:
                return bool(broker.exists(f"rq:worker:{worker.name}"))
        return bool(self.store.sismember("ready", worker.name))

    def measure(self, *, lastcall: bool) -> Result:
        framework, jobs = self.framework, self.args.jobs
        tag = f"{framework.name}-{framework.broker}-{'lastcall' if lastcall else 'shipped'}"
        queue = f"bench-{tag}"
        self.store.flushdb()
        if framework.broker == "redis":
            with redis.Redis.from_url(self.broker_url) as broker:
                broker.flushdb()
        longest = self.args.longest
        rate = LOAD * WORKERS * framework.per_worker / ((SHORTEST + longest) / 2)
        enqueue = self._enqueuer(queue)
        mix = random.Random(7)  # the same jobs for every run  # noqa: S311
        durations = [round(mix.uniform(SHORTEST, longest), 2) for _ in range(jobs)]
        result = Result(jobs)
        self.workers = [self.start_worker(queue, tag, lastcall=lastcall) for _ in range(WORKERS)]
        enqueued = threading.Event()
        quarter = threading.Event()

        def flow() -> None:
            began = time.monotonic()
            for n, seconds in enumerate(durations):
                due = began + n / rate
                time.sleep(max(0.0, due - time.monotonic()))
                enqueue(n, seconds, time.time())
                if n + 1 >= jobs / 4:
                    quarter.set()
            enqueued.set()

        producer = threading.Thread(target=flow, daemon=True)
        producer.start()
        old = list(self.workers)
        stopping: list[threading.Thread] = []
        try:
            quarter.wait(jobs / rate + READY_WAIT)
            began = time.monotonic()
            for worker in old:
                self.workers.append(self.start_worker(queue, tag, lastcall=lastcall))
                stopping.append(worker.stop_soon(self.args.kill_after))
            for stop in stopping:
                stop.join()
            result.restart = max(w.ended or 0.0 for w in old) - began
            result.flow_ended_first = enqueued.is_set()
            producer.join(jobs / rate + READY_WAIT)
            self._settle(jobs)
        finally:
            left = [worker for worker in self.workers if not worker.signalled]
            stopping.extend(worker.stop_soon(self.args.kill_after) for worker in left)
            for stop in stopping:
                stop.join()
        self._tally(result, old)
        return result

    def _tally(self, result: Result, old: list[Worker]) -> None:
        """What the jobs recorded, and how the replaced workers ended."""
        done = {int(n): int(c) for n, c in self.store.hgetall("done").items()}
        delays = [float(d) for d in self.store.hgetall("delay").values()]
        result.lost = sum(1 for n in range(result.jobs) if n not in done)
        result.twice = sum(1 for c in done.values() if c > 1)
        result.longest = max(delays, default=0.0)
        result.median = statistics.median(delays) if delays else 0.0
        result.killed = sum(w.killed for w in old)
        result.statuses = [w.status for w in old if w.status is not None]

    def _settle(self, jobs: int) -> None:
        """Until every job completed, or none has for SETTLE s."""
        last, seen = time.monotonic(), -1
        while True:
            now = int(self.store.hlen("done"))
            if now >= jobs:
                return
            if now != seen:
                last, seen = time.monotonic(), now
            elif time.monotonic() - last > SETTLE:
                return
            time.sleep(0.1)

    def _enqueuer(self, queue: str) -> Any:  # noqa: ANN401
        """A function (n, seconds, enqueued) putting one job on ``queue`` as its framework does."""
        name, url = self.framework.name, self.broker_url
        if name == "celery":
            from celery import Celery

            app = Celery("producer", broker=url)
            return lambda *job: app.send_task("job", args=job, queue=queue)
        if name == "rq":
            from rq import Queue

            rq_queue = Queue(queue, connection=redis.Redis.from_url(url))
            return lambda *job: rq_queue.enqueue("bench_record.job", *job)
        import dramatiq

        if url.startswith("amqp"):
            from dramatiq.brokers.rabbitmq import RabbitmqBroker

            broker: Any = RabbitmqBroker(url=url)
        else:
            from dramatiq.brokers.redis import RedisBroker

            broker = RedisBroker(url=url)
        broker.declare_queue(queue)

        def send(*job: object) -> None:
            broker.enqueue(dramatiq.Message(queue_name=queue, actor_name="job", args=job,
                                            kwargs={}, options={}))  # fmt: skip

        return send


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100, help="jobs a run (the issue: 1000)")
    parser.add_argument("--kill-after", type=float, default=30.0, help="Kubernetes' grace (s)")
    parser.add_argument("--frameworks", default="celery-redis,celery-rabbitmq,rq,dramatiq-redis")
    parser.add_argument("--acks-late", action="store_true", help="Celery's task_acks_late")
    parser.add_argument("--longest", type=float, default=LONGEST, help="the longest job (s)")
    args = parser.parse_args()
    chosen = args.frameworks.split(",")
    unknown = [name for name in chosen if name not in FRAMEWORKS]
    if unknown:
        parser.error(f"unknown framework {unknown[0]!r}: choose from {', '.join(FRAMEWORKS)}")
    if args.jobs < 4 or args.kill_after <= 0 or args.longest < SHORTEST:
        parser.error(f"--jobs must be at least 4, --kill-after above 0, --longest {SHORTEST}+")
    rows = []
    with tempfile.TemporaryDirectory(prefix="lastcall-bench-") as name:
        directory = Path(name)
        args.directory = directory
        for module, text in (("bench_record", RECORD), ("bench_celery", CELERY_APP),
                             ("bench_dramatiq", DRAMATIQ_APP)):  # fmt: skip
            (directory / f"{module}.py").write_text(text)
        (directory / "redis").mkdir()
        server = Redis(directory / "redis")
        rabbit = None
        try:
            if any(FRAMEWORKS[name].broker == "rabbitmq" for name in chosen):
                (directory / "rabbitmq").mkdir()
                rabbit = RabbitMQ.start(directory / "rabbitmq")
            store = redis.Redis(port=server.port, db=1)
            for chosen_name in chosen:
                framework = FRAMEWORKS[chosen_name]
                url = rabbit.url if framework.broker == "rabbitmq" and rabbit else server.url
                run = Run(framework, url, store, args)
                rows.append((chosen_name, run.measure(lastcall=False), run.measure(lastcall=True)))
                print(f"{chosen_name} measured", file=sys.stderr, flush=True)
            store.close()
        finally:
            if rabbit is not None:
                rabbit.stop()
            server.stop()
    print_table(rows, args)


def print_table(rows: list[tuple[str, Result, Result]], args: argparse.Namespace) -> None:
    acks = "acks_late" if args.acks_late else "Celery's default acks"
    print(f"{args.jobs} jobs of {SHORTEST}-{args.longest:g} s a run, 3 workers x {CONCURRENCY} "
          f"(RQ x 1), SIGKILL {args.kill_after:g} s after SIGTERM; {acks}")  # fmt: skip
    print(f"{'framework':<19}{'':<11}{'lost':>5}{'twice':>6}{'longest delay':>14}"
          f"{'median':>8}{'restart':>9}{'SIGKILLed':>10}  exits of the 3 replaced")  # fmt: skip
    for name, shipped, ours in rows:
        print(f"{name:<19}{_row('as shipped', shipped)}")
        print(f"{'':<19}{_row('lastcall', ours)}")
        change = Result(
            ours.jobs, ours.lost - shipped.lost, ours.twice - shipped.twice,
            ours.longest - shipped.longest, ours.median - shipped.median,
            ours.restart - shipped.restart, ours.killed - shipped.killed,
        )  # fmt: skip
        print(f"{'':<19}{_row('change', change, sign='+')}")
    if any(r.flow_ended_first for _, *results in rows for r in results):
        print("*: every job was enqueued before the restart ended (more --jobs to cover it)")


def _row(label: str, r: Result, sign: str = "") -> str:
    cells = (f"{label:<11}{r.lost:>{sign}5}{r.twice:>{sign}6}{r.longest:>{sign}13.1f}s"
             f"{r.median:>{sign}7.1f}s{r.restart:>{sign}8.1f}s{r.killed:>{sign}10}")  # fmt: skip
    if sign:
        return cells
    return f"{cells}  {r.statuses}{' *' if r.flow_ended_first else ''}"


if __name__ == "__main__":
    main()
