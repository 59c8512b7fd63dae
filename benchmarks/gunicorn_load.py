"""gunicorn (gthread) under load on loopback: requests/s with lastcall beside without.

One worker (4 threads) serves a trivial WSGI app; ``wrk`` (Debian's package)
keeps 4 connections busy with keep-alive requests. Compared in the same run:

* requests/s, and the worker's CPU time per request (``/proc/PID/stat``);
* over several *pairs* of gunicorns, one without lastcall and one with, up
  at the same time and measured in alternating bursts, so that drift on a
  shared machine hits both alike. Two processes of the same gunicorn differ
  by several per cent on their own, so the verdict is the median over every
  burst of every pair, and ``--control`` (both without lastcall) shows how
  far apart two identical gunicorns come out: the noise floor;
* lastcall's own work per request (its ``pre_request``/``post_request``
  hooks and the middleware), timed in-process, as a share of the CPU a
  request takes without lastcall: the figure the noise cannot hide.

With two CPUs or more, gunicorn runs on CPU 0 and wrk on CPU 1. Target: with
lastcall >= 0.99 x without. Traffic goes to 127.0.0.1 only, for a bounded time.

Run: python benchmarks/gunicorn_load.py [--pairs N] [--bursts N] [--seconds S] [--control]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
"""
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
START_WAIT = 15.0
CONNECTIONS = 4
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cpu: int) -> list[str]:
    """``taskset -c cpu`` where there is a CPU for the server and one for the client."""
    if len(os.sched_getaffinity(0)) < 2 or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", str(cpu)]


