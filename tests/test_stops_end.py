"""A stop that always ends: the conditions real processes meet (issue "A stop that always ends").

Each scenario is a real child process with real signals. Where the outcome
depends on timing (a signal landing mid-install, a fork child racing its
own exit) the scenario runs several times within one child.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest
from conftest import LAUNCH, WAIT, live_processes_in_session
from test_process_triggers import PRELUDE, hooks_seen

from lastcall import Coordinator
from lastcall._config import resolve

if TYPE_CHECKING:
    from pathlib import Path

needs_gevent = pytest.mark.skipif(
    importlib.util.find_spec("gevent") is None, reason="gevent is not installed here"
)

GEVENT_APP = """
import logging, os, sys, time
{first}
{second}
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
lastcall.install(grace=2)

@lastcall.on_shutdown
def close():
    time.sleep(0.1)  # yields to the hub: a well-behaved gevent hook
    sys.stdout.write("hook:close\\n"); sys.stdout.flush()

sys.stdout.write("ready\\n"); sys.stdout.flush()
while True:
    time.sleep(0.05)
"""
PATCH = "from gevent import monkey; monkey.patch_all()"
# A public name used, not only the package imported: the default coordinator (its Events
# and queues) is made on first use, and it is what the patch must not leave behind.
IMPORT = "import lastcall; lastcall.stopping"


@needs_gevent
@pytest.mark.parametrize(
    ("first", "second"), [(PATCH, IMPORT), (IMPORT, PATCH)], ids=["patched-first", "patched-after"]
)
def test_gevent_patched_app_ends_by_sigterm_with_hooks_once(spawn, first, second):
    """Steps: monkey.patch_all() before or after lastcall made its coordinator; SIGTERM;
    the hook runs once and the process dies by SIGTERM (it lived on before)."""
    child = spawn(GEVENT_APP.format(first=first, second=second))
    child.send(signal.SIGTERM)
    assert child.finish(timeout=2 + 4) == -signal.SIGTERM, child.output()
    assert hooks_seen(child) == ["close"]


@needs_gevent
def test_installed_before_the_gevent_patch_still_ends_by_the_signal(spawn):
    """Steps: install(), then monkey.patch_all() (gevent asks for the patch first; this
    order is not supported for hooks that yield, see docs/runtime.md); SIGTERM; the hook
    runs and the process ends by SIGTERM. It ended with status 1 and a traceback: the end's
    log flush on the main thread waited on a greenlet's Event inside a signal handler."""
    child = spawn(
        """
import sys, time
import lastcall
lastcall.install(grace=2)
from gevent import monkey; monkey.patch_all()

@lastcall.on_shutdown
def close():
    sys.stdout.write("hook:close\\n"); sys.stdout.flush()

time.sleep(0.01)  # the main thread's hub, made before the stop makes another
sys.stdout.write("ready\\n"); sys.stdout.flush()
while True:
    time.sleep(0.05)
"""
    )
    child.send(signal.SIGTERM)
    assert child.finish(timeout=2 + 4) == -signal.SIGTERM, child.output()
    assert hooks_seen(child) == ["close"]


@needs_gevent
def test_a_hook_that_blocks_the_gevent_hub_still_ends_within_the_grace(spawn):
    """Steps: under gevent a hook blocks the hub in C (the real sleep); the
    hook timeout cannot be enforced there, but the watchdog ends the process
    (status 1) within the grace plus its margin."""
    child = spawn(
        """
from gevent import monkey; monkey.patch_all()
import sys, lastcall
lastcall.install(grace=1)

@lastcall.on_shutdown
def blocks_the_hub():
    sys.stdout.write("blocking\\n"); sys.stdout.flush()
    monkey.get_original("time", "sleep")(60)

sys.stdout.write("ready\\n"); sys.stdout.flush()
import time
while True:
    time.sleep(0.05)
"""
    )
    child.send(signal.SIGTERM)
    child.wait_for("blocking")
    assert child.finish(timeout=1 + 2 + 3) == 1, child.output()


