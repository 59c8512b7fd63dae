"""gunicorn with ``-c python:lastcall.gunicorn``: real masters, workers, signals and sockets.

The app prints ``hook:<name> <pid>`` from its hooks and ``slow <pid>`` when a
slow request starts, so the test sees which process did what. lastcall's
log lines reach gunicorn's error log (stderr).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import WAIT, refused, wait_session_empty

ROOT = Path(__file__).resolve().parent.parent

APP = """
import os, sys, time
import lastcall

def out(*words):
    sys.stdout.write(" ".join(map(str, words)) + "\\n")
    sys.stdout.flush()

@lastcall.on_shutdown
def app_hook():
    out("hook:app", os.getpid())

@lastcall.on_shutdown(inherit=True)
def shared_hook():
    out("hook:shared", os.getpid())

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/slow":
        out("slow", os.getpid())
        time.sleep(1)
    elif path == "/hang":
        out("hang", os.getpid())
        time.sleep(30)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"done {os.getpid()}".encode()]
"""

SLOW_HOOK = """
@lastcall.on_shutdown
def slow_hook():
    time.sleep(20)
"""


def _control_socket(directory) -> list[str]:
    """gunicorn 25+ opens a control socket: in the test's directory, not the shared default."""
    from gunicorn.config import KNOWN_SETTINGS

    if not any(setting.name == "control_socket" for setting in KNOWN_SETTINGS):
        return []
    return ["--control-socket", str(Path(directory, "gunicorn.ctl"))]


def start(spawn, *args: str, workers: int = 2, env=None, app: str = APP, conf=None, wait=True):
    """Start gunicorn on an ephemeral port; with ``wait``, wait until every worker is ready."""
    Path(spawn.script_dir, "webapp.py").write_text(app)
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        conf or "python:lastcall.gunicorn",
        "-b",
        "127.0.0.1:0",
        "-w",
        str(workers),
        "--graceful-timeout",
        "15",
        *_control_socket(spawn.script_dir),
        *args,
        "webapp:app",
    ]
    child = spawn("", argv=argv, env=env, wait_ready=False)
    line = child.wait_for("Listening at:", stream="stderr")
    child.port = int(re.search(r":(\d+) \(", line).group(1))
    if wait:
        wait_lines(child, "ready; its shutdown hooks", workers)
    return child


def wait_lines(child, text: str, count: int, *, stream: str = "stderr", timeout: float = WAIT):
    """Wait until ``count`` lines contain ``text``; return them."""
    deadline = time.monotonic() + timeout
    while True:
        with child._cond:
            sink = child.stderr if stream == "stderr" else child.stdout
            found = [line for line in sink if text in line]
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"wanted {count} lines with {text!r}\n{child.output()}")
        time.sleep(0.02)


def worker_pids(child) -> list[int]:
    return [
        int(re.search(r"worker (\d+) ready", line).group(1))
        for line in child.stderr
        if "ready;" in line
    ]


def statuses(results) -> list:
    """Each client's status, or what went wrong for it (``collect``'s results)."""
    return [r[0] if isinstance(r, tuple) else r for r in results]


def assert_drained_in_order(child, results, threads, count: int) -> None:
    """After SIGTERM to the master: both doors shut and new connections refused, every
    request in flight 200, the master ends by SIGTERM, and each worker ran its hook once."""
    wait_lines(child, "stopped accepting", 2)
    assert refused(child.port)
    for thread in threads:
        thread.join(WAIT)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert statuses(results) == [200] * count, child.output()
    assert sorted(hooks(child, "app")) == sorted(worker_pids(child))


def assert_no_worker_outlives_the_master(child) -> None:
    """After SIGKILL to the master: each worker runs its hook, and none keeps serving."""
    wait_lines(child, "hook:app", 2, stream="stdout")
    assert child.finish() == -signal.SIGKILL
    wait_session_empty(child.pid)
    assert refused(child.port)  # no orphan keeps serving
    assert sorted(hooks(child, "app")) == sorted(worker_pids(child))


def hooks(child, name: str) -> list[int]:
    return [int(line.split()[1]) for line in child.lines(f"hook:{name} ")]


def send_slow(port: int, count: int, path: str = "/slow") -> list[http.client.HTTPConnection]:
    """Connect and send each request now: when this returns, all are in flight or queued."""
    conns = []
    for _ in range(count):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        conn.request("GET", path)
        conns.append(conn)
    return conns


