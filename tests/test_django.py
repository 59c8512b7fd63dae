"""Django with ``"lastcall.django"`` in INSTALLED_APPS: runserver and gunicorn, in real processes.

Every test runs a project made by ``django-admin startproject`` (once per
module, copied per test), with the app added, a hook registered in
``settings.py`` (imported by both autoreloader processes) that prints its
pid, and a slow view. Helpers are the Flask dev server's and gunicorn's tests'.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import WAIT, free_port, live_processes_in_session, refused
from test_flask_devserver import get, hook_lines, put_slow_requests_in_flight, wait_until_serving
from test_gunicorn import _control_socket, collect, send_slow, statuses, wait_lines, worker_pids

pytest.importorskip("django")

SETTINGS = """
import os
import lastcall

INSTALLED_APPS.append("lastcall.django")
os.write(1, f"imported pid={os.getpid()}\\n".encode())  # one write(2): workers share the pipe

@lastcall.on_shutdown
def settings_hook():
    os.write(1, f"hook:settings pid={os.getpid()}\\n".encode())

LOGGING = {  # lastcall's lines on stderr, as a project would show them
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"lastcall": {"handlers": ["stderr"], "level": "INFO"}},
}

if os.environ.get("BAD_SETTING"):
    exec(os.environ["BAD_SETTING"])
"""

URLS = """
import os
import time
from django.http import HttpResponse
from django.urls import path

def slow(request):
    os.write(1, f"slow started pid={os.getpid()}\\n".encode())
    time.sleep(float(os.environ.get("SLOW", "2")))
    return HttpResponse("slow done")

def pid(request):
    return HttpResponse(str(os.getpid()))

def index(request):
    return HttpResponse("index")

urlpatterns = [path("slow", slow), path("pid", pid), path("", index)]
"""


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh ``startproject``, with the app, the hook and the slow view added."""
    root = tmp_path_factory.mktemp("django")
    subprocess.run(
        [sys.executable, "-m", "django", "startproject", "mysite"],
        cwd=root,
        check=True,
        timeout=WAIT,
    )
    project = root / "mysite"
    settings = project / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + SETTINGS)
    (project / "mysite" / "urls.py").write_text(URLS)
    return project


@pytest.fixture
def project(template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "mysite"))


def runserver(spawn, project: Path, tmp_path: Path, *, reload: bool, env=None):
    """``manage.py runserver PORT`` (the process a user starts); wait until it serves."""
    port = free_port()
    argv = [sys.executable, str(project / "manage.py"), "runserver", str(port)]
    if not reload:
        argv.append("--noreload")
    env = {"LASTCALL_REPORT": str(tmp_path / "report-{pid}.json"), **(env or {})}
    child = spawn("", argv=argv, env=env, wait_ready=False)
    serving = int(wait_until_serving(port, child))
    return child, port, serving


def new_connections_until_gone(child, port: int) -> list[object]:
    """Once the door is shut, open a new connection and GET / until the server is gone.

    Each outcome: a status, "refused", or the error (a reset would show here).
    Callers start it once the door is known shut, not before: a connection
    completing between the drain's last look at the backlog and the
    socket's shutdown (microseconds) is reset by the kernel, a window this
    loop would otherwise hit now and then. At least one connection is tried:
    with nothing left in flight, the server may be gone already.
    """
    outcomes: list[object] = []
    deadline = time.monotonic() + WAIT
    while True:
        try:
            outcomes.append(get(port, "/", timeout=5)[0])
        except ConnectionRefusedError:
            outcomes.append("refused")
            time.sleep(0.02)
        except OSError as exc:
            outcomes.append(repr(exc))
        if child.proc.poll() is not None or time.monotonic() > deadline:
            return outcomes