def test_a_hook_that_holds_the_gil_ends_within_the_grace_by_the_watchdog(spawn):
    """Steps: a hook runs a regular expression that holds the GIL for minutes,
    so no Python thread can abandon it; the process still ends (status 1)
    within the grace plus the watchdog's margin."""
    child = spawn(
        PRELUDE
        + """
import re
lastcall.install(grace=1)

@lastcall.on_shutdown(timeout=0.5)
def backtrack():
    out("matching")
    re.match(r"(a+)+$", "a" * 60 + "b")  # exponential, inside C, GIL held

out("ready")
while True:
    time.sleep(60)
"""
    )
    child.send(signal.SIGTERM)
    child.wait_for("matching")
    assert child.finish(timeout=1 + 2 + 3) == 1, child.output()


def _stalled_stderr_child(tmp_path: Path, body: str) -> subprocess.Popen[bytes]:
    """A child whose stderr is a pipe nobody reads (a stalled log collector)."""
    script = tmp_path / "stalled.py"
    script.write_text(PRELUDE + body)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LASTCALL_")}
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCH, sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,  # never read
        env={**env, "PYTHONUNBUFFERED": "1"},
        cwd=tmp_path,
        start_new_session=True,
    )


def _read_line(proc: subprocess.Popen[bytes], text: bytes) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if text in line:
            return
        if not line:
            break
    pytest.fail(f"no line with {text!r} from the child")


def _end(proc: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"still alive {timeout} s after SIGTERM")
    finally:
        for pid in live_processes_in_session(proc.pid):
            os.kill(pid, signal.SIGKILL)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


FILL_STDERR = """
lastcall.install(grace=2)
lastcall.on_shutdown(say("close"))

def fill():  # stderr's pipe fills up and this thread blocks holding the handler's lock
    while True:
        logging.getLogger("app").info("x" * 4096)

threading.Thread(target=fill, daemon=True).start()
time.sleep(0.2)  # let it block; the test's bounds below do not depend on this
out("ready")
while True:
    time.sleep(0.05)  # the app has a thread of its own: see BUSY_MAIN in test_process_triggers
"""

HOLD_HANDLER_LOCK = """
lastcall.install(grace=2)

@lastcall.on_shutdown(timeout=0.5)
def holds_the_log_lock():
    out("hook:holds")
    logging.getLogger().handlers[0].acquire()  # and never releases it

out("ready")
while True:
    time.sleep(60)
"""


@pytest.mark.parametrize(
    "body", [FILL_STDERR, HOLD_HANDLER_LOCK], ids=["stalled-pipe", "held-lock"]
)
def test_a_stalled_log_handler_does_not_hold_the_process(tmp_path, body):
    """Steps: stderr's pipe is full and nobody reads it, or a hook holds the log
    handler's lock; SIGTERM; the process ends within the grace (it lived on
    before), by SIGTERM or, where the main thread itself is stuck in logging's
    exit handler, with 128+15 from the dispatcher."""
    proc = _stalled_stderr_child(tmp_path, body)
    _read_line(proc, b"ready")
    os.kill(proc.pid, signal.SIGTERM)
    assert _end(proc, timeout=2 + 3) in (-signal.SIGTERM, 128 + signal.SIGTERM)


def test_report_is_written_although_logging_is_stalled(tmp_path):
    report = tmp_path / "report.json"
    proc = _stalled_stderr_child(
        tmp_path, FILL_STDERR.replace("grace=2", f"grace=2, report={str(report)!r}")
    )
    _read_line(proc, b"ready")
    os.kill(proc.pid, signal.SIGTERM)
    _end(proc, timeout=2 + 3)
    assert '"outcome": "ok"' in report.read_text()


def test_non_daemon_thread_waiting_on_stopping_lets_a_normal_exit_end(spawn):
    """Steps: a non-daemon worker loops on ``stopping.wait()``; the main thread
    ends normally; the stop begins before CPython joins the worker, so the
    worker ends, the hook runs and the process exits 0 (it hung before)."""
    child = spawn(
        PRELUDE
        + """
lastcall.install()
lastcall.on_shutdown(say("close"))

def worker():
    while not lastcall.stopping.wait(0.05):
        pass
    out("hook:worker-saw-stop")

threading.Thread(target=worker).start()  # not a daemon
out("ready")
"""
    )
    assert child.finish() == 0, child.output()
    assert sorted(hooks_seen(child)) == ["close", "worker-saw-stop"], child.output()


