"""Last-resort hooks: real apps die in real ways, and their watcher cleans up after them.

Each scenario registers hooks from ``lr_hooks.py`` (written beside the script)
that append a line to a file, plus commands that do the same, so the file
shows what ran, in which order and how often. The watcher runs in a session of
its own, out of reach of the ``spawn`` fixture's check, so the ``watchers``
fixture holds a pidfd on each one and fails the test if it outlives it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import select
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import WAIT

import lastcall
from lastcall._lastresort import LastResort
from lastcall._watcher import lastresort_report_path

HOOKS_MODULE = """
import os, time

def record(path, word):
    with open(path, "a") as out:
        out.write(f"{word} {os.getppid()}\\n")

def hang(path, word):
    record(path, word + "-started")
    time.sleep(60)

def slow(path, word, go):
    record(path, word + "-started")
    deadline = time.monotonic() + 10
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.01)
    record(path, word)

def nested(path):
    import lastcall
    lastcall.last_resort("lr_hooks:record", path, "never")
    record(path, f"nested-watcher-{lastcall.last_resort.__self__.watcher_pid}")
"""

# Blocks SIGUSR1 first, so every thread (and the watcher) inherits the mask and
# the main thread can wait for the test's go-ahead with sigwait().
PRELUDE = """
import signal
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
import logging, os, sys, time
import lastcall
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
OUT = sys.argv[1] if len(sys.argv) > 1 else "hooks.txt"
CMD = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + ' cmd\\\\n')"

def out(*words):
    sys.stdout.write(" ".join(map(str, words)) + "\\n")
    sys.stdout.flush()

def watcher():
    registry = lastcall.last_resort.__self__
    assert registry.wait_ready(10), "the watcher did not start"
    return registry.watcher_pid

def go():
    signal.sigwait({signal.SIGUSR1})
"""

THREE_HOOKS = """
lastcall.last_resort("lr_hooks:record", OUT, "first")
lastcall.last_resort([sys.executable, "-c", CMD, OUT, "second"], name="second")
lastcall.last_resort("lr_hooks:record", OUT, "third", timeout=5)
"""

READY = 'out("ready", os.getpid(), watcher())\n'
# Short sleeps, not one long one: a signal whose C handler runs just after
# time.sleep() handled an earlier one, but before it sleeps again, is only acted
# on when that sleep ends (a CPython race a quick second Ctrl-C can hit).
BLOCK = """
while True:
    time.sleep(0.05)