@pytest.mark.parametrize("reload", [True, False], ids=["autoreloader", "noreload"])
@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "Ctrl-C"])
def test_signal_to_runserver_drains_and_runs_the_hook_once_in_the_serving_child(
    spawn, project, tmp_path, reload, how
):
    """Steps: 3 requests of 2 s in flight; the signal to the process the user
    started (Ctrl-C: SIGINT to its process group, as a terminal sends it);
    during the 1.5 s pre-stop delay /readyz is 503 while / is 200;
    new connections afterwards are refused or served, never reset; every
    request in flight gets 200; the settings hook runs once, in the serving
    process; the process ends by the signal and leaves nothing behind.
    """
    env = {"LASTCALL_PRESTOP_DELAY": "1.5"}
    child, port, serving = runserver(spawn, project, tmp_path, reload=reload, env=env)
    assert get(port, "/readyz") == (200, '{"status": "ready"}')
    requests = put_slow_requests_in_flight(child, port, 3)
    sig = signal.SIGINT if how == "Ctrl-C" else signal.Signals[how]
    if how == "Ctrl-C":
        os.killpg(child.pid, signal.SIGINT)  # spawn made it a session (and group) leader
    else:
        child.send(sig)
    deadline = time.monotonic() + WAIT
    while get(port, "/readyz")[0] != 503:
        assert time.monotonic() < deadline, child.output()
        time.sleep(0.02)
    assert get(port, "/") == (200, "index")  # still serving in the pre-stop delay
    assert get(port, "/livez")[0] == 200
    child.wait_for("stopped accepting", stream="stderr")
    outcomes = new_connections_until_gone(child, port)
    assert outcomes, child.output()
    assert set(outcomes) == {"refused"}, outcomes
    status = child.finish()
    assert requests.join() == [(200, "slow done")] * 3
    assert hook_lines(child) == [f"hook:settings pid={serving}"], child.output()
    imported = [line for line in child.stdout if line.startswith("imported")]
    assert len(imported) == (2 if reload else 1), child.output()  # the hook's in both
    report = json.loads((tmp_path / f"report-{serving}.json").read_text())
    # The reloader parent passes a signal on as SIGTERM (a Ctrl-C reached the
    # child itself), then ends by the signal it was sent.
    child_ended_by = signal.SIGTERM if reload and how == "SIGINT" else sig
    assert report["exit_status"] == 128 + child_ended_by, child.output()
    assert status == -sig, child.output()
    assert live_processes_in_session(child.pid) == []
    if reload:
        assert not (tmp_path / f"report-{child.pid}.json").exists()  # the parent stood aside
        assert "without running its shutdown hooks" not in child.output()


def test_ctrl_c_reaching_the_child_a_moment_later_still_ends_it_by_sigint(spawn, project, tmp_path):
    """Steps: a terminal's Ctrl-C reaches the reloader parent, and the serving child 0.2 s
    later (a busy machine schedules it late): the child's stop is still its own SIGINT's, not
    the SIGTERM the parent passes on, so both end by SIGINT (130), as the user asked."""
    child, _port, serving = runserver(spawn, project, tmp_path, reload=True)
    child.send(signal.SIGINT)
    time.sleep(0.2)  # the scenario: the child's copy of the Ctrl-C arrives this much later
    os.kill(serving, signal.SIGINT)
    assert child.finish() == -signal.SIGINT, child.output()
    report = json.loads((tmp_path / f"report-{serving}.json").read_text())
    assert report["exit_status"] == 128 + signal.SIGINT, child.output()


def test_sigkill_to_the_reloader_parent_stops_the_child(spawn, project, tmp_path):
    """The orphaned child notices within a second, drains, runs its hook, frees the port."""
    child, port, serving = runserver(spawn, project, tmp_path, reload=True)
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
    assert report["reason"] == "the autoreloader parent died"
    assert requests.join() == [(200, "slow done")] * 2
    deadline = time.monotonic() + WAIT
    while live_processes_in_session(child.pid):
        assert time.monotonic() < deadline, "the orphaned child kept running"
        time.sleep(0.05)
    assert refused(port)
    assert hook_lines(child) == [f"hook:settings pid={serving}"]


def test_child_killed_is_reported_by_the_parent(spawn, project, tmp_path):
    """The serving child dies by SIGKILL: no hook runs in the parent; one line says so."""
    child, _port, serving = runserver(spawn, project, tmp_path, reload=True)
    os.kill(serving, signal.SIGKILL)
    assert child.finish() == -signal.SIGKILL
    assert hook_lines(child) == []
    warning = [line for line in child.stderr if "without running its shutdown hooks" in line]
    assert len(warning) == 1, child.output()
    assert str(serving) in warning[0]


