"""Flask on Werkzeug's development server: the outcomes issue 3 names, in real processes.

The app is ``tests/apps/devserver_app.py``; its lines carry their pid, so
each test can say which process ran which hook.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import WAIT, free_port, live_processes_in_session, refused

APP = Path(__file__).parent / "apps" / "devserver_app.py"


def get(port: int, path: str, timeout: float = WAIT) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def wait_until_serving(port: int, child) -> str:
    """Poll / until it answers; return the serving pid (from /pid)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            return get(port, "/pid", timeout=2)[1]
        except OSError:
            if child.proc.poll() is not None:
                break
            time.sleep(0.05)
    pytest.fail(f"the app never answered on port {port}\n{child.output()}")


class Requests:
    """N concurrent GETs in threads; each records (status, body) or the error."""

    def __init__(self, port: int, path: str, count: int) -> None:
        self.results: list[object] = []
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._one, args=(port, path), daemon=True) for _ in range(count)
        ]
        for t in self.threads:
            t.start()

    def _one(self, port: int, path: str) -> None:
        try:
            result: object = get(port, path)
        except OSError as exc:
            result = exc
        with self._lock:
            self.results.append(result)

    def join(self) -> list[object]:
        for t in self.threads:
            t.join(WAIT)
        return self.results


def start(
    spawn, tmp_path, *, reload: bool, cli: bool = False, app: Path = APP, slow: float = 2, env=None
):
    port = free_port()
    env = {
        "PORT": str(port),
        "RELOAD": "1" if reload else "0",
        "SLOW": str(slow),
        "LASTCALL_REPORT": str(tmp_path / "report-{pid}.json"),
        **(env or {}),
    }
    if cli:
        argv = [sys.executable, "-m", "flask", "--app", str(app), "run", "--port", str(port)]
        argv.append("--reload" if reload else "--no-reload")
    else:
        argv = [sys.executable, str(app)]
    child = spawn("", argv=argv, env=env, wait_ready=False)
    serving_pid = wait_until_serving(port, child)
    return child, port, int(serving_pid)


def hook_lines(child) -> list[str]:
    return [line for line in child.stdout if line.startswith("hook:")]


def put_slow_requests_in_flight(child, port: int, count: int) -> Requests:
    requests = Requests(port, "/slow", count)
    deadline = time.monotonic() + WAIT
    while sum("slow started" in line for line in child.stdout) < count:
        assert time.monotonic() < deadline, child.output()
        time.sleep(0.02)
    return requests


