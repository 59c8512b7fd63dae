"""Per-task overhead of ``lastcall.celery.LastCall`` on a no-op task: jobs/s with and without.

Two private ``redis-server`` processes on free ports; each round fills both
queues with N no-op tasks (``acks_late``, so the ``unacked`` hash empties only
when the last one is done), starts ``celery -A bench worker`` on each at the
same time, plain Celery on one and Celery with ``LastCall(app)`` on the other
(swapped every round), and times each from its 500th task taken (start-up
is not per-task cost) to its last one acknowledged. Side by side, a
neighbour's burst hits both alike; the table shows the median jobs/s over
rounds and the median of the per-round ratios. Target: with
lastcall at least 0.99 x without. Worker start-up and stop are not timed.
On a shared machine jobs/s moves with the neighbours' load; the CPU time the
worker's processes spent per task over the same window moves much less, and
is shown beside it (its ratio is plain's over lastcall's, so both read
"higher is better").
Run: python benchmarks/worker_overhead.py [--rounds N] [--tasks N] [--pools prefork,threads,solo]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from celery import Celery

WAIT = 60.0
POLL = 0.005
CONCURRENCY = {"prefork": 2, "threads": 4, "solo": 1}
# Tasks taken before the clock starts: the worker's start-up (lastcall's too: its
# last-resort watcher starts as the worker is ready) is not per-task cost.
WARM_UP = 500
TICK = os.sysconf("SC_CLK_TCK")

APP = """
import os
from celery import Celery

app = Celery("bench", broker=os.environ["BROKER"])
app.conf.task_acks_late = True
app.conf.broker_connection_retry_on_startup = True
if os.environ.get("PLAIN") != "1":
    from lastcall.celery import LastCall

    LastCall(app)


@app.task
def noop():
    pass
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of ``pid`` and its children now (from ``/proc``)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):  # fields[1]: the parent
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def wait_until(what: str, predicate: object, timeout: float = WAIT) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"not within {timeout} s: {what}")
        time.sleep(POLL)
    return time.monotonic()


class Broker:
    """A private redis-server, and the no-op tasks put on it."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed: apt-get install redis-server")
        port = free_port()
        self.url = f"redis://127.0.0.1:{port}/0"
        where = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
        self.server = subprocess.Popen(
            [binary, *where, "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = redis.Redis(port=port)
        wait_until("redis-server answering", self._pings, 10.0)
        self.app = Celery("producer", broker=self.url)

    def _pings(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.ConnectionError:
            return False

    def fill(self, tasks: int) -> None:
        with self.app.producer_or_acquire() as producer:
            for _ in range(tasks):
                self.app.send_task("bench.noop", producer=producer)

    def queued(self) -> int:
        return int(self.client.llen("celery"))

    def done(self) -> bool:
        return self.queued() == 0 and int(self.client.hlen("unacked")) == 0

    def stop(self) -> None:
        self.client.close()
        self.server.terminate()
        self.server.wait(10)


class Run:
    """One worker on one broker's full queue: when it took the first task, when it was done."""

    def __init__(self, broker: Broker, directory: Path, pool: str, *, plain: bool) -> None:
        self.broker = broker
        self.tasks = broker.queued()
        env = {**os.environ, "BROKER": broker.url, "PYTHONPATH": str(directory),
               "PLAIN": "1" if plain else "0", "LASTCALL_GRACE": "10"}  # fmt: skip
        argv = [str(Path(sys.executable).parent / "celery"), "-A", "bench", "worker",
                "-P", pool, "-c", str(CONCURRENCY[pool]), "-l", "warning",
                "--without-mingle", "--without-gossip", "--without-heartbeat"]  # fmt: skip
        self.worker = subprocess.Popen(
            argv, env=env, cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.began: float | None = None
        self.ended: float | None = None
        self.cpu = 0.0

    def look(self) -> bool:
        """Note the start and the end as they come; whether it is over."""
        if self.began is None and self.broker.queued() < self.tasks - WARM_UP:
            self.began = time.monotonic()
            self.cpu = cpu_seconds(self.worker.pid)
        elif self.began is not None and self.ended is None and self.broker.done():
            self.ended = time.monotonic()
            self.cpu = cpu_seconds(self.worker.pid) - self.cpu
        return self.ended is not None

    def stop(self) -> None:
        self.worker.send_signal(signal.SIGTERM)
        try:
            self.worker.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.worker.kill()
            self.worker.wait()

    def result(self) -> tuple[float, float]:
        """Jobs/s and CPU µs per task."""
        assert self.began is not None
        assert self.ended is not None
        timed = self.tasks - WARM_UP
        return timed / (self.ended - self.began), self.cpu / timed * 1e6


def side_by_side(
    brokers: list[Broker], directory: Path, pool: str, tasks: int, round_: int
) -> dict[bool, tuple[float, float]]:
    """Plain and lastcall at the same time, each on its own broker (swapped every round)."""
    for broker in brokers:
        broker.fill(tasks)
    plains = (True, False) if round_ % 2 == 0 else (False, True)
    runs = {
        plain: Run(broker, directory, pool, plain=plain)
        for plain, broker in zip(plains, brokers, strict=True)
    }
    deadline = time.monotonic() + WAIT
    try:
        while True:
            looks = [run.look() for run in runs.values()]  # each, every time: no short cut
            if all(looks):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{pool}: not done within {WAIT} s")
            time.sleep(POLL)
    finally:
        for run in runs.values():
            run.stop()
    return {plain: run.result() for plain, run in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--pools", default="prefork,threads,solo")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lastcall-bench-") as name:
        directory = Path(name)
        (directory / "bench.py").write_text(APP)
        brokers = []
        try:
            for side in ("a", "b"):
                (directory / side).mkdir()
                brokers.append(Broker(directory / side))
            rows = []
            for pool in args.pools.split(","):
                rates: dict[bool, list[float]] = {True: [], False: []}
                cpu: dict[bool, list[float]] = {True: [], False: []}
                ratios, cpu_ratios = [], []
                for round_ in range(args.rounds):
                    result = side_by_side(brokers, directory, pool, args.tasks, round_)
                    for plain in (True, False):
                        rates[plain].append(result[plain][0])
                        cpu[plain].append(result[plain][1])
                    ratios.append(result[False][0] / result[True][0])
                    cpu_ratios.append(result[True][1] / result[False][1])
                rows.append((pool, statistics.median(rates[True]), statistics.median(rates[False]),
                             statistics.median(ratios), min(ratios), max(ratios),
                             statistics.median(cpu[True]), statistics.median(cpu[False]),
                             statistics.median(cpu_ratios)))  # fmt: skip
        finally:
            for broker in brokers:
                broker.stop()
    print(f"no-op tasks, {args.tasks} a run, {args.rounds} rounds, acks_late, Redis (median)")
    print(
        f"{'pool':<9}{'plain jobs/s':>13}{'lastcall':>9}{'ratio':>7}{'range':>14}"
        f"{'CPU µs/task plain':>19}{'lastcall':>9}{'ratio':>7}"
    )
    for pool, bare, wrapped, ratio, low, high, cpu_plain, cpu_ours, cpu_ratio in rows:
        print(
            f"{pool:<9}{bare:>13.0f}{wrapped:>9.0f}{ratio:>7.3f}{low:>8.3f}-{high:.3f}"
            f"{cpu_plain:>19.0f}{cpu_ours:>9.0f}{cpu_ratio:>7.3f}"
        )


if __name__ == "__main__":
    main()
