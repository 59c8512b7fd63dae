"""What a late stop says, and what holds the drain: stacks in the report, ``lastcall.busy``,
and a crashed thread that stops the service (issue "Beyond the peers", core part)."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import types

import pytest
from conftest import live_processes_in_session
from test_process_triggers import PRELUDE, hooks_seen

from lastcall import Coordinator
from lastcall._busy import BusyWork
from lastcall._config import resolve
from lastcall._hooks import Finished, Hook, Runner
from lastcall._registry import HookRegistry
from lastcall._stop import Stop


def test_an_overrun_hook_has_its_stack_in_the_report(spawn, tmp_path):
    """Steps: a hook stuck in a helper (sleep 60) with timeout=0.5; SIGTERM; the process
    dies by SIGTERM well within the grace; the report's entry is a timeout whose stack
    names the helper, logged at ERROR; the hook after it ran."""
    report = tmp_path / "report.json"
    child = spawn(
        PRELUDE
        + f"""
lastcall.install(grace=10, report={str(report)!r})
lastcall.on_shutdown(say("after"))

def wait_for_the_lock():
    time.sleep(60)

@lastcall.on_shutdown(timeout=0.5)
def stuck():
    wait_for_the_lock()

out("ready")
while True:
    time.sleep(60)
"""
    )
    child.send(signal.SIGTERM)
    assert child.finish(timeout=5) == -signal.SIGTERM
    assert hooks_seen(child) == ["after"]
    entry = next(h for h in json.loads(report.read_text())["hooks"] if h["name"] == "stuck")
    assert entry["outcome"] == "timeout"
    assert "in wait_for_the_lock" in entry["stack"].splitlines()[-2]  # innermost last
    assert "time.sleep(60)" in entry["stack"]
    assert "wait_for_the_lock" in child.wait_for("stuck (cleanup) timeout", stream="stderr") + (
        "\n".join(child.stderr)
    )


def test_a_second_ctrl_c_records_where_the_running_hook_was(spawn, tmp_path):
    report = tmp_path / "report.json"
    child = spawn(
        PRELUDE
        + f"""
lastcall.install(grace=10, report={str(report)!r})

def slow_flush():
    time.sleep(60)

@lastcall.on_shutdown
def flush():
    out("flushing")
    slow_flush()

out("ready")
while True:
    time.sleep(0.05)  # see BUSY_MAIN in test_process_triggers