def start(directory: Path, port: int, *, with_lastcall: bool) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", "4", "-w", "1"]
    argv += ["-b", f"127.0.0.1:{port}", "--keep-alive", "30", "--log-level", "warning"]
    if with_lastcall:
        argv += ["-c", "python:lastcall.gunicorn"]
    env = {**os.environ, "PYTHONPATH": str(directory), "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen([*pinned(0), *argv, "benchapp:app"], env=env, start_new_session=True)
    deadline = time.monotonic() + START_WAIT
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(REQUEST)
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc
        except OSError:
            time.sleep(0.05)
    stop(proc)
    raise RuntimeError("gunicorn did not answer")


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(START_WAIT)


def worker_of(master: int) -> int:
    """The PID of gunicorn's only worker (the master's child)."""
    for task in Path(f"/proc/{master}/task").iterdir():
        children = (task / "children").read_text().split()
        if children:
            return int(children[0])
    raise RuntimeError(f"gunicorn {master} has no worker")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def burst(port: int, seconds: float) -> tuple[float, int]:
    """Requests/s and requests served in one ``wrk`` run of ``seconds``."""
    argv = [*pinned(1), "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s"]
    out = subprocess.run(
        [*argv, f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    served = re.search(r"(\d+) requests in", out)
    if rate is None or served is None or "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk did not report a clean run:\n{out}")
    return float(rate.group(1)), int(served.group(1))


def measure(port: int, worker: int, seconds: float) -> tuple[float, float]:
    """Requests/s and the worker's CPU µs per request over one burst."""
    before = cpu_seconds(worker)
    rate, served = burst(port, seconds)
    return rate, (cpu_seconds(worker) - before) / served * 1e6


Burst = tuple[float, float]  # requests/s, CPU µs per request


def run_pair(
    directory: Path, bursts: int, seconds: float, *, control: bool, first: bool
) -> dict[bool, list[Burst]]:
    """Alternating bursts on a gunicorn without lastcall and one with, both up at once.

    ``first`` is the one started first (pairs alternate it: the second one
    started tends to be a little slower). With ``control``, the one "with"
    runs without lastcall too: the noise floor.
    """
    procs = {}
    try:
        for with_lastcall in (first, not first):
            port = free_port()
            proc = start(directory, port, with_lastcall=with_lastcall and not control)
            procs[with_lastcall] = (proc, port, worker_of(proc.pid))
        for _, port, _ in procs.values():
            burst(port, 1)  # warm-up
        results: dict[bool, list[Burst]] = {False: [], True: []}
        for index in range(bursts):
            for key in (False, True) if index % 2 else (True, False):
                _, port, worker = procs[key]
                results[key].append(measure(port, worker, seconds))
        return results
    finally:
        for proc, _, _ in procs.values():
            stop(proc)


def lastcall_work(app: Callable[..., object], requests: int = 100_000) -> float:
    """µs lastcall adds to a request in a gthread worker, timed in-process, best of 5.

    Its ``pre_request`` and ``post_request`` hooks on a request gunicorn
    parsed, and the middleware passing the request through (gunicorn counts).
    """
    from gunicorn.config import Config
    from gunicorn.http.parser import RequestParser

    from lastcall import Coordinator
    from lastcall import gunicorn as hooks
    from lastcall.wsgi import LastCallMiddleware

    req = next(iter(RequestParser(Config(), [REQUEST], ("127.0.0.1", 0))))
    middleware = LastCallMiddleware(app, coordinator=Coordinator(run_at_exit=False))
    middleware.count_with(lambda: 0)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}

    def bare() -> float:
        began = time.perf_counter()
        for _ in range(requests):
            app(environ, start_response)
        return time.perf_counter() - began

    def with_lastcall() -> float:
        began = time.perf_counter()
        for _ in range(requests):
            hooks.pre_request(None, req)
            middleware(environ, start_response)
            hooks.post_request(None, req, environ, None)
        return time.perf_counter() - began

    return (min(with_lastcall() for _ in range(5)) - min(bare() for _ in range(5))) / requests * 1e6


def start_response(_status: str, _headers: object, _exc_info: object = None) -> None:
    """A server's ``start_response``, for the in-process timing."""


def ratios(results: dict[bool, list[Burst]], field: int) -> list[float]:
    """With over without, burst by burst."""
    return [w[field] / wo[field] for wo, w in zip(results[False], results[True], strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--bursts", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument(
        "--control", action="store_true", help="both without lastcall: the noise floor"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("gunicorn_load.py needs wrk, the HTTP load generator: apt-get install wrk")
    with_ = "without" if args.control else "with"
    print(f"{'pair':<6}{'without req/s':>15}{with_ + ' req/s':>12}{'ratio':>8}", end="")
    print(f"{'without CPU µs/req':>20}{with_:>8}{'ratio':>8}")
    rates: list[float] = []
    costs: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "benchapp.py").write_text(APP)
        sys.path.insert(0, tmp)
        import benchapp  # the app gunicorn serves, for the in-process timing

        work = lastcall_work(benchapp.app)
        bare_cpu: list[float] = []
        for pair in range(args.pairs):
            results = run_pair(
                directory, args.bursts, args.seconds, control=args.control, first=pair % 2 == 1
            )
            rates += ratios(results, 0)
            costs += ratios(results, 1)
            bare_cpu += [cpu for _, cpu in results[False]]
            row = f"{pair + 1:<6}"
            for field, width, form in ((0, 15, ",.0f"), (1, 20, ".1f")):
                without, with_lastcall = (
                    statistics.median(b[field] for b in results[k]) for k in (False, True)
                )
                row += f"{without:>{width}{form}}{with_lastcall:>{12 if field == 0 else 8}{form}}"
                row += f"{statistics.median(ratios(results, field)):>7.3f}x"
            print(row)
    rate = statistics.median(rates)
    print(
        f"median over {len(rates)} bursts: requests/s {rate:.3f}x (target >= 0.99: "
        f"{'yes' if rate >= 0.99 else 'NO'}), CPU per request {statistics.median(costs):.3f}x; "
        f"gthread 1 worker x 4 threads, wrk {CONNECTIONS} connections, {args.seconds:g} s bursts"
        f"{', pinned to CPUs 0 and 1' if pinned(0) else ''}"
    )
    cpu = statistics.median(bare_cpu)
    print(
        f"lastcall's own work per request, in-process: {work:.2f} µs, "
        f"{work / cpu * 100:.2f}% of the {cpu:.0f} µs of CPU a request takes without it"
    )


if __name__ == "__main__":
    main()