def collect(conns) -> tuple[list, list[threading.Thread]]:
    results: list = [None] * len(conns)

    def read(i: int) -> None:
        try:
            response = conns[i].getresponse()
            results[i] = (response.status, response.read())
        except Exception as exc:
            results[i] = repr(exc)
        finally:
            conns[i].close()

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(conns))]
    for thread in threads:
        thread.start()
    return results, threads


def get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("worker", "conf"),
    [("sync", None), ("gthread", str(ROOT / "examples" / "gunicorn.conf.py"))],
)
def test_sigterm_serves_every_request_including_the_backlog(spawn, worker, conf):
    """Steps: 2 workers; 8 requests of 1 s sent (sync: 2 served, 6 queued in the
    listen backlog); SIGTERM to the master. Every request gets 200, a new
    connection during the drain is refused (not accepted and reset), each
    worker runs its own hook once, the master ends by SIGTERM.
    """
    args = ["-k", worker, "--threads", "2"] if worker == "gthread" else ["-k", worker]
    child = start(spawn, *args, conf=conf)
    conns = send_slow(child.port, 8)
    wait_lines(child, "slow", 2, stream="stdout")  # both workers busy
    child.send(signal.SIGTERM)
    results, threads = collect(conns)
    assert_drained_in_order(child, results, threads, 8)


def test_prestop_delay_keeps_serving_while_readiness_is_red(spawn):
    child = start(spawn, "-k", "gthread", env={"LASTCALL_PRESTOP_DELAY": "2"})
    assert get(child.port, "/readyz") == 200
    child.send(signal.SIGTERM)
    deadline = time.monotonic() + WAIT
    while get(child.port, "/readyz") != 503:
        assert time.monotonic() < deadline, child.output()
        time.sleep(0.02)
    assert get(child.port, "/") == 200  # still serving during the delay
    assert get(child.port, "/livez") == 200
    wait_lines(child, "stopped accepting", 2)
    assert refused(child.port)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert sorted(hooks(child, "app")) == sorted(worker_pids(child))


def test_preload_master_hooks_run_once_in_the_master(spawn):
    """Plain atexit runs these three times; here the app hook runs once, in the
    master, and only the inherit=True hook runs in each worker too.
    """
    child = start(spawn, "--preload")
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert hooks(child, "app") == [child.pid]
    assert sorted(hooks(child, "shared")) == sorted([child.pid, *worker_pids(child)])


def test_the_master_ends_by_the_signal_after_its_exit_functions(spawn):
    """gunicorn's master exits 0 after a graceful stop; under lastcall it ends by the
    signal that stopped it (SIGINT: 130), once its own atexit functions have run, as at
    a normal exit. The app, preloaded, registers one in the master."""
    app = APP + 'import atexit\natexit.register(lambda: out("atexit", os.getpid()))\n'
    child = start(spawn, "--preload", app=app)
    child.send(signal.SIGINT)
    assert child.finish() == -signal.SIGINT, child.output()
    assert hooks(child, "app") == [child.pid]
    assert f"atexit {child.pid}" in child.lines("atexit "), child.output()  # workers' too


def test_max_requests_recycle_runs_the_worker_hooks_once(spawn):
    child = start(spawn, "--max-requests", "2", workers=1)
    first = worker_pids(child)[0]
    assert get(child.port, "/") == 200
    assert get(child.port, "/") == 200
    wait_lines(child, f"hook:app {first}", 1, stream="stdout")
    wait_lines(child, "ready; its shutdown hooks", 2)  # the replacement
    second = worker_pids(child)[1]
    assert get(child.port, "/") == 200
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert hooks(child, "app") == [first, second]


def test_hup_reload_runs_each_old_worker_hook_once(spawn):
    child = start(spawn)
    old = worker_pids(child)
    child.send(signal.SIGHUP)
    wait_lines(child, "ready; its shutdown hooks", 4)
    for pid in old:
        wait_lines(child, f"hook:app {pid}", 1, stream="stdout")
    assert get(child.port, "/") == 200  # the port never closed
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert sorted(hooks(child, "app")) == sorted(worker_pids(child))


def test_sigkill_to_the_master_stops_the_workers_within_a_second(spawn):
    child = start(spawn)
    killed = time.monotonic()
    child.send(signal.SIGKILL)
    wait_lines(child, "hook:app", 2, stream="stdout")
    noticed = time.monotonic() - killed
    assert noticed < 1.5, f"workers took {noticed:.2f} s\n{child.output()}"
    assert_no_worker_outlives_the_master(child)


