"""gunicorn (gthread) under load on loopback: requests/s with lastcall beside without.

One worker serves a trivial WSGI app; a load generator of its own (client
processes, each one keep-alive connection sending requests back to back)
measures requests/s for a few seconds. Rounds alternate which variant goes
first, so drift on a shared machine hits both alike; the table gives each
round and the median ratio (target: with lastcall >= 0.99 x without).
Traffic goes to 127.0.0.1 only, for a bounded time.

Run: python benchmarks/gunicorn_load.py [--rounds N] [--seconds S] [--clients N]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
"""
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
START_WAIT = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(directory: Path, port: int, *, with_lastcall: bool) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", "4", "-w", "1"]
    argv += ["-b", f"127.0.0.1:{port}", "--keep-alive", "30", "--log-level", "warning"]
    if with_lastcall:
        argv += ["-c", "python:lastcall.gunicorn"]
    env = {**os.environ, "PYTHONPATH": str(directory)}
    proc = subprocess.Popen([*argv, "benchapp:app"], env=env, start_new_session=True)
    deadline = time.monotonic() + START_WAIT
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(REQUEST)
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("gunicorn did not answer")


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(START_WAIT)


def client(port: int, seconds: float, results: multiprocessing.Queue[int]) -> None:
    """One keep-alive connection, requests back to back; puts how many got their response."""
    done = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            sock.sendall(REQUEST)
            received = b""
            while not received.endswith(b"\r\n\r\nok"):
                chunk = sock.recv(4096)
                if not chunk:
                    results.put(done)
                    return
                received += chunk
            done += 1
    results.put(done)


def measure(port: int, seconds: float, clients: int) -> float:
    results: multiprocessing.Queue[int] = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(target=client, args=(port, seconds, results))
        for _ in range(clients)
    ]
    for proc in procs:
        proc.start()
    total = sum(results.get(timeout=seconds + START_WAIT) for _ in procs)
    for proc in procs:
        proc.join(START_WAIT)
    return total / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "benchapp.py").write_text(APP)
        print(f"{'round':<7}{'without req/s':>15}{'with req/s':>13}{'ratio':>9}")
        ratios = []
        for round_ in range(args.rounds):
            rates = {}
            order = (False, True) if round_ % 2 else (True, False)
            for with_lastcall in order:
                port = free_port()
                proc = start(directory, port, with_lastcall=with_lastcall)
                try:
                    measure(port, 0.5, args.clients)  # warm-up
                    rates[with_lastcall] = measure(port, args.seconds, args.clients)
                finally:
                    stop(proc)
            ratio = rates[True] / rates[False]
            ratios.append(ratio)
            print(f"{round_ + 1:<7}{rates[False]:>15,.0f}{rates[True]:>13,.0f}{ratio:>8.3f}x")
        median = statistics.median(ratios)
        verdict = "yes" if median >= 0.99 else "NO"
        print(
            f"median ratio {median:.3f}x (target >= 0.99: {verdict}); {args.clients} clients, "
            f"{args.seconds:g} s a round, gthread 1 worker x 4 threads"
        )


if __name__ == "__main__":
    main()