"""
    )
    child.send(signal.SIGINT)
    child.wait_for("flushing")
    child.send(signal.SIGINT)
    assert child.finish() == -signal.SIGINT
    data = json.loads(report.read_text())
    assert data["forced"] is True
    (entry,) = data["hooks"]
    assert entry["error"] == "still running when SIGINT forced the exit"
    assert "in flush" in entry["stack"]  # its helper's frame too, unless still in out()


def test_a_second_ctrl_c_as_a_hook_returns_reports_that_hook_once():
    """A second Ctrl-C in the moment after a hook returned, before the next began: the
    runner still names it ``current``, its result already in. The force records nothing
    for it, so the report holds it once, as it finished (a worker drill once showed
    "hooks ran more than once in a process": the drain's, ``ok`` and forced ``timeout``)."""
    hook = Hook(lambda: None, "drain", "drain", None, inherit=False)
    runner = Runner([hook], lambda _hook: 5.0, time.monotonic)
    runner.current = (0, time.monotonic(), 5.0)  # as _run leaves it until the next hook
    runner.results.append((Finished(hook, "ok"), 0.1))
    stop = Stop(HookRegistry(), BusyWork(), resolve(), time.monotonic, "signal", "SIGINT")
    stop.runner = runner
    assert stop.forced("SIGINT") == "nothing"
    assert stop.report.hooks == []


BUSY_APP = """
lastcall.install(grace=6, report={report!r})
lastcall.on_shutdown(say("cleanup"))

def job():
    with lastcall.busy("import"):
        out("job started")
        time.sleep({seconds})
        out("hook:job-done")

threading.Thread(target=job, daemon=True).start()
out("ready")
while True:
    time.sleep(0.05)  # the app has a thread of its own: see BUSY_MAIN in test_process_triggers
"""


def test_the_drain_waits_for_busy_work_before_cleanup(spawn, tmp_path):
    """Steps: a thread inside ``busy("import")`` for 1 s; SIGTERM at once; the
    cleanup hook runs only after the job ended, and the process dies by SIGTERM."""
    report = tmp_path / "report.json"
    child = spawn(PRELUDE + BUSY_APP.format(report=str(report), seconds=1))
    child.wait_for("job started")
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM
    assert hooks_seen(child) == ["job-done", "cleanup"]
    data = json.loads(report.read_text())
    assert data["busy"] == []
    assert data["hooks"][0]["name"] == "lastcall: wait for busy work"
    assert data["hooks"][0]["outcome"] == "ok"


def test_busy_work_longer_than_the_budget_is_named_with_its_stack(spawn, tmp_path):
    report = tmp_path / "report.json"
    child = spawn(
        PRELUDE + BUSY_APP.format(report=str(report), seconds=60).replace("grace=6", "grace=2")
    )
    child.wait_for("job started")
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM
    assert hooks_seen(child) == ["cleanup"]  # the cleanup still got its turn
    data = json.loads(report.read_text())
    (busy,) = data["busy"]
    assert busy["name"] == "import"
    assert "in job" in busy["stack"]
    assert data["hooks"][0]["outcome"] == "timeout"
    assert "still busy: import" in data["hooks"][0]["error"]


def test_busy_in_process_sync_async_and_decorated():
    coordinator = Coordinator(run_at_exit=False)
    release = threading.Event()
    seen: list[str] = []

    @coordinator.busy("decorated")
    def work() -> None:
        release.wait(5)
        seen.append("work")

    @coordinator.busy("async-decorated")
    async def async_work() -> str:
        async with coordinator.busy("inner"):
            await asyncio.sleep(0)
        return "done"

    assert asyncio.run(async_work()) == "done"
    assert async_work.__name__ == "async_work"
    worker = threading.Thread(target=work)
    worker.start()
    threading.Timer(0.2, release.set).start()
    report = coordinator.shutdown()
    worker.join(5)
    assert seen == ["work"]
    assert [(h.name, h.outcome) for h in report.hooks] == [("lastcall: wait for busy work", "ok")]
    with pytest.raises(TypeError, match="busy\\(\\) needs a name"):
        coordinator.busy("")


def test_an_async_busy_block_still_running_is_named_with_its_task_stack():
    coordinator = Coordinator(run_at_exit=False)

    async def consume() -> None:
        async with coordinator.busy("consumer"):
            await asyncio.sleep(30)

    async def main() -> list[dict[str, object]]:
        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        busy = coordinator._busy.in_progress()
        task.cancel()
        return busy

    (busy,) = asyncio.run(main())
    assert busy["name"] == "consumer"
    assert "in consume" in str(busy["stack"])


def test_a_thread_crash_stops_the_service_when_asked(spawn):
    """Steps: install(stop_on_thread_crash=True); a background thread raises; the stop
    begins with that reason, the hooks run once, and the process exits 1."""
    child = spawn(
        PRELUDE
        + """
lastcall.install(stop_on_thread_crash=True)
lastcall.on_shutdown(say("close"))

def poll():
    raise ConnectionError("queue gone")

out("ready")
threading.Thread(target=poll, name="poller").start()
while True:
    time.sleep(60)
"""
    )
    assert child.finish() == 1, child.output()
    assert hooks_seen(child) == ["close"]
    assert "thread poller crashed: ConnectionError: queue gone" in "\n".join(child.stderr)


def test_a_thread_crash_is_only_logged_by_default(spawn):
    child = spawn(
        PRELUDE
        + """
lastcall.install()
threading.Thread(target=lambda: 1 / 0, name="poller").start()
time.sleep(0.2)
out("ready")
out("still serving")
"""
    )
    assert child.finish() == 0
    assert "still serving" in child.stdout
    assert "ZeroDivisionError" in "\n".join(child.stderr)


def test_thread_crash_switch_from_the_environment(spawn):
    child = spawn(
        PRELUDE
        + """
lastcall.install()
out("ready")
threading.Thread(target=lambda: 1 / 0, name="worker-1").start()
while True:
    time.sleep(60)
""",
        env={"LASTCALL_STOP_ON_THREAD_CRASH": "1"},
    )
    assert child.finish() == 1


def test_a_bad_switch_is_refused_in_one_line():
    with pytest.raises(ValueError, match="LASTCALL_STOP_ON_THREAD_CRASH='maybe' is not a switch"):
        resolve(environ={"LASTCALL_STOP_ON_THREAD_CRASH": "maybe"})
    with pytest.raises(TypeError, match="stop_on_thread_crash must be True or False"):
        resolve(stop_on_thread_crash="yes")  # type: ignore[arg-type]


CRASH_WAYS = {
    # The app sets its own threading.excepthook after install(): it still runs, and so do we.
    "hook set after install": """
def mine(args):
    out("app hook:", args.exc_type.__name__)
threading.excepthook = mine
assert threading.excepthook is mine
threading.Thread(target=poll, name="poller").start()
""",
    # The app's own hook raises: the stop still begins.
    "app hook raises": """
def broken(args):
    raise RuntimeError("the app's hook is broken")
threading.excepthook = broken
threading.Thread(target=poll, name="poller").start()
""",
    # A thread started with _thread, which reports through sys.unraisablehook.
    "_thread.start_new_thread": """
import _thread
_thread.start_new_thread(poll, ())
""",
}


@pytest.mark.parametrize("way", list(CRASH_WAYS))
def test_every_way_a_thread_crashes_stops_the_service(spawn, tmp_path, way):
    """Steps: install(stop_on_thread_crash=True, exit_code=0); a thread crashes in one of
    the ways above; the stop begins with that reason, the hook runs once, the process exits
    1 whatever exit_code says (exit_code is for signals and trigger()), and the report
    agrees (on main: the first two never stopped, the third was skipped, exit_code=0 gave 0)."""
    report = tmp_path / "report.json"
    child = spawn(
        PRELUDE
        + """
lastcall.install(stop_on_thread_crash=True, exit_code=0)
lastcall.on_shutdown(say("close"))

def poll():
    raise ConnectionError("queue gone")

out("ready")
"""
        + CRASH_WAYS[way]
        + """
while True:
    time.sleep(0.05)
""",
        env={"LASTCALL_REPORT": str(report)},
    )
    assert child.finish() == 1, child.output()
    assert hooks_seen(child) == ["close"]
    written = json.loads(report.read_text())
    assert written["trigger"] == "exception"
    assert "crashed: ConnectionError: queue gone" in written["reason"]
    assert written["exit_status"] == 1
    if way == "hook set after install":
        assert child.lines("app hook:") == ["app hook: ConnectionError"]


def test_a_handled_error_shown_with_sys_excepthook_is_not_the_exit(spawn, tmp_path):
    """Steps: the app shows an error it handled with sys.excepthook(...), then ends normally:
    the report says trigger exit, status decided by the interpreter, and the process exits 0
    (on main: trigger exception, exit_status 1, while the process exited 0)."""
    report = tmp_path / "report.json"
    child = spawn(
        PRELUDE
        + """
lastcall.install()
lastcall.on_shutdown(say("close"))
try:
    raise KeyError("handled")
except KeyError:
    sys.excepthook(*sys.exc_info())
out("ready")
""",
        env={"LASTCALL_REPORT": str(report)},
    )
    assert child.finish() == 0, child.output()
    written = json.loads(report.read_text())
    assert (written["trigger"], written["exit_status"]) == ("exit", None), written


def test_thread_excepthook_given_back_at_uninstall():
    """install(stop_on_thread_crash=True) then uninstall(): threading is plain again, with
    the hook the app set meanwhile."""
    before = threading.excepthook
    coordinator = Coordinator(run_at_exit=False)
    coordinator.install(stop_on_thread_crash=True)
    try:

        def mine(args):
            return None

        threading.excepthook = mine
        assert threading.excepthook is mine
        assert threading.__dict__["excepthook"] is not mine  # ours, where threads look
    finally:
        coordinator.uninstall()
    assert type(threading) is types.ModuleType
    assert threading.excepthook is mine
    threading.excepthook = before


def test_a_timed_out_hooks_child_process_is_named_and_ended(spawn, tmp_path):
    """Steps: a hook starts a child that ignores SIGTERM and sleeps, then waits on it past
    its 1 s timeout; SIGTERM. The hook is abandoned, and its child, still running at the
    stop's end, is named in the report's problems and killed: nothing is left behind
    (on main: the child outlived the service as an orphan, and nothing said so)."""
    report = tmp_path / "report.json"
    child = spawn(
        PRELUDE
        + """
import subprocess
lastcall.install(grace=4)

@lastcall.on_shutdown(timeout=1)
def upload():
    helper = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 45"])
    out("helper", helper.pid)
    helper.wait()

out("ready")
while True:
    time.sleep(0.05)
""",
        env={"LASTCALL_REPORT": str(report)},
    )
    child.send(signal.SIGTERM)
    helper = int(child.wait_for("helper").split()[1])
    began = time.monotonic()
    assert child.finish() == -signal.SIGTERM, child.output()
    # finish() waits for the child's output to close: the sleep, had it outlived the stop,
    # would have held its copy of the pipes open for 45 s.
    assert time.monotonic() - began < 8, child.output()
    assert not live_processes_in_session(child.pid)
    written = json.loads(report.read_text())
    assert [h["outcome"] for h in written["hooks"]] == ["timeout"]
    (problem,) = written["problems"]
    assert f"process {helper} (sh -c trap '' TERM; sleep 45) and 1 it started" in problem
    assert problem.endswith("killed")
    # The spawn fixture checks the session is empty: the helper was in the child's session.
