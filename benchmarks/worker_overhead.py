"""Per-task overhead of ``lastcall.celery.LastCall`` on a no-op task: jobs/s with and without.

A private ``redis-server`` on a free port; each round fills the queue with N
no-op tasks (``acks_late``, so the ``unacked`` hash empties only when the last
one is done), starts ``celery -A bench worker`` on it, and times from the
first task taken to the last one acknowledged. Plain Celery and Celery with
``LastCall(app)`` alternate within each round (which goes first alternates
too), so a neighbour's burst hits both alike; the table shows the median
jobs/s over rounds and the median of the per-round ratios. Target: with
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

WAIT = 60.0
POLL = 0.005
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


class Bench:
    """The broker, the app's directory, and one timed worker run at a time."""

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
        self.dir = directory
        (directory / "bench.py").write_text(APP)
        sys.path.insert(0, str(directory))
        os.environ["BROKER"] = self.url
        os.environ["PLAIN"] = "1"  # the producer side: no LastCall in this process
        import bench  # type: ignore[import-not-found]

        self.noop = bench.noop

    def _pings(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.ConnectionError:
            return False

    def fill(self, tasks: int) -> None:
        with self.noop.app.producer_or_acquire() as producer:
            for _ in range(tasks):
                self.noop.apply_async(producer=producer)

    def queued(self) -> int:
        return int(self.client.llen("celery"))

    def done(self) -> bool:
        return self.queued() == 0 and int(self.client.hlen("unacked")) == 0

    def run(self, pool: str, concurrency: int, tasks: int, *, plain: bool) -> tuple[float, float]:
        """Jobs per second of one worker on ``tasks`` no-op tasks, and its CPU µs per task."""
        self.fill(tasks)
        env = {**os.environ, "BROKER": self.url, "PYTHONPATH": str(self.dir),
               "PLAIN": "1" if plain else "0", "LASTCALL_GRACE": "10"}  # fmt: skip
        argv = [str(Path(sys.executable).parent / "celery"), "-A", "bench", "worker",
                "-P", pool, "-c", str(concurrency), "-l", "warning",
                "--without-mingle", "--without-gossip", "--without-heartbeat"]  # fmt: skip
        worker = subprocess.Popen(
            argv, env=env, cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            began = wait_until("the first task taken", lambda: self.queued() < tasks)
            cpu = cpu_seconds(worker.pid)
            ended = wait_until("every task acknowledged", self.done)
            cpu = cpu_seconds(worker.pid) - cpu
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(WAIT)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        return tasks / (ended - began), cpu / tasks * 1e6

    def stop(self) -> None:
        self.client.close()
        self.server.terminate()
        self.server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--pools", default="prefork,threads,solo")
    args = parser.parse_args()
    concurrency = {"prefork": 2, "threads": 4, "solo": 1}
    with tempfile.TemporaryDirectory(prefix="lastcall-bench-") as directory:
        bench = Bench(Path(directory))
        try:
            rows = []
            for pool in args.pools.split(","):
                bare, ours, ratios, cpu_ratios = [], [], [], []
                cpu: dict[bool, list[float]] = {True: [], False: []}
                for round_ in range(args.rounds):
                    order = (True, False) if round_ % 2 == 0 else (False, True)
                    rates = {
                        p: bench.run(pool, concurrency[pool], args.tasks, plain=p) for p in order
                    }
                    bare.append(rates[True][0])
                    ours.append(rates[False][0])
                    ratios.append(rates[False][0] / rates[True][0])
                    cpu[True].append(rates[True][1])
                    cpu[False].append(rates[False][1])
                    cpu_ratios.append(rates[True][1] / rates[False][1])
                rows.append((pool, statistics.median(bare), statistics.median(ours),
                             statistics.median(ratios), min(ratios), max(ratios),
                             statistics.median(cpu[True]), statistics.median(cpu[False]),
                             statistics.median(cpu_ratios)))  # fmt: skip
        finally:
            bench.stop()
    print(f"no-op tasks, {args.tasks} a run, {args.rounds} rounds, acks_late, Redis (median)")
    print(
        f"{'pool':<9}{'plain jobs/s':>13}{'lastcall':>9}{'ratio':>7}{'range':>14}"
        f"{'CPU µs/task plain':>19}{'lastcall':>9}{'ratio':>7}"
    )
    for pool, plain, wrapped, ratio, low, high, cpu_plain, cpu_ours, cpu_ratio in rows:
        print(
            f"{pool:<9}{plain:>13.0f}{wrapped:>9.0f}{ratio:>7.3f}{low:>8.3f}-{high:.3f}"
            f"{cpu_plain:>19.0f}{cpu_ours:>9.0f}{cpu_ratio:>7.3f}"
        )


if __name__ == "__main__":
    main()
