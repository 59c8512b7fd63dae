"""The stop needs nothing it cannot have: no new thread, no lock another thread holds.

Each test takes away one thing a stop could have wanted, in a real child, and
checks that SIGTERM still runs the hooks, writes the report and ends the
process by the signal.
"""

from __future__ import annotations

import contextlib
import json
import signal
import uuid
from pathlib import Path

import pytest
from conftest import WAIT
from test_process_triggers import BLOCK, PRELUDE

PIDS_V1 = Path("/sys/fs/cgroup/pids")


@contextlib.contextmanager
def pids_cgroup():
    """A pids cgroup of our own (v1 or v2), removed afterwards; skip where none can be made."""
    parent = PIDS_V1 if (PIDS_V1 / "cgroup.procs").exists() else Path("/sys/fs/cgroup")
    group = parent / f"lastcall-test-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"no pids cgroup can be made here ({exc}); run as root on Linux")
    try:
        if not (group / "pids.max").exists():
            pytest.skip(f"{parent} has no pids controller")
        yield group
    finally:
        # A test that failed leaves its child running in the group: lift the limit and move
        # it back (the spawn fixture ends it), so the group can go.
        with contextlib.suppress(OSError):
            (group / "pids.max").write_text("max")
            for pid in (group / "cgroup.procs").read_text().split():
                (parent / "cgroup.procs").write_text(pid)
        with contextlib.suppress(OSError):
            group.rmdir()


REPORTED = """
lastcall.install(grace=3)
lastcall.on_shutdown(say("cleanup"))
"""


def test_a_process_at_its_pids_limit_still_stops(spawn, tmp_path):
    """Steps: the child, installed, is moved into a pids cgroup whose limit is the threads it
    has, so no thread can start; SIGTERM. The watchdog's C thread and the hooks' runner
    cannot start: the hooks run inline, the report is written and says what the stop went
    without, and the process ends by the signal (on main: the watchdog's RuntimeError
    killed the dispatcher, and nothing ran)."""
    report = tmp_path / "report.json"
    with pids_cgroup() as group:
        child = spawn(PRELUDE + REPORTED + BLOCK, env={"LASTCALL_REPORT": str(report)})
        (group / "cgroup.procs").write_text(str(child.pid))
        (group / "pids.max").write_text((group / "pids.current").read_text())
        child.send(signal.SIGTERM)
        assert child.finish() == -signal.SIGTERM, child.output()
    assert child.lines("hook:") == ["hook:cleanup"], child.output()
    written = json.loads(report.read_text())
    assert [h["outcome"] for h in written["hooks"]] == ["ok"]
    assert any("watchdog" in problem for problem in written["problems"]), written


LOGGING_LOCK_HELD = (
    """
lastcall.install(grace=3)
lastcall.on_shutdown(say("cleanup"))
held = threading.Event()

def hold_logging():
    # What a dictConfig() reload does while its handler writes to a pipe nobody reads:
    # it holds logging's module lock, having cleared every logger's level cache.
    logging._lock.acquire()
    for each in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        getattr(each, "_cache", {}).clear()
    held.set()
    threading.Event().wait()

threading.Thread(target=hold_logging, daemon=True).start()
held.wait()
"""
    + BLOCK
)


def test_logging_lock_held_by_another_thread(spawn, tmp_path):
    """Steps: a thread of the app holds logging's lock for ever, level caches cleared;
    SIGTERM: the hook runs, the report is written, the process ends by the signal
    (on main: the stop's first log line waited on the lock, no hook ran, status 1)."""
    report = tmp_path / "report.json"
    child = spawn(PRELUDE + LOGGING_LOCK_HELD, env={"LASTCALL_REPORT": str(report)})
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert child.lines("hook:") == ["hook:cleanup"], child.output()
    assert json.loads(report.read_text())["trigger"] == "SIGTERM"


SIGNAL_DURING_INSTALL = """
import lastcall._log as log_module

start_daemon = log_module.start_daemon

def start_late(target, name, *args):
    if name == "lastcall-log":
        out("ready")  # install() is starting its log thread, its lock held
        while True:
            time.sleep(0.05)  # the test's SIGTERM lands here
    return start_daemon(target, name, *args)

log_module.start_daemon = start_late
lastcall.on_shutdown(say("cleanup"))
lastcall.install(grace=1)
"""


def test_a_signal_while_install_starts_its_threads(spawn):
    """Steps: SIGTERM while install() is inside the log thread's start, holding its lock.
    install() takes the signals only once its threads run, so this SIGTERM ends the process
    as it would before install(): at once, by the signal (on main: the signals were already
    lastcall's, the stop waited on that lock, and the watchdog ended it with status 1)."""
    child = spawn(PRELUDE + SIGNAL_DURING_INSTALL)
    child.send(signal.SIGTERM)
    assert child.finish(WAIT) == -signal.SIGTERM, child.output()


def test_install_at_the_thread_limit_says_so_in_one_line(spawn, tmp_path):
    """Steps: the child is moved into a pids cgroup at its limit before install(); install()
    fails with one line naming the limit, and the signals are left as they were."""
    with pids_cgroup() as group:
        child = spawn(
            PRELUDE
            + """
out("ready")
while not os.path.exists("go"):
    time.sleep(0.02)
try:
    lastcall.install()
except RuntimeError as exc:
    out("refused:", exc)
out("default handler:", signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
""",
        )
        (group / "cgroup.procs").write_text(str(child.pid))
        (group / "pids.max").write_text((group / "pids.current").read_text())
        Path(spawn.script_dir, "go").touch()
        line = child.wait_for("refused:")
        assert "thread limit" in line
        assert "pids.max" in line
        assert child.wait_for("default handler:") == "default handler: True"
        assert child.finish() == 0, child.output()


def test_os_getpid_is_the_child(spawn):
    """The cgroup tests move the child by its PID: it must be the script's own process."""
    child = spawn(PRELUDE + 'out("ready", os.getpid())\n' + BLOCK)
    assert int(child.wait_for("ready").split()[1]) == child.pid
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM


IMPORTS_DURING_THE_STOP = """
lastcall.install(grace=5, prestop_delay=0)

@lastcall.on_shutdown
{kind}def cleanup():
    pass

@lastcall.on_shutdown(phase="final")
def what_was_imported():
    out("imported:", *sorted(set(sys.modules) - before))

with lastcall.busy("warm-up"):
    pass
before = set(sys.modules)
"""


@pytest.mark.parametrize("kind", ["", "async "])
def test_the_stop_imports_nothing(spawn, tmp_path, kind):
    """Steps: install(), a sync or an async hook, a report file; SIGTERM. No module is
    imported from the signal to the last phase: an import waits on the import lock, which
    another thread may hold (on main: an async hook imported asyncio during the stop)."""
    report = tmp_path / "report.json"
    child = spawn(
        PRELUDE + IMPORTS_DURING_THE_STOP.format(kind=kind) + BLOCK,
        env={"LASTCALL_REPORT": str(report)},
    )
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert child.lines("imported:") == ["imported:"], child.output()
    assert json.loads(report.read_text())["hooks"][0]["outcome"] == "ok"
