"""What the per-job overhead benchmarks of queue workers share (rq, worker, dramatiq_overhead).

A private ``redis-server`` (Debian's, on a free port, in a temporary
directory, stopped by PID), the CPU time of a worker's process tree, and the
side-by-side run: plain and lastcall at the same time, each on its own broker
(swapped every round), so a neighbour's burst on a shared machine hits both alike.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import redis

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

WAIT = 60.0
POLL = 0.005
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(what: str, predicate: Callable[[], bool], timeout: float = WAIT) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"not within {timeout} s: {what}")
        time.sleep(POLL)
    return time.monotonic()


def python_path(directory: Path) -> str:
    """``directory`` (the app's) ahead of any ``PYTHONPATH`` given (another lastcall's ``src``)."""
    return os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")]))


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of ``pid``, its reaped children and its live ones (``/proc``)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid):  # its own and its reaped children's (RQ's horses)
            total += sum(int(field) for field in fields[11:15])
        elif fields[1] == str(pid):  # a live child (fields[1]: the parent)
            total += int(fields[11]) + int(fields[12])
    return total / TICK


class Redis:
    """A private redis-server on a free port, and a client to it."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed: apt-get install redis-server")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        where = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory)]
        self.server = subprocess.Popen(
            [binary, *where, "--save", "", "--appendonly", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = redis.Redis(port=self.port)
        wait_until("redis-server answering", self._pings, 10.0)

    def _pings(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        self.client.close()
        self.server.terminate()
        self.server.wait(10)


def end(worker: subprocess.Popen[bytes], how: signal.Signals = signal.SIGTERM) -> None:
    """Stop a worker by ``how``; killed if it is still there after ``WAIT``."""
    worker.send_signal(how)
    try:
        worker.wait(WAIT)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


class Run:
    """One worker on one broker's full queue, timed from its ``warm_up``-th job taken to the end.

    ``queued()`` counts the jobs no worker has taken yet, ``done()`` says all were
    acknowledged; the worker's start-up is not per-job cost.
    """

    def __init__(
        self,
        worker: subprocess.Popen[bytes],
        queued: Callable[[], int],
        done: Callable[[], bool],
        warm_up: int,
    ) -> None:
        self.worker = worker
        self.queued = queued
        self.done = done
        self.warm_up = warm_up
        self.jobs = queued()
        self.began: float | None = None
        self.ended: float | None = None
        self.cpu = 0.0

    def look(self) -> bool:
        """Note the start and the end as they come; whether it is over."""
        if self.worker.poll() is not None:
            raise SystemExit(f"a worker exited early ({self.worker.args})")
        if self.began is None and self.queued() < self.jobs - self.warm_up:
            self.began = time.monotonic()
            self.cpu = cpu_seconds(self.worker.pid)
        elif self.began is not None and self.ended is None and self.done():
            self.ended = time.monotonic()
            self.cpu = cpu_seconds(self.worker.pid) - self.cpu
        return self.ended is not None

    def result(self) -> tuple[float, float]:
        """Jobs/s and CPU µs per job."""
        assert self.began is not None
        assert self.ended is not None
        timed = self.jobs - self.warm_up
        return timed / (self.ended - self.began), self.cpu / timed * 1e6


def side_by_side(runs: dict[bool, Callable[[], Run]], what: str) -> dict[bool, tuple[float, float]]:
    """Start both runs (plain: True, lastcall: False) at once; their (jobs/s, CPU µs/job)."""
    started = {plain: start() for plain, start in runs.items()}
    deadline = time.monotonic() + WAIT
    try:
        while True:
            looks = [run.look() for run in started.values()]  # each, every time: no short cut
            if all(looks):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{what}: not done within {WAIT} s")
            time.sleep(POLL)
    finally:
        for run in started.values():
            end(run.worker)
    return {plain: run.result() for plain, run in started.items()}


class Rounds:
    """Per-round results of plain and lastcall, summed up as medians and ratios of medians."""

    def __init__(self) -> None:
        self.rates: dict[bool, list[float]] = {True: [], False: []}
        self.cpu: dict[bool, list[float]] = {True: [], False: []}
        self.ratios: list[float] = []

    def add(self, result: dict[bool, tuple[float, float]]) -> None:
        for plain in (True, False):
            self.rates[plain].append(result[plain][0])
            self.cpu[plain].append(result[plain][1])
        self.ratios.append(result[False][0] / result[True][0])

    def row(self, name: str) -> str:
        """Medians of jobs/s and CPU µs/job; ratios read "higher is better" (lastcall / plain
        for the rate, plain / lastcall for the CPU), and the range of the rounds' rate ratios.
        """
        med = statistics.median
        plain, ours = med(self.rates[True]), med(self.rates[False])
        cpu_plain, cpu_ours = med(self.cpu[True]), med(self.cpu[False])
        return (
            f"{name:<14}{plain:>13.0f}{ours:>9.0f}{ours / plain:>7.3f}"
            f"{min(self.ratios):>8.3f}-{max(self.ratios):.3f}"
            f"{cpu_plain:>19.0f}{cpu_ours:>9.0f}{cpu_plain / cpu_ours:>7.3f}"
        )


Setting = TypeVar("Setting")


class Broker(Protocol[Setting]):
    """A benchmark's private broker: filled with N no-op jobs, run by a plain or lastcall worker."""

    def fill(self, count: int) -> None: ...
    def run(self, directory: Path, setting: Setting, *, plain: bool) -> Run: ...
    def stop(self) -> None: ...


def paired_rounds(
    broker: Callable[[Path], Broker[Setting]],
    app: str,
    settings: Sequence[Setting],
    name: Callable[[Setting], str],
    *,
    rounds: int,
    count: int,
) -> list[str]:
    """For each setting (a pool, a thread count), ``rounds`` side-by-side runs: a row each.

    Two brokers; each round fills both with ``count`` jobs and runs plain on one and
    lastcall on the other, swapped every round. ``app`` is the worker's ``bench.py``.
    """
    with tempfile.TemporaryDirectory(prefix="lastcall-bench-") as temporary:
        directory = Path(temporary)
        (directory / "bench.py").write_text(app)
        brokers: list[Broker[Setting]] = []
        try:
            for side in ("a", "b"):
                (directory / side).mkdir()
                brokers.append(broker(directory / side))
            rows = []
            for setting in settings:
                results = Rounds()
                for round_ in range(rounds):
                    for each in brokers:
                        each.fill(count)
                    a, b = brokers if round_ % 2 == 0 else brokers[::-1]
                    runs = {
                        True: functools.partial(a.run, directory, setting, plain=True),
                        False: functools.partial(b.run, directory, setting, plain=False),
                    }
                    results.add(side_by_side(runs, name(setting)))
                rows.append(results.row(name(setting)))
        finally:
            for each in brokers:
                each.stop()
    return rows


def table(title: str, rows: Sequence[str]) -> None:
    print(title)
    print(
        f"{'pool':<14}{'plain jobs/s':>13}{'lastcall':>9}{'ratio':>7}{'round ratios':>14}"
        f"{'CPU µs/job plain':>19}{'lastcall':>9}{'ratio':>7}"
    )
    for row in rows:
        print(row)
