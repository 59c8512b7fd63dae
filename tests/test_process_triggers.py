"""Every way a process ends, in a real child process with real signals.

Each scenario prints ``hook:<name>`` from its hooks, so the order and the
count of those lines is what the hooks really did.
"""

from __future__ import annotations

import json
import signal
import stat
import sys
import time
from pathlib import Path

import pytest
from conftest import WAIT, free_port, live_processes_in_session

PRELUDE = """
import logging, os, signal, sys, threading, time
import lastcall
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")

def out(*words):
    # one write per line: print() writes the newline separately, and lines
    # from two threads could interleave
    sys.stdout.write(" ".join(map(str, words)) + "\\n")
    sys.stdout.flush()

def say(name):
    def hook():
        out(f"hook:{name}")
    hook.__name__ = hook.__qualname__ = name
    return hook
"""

# The main thread asleep, as a service's would be between two events. A second at a time,
# not a minute: on CPython 3.10, a signal that lands in the few bytecodes before the sleep
# can leave its handler pending until the main thread next takes the GIL (another thread
# recomputing the eval breaker clears its signal bit), and no EINTR comes to wake it: the
# stop then begins at the next wake-up (most likely what lost a SIGTERM or SIGHUP in 2 of
# about 6 full runs of the 3.10 leg, each time in another test).
BLOCK = """
out("ready")
while True:
    time.sleep(1)
"""

# A main thread that runs Python code every 50 ms, as a server's loop does. CPython
# runs a signal's handler only on the main thread, at its next Python code: a signal
# that lands while the handler of the same signal still runs (the GIL taken away
# mid-handler), or that the kernel hands to another thread of the app (lastcall's own
# block every signal; the app's do not), waits for the main thread's next wake-up,
# in a 60 s sleep 60 s. Tests of a second signal, and tests whose app has threads of
# its own, use this, not BLOCK.
BUSY_MAIN = """
out("ready")
while True:
    time.sleep(0.05)
"""

HOOKS = """
lastcall.on_shutdown(say("first"))
lastcall.on_shutdown(say("second"))
lastcall.on_shutdown(say("drain"), phase="drain")
lastcall.on_shutdown(say("final"), phase="final")
"""


def hooks_seen(child) -> list[str]:
    return [line.removeprefix("hook:") for line in child.lines("hook:")]