"""


class Watchers:
    """Holds a pidfd per watcher, to wait for its end without polling a PID."""

    def __init__(self) -> None:
        self.pidfds: dict[int, int] = {}

    def track(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # already finished and reaped: gone
            self.pidfds[pid] = os.pidfd_open(pid)

    def ended(self, pid: int, timeout: float = WAIT) -> bool:
        fd = self.pidfds.get(pid)
        return fd is None or bool(select.select([fd], [], [], timeout)[0])


@pytest.fixture
def watchers():
    tracked = Watchers()
    yield tracked
    left = [pid for pid in tracked.pidfds if not tracked.ended(pid, timeout=WAIT)]
    for pid, fd in tracked.pidfds.items():
        if pid in left:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        os.close(fd)
    assert not left, f"watchers left behind (now killed): {left}"


@pytest.fixture
def scenario(spawn, tmp_path, watchers):
    """Start an app script with ``lr_hooks`` importable; return (child, app pid, watcher pid)."""
    (tmp_path / "lr_hooks.py").write_text(HOOKS_MODULE)

    def start(body: str, *, env: dict[str, str] | None = None):
        child = spawn(PRELUDE + body, env=env)
        _, app, watcher = child.wait_for("ready").split()
        watchers.track(int(watcher))
        return child, int(app), int(watcher)

    return start


def recorded(path: Path) -> list[tuple[str, str]]:
    """(word, the writer's parent PID) per line; commands write 'cmd' as the second word."""
    if not path.exists():
        return []
    return [tuple(line.split()) for line in path.read_text().splitlines()]  # type: ignore[misc]


def finished_line(app: int) -> str:
    return f"last-resort hooks for pid {app}:"


DEATHS = {
    "SIGKILL": ("os.kill(os.getpid(), signal.SIGKILL)", -signal.SIGKILL),
    "os._exit(3)": ("os._exit(3)", 3),
    "segfault": ("import ctypes; ctypes.string_at(0)", -signal.SIGSEGV),
    "abort": ("os.abort()", -signal.SIGABRT),
}


@pytest.mark.parametrize("death", DEATHS)
def test_every_hook_runs_once_in_order_after_the_death(scenario, watchers, tmp_path, death):
    """Steps: install lastcall; register two functions and a command; wait for the
    go-ahead; die without a shutdown. The watcher runs all three once, last
    registered first, after the app has gone, and reports it beside the core's report.
    """
    ending, status = DEATHS[death]
    child, app, watcher = scenario(
        "lastcall.install()\n"
        + THREE_HOOKS
        + READY
        + f"go()\nopen(OUT, 'a').write('dying 0\\n')\n{ending}\n",
        env={"LASTCALL_REPORT": str(tmp_path / "report-{pid}.json")},
    )
    hooks = tmp_path / "hooks.txt"
    assert recorded(hooks) == []  # nothing runs while the app lives
    child.send(signal.SIGUSR1)
    child.wait_for(finished_line(app), stream="stderr")
    # The app's last act comes first: the hooks ran only once it had died.
    words = [word for word, _ in recorded(hooks)]
    assert words == ["dying", "third", "second", "first"], child.output()
    assert watchers.ended(watcher)

    report_path = tmp_path / f"report-{app}.lastresort.json"
    assert stat.S_IMODE(report_path.stat().st_mode) == 0o600
    report = json.loads(report_path.read_text())
    assert report["trigger"] == "died without shutdown"
    assert report["pid"] == app
    assert [(h["name"], h["outcome"]) for h in report["hooks"]] == [
        ("lr_hooks:record", "ok"),
        ("second", "ok"),
        ("lr_hooks:record", "ok"),
    ]
    # The app is still an unreaped zombie (the test has not waited for it), so
    # the watcher could read its exit status.
    assert report["exit_status"] == (128 - status if status < 0 else status), child.output()
    assert not (tmp_path / f"report-{app}.json").exists()  # no lastcall shutdown happened
    assert child.finish() == status


CLEAN_ENDINGS = {
    "SIGTERM": ("lastcall.install()\n", "BLOCK", -signal.SIGTERM),
    "normal exit, no install()": ("", "go()", 0),
    "sys.exit(2)": ("lastcall.install()\n", "go(); sys.exit(2)", 2),
    "unhandled exception": ("", "go(); raise RuntimeError('boom')", 1),
    "shutdown() then SIGKILL": ("", "go(); lastcall.shutdown(); os.kill(os.getpid(), 9)", -9),
}


@pytest.mark.parametrize("ending", CLEAN_ENDINGS)
def test_no_hook_runs_after_a_lastcall_shutdown(scenario, watchers, tmp_path, ending):
    """Steps: register hooks; end through lastcall. The watcher stands down and exits."""
    setup, main, status = CLEAN_ENDINGS[ending]
    main = BLOCK if main == "BLOCK" else main + "\n"
    child, app, watcher = scenario(
        setup + THREE_HOOKS + READY + main,
        env={"LASTCALL_REPORT": str(tmp_path / "report-{pid}.json")},
    )
    child.send(signal.SIGTERM if status == -signal.SIGTERM else signal.SIGUSR1)
    assert child.finish() == status, child.output()
    assert watchers.ended(watcher)
    assert recorded(tmp_path / "hooks.txt") == []
    assert not (tmp_path / f"report-{app}.lastresort.json").exists()
    assert "without a lastcall shutdown" not in child.output()


@pytest.mark.skipif(importlib.util.find_spec("gevent") is None, reason="gevent is not installed")
def test_under_gevent_the_watcher_waits_for_the_apps_end(scenario, watchers, tmp_path):
    """Steps: a gevent-patched app registers hooks; the watcher is still there a second
    later; SIGTERM ends the app through lastcall; no hook runs. gevent's socketpair is
    non-blocking at both ends: the watcher took its first empty read for the app's end
    and ran every hook at start-up, with the app alive (found with Celery's gevent pool)."""
    child, _, watcher = scenario(
        "from gevent import monkey; monkey.patch_all()\n"
        "lastcall.install()\n" + THREE_HOOKS + READY + BLOCK
    )
    assert not watchers.ended(watcher, timeout=1.0), child.output()
    assert recorded(tmp_path / "hooks.txt") == []
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert watchers.ended(watcher)
    assert recorded(tmp_path / "hooks.txt") == []


def test_overrunning_hooks_are_stopped_and_the_next_still_runs(scenario, watchers, tmp_path):
    """Steps: register, in order, a plain hook, an unimportable one, a command
    whose process group hangs, and a function that hangs; kill the app. The
    hanging function is abandoned at its timeout, the command's whole group
    killed at its, the missing module is an error, and the plain hook runs.
    """
    pids = tmp_path / "group.txt"
    child, app, watcher = scenario(
        f"""
lastcall.last_resort("lr_hooks:record", OUT, "after")
lastcall.last_resort("no_such_mod:fn")
lastcall.last_resort(["sh", "-c", "sleep 60 & echo $$ $! > {pids}; wait"], timeout=0.5, name="sh")
lastcall.last_resort("lr_hooks:hang", OUT, "stuck", timeout=0.3)
"""
        + READY
        + BLOCK,
        env={"LASTCALL_REPORT": str(tmp_path / "report.json")},
    )
    child.send(signal.SIGKILL)
    child.wait_for(finished_line(app), stream="stderr")
    assert [word for word, _ in recorded(tmp_path / "hooks.txt")] == ["stuck-started", "after"]
    report = json.loads((tmp_path / "report.lastresort.json").read_text())
    outcomes = [(h["name"], h["outcome"]) for h in report["hooks"]]
    assert outcomes == [
        ("lr_hooks:hang", "timeout"),
        ("sh", "timeout"),
        ("no_such_mod:fn", "error"),
        ("lr_hooks:record", "ok"),
    ]
    assert "No module named 'no_such_mod'" in report["hooks"][2]["error"]
    assert watchers.ended(watcher)  # the abandoned thread did not keep it alive
    for pid in map(int, pids.read_text().split()):  # the shell and its background sleep
        watchers.track(pid)
        assert watchers.ended(pid), f"{pid} of the killed command's group is still running"
    assert child.finish() == -signal.SIGKILL


def test_a_killed_watcher_is_reported_once_and_replaced_on_the_next_registration(
    scenario, watchers, tmp_path
):
    child, app, watcher = scenario(
        "lastcall.install()\n"
        'lastcall.last_resort("lr_hooks:record", OUT, "first")\n'
        + READY
        + """
go()
lastcall.last_resort("lr_hooks:record", OUT, "second")
out("again", watcher())
"""
        + BLOCK
    )
    os.kill(watcher, signal.SIGKILL)
    assert watchers.ended(watcher)
    child.wait_for("ended unexpectedly", stream="stderr")
    child.send(signal.SIGUSR1)  # the app carries on, and registers again
    replacement = int(child.wait_for("again").split()[1])
    watchers.track(replacement)
    assert replacement != watcher
    child.send(signal.SIGKILL)
    child.wait_for(finished_line(app), stream="stderr")
    assert [word for word, _ in recorded(tmp_path / "hooks.txt")] == ["second", "first"]
    assert sum("ended unexpectedly" in line for line in child.stderr) == 1
    assert watchers.ended(replacement)
    assert child.finish() == -signal.SIGKILL


def test_forked_child_keeps_only_inherited_hooks_with_its_own_watcher(scenario, watchers, tmp_path):
    """Steps: register one plain and one inherit=True hook; fork; the child adds
    its own. Killing the parent runs the parent's two at once, though the child
    lives on (it closed its copy of the channel); killing the child runs its own.
    """
    child, app, parent_watcher = scenario(
        """
lastcall.last_resort("lr_hooks:record", OUT, "parent-only")
lastcall.last_resort("lr_hooks:record", OUT, "shared", inherit=True)
pid = os.fork()
if pid == 0:
    lastcall.last_resort("lr_hooks:record", OUT, "child-own")
    out("forked", os.getpid(), watcher())
    while True:
        time.sleep(60)
"""
        + READY
        + BLOCK
    )
    _, forked, forked_watcher = child.wait_for("forked").split()
    forked, forked_watcher = int(forked), int(forked_watcher)
    watchers.track(forked_watcher)
    assert forked_watcher != parent_watcher
    hooks = tmp_path / "hooks.txt"

    child.send(signal.SIGKILL)
    child.wait_for(finished_line(app), stream="stderr")
    assert [word for word, _ in recorded(hooks)] == ["shared", "parent-only"]
    assert watchers.ended(parent_watcher)
    assert not process_ended(forked)

    os.kill(forked, signal.SIGKILL)
    child.wait_for(finished_line(forked), stream="stderr")
    assert [word for word, _ in recorded(hooks)][2:] == ["child-own", "shared"]
    assert watchers.ended(forked_watcher)
    assert child.finish() == -signal.SIGKILL


def test_watcher_holds_nothing_of_the_app_and_lives_in_its_own_session(
    scenario, watchers, tmp_path
):
    child, app, watcher = scenario(
        """
import socket
listener = socket.create_server(("127.0.0.1", 0))
secret = open("secret.txt", "w")
for fd in (listener.fileno(), secret.fileno()):
    os.set_inheritable(fd, True)
lastcall.install()
"""
        + THREE_HOOKS
        + READY
        + BLOCK
    )
    deadline = time.monotonic() + WAIT
    while True:  # until the watcher has finished importing: a module file may be open now
        targets = {}
        for entry in Path(f"/proc/{watcher}/fd").iterdir():
            try:
                targets[int(entry.name)] = os.readlink(entry)
            except FileNotFoundError:
                continue  # a descriptor that closed while we looked
        importing = [t for t in targets.values() if t.endswith((".py", ".pyc"))]
        if not importing or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    app_stderr = os.readlink(f"/proc/{app}/fd/2")
    assert targets.pop(0) == "/dev/null"
    assert targets.pop(1) == targets.pop(2) == app_stderr
    kinds = sorted(target.split(":")[0] for target in targets.values())
    assert kinds == ["anon_inode", "socket"], targets  # a pidfd on the app; its end of the channel
    app_targets = {os.readlink(p) for p in Path(f"/proc/{app}/fd").iterdir()}
    assert not set(targets.values()) & app_targets  # the other end, not a shared one
    assert os.getsid(watcher) == watcher != os.getsid(app)
    modules = Path(f"/proc/{watcher}/cmdline").read_bytes().split(b"\0")
    assert modules[1:3] == [b"-I", b"-S"]
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM
    assert watchers.ended(watcher)


def test_a_forced_stop_still_runs_the_last_resort_hooks(scenario, watchers, tmp_path):
    """A second Ctrl-C skips the rest of the shutdown: that is no completed shutdown."""
    child, app, watcher = scenario(
        """
lastcall.install()
@lastcall.on_shutdown
def stuck():
    out("stuck started")
    time.sleep(30)
"""
        + THREE_HOOKS
        + READY
        + BLOCK
    )
    child.send(signal.SIGINT)
    child.wait_for("stuck started")
    child.send(signal.SIGINT)
    assert child.finish() == -signal.SIGINT
    child.wait_for(finished_line(app), stream="stderr")
    assert [word for word, _ in recorded(tmp_path / "hooks.txt")] == ["third", "second", "first"]
    assert watchers.ended(watcher)


def test_sigterm_to_the_watcher_while_it_runs_hooks_does_not_stop_them(
    scenario, watchers, tmp_path
):
    """As systemd does to what is left of a unit once its main process died."""
    go = tmp_path / "go"
    child, app, watcher = scenario(
        f"""
lastcall.last_resort("lr_hooks:record", OUT, "next")
lastcall.last_resort("lr_hooks:slow", OUT, "slow", {str(go)!r})
"""
        + READY
        + BLOCK
    )
    child.send(signal.SIGKILL)
    child.wait_for("running 2 last-resort hooks", stream="stderr")
    os.kill(watcher, signal.SIGTERM)  # may land before or during the slow hook: both count
    go.touch()
    child.wait_for(finished_line(app), stream="stderr")
    assert [word for word, _ in recorded(tmp_path / "hooks.txt")] == [
        "slow-started",
        "slow",
        "next",
    ]
    assert watchers.ended(watcher)
    assert child.finish() == -signal.SIGKILL


def test_a_hook_that_registers_last_resort_hooks_starts_no_watcher(scenario, watchers, tmp_path):
    child, app, watcher = scenario('lastcall.last_resort("lr_hooks:nested", OUT)\n' + READY + BLOCK)
    child.send(signal.SIGKILL)
    child.wait_for(finished_line(app), stream="stderr")
    assert [word for word, _ in recorded(tmp_path / "hooks.txt")] == ["nested-watcher-None"]
    assert watchers.ended(watcher)
    assert child.finish() == -signal.SIGKILL


def test_a_process_that_stands_aside_stands_its_watcher_down(scenario, watchers, tmp_path):
    """A supervisor (the Werkzeug reloader's parent) leaves last-resort hooks to its child."""
    child, _app, watcher = scenario(
        THREE_HOOKS
        + READY
        + """
go()
from lastcall._integration import Integration
Integration(lastcall.default).stand_aside("a supervisor now")
lastcall.last_resort("lr_hooks:record", OUT, "ignored")
out("aside", watcher_pid := lastcall.last_resort.__self__.watcher_pid)
"""
        + BLOCK
    )
    child.send(signal.SIGUSR1)
    assert child.wait_for("aside") == "aside None"
    assert watchers.ended(watcher)  # stood down while the app lives on
    child.send(signal.SIGKILL)
    assert child.finish() == -signal.SIGKILL
    assert recorded(tmp_path / "hooks.txt") == []
    assert "without a lastcall shutdown" not in child.output()


RELOADER_APP = """
import os, sys
from flask import Flask
import lastcall
from lastcall.flask import LastCall

def out(*words):
    sys.stdout.write(" ".join(map(str, words)) + f" pid={os.getpid()}\\n")
    sys.stdout.flush()

app = Flask(__name__)
LastCall(app)
here = os.path.dirname(os.path.abspath(__file__))
lastcall.last_resort("lr_hooks:record", os.path.join(here, "hooks.txt"), "released")
registry = lastcall.last_resort.__self__
registry.wait_ready(10)
out("watcher", registry.watcher_pid)

@app.route("/pid")
def pid():
    return str(os.getpid())

@app.route("/exit")
def hard_exit():
    os._exit(0)

if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ["PORT"]), use_reloader=True)
"""


def test_under_the_werkzeug_reloader_the_serving_childs_os_exit_gets_its_cleanup(
    spawn, watchers, tmp_path
):
    """The write-up's ``os._exit()`` route: the serving child's watcher runs the hook,
    once; the reloader parent, which imported the app too, stood its watcher down.
    """
    pytest.importorskip("flask")
    from test_flask_devserver import get, start

    (tmp_path / "lr_hooks.py").write_text(HOOKS_MODULE)
    app = tmp_path / "reload_app.py"
    app.write_text(RELOADER_APP)
    child, port, serving = start(spawn, tmp_path, reload=True, app=app)
    started = {}
    for line in child.lines("watcher "):
        _, pid, owner = line.split()
        started[int(owner.removeprefix("pid="))] = int(pid)
        watchers.track(int(pid))
    assert set(started) == {child.pid, serving}, child.output()
    assert watchers.ended(started[child.pid])  # the parent's: stood down at stand_aside()

    with pytest.raises(OSError):  # the connection dies with the process
        get(port, "/exit")
    child.wait_for(finished_line(serving), stream="stderr")
    assert [word for word, _ in recorded(tmp_path / "hooks.txt")] == ["released"]
    report = json.loads((tmp_path / f"report-{serving}.lastresort.json").read_text())
    assert report["trigger"] == "died without shutdown"
    assert report["exit_status"] in (0, None)  # 0 unless its parent reaped it first
    assert watchers.ended(started[serving])
    child.finish()
    assert not list(tmp_path.glob(f"report-{child.pid}.lastresort.json"))


# ------------------------------------------------------------ refused at registration


def module_level_function() -> None:
    """Only here so that passing it shows the import path to use instead."""


BAD = [
    pytest.param(("m:f", object()), {}, TypeError, "argument 1 is a object", id="object arg"),
    pytest.param(("m:f", "ok", {1}), {}, TypeError, "argument 2 is a set", id="set arg"),
    pytest.param(("m:f", {1: "a"}), {}, TypeError, "JSON keys are str", id="int key"),
    pytest.param(("m:f", [float("nan")]), {}, ValueError, "nan", id="nan arg"),
    pytest.param(([],), {}, ValueError, "empty command", id="empty command"),
    pytest.param(([""],), {}, ValueError, "empty command", id="empty program"),
    pytest.param((["rm", 3],), {}, TypeError, "list of strings", id="non-str part"),
    pytest.param((["rm", "x"], "y"), {}, TypeError, "put them in its list", id="command args"),
    pytest.param(("m:f",), {"timeout": 0}, ValueError, "more than zero", id="zero timeout"),
    pytest.param(("m:f",), {"timeout": -1}, ValueError, "more than zero", id="negative timeout"),
    pytest.param(("m:f",), {"timeout": float("nan")}, ValueError, "finite", id="nan timeout"),
    pytest.param(("m:f",), {"timeout": 1e300}, ValueError, "TIMEOUT_MAX", id="huge timeout"),
    pytest.param(("m:f",), {"timeout": float("inf")}, ValueError, "finite", id="inf timeout"),
    pytest.param(("m:f",), {"timeout": None}, TypeError, "None", id="None timeout"),
    pytest.param(("m:f",), {"timeout": "5"}, TypeError, "number", id="str timeout"),
    pytest.param(("no colon",), {}, ValueError, "package.module:function", id="no colon"),
    pytest.param(("mod:",), {}, ValueError, "package.module:function", id="no function"),
    pytest.param(
        (module_level_function,),
        {},
        TypeError,
        "'test_lastresort:module_level_function'",
        id="function object",
    ),
    pytest.param((42,), {}, TypeError, "not int", id="int target"),
]


@pytest.mark.parametrize(("args", "kwargs", "error", "words"), BAD)
def test_bad_registrations_are_refused_with_one_clear_line(args, kwargs, error, words):
    registry = LastResort(lastcall.Coordinator(run_at_exit=False))
    with pytest.raises(error) as raised:
        registry.last_resort(*args, **kwargs)
    message = str(raised.value)
    assert words in message
    assert "\n" not in message
    assert registry.hooks == ()
    assert registry.watcher_pid is None  # nothing was started


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("/run/report-{pid}.json", "/run/report-{pid}.lastresort.json"),
        ("report", "report.lastresort"),
        ("/var/.report", "/var/.report.lastresort"),
        ("/a.b/report", "/a.b/report.lastresort"),
    ],
)
def test_the_watcher_report_sits_beside_the_core_report(template, expected):
    assert lastresort_report_path(template) == expected


