"""Last-resort figures: what the watcher costs the app, its memory, how soon it acts.

Each figure is compared with a baseline measured in the same run:
(a) the first ``last_resort()`` call, against the first ``on_shutdown()`` call;
(b) start of a process to "ready" with one ``last_resort()`` call, against the
    same process with ``on_shutdown()`` only (the measure is the difference);
(c) the watcher's resident memory (VmRSS, once it has the hooks), against a
    bare ``python -I -S`` interpreter at rest;
(d) SIGKILL of the app to the first last-resort hook starting (a function,
    and a command), against SIGTERM to the first ``on_shutdown`` hook of an
    app with ``lastcall.install()`` (the in-process path).
Bytecode is cached, as an installed package has it. Run:
python benchmarks/lastresort.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
WAIT = 10.0

HOOK_MODULE = """
import time

def stamp(path):
    with open(path, "w") as out:
        out.write(repr(time.monotonic()))
"""

# Prints "ready" and how long the first registration took, then the watcher's PID
# once it is ready (0 when there is none).
APP = """
import time
began = time.monotonic()
import os, sys, signal
import lastcall
{setup}
def stamp():
    with open({stamp!r}, "w") as out:
        out.write(repr(time.monotonic()))
t = time.perf_counter()
{register}
call = time.perf_counter() - t
{more}
sys.stdout.write(f"ready {{call}}\\n"); sys.stdout.flush()
registry = lastcall.last_resort.__self__
pid = registry.watcher_pid if registry.wait_ready(10) else 0
sys.stdout.write(f"{{pid}}\\n"); sys.stdout.flush()
sys.stdin.read()
"""


def start_app(
    register: str, stamp: Path, workdir: Path, *, setup: str = "", more: str = ""
) -> tuple[subprocess.Popen[str], list[str], float]:
    """Start an app; return it, its line (ready, call, watcher PID), and the time to that line."""
    code = APP.format(setup=setup, register=register, more=more, stamp=str(stamp))
    began = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=workdir,
    )
    assert proc.stdout is not None
    fields = proc.stdout.readline().split()
    took = time.monotonic() - began
    fields.append(proc.stdout.readline().strip())
    return proc, fields, took


def finish(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()  # the app returns: a normal exit, the watcher stands down
    proc.wait(WAIT)
    if proc.stdout is not None:
        proc.stdout.close()


def rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0])


def wait_for_stamp(path: Path) -> float:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.strip():
            return float(text)
        time.sleep(0.001)
    raise RuntimeError(f"no hook ran within {WAIT} s ({path})")


def main() -> None:  # noqa: PLR0915  # one straight measurement script
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs
    work = Path(tempfile.mkdtemp(prefix="lastresort-bench-"))
    (work / "bench_hooks.py").write_text(HOOK_MODULE)
    stamp = work / "stamp.txt"
    # Warm the bytecode cache. The watcher imports hooks with the app's sys.path,
    # where -c puts the app's working directory (here, beside bench_hooks.py) first.
    warm = "import lastcall, lastcall._watcher"
    subprocess.run([sys.executable, "-c", warm], env=ENV, check=True)

    function = f'lastcall.last_resort("bench_hooks:stamp", {str(stamp)!r})'
    date = f'lastcall.last_resort(["sh", "-c", "date +%s.%N > {stamp}"])'
    spare = 'lastcall.last_resort(["true"])'  # a command, so the watcher is measured with both
    plain = "lastcall.on_shutdown(stamp)"
    setup = "lastcall.install()"

    calls, base_calls, starts, base_starts, rss, deaths, command_deaths, terms = (
        [] for _ in range(8)
    )
    for _ in range(runs):
        # (a), (b), (c): one app with a function and a command hook.
        proc, fields, took = start_app(spare, stamp, work, setup=setup, more=function)
        starts.append(took)
        calls.append(float(fields[1]))
        time.sleep(0.1)  # let the watcher read the hooks and pre-import what they need
        rss.append(rss_kb(int(fields[2])))
        # (d) function: kill it, read the hook's monotonic stamp.
        stamp.unlink(missing_ok=True)
        killed = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        deaths.append(wait_for_stamp(stamp) - killed)
        proc.wait(WAIT)
        assert proc.stdout is not None
        proc.stdout.close()

        # (d) command: `date` writes the wall clock as it starts.
        stamp.unlink(missing_ok=True)
        proc, fields, _ = start_app(date, stamp, work, setup=setup)
        killed_wall = time.time()
        proc.send_signal(signal.SIGKILL)
        command_deaths.append(wait_for_stamp(stamp) - killed_wall)
        proc.wait(WAIT)
        assert proc.stdout is not None
        proc.stdout.close()

        # Baselines: on_shutdown() only; SIGTERM to its hook with install().
        stamp.unlink(missing_ok=True)
        proc, fields, took = start_app(plain, stamp, work, setup=setup)
        base_starts.append(took)
        base_calls.append(float(fields[1]))
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        terms.append(wait_for_stamp(stamp) - sent)
        proc.wait(WAIT)
        assert proc.stdout is not None
        proc.stdout.close()

    bare = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", "import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE,
        env=ENV,
    )
    time.sleep(0.3)  # let it settle at rest
    bare_rss = rss_kb(bare.pid)
    assert bare.stdin is not None
    bare.stdin.close()
    bare.wait(WAIT)

    ms = 1000.0
    med = statistics.median
    rows = [
        ("(a) first last_resort() call", med(calls) * ms, "ms", med(base_calls) * ms,
         "first on_shutdown()", med(calls) * ms, "<= 60 ms"),
        ("(b) start to ready", med(starts) * ms, "ms", med(base_starts) * ms,
         "on_shutdown() only", (med(starts) - med(base_starts)) * ms, "+ <= 60 ms"),
        ("(c) watcher VmRSS", med(rss) / 1024, "MB", bare_rss / 1024,
         "bare python -I -S", med(rss) / 1024, "<= 15 MB"),
        ("(d) SIGKILL to hook: function", med(deaths) * ms, "ms", med(terms) * ms,
         "SIGTERM to hook", med(deaths) * ms, "<= 100 ms"),
        ("(d) SIGKILL to hook: command", med(command_deaths) * ms, "ms", med(terms) * ms,
         "SIGTERM to hook", med(command_deaths) * ms, "<= 100 ms"),
    ]
    print(f"{'figure':<31}{'lastcall':>10}{'baseline':>10}  {'(baseline is)':<20}"
          f"{'ratio':>8}{'measure':>10}  {'target':<11}ok")
    for name, value, unit, base, base_name, measure, target in rows:
        ratio = f"{value / base:.1f}x" if base else "-"
        if measure is None:
            measured, ok = "-", ""
        else:
            limit = float(target.split("<=")[1].split()[0])
            measured, ok = f"{measure:.1f}", ("yes" if measure <= limit else "NO")
        print(f"{name:<31}{value:>8.2f}{unit}{base:>8.2f}{unit}  {base_name:<20}"
              f"{ratio:>8}{measured:>10}  {target:<11}{ok}")
    print(f"(median of {runs} runs; (b) measure is the difference; "
          f"(d) command uses the wall clock, `date` included)")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
