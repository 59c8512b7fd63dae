"""A drill leaves nothing behind, however the command started its app and however the drill ends.

Every test marks the drill's environment with a token of its own, which
every process the drill starts inherits (daemons and ``setsid`` children
too), and checks afterwards that no process carrying it is alive and that
nothing listens on the app's port. The test's own ``finally`` ends any it
finds, so a failing test leaves nothing either.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MATRIX, WAIT, free_port, live_processes_in_session
from test_drill import started_pids
from test_drill_any_app import SLOW_APP

MARK = "DRILL_TEST_MARK"  # not LASTCALL_*: the drill passes none of those on to the app


def carrying(token: str) -> list[int]:
    """Live (not zombie) processes whose environment carries ``token``."""
    wanted = f"{MARK}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if wanted in environ.split(b"\0") and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def marked_drill(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    """``lastcall drill ARGS`` with a token in its environment; ends what carries it, after."""
    (tmp_path / "slowapp.py").write_text(SLOW_APP)
    token = secrets.token_hex(8)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LASTCALL_")}
    env[MARK] = token
    proc = subprocess.Popen(
        [sys.executable, "-m", "lastcall", "drill", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "COLUMNS": "200"},
        cwd=tmp_path,
        start_new_session=True,
    )
    proc.token = token  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        if proc.poll() is None:  # a test that failed midway: SIGTERM lets the drill end its apps
            proc.terminate()
            try:
                proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in carrying(token):  # only if the drill left them: the test then fails
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def assert_nothing_left(token: str, port: int) -> None:
    deadline = time.monotonic() + 3
    while (carrying(token) or listening(port)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert carrying(token) == [], "processes the drill started are still alive"
    assert not listening(port), f"something still listens on {port}"


def test_a_daemonizing_command_is_ended_and_named(tmp_path):
    """gunicorn --daemon: the command exits at once (status 2 for the drill), its daemon is
    ended by PID, and the line says what happened and how to fix it."""
    port = free_port()
    cmd = f"{{python}} -m gunicorn --daemon -b 127.0.0.1:{port} -w 2 slowapp:app"
    with marked_drill(tmp_path, "--cmd", cmd, "--port", str(port), "--path", "/slow") as proc:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, out + err
        errors = [line for line in err.splitlines() if line.startswith("lastcall: error:")]
        assert len(errors) == 1, err
        assert "left pid" in errors[0]
        assert "in the foreground" in errors[0]
        assert "Traceback" not in err
        assert_nothing_left(proc.token, port)


def test_a_setsid_child_that_keeps_serving_is_left_behind_then_ended(tmp_path):
    """sh -c 'setsid gunicorn ... & wait': SIGTERM ends the shell, its gunicorn serves on in a
    session of its own. The drill reports it left behind (not clean) and ends it."""
    port = free_port()
    gunicorn = f"{{python}} -m gunicorn -b 127.0.0.1:{port} -w 1 slowapp:app"
    cmd = f"sh -c 'setsid {gunicorn} & wait'"
    args = ["--cmd", cmd, "--port", str(port), "--path", "/slow", "--requests", "2"]
    with marked_drill(tmp_path, *args, "--grace", "2") as proc:
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 1, out + err
        assert "left behind" in out, out
        assert_nothing_left(proc.token, port)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_the_drill_ends_the_app_and_the_drill_by_it(tmp_path, sig):
    """A CI timeout's SIGTERM (or a closed terminal's SIGHUP) mid-drill: the app is ended by
    PID first, then the drill dies by the same signal."""
    port = free_port()
    args = ["--server", "werkzeug-reload", "--request-seconds", "30", "--port", str(port)]
    with marked_drill(tmp_path, *args) as proc:
        assert proc.stderr is not None
        lines: list[str] = []
        deadline = time.monotonic() + WAIT
        while not any("requests in flight" in line for line in lines):
            assert time.monotonic() < deadline, "".join(lines)
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        assert carrying(proc.token)  # the app runs
        os.kill(proc.pid, sig)
        _, rest = proc.communicate(timeout=WAIT)
        assert proc.returncode in (-sig, 128 + sig), "".join(lines) + rest
        assert re.search(rf"stopped by {sig.name}; every process", rest), rest
        (app,) = started_pids("".join(lines))
        assert live_processes_in_session(app) == []
        assert_nothing_left(proc.token, port)


@MATRIX
def test_sigterm_to_a_matrix_ends_every_drill_and_then_the_matrix(tmp_path):
    """Several drills at once, each with its app: SIGTERM to the matrix ends them all by PID,
    then the matrix by SIGTERM, within a bounded time."""
    args = ["--matrix", "--server", "werkzeug", "--server", "waitress"]
    args += ["--request-seconds", "30", "--grace", "30"]  # lastcall's drills drain for long
    with marked_drill(tmp_path, *args) as proc:
        deadline = time.monotonic() + WAIT
        while len(carrying(proc.token)) < 3:  # the matrix and the apps of two drills at least
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the matrix's apps never ran"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=WAIT)
        assert proc.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), err
        assert "stopped by SIGTERM; every process the drill started has ended" in err
        assert [pid for pid in carrying(proc.token) if pid != proc.pid] == []


def test_session_processes_finds_a_sessions_processes():
    """The drill's cleanup finds a session's processes by the session field of /proc/PID/stat
    (its own copy read tty_nr, which is 0 without a terminal, and never found them)."""
    from lastcall.cli import cleanup

    script = (
        "import subprocess, time; subprocess.Popen(['sleep', '30']); "
        "print('ready', flush=True); time.sleep(30)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        found = cleanup.session_processes(proc.pid)
        assert proc.pid in found
        assert len(found) == 2, found
    finally:
        for pid in cleanup.session_processes(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