def process_ended(pid: int) -> bool:
    """True if ``pid`` has exited (a zombie counts: it runs nothing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return True
    return fields[0] in ("Z", "X")


def test_the_package_exports_last_resort():
    assert "last_resort" in lastcall.__all__
    assert sys.modules["lastcall"].last_resort.__name__ == "last_resort"


def test_a_hook_module_that_fails_to_import_is_an_error_not_a_timeout(scenario, tmp_path):
    """A module whose top-level code raises (here: it sets lastcall up, as an app
    module would, then fails) is reported at once as an error naming the exception.
    """
    (tmp_path / "broken_hooks.py").write_text(
        "import lastcall\nlastcall.install()\nraise RuntimeError('no config file')\n"
        "def cleanup(): pass\n"
    )
    child, app, _ = scenario(
        'lastcall.last_resort("broken_hooks:cleanup", timeout=30)\n'
        + READY
        + "go()\nos._exit(0)\n",
        env={"LASTCALL_REPORT": str(tmp_path / "report-{pid}.json")},
    )
    child.send(signal.SIGUSR1)
    child.wait_for(finished_line(app), stream="stderr")
    report = json.loads((tmp_path / f"report-{app}.lastresort.json").read_text())
    [hook] = report["hooks"]
    assert hook["outcome"] == "error"
    assert "RuntimeError: no config file" in hook["error"]
    assert hook["duration"] < 30
    assert child.finish() == 0


# ------------------------------------------------------------ what the watcher depends on


def test_hooks_run_although_the_apps_stderr_is_a_full_pipe_nobody_reads(watchers, tmp_path):
    """Steps: the app's stderr is a pipe, already full, that the test never reads;
    register a function and a command that writes to stderr first; SIGKILL. Both
    hooks run and the report is written (the watcher sat in its first log line's
    write, and a command writing to stderr would have too)."""
    (tmp_path / "lr_hooks.py").write_text(HOOKS_MODULE)
    script = tmp_path / "stalled.py"
    script.write_text(
        PRELUDE
        + 'lastcall.last_resort("lr_hooks:record", OUT, "function")\n'
        + 'lastcall.last_resort(["sh", "-c", "echo noisy >&2; echo noisy cmd >> " + OUT], '
        + 'name="noisy")\n'
        + READY
        + BLOCK
    )
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, b"x" * 65536)
    os.set_blocking(write_end, True)  # a plain, blocking pipe, as a log collector's
    env = {k: v for k, v in os.environ.items() if not k.startswith("LASTCALL_")}
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=write_end,
        env={**env, "LASTCALL_REPORT": str(tmp_path / "report.json")},
        cwd=tmp_path,
        start_new_session=True,
    )
    os.close(write_end)
    try:
        assert proc.stdout is not None
        # Bounded: an app that failed would be stuck writing its traceback to the pipe.
        assert select.select([proc.stdout], [], [], WAIT)[0], "the app did not start"
        _, _, watcher = proc.stdout.readline().decode().split()
        watchers.track(int(watcher))
        proc.kill()
        assert proc.wait(WAIT) == -signal.SIGKILL
        assert watchers.ended(int(watcher)), "the watcher is stuck"
        assert [word for word, _ in recorded(tmp_path / "hooks.txt")] == ["noisy", "function"]
        report = json.loads((tmp_path / "report.lastresort.json").read_text())
        assert [h["outcome"] for h in report["hooks"]] == ["ok", "ok"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        os.close(read_end)


EDITABLE_APP = """
import os, sys, time
import lastcall
import lrpkg.cleanup  # the app imports it through the editable install's finder

