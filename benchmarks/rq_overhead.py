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
alike; the table shows the median rate and the median of each round's ratio.
The target: lastcall's rate at least 0.99 x RQ's own.
Run: python benchmarks/rq_overhead.py [--rounds N] [--jobs N]
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
from datetime import datetime
from pathlib import Path

import redis
from rq import Queue

RQ = str(Path(sys.executable).parent / "rq")
VARIANTS = {
    "Worker": ("rq.worker.Worker", "lastcall.rq.Worker"),
    "SimpleWorker": ("rq.worker.SimpleWorker", "lastcall.rq.SimpleWorker"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed: apt-get install redis-server")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
            "--save", "", "--appendonly", "no", "--loglevel", "warning"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                sys.exit(f"redis-server did not answer on port {port}")
            time.sleep(0.02)
    client.close()
    return proc, port


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and of its reaped children (the work horses), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


def run(client: redis.Redis, directory: Path, worker_class: str, jobs: int) -> tuple[float, float]:
    """One worker over ``jobs`` no-op jobs: (jobs per second, CPU ms per job), start-up excluded."""
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
        worker.send_signal(
            signal.SIGTERM if worker_class.startswith("lastcall") else signal.SIGKILL
        )
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()

    def stamp(job_id: str, field: str) -> float:
        raw = client.hget(f"rq:job:{job_id}", field)
        assert raw is not None, (job_id, field)
        return datetime.fromisoformat(raw.decode().replace("Z", "+00:00")).timestamp()

    span = stamp(ids[-1], "ended_at") - min(stamp(i, "started_at") for i in ids[:5])
    return jobs / span, 1000 * cpu / jobs


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
        server, port = start_redis(directory)
        client = redis.Redis(port=port)
        try:
            rows = []
            for name, (plain, ours) in VARIANTS.items():
                jobs = args.jobs * (5 if name == "SimpleWorker" else 1)
                rates: dict[str, list[float]] = {plain: [], ours: []}
                cpus: dict[str, list[float]] = {plain: [], ours: []}
                ratios, cpu_ratios = [], []
                for n in range(args.rounds):
                    order = (plain, ours) if n % 2 == 0 else (ours, plain)
                    got = {cls: run(client, directory, cls, jobs) for cls in order}
                    for cls, (jobs_per_s, cpu_ms) in got.items():
                        rates[cls].append(jobs_per_s)
                        cpus[cls].append(cpu_ms)
                    ratios.append(got[ours][0] / got[plain][0])
                    cpu_ratios.append(got[ours][1] / got[plain][1])
                med = statistics.median
                rows.append(
                    (
                        name,
                        jobs,
                        med(rates[plain]),
                        med(rates[ours]),
                        med(ratios),
                        med(cpus[plain]),
                        med(cpus[ours]),
                        med(cpu_ratios),
                    )
                )
        finally:
            client.close()
            server.send_signal(signal.SIGTERM)
            server.wait(10)
    print(f"no-op jobs, {args.rounds} rounds, medians (rq {_rq_version()}); ratio: lastcall / RQ")
    print(
        f"{'worker class':<14}{'jobs/run':>9}{'RQ jobs/s':>11}{'lastcall':>10}{'ratio':>7}"
        f"{'RQ CPU ms/job':>15}{'lastcall':>10}{'ratio':>7}"
    )
    for name, jobs, plain_rate, our_rate, ratio, plain_cpu, our_cpu, cpu_ratio in rows:
        print(
            f"{name:<14}{jobs:>9}{plain_rate:>11.1f}{our_rate:>10.1f}{ratio:>7.3f}"
            f"{plain_cpu:>15.3f}{our_cpu:>10.3f}{cpu_ratio:>7.3f}"
        )


def _rq_version() -> str:
    from importlib.metadata import version

    return version("rq")


if __name__ == "__main__":
    main()