def test_forked_multiprocessing_children_finish_their_stop_and_die_by_the_signal(spawn):
    """Steps, five times: a fork child whose target returns once ``stopping`` is
    set gets SIGTERM; its own and its inherited hook run once each, and it
    ends by SIGTERM (exit code -15) instead of multiprocessing's os._exit(0)."""
    child = spawn(
        PRELUDE
        + """
import multiprocessing
lastcall.install()
lastcall.on_shutdown(say("inherited"), inherit=True)

def work(ready):
    lastcall.on_shutdown(lambda: (time.sleep(0.2), out("hook:own")))
    ready.set()
    lastcall.stopping.wait()  # returns as soon as the stop begins

if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    for _ in range(5):
        ready = ctx.Event()
        p = ctx.Process(target=work, args=(ready,))
        p.start()
        ready.wait(10)
        os.kill(p.pid, signal.SIGTERM)
        p.join(10)
        out("exitcode", p.exitcode)
    out("ready")
""",
        wait_ready=False,
    )
    assert child.finish(timeout=WAIT * 2) == 0, child.output()
    assert child.lines("exitcode") == ["exitcode -15"] * 5, child.output()
    assert hooks_seen(child) == ["own", "inherited"] * 5 + ["inherited"], child.output()


def test_install_again_never_leaves_the_default_handler_in_place(spawn):
    """Steps, five times: the main thread calls install() again and again while
    SIGTERM arrives from another thread; the hook always runs and the process
    dies by SIGTERM (before, a SIGTERM between restore and install killed it
    with no hook)."""
    for _ in range(5):
        child = spawn(
            PRELUDE
            + """
lastcall.install()
lastcall.on_shutdown(say("close"))

def send():
    time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=send, daemon=True).start()
out("ready")
while True:
    lastcall.install(grace=5)
"""
        )
        assert child.finish() == -signal.SIGTERM, child.output()
        assert hooks_seen(child) == ["close"], child.output()


def test_a_forking_hook_does_not_run_the_rest_of_the_phase_twice(spawn):
    child = spawn(
        PRELUDE
        + """
lastcall.on_shutdown(say("after"))

@lastcall.on_shutdown
def forks():
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
    # the child returns here, into lastcall's runner

out("ready")
"""
    )
    assert child.finish() == 0, child.output()
    assert hooks_seen(child) == ["after"], child.output()


def test_an_ignored_signal_is_said_to_stay_ignored(spawn):
    child = spawn(
        PRELUDE
        + """
signal.signal(signal.SIGTERM, signal.SIG_IGN)
lastcall.install()
out("ready")
"""
    )
    assert child.finish() == 0
    line = child.wait_for("SIGTERM is ignored", stream="stderr")
    assert "override_ignored=True" in line


# ---------------------------------------------------------------- in-process


def test_shutdown_from_inside_a_hook_returns_at_once():
    """Before: it waited on itself until the hook's timeout; later hooks skipped."""
    coordinator = Coordinator(run_at_exit=False)
    seen: list[str] = []
    coordinator.on_shutdown(lambda: seen.append("later"), name="later")

    @coordinator.on_shutdown(timeout=2)
    def nested() -> None:
        inner = coordinator.shutdown()
        seen.append(f"inner report: {inner.trigger}")

    report = coordinator.shutdown()
    assert [h.outcome for h in report.hooks] == ["ok", "ok"]
    assert seen == ["inner report: manual", "later"]


def test_trigger_from_inside_a_hook_returns_at_once(spawn):
    child = spawn(
        PRELUDE
        + """
lastcall.install(grace=5)
lastcall.on_shutdown(say("later"))

@lastcall.on_shutdown(timeout=2)
def nested():
    lastcall.trigger()
    lastcall.shutdown()
    out("hook:nested")

out("ready")
while True:
    time.sleep(60)
"""
    )
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM
    assert hooks_seen(child) == ["nested", "later"], child.output()
    assert "1 timeout" not in child.output()


