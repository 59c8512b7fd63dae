"""Probe latency of gunicorn's master health port while its only worker is busy.

gunicorn under ``-c python:lastcall.gunicorn``, one sync worker, with
``LASTCALL_HEALTH_PORT``: the master answers ``/readyz`` there for the worker.
Figures, each the median of N probes, all in the same run:

* baseline: ``/livez`` on the app's own port while the worker is idle;
* ``/readyz`` on the health port while the worker is idle;
* ``/readyz`` on the health port while the worker computes a request without pause;
* ``/livez`` on the app's own port while the worker is busy: no answer (what a
  kubelet sees without the health port), after at most TIMEOUT seconds.

Traffic goes to 127.0.0.1 only, for a bounded time.
Run: python benchmarks/health_probe.py [--probes N]
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gunicorn_load import START_WAIT, free_port

APP = """
import time

def app(environ, start_response):
    if environ["PATH_INFO"] == "/busy":  # the worker computes, holding it, until the deadline
        until = time.monotonic() + float(environ["QUERY_STRING"])
        while time.monotonic() < until:
            sum(range(10_000))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""
TIMEOUT = 1.0  # seconds a probe waits, as a kubelet's default timeoutSeconds


def get(port: int, path: str, timeout: float = TIMEOUT) -> float | None:
    """Seconds for one GET to be answered; None if none came within ``timeout``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    began = time.perf_counter()
    try:
        conn.request("GET", path)
        conn.getresponse().read()
    except OSError:
        return None
    finally:
        conn.close()
    return time.perf_counter() - began


def wait_answer(port: int, path: str) -> None:
    deadline = time.monotonic() + START_WAIT
    while get(port, path) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answered {path} on port {port}")
        time.sleep(0.05)


def median(port: int, path: str, probes: int) -> float | None:
    times = [get(port, path) for _ in range(probes)]
    answered = [t for t in times if t is not None]
    return statistics.median(answered) if len(answered) == len(times) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=30)
    probes = parser.parse_args().probes
    port, health = free_port(), free_port()
    with tempfile.TemporaryDirectory() as directory:
        Path(directory, "benchapp.py").write_text(APP)
        argv = [sys.executable, "-m", "gunicorn", "-c", "python:lastcall.gunicorn", "-w", "1"]
        argv += ["-b", f"127.0.0.1:{port}", "--log-level", "warning", "benchapp:app"]
        env = {**os.environ, "PYTHONPATH": directory, "LASTCALL_HEALTH_PORT": str(health)}
        proc = subprocess.Popen(argv, env=env, start_new_session=True)
        try:
            wait_answer(port, "/livez")
            wait_answer(health, "/readyz")
            main_idle = median(port, "/livez", probes)
            health_idle = median(health, "/readyz", probes)
            busy_for = probes * 0.05 + 2 * TIMEOUT + 2
            busy = http.client.HTTPConnection("127.0.0.1", port, timeout=busy_for + 5)
            busy.request("GET", f"/busy?{busy_for}")
            time.sleep(0.2)  # the worker has taken it (a sync worker serves one at a time)
            health_busy = median(health, "/readyz", probes)
            main_busy = get(port, "/livez")
            busy.getresponse().read()
            busy.close()
        finally:
            proc.terminate()
            proc.wait(START_WAIT)

    def ms(value: float | None) -> str:
        return f"{value * 1000:8.2f} ms" if value is not None else f"no answer in {TIMEOUT:g} s"

    assert main_idle is not None
    rows = [
        ("app port /livez, worker idle (baseline)", main_idle),
        ("health port /readyz, worker idle", health_idle),
        ("health port /readyz, worker busy", health_busy),
        ("app port /livez, worker busy", main_busy),
    ]
    print(f"{'probe':<42}{'median':>14}{'ratio':>9}")
    for name, value in rows:
        ratio = f"{value / main_idle:8.2f}x" if value is not None else f"{'-':>9}"
        print(f"{name:<42}{ms(value):>14}{ratio}")
    print(f"(median of {probes} probes each; target: health port busy <= 50 ms)")


if __name__ == "__main__":
    main()