@pytest.mark.parametrize("cli", [False, True], ids=["app.run", "flask run"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_without_reloader_drains_refuses_and_exits(spawn, tmp_path, sig, cli):
    """Outcome 1. Steps: 8 requests of 2 s in flight; signal; a new connection
    0.3 s later is refused; all 8 get 200; hooks run once; gone within 2.5 s.
    """
    child, port, pid = start(spawn, tmp_path, reload=False, cli=cli)
    requests = put_slow_requests_in_flight(child, port, 8)
    sent = time.monotonic()
    child.send(sig)
    time.sleep(max(0.0, sent + 0.3 - time.monotonic()))  # the moment the issue names
    assert refused(port), "a new connection during the drain was not refused"
    status = child.finish(timeout=WAIT)
    gone_after = time.monotonic() - sent
    assert requests.join() == [(200, "slow done")] * 8
    assert status == -sig, child.output()
    assert gone_after < 2.5, f"took {gone_after:.2f} s\n{child.output()}"
    assert hook_lines(child) == [f"hook:flush_cache pid={pid}", f"hook:close_db pid={pid}"]


@pytest.mark.parametrize("cli", [False, True], ids=["app.run", "flask run"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_reloader_parent_drains_the_child(spawn, tmp_path, sig, cli):
    """Outcome 2: the serving child drains and runs the hooks once; none in the
    parent; the parent exits after the child, by the signal it was sent.
    """
    child, port, serving = start(spawn, tmp_path, reload=True, cli=cli)
    parent = child.pid
    requests = put_slow_requests_in_flight(child, port, 3)
    child.send(sig)
    status = child.finish()
    assert requests.join() == [(200, "slow done")] * 3
    assert hook_lines(child) == [f"hook:flush_cache pid={serving}", f"hook:close_db pid={serving}"]
    # The child ended by SIGTERM, passed on; the parent ends by the signal it was sent.
    child_report = json.loads((tmp_path / f"report-{serving}.json").read_text())
    assert child_report["exit_status"] == 128 + signal.SIGTERM, child.output()
    assert status == -sig, child.output()
    assert not (tmp_path / f"report-{parent}.json").exists()
    assert live_processes_in_session(parent) == []


def test_sigterm_to_reloader_child_ends_the_parent_too(spawn, tmp_path):
    """Outcome 3: the child drains and runs its hooks; the parent does not restart it."""
    child, port, serving = start(spawn, tmp_path, reload=True)
    requests = put_slow_requests_in_flight(child, port, 2)
    os.kill(serving, signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert requests.join() == [(200, "slow done")] * 2
    assert hook_lines(child) == [f"hook:flush_cache pid={serving}", f"hook:close_db pid={serving}"]
    assert sum(line.startswith("imported") for line in child.stdout) == 2  # parent + one child


def test_sigkill_to_reloader_parent_stops_the_child(spawn, tmp_path):
    """Outcome 4: the orphaned child notices within 1 s, drains, runs hooks, frees the port."""
    child, port, serving = start(spawn, tmp_path, reload=True)
    requests = put_slow_requests_in_flight(child, port, 2)
    killed_at = time.time()
    child.send(signal.SIGKILL)
    assert child.finish() == -signal.SIGKILL
    report_path = tmp_path / f"report-{serving}.json"
    deadline = time.monotonic() + WAIT
    while not report_path.exists():
        assert time.monotonic() < deadline, child.output()
        time.sleep(0.05)
    report = json.loads(report_path.read_text())
    assert report["started_at"] - killed_at < 1.0
    assert report["reason"] == "the reloader parent died"
    assert requests.join() == [(200, "slow done")] * 2
    deadline = time.monotonic() + WAIT
    while live_processes_in_session(child.pid):
        assert time.monotonic() < deadline, "the orphaned child kept running"
        time.sleep(0.05)
    assert refused(port)
    assert hook_lines(child) == [f"hook:flush_cache pid={serving}", f"hook:close_db pid={serving}"]


@pytest.mark.parametrize("how", ["SIGKILL", "os._exit"])
def test_child_dying_without_cleanup_is_reported_by_the_parent(spawn, tmp_path, how):
    """Outcome 5: no app hook runs in the parent; one clear line says what happened."""
    child, port, serving = start(spawn, tmp_path, reload=True)
    if how == "SIGKILL":
        os.kill(serving, signal.SIGKILL)
    else:
        with pytest.raises(OSError):  # the connection dies with the process
            get(port, "/exit")
    child.finish()
    assert hook_lines(child) == []
    warning = [line for line in child.stderr if "without running its shutdown hooks" in line]
    assert len(warning) == 1, child.output()
    assert str(serving) in warning[0]
    assert "lastcall.last_resort()" in warning[0]


def test_code_change_drains_the_old_child_before_the_new_one_serves(spawn, tmp_path):
    """Outcome 6: requests in flight finish and hooks run in the old child first."""
    app = tmp_path / "devserver_app.py"
    shutil.copy(APP, app)
    # The stat reloader: with watchdog installed (mkdocs brings it) Werkzeug's default
    # watches every directory on sys.path through inotify, whose queue overflows on
    # site-packages and loses the change now and then; that is Werkzeug's, not ours.
    child, port, old = start(
        spawn, tmp_path, reload=True, app=app, slow=1.5, env={"RELOADER_TYPE": "stat"}
    )
    requests = put_slow_requests_in_flight(child, port, 2)
    with app.open("a") as f:
        f.write("\n# a code change\n")
    deadline = time.monotonic() + WAIT
    new = old
    while new == old:
        assert time.monotonic() < deadline, child.output()
        try:
            new = int(get(port, "/pid", timeout=WAIT)[1])
        except OSError:
            time.sleep(0.05)
    assert requests.join() == [(200, "slow done")] * 2
    lines = child.stdout
    old_hooks = [i for i, line in enumerate(lines) if re.match(rf"hook:\w+ pid={old}$", line)]
    new_import = next(i for i, line in enumerate(lines) if line == f"imported pid={new}")
    assert len(old_hooks) == 2
    assert max(old_hooks) < new_import, child.output()
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM
    assert hook_lines(child)[-2:] == [f"hook:flush_cache pid={new}", f"hook:close_db pid={new}"]


def test_two_apps_in_one_reloader_child(spawn):
    """A second LastCall(app) in the serving child shares the first one's set-up."""
    child = spawn(
        """
import os, sys
read_end, write_end = os.pipe()
os.environ.update(
    WERKZEUG_RUN_MAIN="true",
    LASTCALL_RELOADER_PARENT=str(os.getppid()),
    LASTCALL_RELOADER_FD=str(write_end),
)
from flask import Flask
from lastcall.flask import LastCall
LastCall(Flask("first"))
LastCall(Flask("second"))
print("ready", flush=True)
"""
    )
    assert child.finish() == 0, child.output()


def test_reloader_parent_does_not_wait_for_what_the_child_forked(spawn, tmp_path):
    """A process the serving child forked keeps the child's pipes open; the
    parent still ends as soon as the child has.
    """
    child, _port, _serving = start(spawn, tmp_path, reload=True, env={"FORK_HELPER": "1"})
    helper = int(child.wait_for("helper forked").split()[2])
    try:
        child.send(signal.SIGTERM)
        assert child.finish(timeout=5) == -signal.SIGTERM, child.output()
    finally:
        os.kill(helper, signal.SIGKILL)