ORDER = ["drain", "second", "first", "final"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_runs_hooks_in_order_and_dies_by_that_signal(spawn, sig):
    """Steps: install with defaults; send the signal; the hooks run once, in
    phase order and last-registered-first; the process ends as if killed by it.
    """
    child = spawn(PRELUDE + "lastcall.install()\n" + HOOKS + BLOCK)
    child.send(sig)
    assert child.finish() == -sig, child.output()
    assert hooks_seen(child) == ORDER
    summary = child.wait_for("shutdown after", stream="stderr")
    assert sig.name in summary
    assert f"exit status {128 + sig}" in summary


def test_exit_code_replaces_the_signal_status(spawn):
    child = spawn(PRELUDE + "lastcall.install(exit_code=0)\n" + HOOKS + BLOCK)
    child.send(signal.SIGTERM)
    assert child.finish() == 0, child.output()
    assert hooks_seen(child) == ORDER


def test_exit_code_from_environment(spawn):
    child = spawn(PRELUDE + "lastcall.install()\n" + HOOKS + BLOCK, env={"LASTCALL_EXIT_CODE": "7"})
    child.send(signal.SIGTERM)
    assert child.finish() == 7, child.output()


def test_configured_signals_only(spawn):
    """SIGUSR1 handled when asked for; SIGHUP then keeps its default (death, no hooks)."""
    child = spawn(PRELUDE + "lastcall.install(signals=['SIGUSR1', 'TERM'])\n" + HOOKS + BLOCK)
    child.send(signal.SIGUSR1)
    assert child.finish() == -signal.SIGUSR1
    assert hooks_seen(child) == ORDER

    child = spawn(PRELUDE + "lastcall.install(signals=['SIGUSR1', 'TERM'])\n" + HOOKS + BLOCK)
    child.send(signal.SIGHUP)
    assert child.finish() == -signal.SIGHUP
    assert hooks_seen(child) == []


@pytest.mark.parametrize(
    ("ending", "status"),
    [("pass", 0), ("sys.exit(3)", 3), ("raise ValueError('boom')", 1)],
)
def test_interpreter_exit_runs_hooks_and_keeps_its_status(spawn, tmp_path, ending, status):
    report = tmp_path / "report.json"
    child = spawn(
        PRELUDE + "lastcall.install()\n" + HOOKS + f"out('ready')\n{ending}\n",
        env={"LASTCALL_REPORT": str(report)},
    )
    assert child.finish() == status, child.output()
    assert hooks_seen(child) == ORDER
    data = json.loads(report.read_text())
    expected_trigger = "exception" if status == 1 else "exit"
    assert data["trigger"] == expected_trigger
    if status == 1:
        assert data["reason"] == "ValueError: boom"
        assert data["exit_status"] == 1


def test_hooks_run_at_exit_without_install(spawn):
    """Like atexit: no install() needed for a normal exit."""
    child = spawn(PRELUDE + HOOKS + "out('ready')\n")
    assert child.finish() == 0
    assert hooks_seen(child) == ORDER


def test_a_coordinator_dropped_runs_nothing_at_exit(spawn):
    """The exit callbacks reach coordinators through a weak registry: one nothing refers to
    any more (an embedder's or a test's, never installed) is gone, hooks and all, at once,
    not when the garbage collector next runs, so its hooks do not run at the exit."""
    child = spawn(
        PRELUDE
        + """
lastcall.on_shutdown(say("kept"))
coordinator = lastcall.Coordinator()
coordinator.on_shutdown(say("dropped"))
del coordinator
out("ready")
"""
    )
    assert child.finish() == 0, child.output()
    assert hooks_seen(child) == ["kept"]


def test_trigger_from_a_thread_ends_the_process(spawn):
    child = spawn(
        PRELUDE
        + "lastcall.install()\n"
        + HOOKS
        + "threading.Timer(0.2, lastcall.trigger, kwargs={'reason': 'deploy'}).start()\n"
        + BLOCK
    )
    assert child.finish() == 0, child.output()
    assert hooks_seen(child) == ORDER
    assert "manual (deploy)" in child.wait_for("shutdown after", stream="stderr")


def test_trigger_from_ten_threads_at_once_runs_hooks_once(spawn, tmp_path):
    report = tmp_path / "r-{pid}.json"
    child = spawn(
        PRELUDE
        + "lastcall.install(exit_code=5)\n"
        + HOOKS
        + """
go = threading.Barrier(10)
def fire():
    go.wait()
    lastcall.trigger(reason="race")
for _ in range(10):
    threading.Thread(target=fire).start()
"""
        + BLOCK,
        env={"LASTCALL_REPORT": str(report)},
    )
    assert child.finish() == 5, child.output()
    assert hooks_seen(child) == ORDER
    reports = list(tmp_path.glob("r-*.json"))
    assert [p.name for p in reports] == [f"r-{child.pid}.json"]


def test_signal_storm_runs_hooks_once(spawn):
    """100 SIGTERMs while a slow hook runs: absorbed, hooks once, one summary."""
    child = spawn(
        PRELUDE
        + "lastcall.install()\n"
        + HOOKS
        + """
@lastcall.on_shutdown(phase="drain")
def slow():
    out("slow started")
    time.sleep(0.5)
"""
        + BLOCK
    )
    child.send(signal.SIGTERM)
    child.wait_for("slow started")
    for _ in range(100):
        child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert hooks_seen(child) == ORDER
    assert sum("shutdown after" in line for line in child.stderr) == 1


def test_signal_then_normal_exit_runs_hooks_once(spawn):
    """SIGTERM starts the stop; the main thread then returns on its own, while the stop
    still runs (a drain hook holds it until then: otherwise the stop may end the process
    first, and there is no race to test)."""
    child = spawn(
        PRELUDE
        + "lastcall.install()\n"
        + "returning = threading.Event()\n"
        + HOOKS
        + """
@lastcall.on_shutdown(phase="drain")
def wait_for_main():
    returning.wait(10)

out("ready")
lastcall.stopping.wait(30)
out("main thread returning")
returning.set()
"""
    )
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert "main thread returning" in child.stdout
    assert hooks_seen(child) == ORDER


def test_second_sigint_forces_exit_and_names_the_running_hook(spawn):
    child = spawn(
        PRELUDE
        + "lastcall.install()\n"
        + HOOKS
        + """
@lastcall.on_shutdown
def stuck():
    out("stuck started")
    time.sleep(30)
"""
        + BUSY_MAIN
    )
    child.send(signal.SIGINT)
    child.wait_for("stuck started")
    child.send(signal.SIGINT)
    assert child.finish(timeout=5) == -signal.SIGINT, child.output()
    forced = child.wait_for("again during shutdown", stream="stderr")
    assert "stuck" in forced
    assert hooks_seen(child) == ["drain"]  # the rest never ran: that is what forcing means


def test_lastcalls_threads_take_no_stop_signal_during_the_stop_and_hooks_get_the_apps_mask(
    spawn,
):
    """During the stop the dispatcher and the drain's hooks still block every signal, so a
    second SIGINT never lands on them: the kernel may hand a process's signal to whichever
    thread runs at that instant, and one taken there is run only when the main thread next
    runs Python code, after its 60 s call (a job's): too late to force the end. (Under
    load, 3 of 32 such second Ctrl-Cs were lost to a drain hook's thread just started.)
    The other phases' hooks get the app's mask back, for what they start (a subprocess
    inherits it).
    """
    child = spawn(
        PRELUDE
        + THREAD_MASKS
        + """
def report(phase):
    def hook():
        dispatcher, = [t for t in threading.enumerate() if t.name == "lastcall-dispatcher"]
        out(phase, "dispatcher blocks:", *blocked(dispatcher.native_id))
        out(phase, "hooks' thread blocks:", *blocked(threading.get_native_id()))
    return hook

signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])  # the app's own mask
lastcall.install(signals=["SIGINT"])
lastcall.on_shutdown(report("pre_stop"), phase="pre_stop")
lastcall.on_shutdown(report("drain"), phase="drain")
"""
        + BLOCK
    )
    child.send(signal.SIGINT)
    assert child.finish() == -signal.SIGINT, child.output()
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    blocked = {
        line.split(":", 1)[0]: _signals_named(line) & stop_signals
        for line in child.lines("pre_stop ") + child.lines("drain ")
    }
    assert blocked == {
        "pre_stop dispatcher blocks": stop_signals,
        "pre_stop hooks' thread blocks": {signal.SIGTERM},
        "drain dispatcher blocks": stop_signals,
        "drain hooks' thread blocks": stop_signals,
    }, child.output()


def test_a_signal_stop_begins_once_the_main_thread_left_the_handler(spawn):
    """A second signal that lands while the main thread is still inside the handler of
    the first (waiting for the GIL on a loaded machine) is not run until the main thread
    next runs Python code: the stop shows itself only once the main thread has left.

    Here the handler lastcall chains to (a framework's, installed first) takes 0.5 s.
    """
    child = spawn(
        PRELUDE
        + """
def framework_handler(signum, frame):
    time.sleep(0.5)
    out("framework handler returns")

signal.signal(signal.SIGINT, framework_handler)
lastcall.install()
lastcall.on_shutdown(say("pre_stop"), phase="pre_stop")
"""
        + BLOCK
    )
    child.send(signal.SIGINT)
    assert child.finish() == -signal.SIGINT, child.output()
    lines = [line for line in child.stdout if line.startswith(("framework", "hook:"))]
    assert lines == ["framework handler returns", "hook:pre_stop"], child.output()


def test_hanging_hook_is_abandoned_and_the_process_exits_within_grace(spawn, tmp_path):
    report = tmp_path / "report.json"
    child = spawn(
        PRELUDE
        + "lastcall.install(grace=1)\n"
        + HOOKS
        + """
@lastcall.on_shutdown
def hang():
    time.sleep(60)
"""
        + BLOCK,
        env={"LASTCALL_REPORT": str(report)},
    )
    child.send(signal.SIGTERM)
    assert child.finish(timeout=5) == -signal.SIGTERM, child.output()
    outcomes = {h["name"]: h["outcome"] for h in json.loads(report.read_text())["hooks"]}
    assert outcomes == {
        "drain": "ok",
        "hang": "timeout",
        "second": "skipped",
        "first": "skipped",
        "final": "skipped",
    }


def test_raising_and_exiting_hooks_do_not_stop_the_rest(spawn):
    child = spawn(
        PRELUDE
        + "lastcall.install()\n"
        + HOOKS
        + """
@lastcall.on_shutdown
def exits():
    sys.exit(4)

@lastcall.on_shutdown
def raises():
    raise RuntimeError("disk full")
"""
        + BLOCK
    )
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert hooks_seen(child) == ORDER
    err = "\n".join(child.stderr)
    assert "RuntimeError: disk full" in err
    assert "Traceback" in err
    assert "sys.exit(4)" in err


def test_report_file_is_json_mode_0600_with_pid(spawn, tmp_path):
    child = spawn(
        PRELUDE + "lastcall.install()\n" + HOOKS + BLOCK,
        env={"LASTCALL_REPORT": str(tmp_path / "out" / "report-{pid}.json")},
    )
    child.send(signal.SIGTERM)
    child.finish()
    path = tmp_path / "out" / f"report-{child.pid}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    data = json.loads(path.read_text())
    assert data["trigger"] == "SIGTERM"
    assert data["pid"] == child.pid
    assert data["exit_status"] == 128 + signal.SIGTERM
    assert [(h["name"], h["phase"], h["outcome"]) for h in data["hooks"]] == [
        ("drain", "drain", "ok"),
        ("second", "cleanup", "ok"),
        ("first", "cleanup", "ok"),
        ("final", "final", "ok"),
    ]
    assert all(h["duration"] >= 0 for h in data["hooks"])


def test_a_stop_is_requested_from_the_first_line_of_the_signals_handler(spawn):
    """A worker's gate (``Integration.stop_requested``) closes in the signal's handler,
    before the stop's thread begins the stop: that thread may wait for the GIL and a
    CPU, and here waits for the main thread to leave the handler (a framework's, chained
    to, takes 0.3 s), while a worker thread could take the next job.
    """
    child = spawn(
        PRELUDE
        + """
from lastcall._integration import Integration

def framework_handler(signum, frame):
    requested = Integration(lastcall.default).stop_requested()
    out("requested", requested, "began", lastcall.default.stopping.is_set())
    time.sleep(0.3)

signal.signal(signal.SIGTERM, framework_handler)
lastcall.install()
out("before", Integration(lastcall.default).stop_requested())
"""
        + BLOCK
    )
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    lines = [line for line in child.stdout if line.startswith(("before", "requested"))]
    assert lines == ["before False", "requested True began False"], child.output()


def test_previous_python_handler_is_still_called(spawn):
    child = spawn(
        PRELUDE
        + """
signal.signal(signal.SIGTERM, lambda s, f: out("framework handler"))
lastcall.install()
"""
        + HOOKS
        + BLOCK
    )
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM
    assert "framework handler" in child.stdout
    assert hooks_seen(child) == ORDER


def spawn_after(spawn, setup: str, script: str):
    """Start ``script`` in a process that ran ``setup`` (signal state) and then exec'd it."""
    path = Path(spawn.script_dir) / "after_exec.py"
    path.write_text(__import__("textwrap").dedent(script))
    launcher = (
        f"import os, signal, sys; {setup}; os.execv(sys.executable, [sys.executable, sys.argv[1]])"
    )
    return spawn("", argv=[sys.executable, "-c", launcher, str(path)])


def test_sigint_ignored_at_start_stays_ignored(spawn):
    """As under nohup or in a shell's background job."""
    script = PRELUDE + "lastcall.install()\n" + HOOKS + BLOCK
    child = spawn_after(spawn, "signal.signal(signal.SIGINT, signal.SIG_IGN)", script)
    child.send(signal.SIGINT)
    child.send(signal.SIGTERM)  # proves SIGINT was ignored: hooks run for SIGTERM
    assert child.finish() == -signal.SIGTERM, child.output()
    assert hooks_seen(child) == ORDER
    assert "SIGTERM" in child.wait_for("shutdown after", stream="stderr")


def test_a_stop_signal_blocked_at_install_is_said(spawn):
    """Steps: the process starts with SIGTERM blocked (a mask inherited across exec, from a
    parent thread that blocked it); install() says so in one WARNING line, and the stop runs
    once the app unblocks it."""
    script = (
        PRELUDE
        + "lastcall.install()\n"
        + HOOKS
        + """
out("ready")
while not os.path.exists("unblock"):
    time.sleep(0.02)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
"""
        + BLOCK
    )
    child = spawn_after(spawn, "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})", script)
    line = child.wait_for("blocked on the main thread", stream="stderr")
    assert "SIGTERM" in line
    assert "WARNING" in line
    child.send(signal.SIGTERM)
    Path(spawn.script_dir, "unblock").touch()
    assert child.finish() == -signal.SIGTERM, child.output()
    assert hooks_seen(child) == ORDER


def test_forked_child_runs_only_inherited_hooks(spawn):
    child = spawn(
        PRELUDE
        + """
lastcall.on_shutdown(say("parent-only"))
lastcall.on_shutdown(say("shared"), inherit=True)
pid = os.fork()
if pid == 0:
    lastcall.on_shutdown(say("child-own"))
    out("child exiting")
    sys.exit(0)
os.waitpid(pid, 0)
out("ready")
"""
    )
    assert child.finish() == 0, child.output()
    child_part, parent_part = "\n".join(child.stdout).split("child exiting")
    assert hooks_seen(child) == ["child-own", "shared", "shared", "parent-only"]
    assert "hook:" not in child_part
    assert parent_part.count("hook:") == 4


def test_a_fork_while_another_thread_registers_a_hook(spawn):
    """Steps: a thread is inside on_shutdown() (hashing its function, under the hooks'
    lock) when the main thread forks. The child, where that thread is gone and can never
    release the lock, keeps its inherited hooks without waiting on it, and exits."""
    child = spawn(
        PRELUDE
        + """
lastcall.on_shutdown(say("shared"), inherit=True)
hashing, forked = threading.Event(), threading.Event()

class SlowToHash:
    def __call__(self):
        out("hook:slow")

    def __hash__(self):
        hashing.set()
        forked.wait()
        return 0

registering = threading.Thread(target=lastcall.on_shutdown, args=(SlowToHash(),))
registering.start()
hashing.wait()
pid = os.fork()
if pid == 0:
    out("child forked")
    sys.exit(0)
forked.set()
registering.join()
deadline = time.monotonic() + 5
while os.waitpid(pid, os.WNOHANG) == (0, 0):
    if time.monotonic() > deadline:
        out("child hung")
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        break
    time.sleep(0.02)
else:
    out("child ended")
out("ready")
"""
    )
    assert child.finish() == 0, child.output()
    assert child.lines("child") == ["child forked", "child ended"], child.output()
    assert hooks_seen(child) == ["shared", "slow", "shared"]  # the child's, then the parent's


def test_install_off_the_main_thread_is_refused(spawn):
    child = spawn(
        PRELUDE
        + """
def attempt():
    try:
        lastcall.install()
    except RuntimeError as exc:
        out("refused:", exc)
t = threading.Thread(target=attempt); t.start(); t.join()
out("ready")
"""
    )
    assert child.finish() == 0
    assert "main thread" in child.wait_for("refused:")


def test_a_hook_can_end_the_processes_it_owns(spawn):
    child = spawn(
        PRELUDE
        + """
import subprocess
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
out("helper", helper.pid)
@lastcall.on_shutdown
def stop_helper():
    helper.terminate(); helper.wait()
lastcall.install()
"""
        + BLOCK
    )
    helper = int(child.wait_for("helper").split()[1])
    assert helper in live_processes_in_session(child.pid)
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM
    assert helper not in live_processes_in_session(child.pid)


def test_bad_environment_fails_at_install_not_at_import(spawn):
    child = spawn(
        PRELUDE
        + """
out("imported")
try:
    lastcall.install()
except ValueError as exc:
    out("refused:", exc)
out("ready")
""",
        env={"LASTCALL_GRACE": "soon"},
    )
    assert child.finish() == 0, child.output()
    assert "imported" in child.stdout
    line = child.wait_for("refused:")
    assert "LASTCALL_GRACE='soon' is not a number of seconds" in line


def test_multiprocessing_fork_children_do_not_run_parent_hooks(spawn):
    child = spawn(
        PRELUDE
        + """
import multiprocessing
lastcall.install()
lastcall.on_shutdown(say("parent-only"))
lastcall.on_shutdown(say("shared"), inherit=True)

def work():
    out("worker ran")
    sys.exit(0)  # a normal end of the worker: its inherited hook runs before os._exit

if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=work)
    p.start(); p.join()
    worker = ctx.Process(target=lastcall.shutdown)  # a worker that shuts down explicitly
    worker.start(); worker.join()
    out("ready")
"""
    )
    assert child.finish() == 0, child.output()
    seen = hooks_seen(child)
    # "shared" as each worker ends (once in the one that shut down explicitly),
    # then the parent's own two at exit
    assert seen == ["shared", "shared", "shared", "parent-only"], child.output()


# Each thread's blocked signals, as the kernel keeps them (SigBlk: a hex bit mask).
THREAD_MASKS = """
def blocked(native_id):
    with open(f"/proc/self/task/{native_id}/status") as status:
        line = next(x for x in status if x.startswith("SigBlk:"))
    bits = int(line.split()[1], 16)
    return sorted(n for n in range(1, 65) if bits >> (n - 1) & 1)
"""


def _signals_named(line: str) -> set[int]:
    return {int(n) for n in line.split(":", 1)[1].split()}


def test_lastcalls_threads_take_no_signal(spawn):
    """Steps: install() with a health port and a parent to watch; each of lastcall's
    threads blocks SIGTERM, SIGINT and SIGHUP (a signal the kernel handed one of them
    would not wake a main thread asleep in a blocking call), but not SIGSEGV."""
    child = spawn(
        PRELUDE
        + THREAD_MASKS
        + f"""
lastcall.install(health_port={free_port()})
from lastcall._integration import Integration
Integration(lastcall.default).stop_when_parent_dies(os.getppid(), "parent gone")
for thread in threading.enumerate():
    if thread.name.startswith("lastcall-"):
        out(thread.name + ":", *blocked(thread.native_id))
"""
        + BLOCK
    )
    names = {"lastcall-dispatcher", "lastcall-log", "lastcall-health", "lastcall-parent-watch"}
    for name in names:
        blocked = _signals_named(child.wait_for(name + ":"))
        assert {signal.SIGTERM, signal.SIGINT, signal.SIGHUP} <= blocked, name
        assert signal.SIGSEGV not in blocked, name
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM


def test_a_signal_waits_for_the_main_thread(spawn):
    """Steps: the main thread blocks SIGTERM for a moment, as CPython's own code may, in
    a call that no other thread's signal interrupts; SIGTERM sent then stays pending for
    the process (no lastcall thread takes it: /proc's ShdPnd shows it); once the main
    thread unblocks it, the stop runs and the process ends by SIGTERM."""
    child = spawn(
        PRELUDE
        + """
lastcall.install()
lastcall.on_shutdown(say("cleanup"))
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGUSR1})
out("ready")
signal.sigwait({signal.SIGUSR1})
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
while True:
    time.sleep(60)
"""
    )
    child.send(signal.SIGTERM)
    status = Path(f"/proc/{child.pid}/status")
    deadline = time.monotonic() + WAIT
    while True:
        line = next(x for x in status.read_text().splitlines() if x.startswith("ShdPnd:"))
        if int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1:
            break
        assert time.monotonic() < deadline, f"SIGTERM was taken off the main thread: {line}"
        time.sleep(0.01)
    child.send(signal.SIGUSR1)
    assert child.finish() == -signal.SIGTERM
    assert hooks_seen(child) == ["cleanup"]


def test_hooks_run_with_the_apps_signal_mask(spawn):
    """Steps: the app blocks SIGUSR2 on its main thread; the hook's thread, started by
    lastcall's (which blocks every signal), blocks SIGUSR2 and nothing more, so a
    process a hook starts can be signalled as it would from the app."""
    child = spawn(
        PRELUDE
        + THREAD_MASKS
        + """
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
out("app:", *blocked(threading.get_native_id()))
lastcall.install()

@lastcall.on_shutdown
def report_mask():
    out("hook mask:", *blocked(threading.get_native_id()))
"""
        + BLOCK
    )
    app = _signals_named(child.wait_for("app:"))
    assert app == {signal.SIGUSR2}
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM
    assert _signals_named(child.wait_for("hook mask:")) == app
