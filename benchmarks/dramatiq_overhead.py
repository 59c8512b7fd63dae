"""Per-message overhead of ``lastcall.dramatiq.LastCall`` on a no-op actor: jobs/s with and without.

Two private ``redis-server`` processes on free ports; each round fills both
queues with N messages for a no-op actor, starts ``dramatiq bench
--processes 1 --threads T`` on each at the same time, plain Dramatiq on one
and Dramatiq with ``broker.add_middleware(LastCall())`` on the other (swapped
every round), and times each from its 500th message taken (start-up is not
per-message cost) to its last one acknowledged (the queue's ``.msgs`` hash
empty). The table shows the median jobs/s over rounds, their ratio (the
target: lastcall's at least 0.99 x plain's), the range of the per-round
ratios, and the CPU time the worker's processes spent per message over the
same window (steadier than jobs/s on a shared machine; its ratio is plain's
over lastcall's, so both read "higher is better").
Run: python benchmarks/dramatiq_overhead.py [--rounds N] [--messages N] [--threads 1,8]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import dramatiq
from _workers import Redis, Run, paired_rounds, python_path, table
from dramatiq.brokers.redis import RedisBroker

WARM_UP = 500
QUEUE = "default"

APP = """
import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=os.environ["BROKER"])
if os.environ.get("PLAIN") != "1":
    import lastcall.dramatiq

    broker.add_middleware(lastcall.dramatiq.LastCall())
dramatiq.set_broker(broker)


@dramatiq.actor(max_retries=0)
def noop():
    pass
"""


class Broker(Redis):
    """A private redis-server, and the no-op messages put on it."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.producer = RedisBroker(url=self.url)
        self.producer.declare_queue(QUEUE)

    def fill(self, messages: int) -> None:
        for _ in range(messages):
            message = dramatiq.Message(
                queue_name=QUEUE, actor_name="noop", args=(), kwargs={}, options={}
            )
            self.producer.enqueue(message)

    def queued(self) -> int:
        return int(self.client.llen(f"dramatiq:{QUEUE}"))

    def done(self) -> bool:
        return int(self.client.hlen(f"dramatiq:{QUEUE}.msgs")) == 0

    def run(self, directory: Path, threads: int, *, plain: bool) -> Run:
        """``dramatiq bench`` (one worker process) on this broker's full queue."""
        env = {**os.environ, "BROKER": self.url, "PYTHONPATH": python_path(directory),
               "PLAIN": "1" if plain else "0", "LASTCALL_GRACE": "10"}  # fmt: skip
        argv = [str(Path(sys.executable).parent / "dramatiq"), "bench",
                "--processes", "1", "--threads", str(threads)]  # fmt: skip
        worker = subprocess.Popen(
            argv, env=env, cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        return Run(worker, self.queued, self.done, WARM_UP)

    def stop(self) -> None:
        self.producer.close()
        super().stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--threads", default="1,8")
    args = parser.parse_args()
    threads = [int(n) for n in args.threads.split(",")]
    rows = paired_rounds(
        Broker, APP, threads, "{} thr".format, rounds=args.rounds, count=args.messages
    )
    table(
        f"Dramatiq {dramatiq.__version__}: no-op actor, {args.messages} messages a run, "
        f"{args.rounds} rounds, 1 process, Redis",
        rows,
    )


if __name__ == "__main__":
    main()
