"""Per-job overhead of ``lastcall.rq`` on a no-op job: jobs/s with and without, same run.

A private ``redis-server`` (Debian's, on a free port, in a temporary
directory, stopped by PID) and real ``rq worker --burst`` processes, as
users start them: RQ's own ``Worker`` (a work horse forked per job) and
``SimpleWorker`` beside ``lastcall.rq.Worker`` and ``lastcall.rq.SimpleWorker``.
Each run starts one worker on an empty queue, enqueues N no-op jobs once it
listens, and ends it once the last job has; its rate is N over the span from
the first job's start to the last job's end, as RQ recorded them, and its
CPU time per job is the worker's (horses included) over the same jobs: the
start-up is not counted. On a shared machine the rate is noisy (Redis round
trips wait on neighbours); the CPU time is what lastcall adds.
Rounds alternate which variant goes first, so a neighbour's bursts hit both
alike; the table shows the median rates, their ratio (the target: lastcall's
at least 0.99 x RQ's own), the range of the rounds' ratios, and the CPU time
per job (its ratio RQ's over lastcall's, so both read "higher is better").
Run: python benchmarks/rq_overhead.py [--rounds N] [--jobs N]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from _workers import Redis, Rounds, cpu_seconds, end, table
from rq import Queue

if TYPE_CHECKING:
    import redis

RQ = str(Path(sys.executable).parent / "rq")
VARIANTS = {
    "Worker": ("rq.worker.Worker", "lastcall.rq.Worker"),
    "SimpleWorker": ("rq.worker.SimpleWorker", "lastcall.rq.SimpleWorker"),
}


def run(client: redis.Redis, directory: Path, worker_class: str, jobs: int) -> tuple[float, float]:
    """One worker over ``jobs`` no-op jobs: (jobs per second, CPU µs per job), start-up excluded."""
    client.flushdb()
    queue = Queue("bench", connection=client)
    url = f"redis://127.0.0.1:{client.connection_pool.connection_kwargs['port']}/0"
    worker = subprocess.Popen(
        [RQ, "worker", "-q", "-u", url, "-w", worker_class, "bench"],
        cwd=directory,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    try:  # not --burst: RQ's exit can wait a minute on its pubsub thread (redis-py 8)
        while client.scard("rq:workers:bench") == 0 or not _idle(client):
            if time.monotonic() > deadline or worker.poll() is not None:
                sys.exit(f"{worker_class} did not start")
            time.sleep(0.05)
        before = cpu_seconds(worker.pid)
        ids = [job.id for job in queue.enqueue_many([Queue.prepare_data("bench_jobs.noop")] * jobs)]
        while client.hget(f"rq:job:{ids[-1]}", "status") != b"finished":
            if time.monotonic() > deadline or worker.poll() is not None:
                sys.exit(f"{worker_class} did not finish {jobs} jobs")
            time.sleep(0.05)
        cpu = cpu_seconds(worker.pid) - before
    finally:
        # lastcall's worker ends at SIGTERM once deregistered; RQ's own waits up to a minute
        # for its pubsub thread (redis-py 8), so it is killed (idle, no horse: nothing is cut).
        end(worker, signal.SIGTERM if worker_class.startswith("lastcall") else signal.SIGKILL)

    def stamp(job_id: str, field: str) -> float:
        raw = client.hget(f"rq:job:{job_id}", field)
        assert raw is not None, (job_id, field)
        return datetime.fromisoformat(raw.decode().replace("Z", "+00:00")).timestamp()

    span = stamp(ids[-1], "ended_at") - min(stamp(i, "started_at") for i in ids[:5])
    return jobs / span, 1e6 * cpu / jobs


def _idle(client: redis.Redis) -> bool:
    [key] = client.smembers("rq:workers:bench")
    return client.hget(key, "state") == b"idle"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--jobs", type=int, default=200, help="per run (x5 for SimpleWorker)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "bench_jobs.py").write_text("def noop():\n    return None\n")
        server = Redis(directory)
        client = server.client
        try:
            rows = []
            for name, (plain, ours) in VARIANTS.items():
                jobs = args.jobs * (5 if name == "SimpleWorker" else 1)
                rounds = Rounds()
                for n in range(args.rounds):
                    order = (plain, ours) if n % 2 == 0 else (ours, plain)
                    got = {cls: run(client, directory, cls, jobs) for cls in order}
                    rounds.add({True: got[plain], False: got[ours]})
                rows.append(rounds.row(name))
        finally:
            server.stop()
    table(
        f"RQ {_rq_version()}: no-op jobs, {args.jobs} a run ({5 * args.jobs} on "
        f"SimpleWorker), {args.rounds} rounds; pool: worker class",
        rows,
    )


def _rq_version() -> str:
    from importlib.metadata import version

    return version("rq")


if __name__ == "__main__":
    main()
