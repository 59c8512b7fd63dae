"""Per-task overhead of ``lastcall.celery.LastCall`` on a no-op task: jobs/s with and without.

Two private ``redis-server`` processes on free ports; each round fills both
queues with N no-op tasks (``acks_late``, so the ``unacked`` hash empties only
when the last one is done), starts ``celery -A bench worker`` on each at the
same time, plain Celery on one and Celery with ``LastCall(app)`` on the other
(swapped every round), and times each from its 500th task taken (start-up
is not per-task cost) to its last one acknowledged. Side by side, a
neighbour's burst hits both alike; the table shows the median jobs/s over
rounds, their ratio (the target: lastcall's at least 0.99 x plain's) and the
range of the per-round ratios. Worker start-up and stop are not timed.
On a shared machine jobs/s moves with the neighbours' load; the CPU time the
worker's processes spent per task over the same window moves much less, and
is shown beside it (its ratio is plain's over lastcall's, so both read
"higher is better").
Run: python benchmarks/worker_overhead.py [--rounds N] [--tasks N] [--pools prefork,threads,solo]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from _workers import Redis, Run, paired_rounds, python_path, table
from celery import Celery

CONCURRENCY = {"prefork": 2, "threads": 4, "solo": 1}
# Tasks taken before the clock starts: the worker's start-up (lastcall's too: its
# last-resort watcher starts as the worker is ready) is not per-task cost.
WARM_UP = 500

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


class Broker(Redis):
    """A private redis-server, and the no-op tasks put on it."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.app = Celery("producer", broker=self.url)

    def fill(self, tasks: int) -> None:
        with self.app.producer_or_acquire() as producer:
            for _ in range(tasks):
                self.app.send_task("bench.noop", producer=producer)

    def queued(self) -> int:
        return int(self.client.llen("celery"))

    def done(self) -> bool:
        return self.queued() == 0 and int(self.client.hlen("unacked")) == 0

    def run(self, directory: Path, pool: str, *, plain: bool) -> Run:
        """``celery -A bench worker`` on this broker's full queue."""
        env = {**os.environ, "BROKER": self.url, "PYTHONPATH": python_path(directory),
               "PLAIN": "1" if plain else "0", "LASTCALL_GRACE": "10"}  # fmt: skip
        argv = [str(Path(sys.executable).parent / "celery"), "-A", "bench", "worker",
                "-P", pool, "-c", str(CONCURRENCY[pool]), "-l", "warning",
                "--without-mingle", "--without-gossip", "--without-heartbeat"]  # fmt: skip
        worker = subprocess.Popen(
            argv, env=env, cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        return Run(worker, self.queued, self.done, WARM_UP)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--pools", default="prefork,threads,solo")
    args = parser.parse_args()
    pools = args.pools.split(",")
    rows = paired_rounds(Broker, APP, pools, str, rounds=args.rounds, count=args.tasks)
    table(
        f"Celery: no-op tasks, {args.tasks} a run, {args.rounds} rounds, acks_late, Redis",
        rows,
    )


if __name__ == "__main__":
    main()
