"""Core figures: stop latency, 1,000 no-op hooks, import time, busy(), unregister.

Each figure is compared with a baseline measured in the same run:
(a) SIGTERM-to-exit of an idle process with lastcall installed, against the
    same process without lastcall (the default SIGTERM action: death);
(b) a shutdown running 1,000 no-op hooks, against calling them in a loop;
(c) ``import lastcall`` in a fresh interpreter, against starting that
    interpreter;
(d) one ``with lastcall.busy(...)`` enter and exit, against ``with nullcontext()``;
(e) unregistering 100,000 hooks one by one, against registering them.
Run: python benchmarks/core.py [--runs N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

import lastcall

IDLE = """
import sys, time
{setup}
sys.stdout.write("ready\\n"); sys.stdout.flush()
while True:
    time.sleep(60)
"""


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
        ("(c) import lastcall", imported, started, "python -c pass", imported, 0.015),
        ("(d) busy() enter+exit", busy, null, "nullcontext()", busy, 0.000001),
        ("(e) unregister 100k hooks", unregistered, registered, "registering", unregistered, 1.0),
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


if __name__ == "__main__":
    main()
