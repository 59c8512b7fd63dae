"""Core figures: stop latency, 1,000 no-op hooks, import time.

Each figure is compared with a baseline measured in the same run:
(a) SIGTERM-to-exit of an idle process with lastcall installed, against the
    same process without lastcall (the default SIGTERM action: death);
(b) a shutdown running 1,000 no-op hooks, against calling them in a loop;
(c) ``import lastcall`` in a fresh interpreter, against starting that
    interpreter.
Run: python benchmarks/core.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time

import lastcall

IDLE = """
import sys, time
{setup}
sys.stdout.write("ready\\n"); sys.stdout.flush()
while True:
    time.sleep(60)
"""


def stop_latency(setup: str, runs: int) -> float:
    """Median seconds from SIGTERM to the process being reaped."""
    samples = []
    for _ in range(runs):
        proc = subprocess.Popen(
            [sys.executable, "-c", IDLE.format(setup=setup)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        proc.stdout.readline()
        sent = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        samples.append(time.perf_counter() - sent)
        proc.stdout.close()
    return statistics.median(samples)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs

    bare = stop_latency("", runs)
    with_lastcall = stop_latency("import lastcall; lastcall.install()", runs)
    hooks, loop = noop_hooks(1000, runs)
    imported, started = import_time(runs)

    rows = [
        (
            "(a) SIGTERM to exit, idle",
            with_lastcall,
            bare,
            "bare exit",
            with_lastcall - bare,
            0.020,
        ),
        ("(b) 1,000 no-op hooks", hooks, loop, "plain loop", hooks, 0.050),
        ("(c) import lastcall", imported, started, "python -c pass", imported, 0.015),
    ]
    print(
        f"{'figure':<28}{'lastcall':>11}{'baseline':>11}  {'(baseline is)':<16}{'ratio':>8}"
        f"{'measure':>11}{'target':>9}  ok"
    )
    for name, value, base, base_name, measure, target in rows:
        ratio = value / base if base else float("inf")
        ok = "yes" if measure <= target else "NO"
        print(
            f"{name:<28}{value * 1000:>9.2f}ms{base * 1000:>9.2f}ms  {base_name:<16}"
            f"{ratio:>7.2f}x{measure * 1000:>9.2f}ms{target * 1000:>7.0f}ms  {ok}"
        )
    print(f"(median of {runs} runs; (a) measure is lastcall minus bare, target at most 20 ms over)")


if __name__ == "__main__":
    main()
