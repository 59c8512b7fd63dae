"""Probe latency of gunicorn's master health port while its only worker is busy.

gunicorn under ``-c python:lastcall.gunicorn``, one sync worker, with
``LASTCALL_HEALTH_PORT``: the master answers ``/readyz`` there for the worker.
Figures, each the median of N probes, all in the same run:

* baseline: ``/livez`` on the app's own port while the worker is idle;
* ``/readyz`` on the health port while the worker is idle;
* ``/readyz`` on the health port while the worker computes a request without pause;
* ``/livez`` on the app's own port while the worker is busy: no answer (what a
  kubelet sees without the health port), after at most TIMEOUT seconds.

Then a burst: ``--burst`` probes (1,000) begun at once on the health port of a
plain process (``lastcall.install()``), each timed from its connect to the end
of its answer, unanswered after BURST_WAIT seconds: p50, p90, max. With
``--before DIR`` (a ``src`` directory of another version, e.g. ``git archive
main src | tar -x -C /tmp/before``) the same burst runs against that version
first, in the same run, as the baseline.

Traffic goes to 127.0.0.1 only, for a bounded time.
Run: python benchmarks/health_probe.py [--probes N] [--burst N] [--before DIR]
"""

from __future__ import annotations

import argparse
import http.client
import os
import selectors
import socket
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
BURST_WAIT = 15.0  # seconds a burst's probes are waited for, in all
READYZ = b"GET /readyz HTTP/1.1\r\nHost: probe\r\n\r\n"
PLAIN = """
import time, lastcall
lastcall.install()
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


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


def burst(port: int, count: int) -> list[float | None]:
    """``count`` probes begun at once (non-blocking connects, each request sent once its
    connection is up): seconds each took, None if it got no 200 within BURST_WAIT."""
    selector = selectors.DefaultSelector()
    for _ in range(count):
        conn = socket.socket()
        conn.setblocking(False)  # noqa: FBT003  # positional only
        conn.connect_ex(("127.0.0.1", port))
        selector.register(conn, selectors.EVENT_WRITE, [time.perf_counter(), b""])
    times: list[float | None] = []
    deadline = time.monotonic() + BURST_WAIT
    while selector.get_map() and time.monotonic() < deadline:
        for key, mask in selector.select(0.1):
            conn, state = key.fileobj, key.data
            assert isinstance(conn, socket.socket)
            data: bytes | None = None
            try:
                if mask & selectors.EVENT_WRITE:
                    if conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                        conn.send(READYZ)
                        selector.modify(conn, selectors.EVENT_READ, state)
                        continue
                else:
                    data = conn.recv(4096)
            except OSError:
                pass
            if data:
                state[1] += data
                continue
            ok = data == b"" and state[1].startswith(b"HTTP/1.1 200 ")
            times.append(time.perf_counter() - state[0] if ok else None)
            selector.unregister(conn)
            conn.close()
    for key in list(selector.get_map().values()):
        times.append(None)
        selector.unregister(key.fileobj)
        key.fileobj.close()  # type: ignore[union-attr]
    selector.close()
    return times


def burst_against(src: str | None, count: int) -> list[float | None]:
    """A burst on the health port of a plain process importing lastcall from ``src``."""
    health = free_port()
    env = {**os.environ, "LASTCALL_HEALTH_PORT": str(health)}
    if src is not None:
        env["PYTHONPATH"] = src
    proc = subprocess.Popen(
        [sys.executable, "-c", PLAIN], env=env, stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # "ready": installed, the listener bound
        wait_answer(health, "/readyz")
        return burst(health, count)
    finally:
        proc.terminate()
        proc.wait(START_WAIT)


def burst_table(count: int, before: str | None) -> None:
    runs = [("before (" + before + ")", before)] if before else []
    runs.append(("this tree", None))
    print(f"\n{count} probes at once on the health port (/readyz)")
    print(f"{'listener':<34}{'answered':>10}{'p50':>10}{'p90':>10}{'max':>10}")
    for name, src in runs:
        times = burst_against(src, count)
        answered = sorted(t for t in times if t is not None)
        cells = [f"{len(answered)}/{count}"]
        if answered:
            p90 = answered[min(len(answered) - 1, int(0.9 * len(answered)))]
            cells += [
                f"{statistics.median(answered):.3f} s",
                f"{p90:.3f} s",
                f"{answered[-1]:.3f} s",
            ]
        print(f"{name[:33]:<34}" + "".join(f"{cell:>10}" for cell in cells))
    print(f"(each from its connect to the end of its answer; unanswered: none in {BURST_WAIT:g} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=30)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--before", help="a src directory of the version to compare with")
    parser.add_argument("--burst-only", action="store_true", help="skip the gunicorn figures")
    args = parser.parse_args()
    if not args.burst_only:
        busy_worker(args.probes)
    burst_table(args.burst, args.before)


def busy_worker(probes: int) -> None:
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