def test_a_hook_registered_for_a_phase_already_running_is_reported(caplog):
    coordinator = Coordinator(run_at_exit=False)
    coordinator.on_shutdown(lambda: coordinator.on_shutdown(print, name="too-late"))
    coordinator.shutdown()
    assert "hook too-late registered for the cleanup phase while the stop is in its cleanup" in (
        caplog.text
    )


def test_coordinators_share_one_exit_callback():
    before = atexit._ncallbacks()
    for _ in range(200):
        Coordinator().on_shutdown(print)
    assert atexit._ncallbacks() - before <= 1


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"grace": 1e10}, ValueError, "TIMEOUT_MAX"),
        ({"prestop_delay": 1e10}, ValueError, "TIMEOUT_MAX"),
        ({"report": 123}, TypeError, "report must be a file path"),
        ({"report": "/proc/1/no/such/dir/report.json"}, ValueError, "cannot be written"),
        ({"grace": 5, "prestop_delay": 5}, ValueError, "prestop_delay=5 leaves no time to drain"),
    ],
)
def test_out_of_range_values_are_refused_where_they_are_given(kwargs, error, message):
    with pytest.raises(error, match=message):
        Coordinator(run_at_exit=False).install(**kwargs)
    assert signal.getsignal(signal.SIGTERM) is not None  # nothing was taken


def test_a_delay_from_the_environment_is_named_as_such():
    with pytest.raises(ValueError, match="LASTCALL_PRESTOP_DELAY=30 leaves no time to drain"):
        resolve(environ={"LASTCALL_PRESTOP_DELAY": "30"})


def test_signal_numbers_are_accepted_from_the_environment_too():
    assert resolve(environ={"LASTCALL_SIGNALS": "15,INT"}).signals == (
        signal.SIGTERM,
        signal.SIGINT,
    )


def test_unregister_finds_bound_methods_and_unhashable_callables():
    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self) -> None: ...

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Unhashable)

    class Pool:
        def close(self) -> None: ...

    coordinator = Coordinator(run_at_exit=False)
    pool = Pool()
    coordinator.on_shutdown(pool.close)
    coordinator.on_shutdown(Unhashable())
    assert coordinator.unregister(pool.close)  # a new bound-method object, equal
    assert coordinator.unregister(Unhashable())
    assert coordinator.hooks == ()
    assert not coordinator.unregister(pool.close)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare(1) is not installed here")
def test_as_pid_1_a_stop_ends_at_once(tmp_path):
    """Steps: the app is PID 1 of a new PID namespace (as in a container); the
    kernel ignores the default action of PID 1's own SIGTERM there, so
    lastcall exits with 128+15 itself (at once: it no longer waits a second
    for a signal that cannot come; that part is latency, not checked here)."""
    script = tmp_path / "pid1.py"
    script.write_text(
        PRELUDE + "lastcall.install()\nout('ready', os.getpid())\n" + "time.sleep(60)\n"
    )
    unshare = shutil.which("unshare")
    assert unshare is not None
    probe = subprocess.run([unshare, "--pid", "--fork", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a PID namespace here: {probe.stderr.decode().strip()}")
    proc = subprocess.Popen(
        [unshare, "--pid", "--fork", "--kill-child", sys.executable, str(script)],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    _read_line(proc, b"ready 1")
    inner = [p for p in live_processes_in_session(proc.pid) if p != proc.pid]
    assert len(inner) == 1
    os.kill(inner[0], signal.SIGTERM)
    assert _end(proc, timeout=WAIT) == 128 + signal.SIGTERM


def test_the_end_takes_no_lock_the_interrupted_main_thread_holds(spawn):
    """Steps: the main thread holds the log hand-off's lock, as install() does for an
    instant while it checks the log thread (a loop of install() calls hit it on Python
    3.10); SIGTERM; the end, which runs in a signal handler on that thread, does not wait
    for the lock: the hook runs and the process dies by SIGTERM, not by the watchdog."""
    child = spawn(
        PRELUDE
        + """
from lastcall._log import log
lastcall.install(grace=5)
lastcall.on_shutdown(say("close"))
with log._lock:
    out("ready")
    while True:
        time.sleep(0.05)
"""
    )
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert hooks_seen(child) == ["close"]