def test_under_gunicorn_with_the_projects_own_wsgi(spawn, project):
    """gunicorn -c python:lastcall.gunicorn mysite.wsgi: every request in flight
    gets 200, new connections during the drain are refused, the hook runs once
    in each worker, the master ends by SIGTERM.
    """
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:lastcall.gunicorn"]
    argv += ["-b", "127.0.0.1:0", "-w", "2", "--graceful-timeout", "15"]
    argv += ["--chdir", str(project), *_control_socket(project), "mysite.wsgi"]
    child = spawn("", argv=argv, env={"SLOW": "1"}, wait_ready=False)
    line = child.wait_for("Listening at:", stream="stderr")
    port = int(line.rsplit(":", 1)[1].split()[0])
    wait_lines(child, "ready; its shutdown hooks", 2)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    conn.request("GET", "/readyz")
    assert conn.getresponse().status == 200
    conn.close()
    conns = send_slow(port, 6)
    wait_lines(child, "slow started", 2, stream="stdout")
    child.send(signal.SIGTERM)
    results, threads = collect(conns)
    wait_lines(child, "stopped accepting", 2)
    assert refused(port)
    for thread in threads:
        thread.join(WAIT)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert statuses(results) == [200] * 6, child.output()
    hooked = sorted(int(h.split("=")[1]) for h in hook_lines(child))
    assert hooked == sorted(worker_pids(child)), child.output()


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("LASTCALL_GRACE = 'soon'", "settings.LASTCALL_GRACE"),
        ("LASTCALL_READYZ_PATH = 'readyz'", "settings.LASTCALL_READYZ_PATH"),
        ("LASTCALL_CLOSE_DB = 'yes'", "settings.LASTCALL_CLOSE_DB"),
    ],
)
def test_a_bad_setting_is_one_line_at_start_up(spawn, project, setting, named):
    argv = [sys.executable, str(project / "manage.py"), "check"]
    child = spawn("", argv=argv, env={"BAD_SETTING": setting}, wait_ready=False)
    assert child.finish() == 1, child.output()
    lines = [line for line in child.stderr if named in line]
    assert len(lines) == 1, child.output()
    assert lines[0].startswith("django.core.exceptions.ImproperlyConfigured: ")


def test_install_on_django_main_thread_says_what_to_use(spawn, project):
    """lastcall.install() in wsgi.py, which runserver imports on 'django-main-thread'."""
    wsgi = project / "mysite" / "wsgi.py"
    wsgi.write_text(wsgi.read_text() + "\nimport lastcall\nlastcall.install()\n")
    port = free_port()
    argv = [sys.executable, str(project / "manage.py"), "runserver", str(port)]
    child = spawn("", argv=argv, wait_ready=False)
    line = child.wait_for("lastcall.install() must be called", stream="stderr")
    assert "'django-main-thread'" in line
    assert '"lastcall.django" to INSTALLED_APPS' in line
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()


def test_health_answered_before_routing_and_reachable_with_a_socket(spawn, project, tmp_path):
    """/livez and /readyz never reach the URLconf (which has no such routes), HEAD too."""
    child, port, _serving = runserver(spawn, project, tmp_path, reload=False)
    assert get(port, "/livez") == (200, '{"status": "alive"}')
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(b"HEAD /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = sock.makefile("rb").read()
    assert head.startswith(b"HTTP/1.1 200"), head
    assert head.endswith(b"\r\n\r\n"), head
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()


def test_code_change_drains_the_old_child_before_the_new_one_serves(spawn, project, tmp_path):
    """Django's own reload (exit status 3): the old child finishes its requests and
    runs its hook, then a new child serves; the parent restarts it, runs no hook.
    """
    child, port, old = runserver(spawn, project, tmp_path, reload=True, env={"SLOW": "1.5"})
    requests = put_slow_requests_in_flight(child, port, 2)
    new = change_code_until_reloaded(child, port, old, project / "mysite" / "urls.py")
    assert requests.join() == [(200, "slow done")] * 2
    lines = child.stdout
    assert lines.index(f"hook:settings pid={old}") < lines.index(f"imported pid={new}")
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert hook_lines(child) == [f"hook:settings pid={old}", f"hook:settings pid={new}"]


def change_code_until_reloaded(child, port: int, old: int, source: Path) -> int:
    """Change ``source`` until another process answers /pid; return its pid.

    The change is made again on each poll: Django's StatReloader only sees a
    change after its first look at the file's mtime, which may come after
    the server first answers.
    """
    deadline = time.monotonic() + WAIT
    while True:
        assert time.monotonic() < deadline, child.output()
        if f"imported pid={old}" in child.stdout and "reloading" not in child.output():
            source.write_text(source.read_text() + "\n# a code change\n")
        try:
            new = int(get(port, "/pid", timeout=WAIT)[1])
        except OSError:
            time.sleep(0.05)
            continue
        if new != old:
            return new
        time.sleep(0.05)


def test_health_under_uvicorn_with_the_projects_own_asgi(spawn, project):
    """The project's unmodified asgi.py under uvicorn: the middleware answers
    the health paths on Django's async path, before routing; / reaches the view.
    """
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(project), "--port", str(port)]
    child = spawn("", argv=[*argv, "mysite.asgi:application"], wait_ready=False)
    child.wait_for("Uvicorn running", stream="stderr")
    assert get(port, "/readyz") == (200, '{"status": "ready"}')
    assert get(port, "/livez") == (200, '{"status": "alive"}')
    assert get(port, "/") == (200, "index")
    child.send(signal.SIGTERM)
    child.finish()
    assert live_processes_in_session(child.pid) == []