for spec in sys.argv[1:]:  # "function:path" or "command:path", in registration order
    kind, _, path = spec.partition(":")
    if kind == "function":
        lastcall.last_resort("lrpkg.cleanup:release", path, timeout=1, name=path)
    else:
        lastcall.last_resort(["sh", "-c", f"echo released > {path}"], name=path)
registry = lastcall.last_resort.__self__
assert registry.wait_ready(10), "the watcher did not start"
print("ready", os.getpid(), registry.watcher_pid, flush=True)
while True:
    time.sleep(0.05)
"""


@pytest.fixture(scope="module")
def editable_venv(tmp_path_factory):
    """A fresh venv (no lastcall in it) with a flat-layout package installed editable.

    setuptools 64 or later installs such a package as a ``.pth`` file that
    imports a meta-path finder, not a path on sys.path.
    """
    root = tmp_path_factory.mktemp("editable")
    project = root / "project"
    (project / "lrpkg").mkdir(parents=True)
    (project / "lrpkg" / "__init__.py").write_text("")
    (project / "lrpkg" / "cleanup.py").write_text(
        "def release(path):\n    with open(path, 'w') as out:\n        out.write('released')\n"
    )
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "lrpkg"\nversion = "0.1"\n'
    )
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=WAIT)
    python = venv / "bin" / "python"
    # This venv's pip installs into the fresh one; the build gets setuptools from the index.
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "-e", project]
    installed = subprocess.run(pip, capture_output=True, text=True, timeout=300, check=False)
    if installed.returncode:
        pytest.skip(f"could not install an editable package here: {installed.stderr[-500:]}")
    [site_packages] = venv.glob("lib/python*/site-packages")
    assert list(site_packages.glob("__editable___*_finder.py")), "not the finder form"
    app = root / "editable_app.py"
    app.write_text(EDITABLE_APP)
    return python, app, site_packages


def _run_editable_app(spawn, watchers, editable_venv, hooks: list[str]):
    """Start the app in the editable venv with ``hooks``, SIGKILL it, wait for the watcher."""
    python, app, _ = editable_venv
    src = str(Path(lastcall.__file__).resolve().parent.parent)  # lastcall, not installed there
    child = spawn(
        "", argv=[str(python), str(app), *hooks], env={"PYTHONPATH": src}, wait_ready=False
    )
    _, pid, watcher = child.wait_for("ready").split()
    watchers.track(int(watcher))
    child.send(signal.SIGKILL)
    child.wait_for(finished_line(int(pid)), stream="stderr")
    assert watchers.ended(int(watcher))
    assert child.finish() == -signal.SIGKILL
    return child


def test_a_hook_from_an_editable_install_with_an_import_finder_runs(
    spawn, watchers, tmp_path, editable_venv
):
    """Steps: an app in a fresh venv where a flat-layout package is installed editable
    registers one of its functions; SIGKILL. The hook runs (it failed with
    ModuleNotFoundError: the watcher, run with -S, skipped the .pth that installs the finder)."""
    released = tmp_path / "released.txt"
    child = _run_editable_app(spawn, watchers, editable_venv, [f"function:{released}"])
    assert released.read_text() == "released", child.output()


def test_a_pth_line_that_hangs_in_the_watcher_costs_one_hook_its_time_limit(
    spawn, watchers, tmp_path, editable_venv
):
    """Steps: a .pth file (after the finder's) that hangs, only in the watcher; register
    two functions and a command; SIGKILL. The command and the function that runs
    first are not held (the .pth runs on that function's thread, within its time
    limit: it times out); the other function imports through the finder and runs."""
    _, _, site_packages = editable_venv
    hang = site_packages / "zz_lastcall_test_hang.pth"
    hang.write_text("import sys, time; sys.flags.no_site and time.sleep(60)\n")  # -S: the watcher
    try:
        second, first, command = (tmp_path / name for name in ("second", "first", "command"))
        child = _run_editable_app(
            spawn,
            watchers,
            editable_venv,
            [f"function:{second}", f"function:{first}", f"command:{command}"],
        )
    finally:
        hang.unlink()
    assert command.read_text() == "released\n", child.output()
    assert not first.exists()
    assert second.read_text() == "released", child.output()
    assert f"last-resort hook {first} timeout" in child.output()


def test_hooks_run_where_and_with_the_sys_path_the_app_had_when_it_registered_them(
    scenario, watchers, tmp_path
):
    """Steps: the watcher starts in the app's first directory; the app moves to
    another, adds a directory to sys.path, registers a command and a function from
    there; SIGKILL. Both run where they were registered and the function imports
    (the watcher kept the directory and sys.path of its start)."""
    later = tmp_path / "later"
    (later / "modules").mkdir(parents=True)
    (later / "modules" / "late_hooks.py").write_text(
        "def record():\n    with open('function.txt', 'w') as out:\n        out.write('ran')\n"
    )
    child, app, _ = scenario(
        'lastcall.last_resort("lr_hooks:record", OUT, "first")\n'
        + READY
        + f"""
go()
os.chdir({str(later)!r})
sys.path.append("modules")
lastcall.last_resort(["sh", "-c", "pwd > command.txt"], name="pwd")
lastcall.last_resort("late_hooks:record")
out("registered")
"""
        + BLOCK
    )
    child.send(signal.SIGUSR1)
    child.wait_for("registered")
    child.send(signal.SIGKILL)
    child.wait_for(finished_line(app), stream="stderr")
    assert (later / "function.txt").read_text() == "ran", child.output()
    assert (later / "command.txt").read_text().strip() == str(later)
    assert [word for word, _ in recorded(tmp_path / "hooks.txt")] == ["first"]
    assert child.finish() == -signal.SIGKILL


def test_a_hook_whose_directory_is_gone_is_an_error_and_sees_the_first_environment(
    scenario, watchers, tmp_path
):
    """Steps: register a hook in a directory that is then removed, and a command after
    the app changed an environment variable; SIGKILL. The first is an error naming
    its directory (it ran elsewhere instead); the command sees the environment the
    app had at its first last_resort(), as documented."""
    gone = tmp_path / "gone"
    gone.mkdir()
    child, app, _ = scenario(
        f"""
os.chdir({str(gone)!r})
lastcall.last_resort(["sh", "-c", "echo ran > where.txt"], name="in gone")
os.chdir({str(tmp_path)!r})
os.rmdir({str(gone)!r})
os.environ["LR_STAGE"] = "late"
lastcall.last_resort(["sh", "-c", "echo $LR_STAGE > stage.txt"], name="stage")
"""
        + READY
        + BLOCK,
        env={"LR_STAGE": "early", "LASTCALL_REPORT": str(tmp_path / "report.json")},
    )
    child.send(signal.SIGKILL)
    child.wait_for(finished_line(app), stream="stderr")
    report = json.loads((tmp_path / "report.lastresort.json").read_text())
    outcomes = [(h["name"], h["outcome"]) for h in report["hooks"]]
    assert outcomes == [("stage", "ok"), ("in gone", "error")]
    assert (
        f"cannot run in its working directory: [Errno 2] No such file or directory: {str(gone)!r}"
        in (report["hooks"][1]["error"])
    )
    assert not (tmp_path / "where.txt").exists()
    assert (tmp_path / "stage.txt").read_text() == "early\n"
    assert child.finish() == -signal.SIGKILL


LOUD_HOOKS = """
import os, sys, time

def loud(marker, go):
    for i in range(100):  # 400 KiB: more than the watcher keeps for a pipe nobody reads
        line = "y" * 4095 + "\\n"
        if i % 2:
            sys.stderr.write(line)
        else:
            sys.stderr.buffer.write(line.encode())
    open(marker, "w").close()
    deadline = time.monotonic() + 10
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.01)
"""


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "O_NONBLOCK"])
def test_what_a_full_stderr_cannot_take_is_dropped_and_counted(watchers, tmp_path, blocking):
    """Steps: stderr a full pipe nobody reads; the hook writes 400 KiB to stderr, then
    waits; the test starts reading and lets it finish. Part of it was dropped, the
    watcher says how many writes, and its later lines arrive, also when the app
    left its stderr non-blocking (shared with the watcher: a write there fails
    with EAGAIN instead of waiting)."""
    (tmp_path / "loud_hooks.py").write_text(LOUD_HOOKS)
    marker, go = tmp_path / "marker", tmp_path / "go"
    script = tmp_path / "loud.py"
    script.write_text(
        PRELUDE
        + f"lastcall.last_resort('loud_hooks:loud', {str(marker)!r}, {str(go)!r})\n"
        + READY
        + BLOCK
    )
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, b"x" * 65536)
    os.set_blocking(write_end, blocking)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LASTCALL_")}
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=write_end,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    os.close(write_end)
    received = bytearray()
    reader = threading.Thread(target=lambda: received.extend(_read_all(read_end)), daemon=True)
    try:
        assert proc.stdout is not None
        assert select.select([proc.stdout], [], [], WAIT)[0], "the app did not start"
        _, app, watcher = proc.stdout.readline().decode().split()
        watchers.track(int(watcher))
        proc.kill()
        assert proc.wait(WAIT) == -signal.SIGKILL
        deadline = time.monotonic() + WAIT
        while not marker.exists():  # the hook wrote it all, with nobody reading
            assert time.monotonic() < deadline, "the hook is stuck writing to stderr"
            time.sleep(0.01)
        reader.start()
        go.touch()
        assert watchers.ended(int(watcher))
        reader.join(WAIT)  # end of file: the watcher, the last writer, has ended
        assert not reader.is_alive()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
    text = received.decode(errors="replace")
    written = text.count("y" * 4095 + "\n")
    assert 0 < written < 100
    dropped = re.search(r"lastcall watcher: (\d+) writes dropped: stderr was not being read", text)
    assert dropped is not None, text[-2000:]
    # Every line of the hook's that did not arrive was counted, and only those: the watcher's
    # own lines have a reserve of their own (one was dropped, 1 run in 20 on 3.10).
    assert int(dropped.group(1)) == 100 - written
    assert text.index(dropped.group(0)) < text.index(finished_line(int(app)))


def _read_all(fd: int) -> bytes:
    chunks = []
    with open(fd, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_the_watcher_leaves_a_fifo_at_its_report_path_alone(scenario, watchers, tmp_path):
    """The watcher writes its report as the core does: only to a regular file. A FIFO
    at its path (it replaced it) stays, one line says why there is no report, and the
    hooks have run."""
    fifo = tmp_path / "report.lastresort.json"
    os.mkfifo(fifo)
    child, app, watcher = scenario(
        'lastcall.last_resort("lr_hooks:record", OUT, "ran")\n' + READY + BLOCK,
        env={"LASTCALL_REPORT": str(tmp_path / "report.json")},
    )
    child.send(signal.SIGKILL)
    child.wait_for(finished_line(app), stream="stderr")
    assert [word for word, _ in recorded(tmp_path / "hooks.txt")] == ["ran"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    line = child.wait_for("could not write the last-resort report", stream="stderr")
    assert "is a FIFO, not a regular file" in line
    assert "Traceback" not in child.output()
    assert watchers.ended(watcher)
    assert child.finish() == -signal.SIGKILL