def test_a_worker_killed_by_sigkill_is_reported_with_its_hooks(spawn):
    child = start(spawn, workers=1)
    victim = worker_pids(child)[0]
    os.kill(victim, signal.SIGKILL)
    line = wait_lines(child, f"lastcall: worker {victim} was killed", 1)[0]
    assert "webapp.app_hook (cleanup)" in line
    assert "webapp.shared_hook (cleanup)" in line
    wait_lines(child, "ready; its shutdown hooks", 2)
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert victim not in hooks(child, "app")


def test_a_worker_killed_after_its_timeout_is_reported(spawn):
    """WORKER TIMEOUT: SIGABRT, the worker starts its hooks, a slow one keeps it
    past the timeout, the master SIGKILLs it and says which hooks it had.
    """
    child = start(spawn, "--timeout", "2", workers=1, app=APP + SLOW_HOOK)
    victim = worker_pids(child)[0]
    conn = http.client.HTTPConnection("127.0.0.1", child.port, timeout=WAIT)
    conn.request("GET", "/hang")
    line = wait_lines(child, f"lastcall: worker {victim} was killed after WORKER TIMEOUT", 1)[0]
    assert "webapp.slow_hook (cleanup)" in line
    conn.close()
    wait_lines(child, "ready; its shutdown hooks", 2)
    child.send(signal.SIGTERM)
    assert child.finish(timeout=30) == -signal.SIGTERM, child.output()


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"LASTCALL_GRACE": "40"}, ["LASTCALL_GRACE=40", "--graceful-timeout"]),
        ({"LASTCALL_PRESTOP_DELAY": "20"}, ["LASTCALL_PRESTOP_DELAY=20", "--graceful-timeout"]),
        ({"LASTCALL_GRACE": "soon"}, ["LASTCALL_GRACE='soon'"]),
        # The master and the worker would each write it, the master (no hooks) last.
        ({"LASTCALL_REPORT": "/tmp/lc.json"}, ["LASTCALL_REPORT=/tmp/lc.json", "-{pid}.json"]),
    ],
)
def test_bad_settings_stop_gunicorn_at_start_up(spawn, env, names):
    Path(spawn.script_dir, "webapp.py").write_text(APP)
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:lastcall.gunicorn"]
    argv += ["-b", "127.0.0.1:0", "--graceful-timeout", "15", "webapp:app"]
    child = spawn("", argv=argv, env=env, wait_ready=False)
    assert child.finish() == 1, child.output()
    errors = [line for line in child.stderr if line.startswith("Error: lastcall:")]
    assert len(errors) == 1, child.output()
    for name in names:
        assert name in errors[0]
    assert not any("Booting worker" in line for line in child.stderr)


def test_the_config_module_defines_only_hooks():
    """gunicorn reads every module-level name that matches a setting."""
    from gunicorn.config import KNOWN_SETTINGS

    import lastcall.gunicorn

    settings = {setting.name for setting in KNOWN_SETTINGS}
    exported = set(lastcall.gunicorn.__all__)
    assert exported <= settings
    assert {name for name in vars(lastcall.gunicorn) if name in settings} == exported
    for name in exported:
        assert callable(getattr(lastcall.gunicorn, name))


def test_a_request_still_in_flight_at_the_end_is_named_in_the_report(spawn, tmp_path):
    """Steps: one sync worker, a 30 s request in flight, SIGTERM to the master, grace 2 s: the
    worker's report names GET /hang and how long it had run, and the log says so at ERROR."""
    report = tmp_path / "report-{pid}.json"
    env = {"LASTCALL_GRACE": "2", "LASTCALL_REPORT": str(report)}
    child = start(spawn, workers=1, env=env)
    (worker,) = worker_pids(child)
    _answers, readers = collect(send_slow(child.port, 1, "/hang"))
    child.wait_for("hang")
    child.send(signal.SIGTERM)
    child.finish()
    (request,) = json.loads((tmp_path / f"report-{worker}.json").read_text())["requests"]
    assert (request["method"], request["path"]) == ("GET", "/hang")
    assert 1.0 < request["seconds"] < 3.0
    assert "request GET /hang still in flight after" in child.output()
    readers[0].join(WAIT)