def test_under_uvicorn_the_projects_own_asgi_drains_and_runs_the_hook(spawn, project):
    """Steps: the unmodified asgi.py under uvicorn, settings.LASTCALL_PRESTOP_DELAY = 1; four
    slow requests in flight; SIGTERM: /readyz 503 while / is still 200 (the setting reached
    the ASGI middleware), every request 200, the hook once in the server, exit by SIGTERM."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(project), "--port", str(port)]
    env = {"SLOW": "1", "BAD_SETTING": "LASTCALL_PRESTOP_DELAY = 1"}
    child = spawn("", argv=[*argv, "mysite.asgi:application"], env=env, wait_ready=False)
    child.wait_for("Uvicorn running", stream="stderr")
    assert "lifespan' protocol appears unsupported" not in child.output()
    conns = send_slow(port, 4)
    wait_lines(child, "slow started", 4, stream="stdout")
    child.send(signal.SIGTERM)
    results, threads = collect(conns)
    child.wait_for("pre-stop delay: ", stream="stderr")
    assert get(port, "/readyz")[0] == 503
    assert get(port, "/") == (200, "index")
    for thread in threads:
        thread.join(WAIT)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert statuses(results) == [200] * 4, child.output()
    assert hook_lines(child) == [f"hook:settings pid={child.pid}"], child.output()


def test_an_asgi_app_wrapped_twice_is_one_line(spawn, project):
    """The old way, asgi.py wrapping get_asgi_application() itself: one line at start-up."""
    asgi = project / "mysite" / "asgi.py"
    asgi.write_text(
        asgi.read_text().replace(
            "application = get_asgi_application()",
            "from lastcall.asgi import LastCallMiddleware\n"
            "application = LastCallMiddleware(get_asgi_application())",
        )
    )
    argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(project), "--port", str(free_port())]
    child = spawn("", argv=[*argv, "mysite.asgi:application"], wait_ready=False)
    assert child.finish() != 0
    assert "this app is one already" in child.output()


def test_nothreading_serves_the_backlog_and_refuses_new_connections(spawn, project, tmp_path):
    """runserver --nothreading: one request served, two waiting in the listen
    backlog at SIGTERM; all three get 200, and new connections meanwhile are
    refused, not taken into the backlog behind them.
    """
    port = free_port()
    argv = [sys.executable, str(project / "manage.py"), "runserver", str(port)]
    argv += ["--noreload", "--nothreading"]
    child = spawn("", argv=argv, env={"SLOW": "1"}, wait_ready=False)
    serving = int(wait_until_serving(port, child))
    conns = send_slow(port, 3)  # when this returns, each is served or in the backlog
    child.wait_for("slow started")
    child.send(signal.SIGTERM)
    results, threads = collect(conns)
    # The second request starts once the drain took the backlog and shut the door.
    deadline = time.monotonic() + WAIT
    while len(child.lines("slow started")) < 2:
        assert time.monotonic() < deadline, child.output()
        time.sleep(0.02)
    outcomes = new_connections_until_gone(child, port)
    for thread in threads:
        thread.join(WAIT)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert statuses(results) == [200] * 3, child.output()
    assert outcomes, child.output()
    assert set(outcomes) == {"refused"}, outcomes
    assert hook_lines(child) == [f"hook:settings pid={serving}"]
