"""Core figures: stop latency, 1,000 no-op hooks, import time, busy(), unregister.

Each figure is compared with a baseline measured in the same run:
(a) SIGTERM-to-exit of an idle process with lastcall installed, against the
    same process without lastcall (the default SIGTERM action: death);
(b) a shutdown running 1,000 no-op hooks, against calling them in a loop;
(c) ``import lastcall`` in a fresh interpreter, against starting that
    interpreter;
(d) one ``with lastcall.busy(...)`` enter and exit, against ``with nullcontext()``;
(e) unregistering 100,000 hooks one by one, against registering them;
(f) the resident memory of an idle process with ``LASTCALL_HEALTH_PORT``'s
    listener, against the same process without it;
(g) a ``/readyz`` probe on that listener while the main thread computes
    without pause (a sync worker busy with a request), against the same
    probe while the process is idle.
Run: python benchmarks/core.py [--runs N]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import lastcall

IDLE = """
import sys, time
{setup}
sys.stdout.write("ready\\n"); sys.stdout.flush()
while True:
    time.sleep(60)
"""


BUSY = """
import sys
{setup}
sys.stdout.write("ready\\n"); sys.stdout.flush()
while True:
    sum(range(10**5))  # the GIL is the listener's only way in
"""


# The health listener on a free port (0), which the process prints before "ready".
WITH_LISTENER = (
    "import lastcall; lastcall.install(health_port=0); "
    "sys.stdout.write(f'{lastcall.default.health_address[1]} ')"
)


def start_ready(source: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -c source``; return it and its first line, once written."""
    proc = subprocess.Popen([sys.executable, "-c", source], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline()


def end(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()


def rss(pid: int) -> float:
    """Resident memory of ``pid``, in bytes (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc: this figure needs Linux")


def health_rss(runs: int) -> tuple[float, float]:
    """Median RSS of an idle installed process with the health listener, and without."""
    with_listener, without = [], []
    for _ in range(runs):
        for sink, setup in (
            (without, "import lastcall; lastcall.install()"),
            (with_listener, WITH_LISTENER),
        ):
            proc, _ = start_ready(IDLE.format(setup=setup))
            sink.append(rss(proc.pid))
            end(proc)
    return statistics.median(with_listener), statistics.median(without)


def probe_latency(template: str, probes: int) -> float:
    """Median seconds for a ``/readyz`` on the health listener of a process running ``template``."""
    proc, line = start_ready(template.format(setup=WITH_LISTENER))
    port = int(line.split()[0])
    times = []
    try:
        for _ in range(probes):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            began = time.perf_counter()
            conn.request("GET", "/readyz")
            conn.getresponse().read()
            times.append(time.perf_counter() - began)
            conn.close()
    finally:
        end(proc)
    return statistics.median(times)


def stop_latency(setup: str) -> float:
    """Seconds from SIGTERM to the process being reaped.

    ``wait()`` without a timeout: with one, Popen polls with a doubling sleep
    (0.5, 1, 2, 4 ms ...) and rounds every figure up to its next poll.
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", IDLE.format(setup=setup)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    killer = threading.Timer(10, proc.kill)  # a process that will not stop ends the run
    killer.start()
    sent = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    took = time.perf_counter() - sent
    killer.cancel()
    proc.stdout.close()
    return took


def stop_latencies(runs: int) -> tuple[float, float]:
    """Median stop latency with lastcall and without, measured in turn so load hits both."""
    with_lastcall, bare = [], []
    for _ in range(runs):
        bare.append(stop_latency(""))
        with_lastcall.append(stop_latency("import lastcall; lastcall.install()"))
    return statistics.median(with_lastcall), statistics.median(bare)


def noop_hooks(count: int, runs: int) -> tuple[float, float]:
    lastcall_times, loop_times = [], []
    hooks = [lambda: None for _ in range(count)]
    for _ in range(runs):
        coordinator = lastcall.Coordinator(run_at_exit=False)
        for hook in hooks:
            coordinator.on_shutdown(hook)
        began = time.perf_counter()
        coordinator.shutdown()
        lastcall_times.append(time.perf_counter() - began)
        began = time.perf_counter()
        for hook in hooks:
            hook()
        loop_times.append(time.perf_counter() - began)
    return statistics.median(lastcall_times), statistics.median(loop_times)


def import_time(runs: int) -> tuple[float, float]:
    """Median import time with bytecode cached, as an installed package has it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", "import lastcall"], check=True, env=env)  # warm the cache
    code = "import time; t = time.perf_counter(); import lastcall; print(time.perf_counter() - t)"
    imports, starts = [], []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, env=env)
        starts.append(time.perf_counter() - began)
        out = subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env
        )
        imports.append(float(out.stdout))
    return statistics.median(imports), statistics.median(starts)


def busy_cost(runs: int, rounds: int = 100_000) -> tuple[float, float]:
    """Median seconds per enter+exit: lastcall.busy against contextlib.nullcontext."""
    coordinator = lastcall.Coordinator(run_at_exit=False)
    busy_times, null_times = [], []
    for _ in range(runs):
        began = time.perf_counter()
        for _ in range(rounds):
            with coordinator.busy("job"):
                pass
        busy_times.append((time.perf_counter() - began) / rounds)
        began = time.perf_counter()
        for _ in range(rounds):
            with contextlib.nullcontext():
                pass
        null_times.append((time.perf_counter() - began) / rounds)
    return statistics.median(busy_times), statistics.median(null_times)


def unregister_cost(count: int = 100_000) -> tuple[float, float]:
    """Seconds to unregister ``count`` hooks one by one, and to register them."""
    coordinator = lastcall.Coordinator(run_at_exit=False)
    hooks = [lambda: None for _ in range(count)]
    began = time.perf_counter()
    for hook in hooks:
        coordinator.on_shutdown(hook)
    registered = time.perf_counter() - began
    began = time.perf_counter()
    for hook in hooks:
        coordinator.unregister(hook)
    return time.perf_counter() - began, registered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs

    with_lastcall, bare = stop_latencies(runs)
    hooks, loop = noop_hooks(1000, runs)
    imported, started = import_time(runs)
    busy, null = busy_cost(runs)
    unregistered, registered = unregister_cost()
    memory, memory_bare = health_rss(max(3, runs // 3))
    busy_probe, idle_probe = probe_latency(BUSY, runs * 4), probe_latency(IDLE, runs * 4)

    rows = [
        (
            "(a) SIGTERM to exit, idle",
            with_lastcall,
            bare,
            "bare exit",
            with_lastcall - bare,
            0.001,
        ),
        ("(b) 1,000 no-op hooks", hooks, loop, "plain loop", hooks, 0.050),
        ("(c) import lastcall", imported, started, "python -c pass", imported, 0.003),
        ("(d) busy() enter+exit", busy, null, "nullcontext()", busy, 0.000001),
        ("(e) unregister 100k hooks", unregistered, registered, "registering", unregistered, 1.0),
        ("(g) /readyz, main busy", busy_probe, idle_probe, "main idle", busy_probe, 0.050),
    ]
    print(
        f"{'figure':<28}{'lastcall':>11}{'baseline':>11}  {'(baseline is)':<16}{'ratio':>8}"
        f"{'measure':>11}{'target':>9}  ok"
    )
    for name, value, base, base_name, measure, target in rows:
        ratio = value / base if base else float("inf")
        ok = "yes" if measure <= target else "NO"
        print(
            f"{name:<28}{value * 1000:>9.4f}ms{base * 1000:>9.4f}ms  {base_name:<16}"
            f"{ratio:>7.2f}x{measure * 1000:>9.4f}ms{target * 1000:>7.3f}ms  {ok}"
        )
    print(f"(median of {runs} runs; (a) measure is lastcall minus bare, target at most 1 ms over)")
    extra = memory - memory_bare
    print(
        f"(f) health listener RSS: {memory / 2**20:.1f} MiB against {memory_bare / 2**20:.1f} MiB "
        f"without ({memory / memory_bare:.2f}x, +{extra / 2**10:.0f} KiB; target at most "
        f"+2048 KiB: {'yes' if extra <= 2 * 2**20 else 'NO'})"
    )


if __name__ == "__main__":
    main()
