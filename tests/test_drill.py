"""``lastcall drill``: real drills of real processes, through the command line.

Each drill runs its app in a session of its own; every test checks that no
process of those sessions is left (the pid comes from the JSON, or from the
drill's "started pid N" progress line).
"""

from __future__ import annotations

import html.parser
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

import pytest
from conftest import MATRIX, WAIT, live_processes_in_session

import lastcall
from lastcall.cli.servers import SERVERS

DEMO_HOOKS = {"flush_orders", "close_db"}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def drill(
    *args: str,
    cwd: Path | None = None,
    timeout: float = 90,
    python: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("LASTCALL_")}
    result = subprocess.run(
        [*(python or [sys.executable]), "-m", "lastcall", "drill", *args],
        capture_output=True,
        text=True,
        env={**inherited, "COLUMNS": "200", **(env or {})},
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    for pid in started_pids(result.stderr):
        assert live_processes_in_session(pid) == [], f"drill left processes of session {pid}"
    return result


def started_pids(progress: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"started pid (\d+)", progress)]


def short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


@pytest.mark.parametrize(
    "server",
    [
        "werkzeug",
        "werkzeug-reload",
        "gunicorn",
        "gunicorn-gthread",
        "waitress",
        "uvicorn",
        "hypercorn",
        "aiohttp",
        "tornado",
    ],
)
def test_demo_drill_serves_everything_and_loses_nothing(tmp_path, server):
    out = tmp_path / "drill.json"
    n = 8 if server.startswith("werkzeug") else 4
    # One sync gunicorn worker serves one request at a time: short ones, to stay quick.
    result = drill(
        "--server", server, "--requests", str(n), "--request-seconds", "0.5", "--json", str(out)
    )
    data = json.loads(out.read_text())
    in_flight = [r for r in data["requests"] if r["kind"] == "in flight"]
    assert [r["fate"] for r in in_flight] == ["200"] * n
    assert data["lost_writes"] == 0
    assert data["stored"] == data["acknowledged"] >= 4 + n  # 4 before the stop and the n
    assert data["left_behind"] == []
    # The process the drill started, a master too, ends by the signal.
    assert data["exit_status"] == 128 + signal.SIGTERM
    hooks = data["hooks"]
    assert {h["pid"] for h in hooks} == {data["serving"]}
    assert {short(h["name"]) for h in hooks} >= DEMO_HOOKS
    assert len(hooks) == len({h["name"] for h in hooks}), "a hook ran twice"
    assert data["hooks_where"] == ("child" if SERVERS[server].parent else "server")
    assert [p for p, _ in data["phases"]][:2] == ["pre_stop", "drain"]
    assert data["stop_seconds"] < 3
    assert data["leader"] in started_pids(result.stderr)
    late = {r["fate"] for r in data["requests"] if r["kind"] == "late"}
    assert late <= {"refused", "200"}, data["verdict"]
    assert result.returncode == 0, result.stdout + result.stderr
    assert data["verdict"].startswith(
        f"clean stop: {n}/{n} requests served, 0 refused, 0 lost writes"
    )
    assert data["verdict"] in result.stdout
    assert "What the clients saw" in result.stdout


def test_a_users_plain_wsgi_app_is_wrapped_and_drilled(tmp_path):
    app = tmp_path / "plainwsgi.py"
    app.write_text(
        textwrap.dedent(
            """
            def app(environ, start_response):
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"hello"]
            """
        )
    )
    out = tmp_path / "drill.json"
    result = drill("plainwsgi:app", "--requests", "4", "--json", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    assert data["served"] == 4
    assert data["lost_writes"] is None
    assert [short(h["name"]) for h in data["hooks"]] == [
        "werkzeug: stop accepting, finish requests in flight"
    ]


@MATRIX
def test_matrix_plain_column_fails_as_measured_and_lastcall_does_not(tmp_path):
    out = tmp_path / "matrix.json"
    started = time.monotonic()
    result = drill(
        "--matrix",
        "--server",
        "werkzeug",
        "--server",
        "werkzeug-reload",
        "--json",
        str(out),
        timeout=120,
    )
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    results = {
        (r["plan"]["server"], r["plan"]["stop"], r["plan"]["plain"]): r
        for r in json.loads(out.read_text())
    }
    assert len(results) == 30  # 8 stops x 2 variants x 2 servers, less KILL-PARENT without a parent

    # DESIGN.md, plain Flask today:
    term = results["werkzeug", "TERM", True]  # the request in flight dropped, no handler runs
    assert term["dropped"] == 4 and term["hooks_where"] == "none"
    kill_child = results["werkzeug-reload", "KILL-CHILD", True]  # handlers run in the parent
    assert kill_child["hooks_where"] == "parent"
    kill_parent = results["werkzeug-reload", "KILL-PARENT", True]  # the child serves on, orphaned
    assert len(kill_parent["left_behind"]) == 1
    assert {r["fate"] for r in kill_parent["requests"] if r["kind"] == "late"} == {"200"}
    term_parent = results["werkzeug-reload", "TERM", True]  # parent's handlers, child killed
    assert term_parent["hooks_where"] == "parent" and term_parent["dropped"] == 4
    os_exit = results["werkzeug-reload", "OS-EXIT", True]  # the child's never run; the parent's do
    assert os_exit["hooks_where"] == "parent"
    interrupted = results["werkzeug", "INT", True]  # Ctrl-C's KeyboardInterrupt: exit 0, not 130
    assert interrupted["exit_status"] == 0
    assert any("not by SIGINT (130)" in p for p in interrupted["problems"]), interrupted

    for (server, stop, plain), r in results.items():
        if plain:
            continue
        assert r["problems"] == [], (server, stop, r["verdict"])
        assert r["left_behind"] == []
        assert r["hooks_where"] in {"server", "child", "none"}
        if stop not in ("KILL-CHILD", "OS-EXIT") and not (stop == "KILL" and server == "werkzeug"):
            assert r["dropped"] == 0 and r["lost_writes"] == 0, (server, stop)
    assert "✗" in result.stdout  # the failing plain cells are marked
    assert took < 60


def matrix_results(
    *args: str,
) -> tuple[dict[tuple[str, str, bool], dict], subprocess.CompletedProcess[str]]:
    out = Path(args[-1])
    result = drill("--matrix", *args[:-1], "--json", str(out), timeout=120)
    data = json.loads(out.read_text())
    return {(r["plan"]["server"], r["plan"]["stop"], r["plan"]["plain"]): r for r in data}, result


def fates(result: dict, kind: str) -> list[str]:
    return [r["fate"] for r in result["requests"] if r["kind"] == kind]


@MATRIX
def test_matrix_on_production_servers_reproduces_design_md(tmp_path):
    """DESIGN.md's production-server table, as shipped, and the same stops with lastcall."""
    servers = ["--server", "gunicorn", "--server", "waitress", "--server", "uvicorn"]
    term, shown = matrix_results(
        *servers, "--server", "hypercorn", "--stop", "TERM", str(tmp_path / "t.json")
    )
    kill, _ = matrix_results(
        "--server",
        "gunicorn",
        "--server",
        "hypercorn",
        "--stop",
        "KILL-PARENT",
        str(tmp_path / "k.json"),
    )
    # gunicorn sync: the request in the worker finishes, those queued in the backlog are reset.
    gunicorn = term["gunicorn", "TERM", True]
    assert sorted(fates(gunicorn, "in flight")) == ["200", "reset", "reset", "reset"]
    # waitress: instant death, every request in flight dropped, no handler runs.
    waitress = term["waitress", "TERM", True]
    assert fates(waitress, "in flight") == ["reset"] * 4, waitress["verdict"]
    assert waitress["hooks_where"] == "none"
    assert waitress["exit_status"] == 128 + signal.SIGTERM
    # uvicorn: drains all, then no exit handler runs (and the buffer is lost).
    uvicorn = term["uvicorn", "TERM", True]
    assert uvicorn["dropped"] == 0 and uvicorn["hooks_where"] == "none"
    assert uvicorn["lost_writes"] == uvicorn["acknowledged"] >= 8
    # hypercorn: drains.
    assert term["hypercorn", "TERM", True]["dropped"] == 0
    # SIGKILL to the master: its worker serves on (gunicorn for a while; hypercorn until killed).
    assert "200" in fates(kill["gunicorn", "KILL-PARENT", True], "late")
    orphaned = kill["hypercorn", "KILL-PARENT", True]
    assert orphaned["left_behind"] and "200" in fates(orphaned, "late")

    for (server, stop, plain), r in {**term, **kill}.items():
        if plain or (server, stop) == ("hypercorn", "TERM"):  # hypercorn: see HYPERCORN_LATE
            continue
        assert r["problems"] == [], (server, stop, r["verdict"])
        assert r["dropped"] == 0 and r["lost_writes"] == 0 and r["left_behind"] == []
        assert r["hooks_where"] == ("child" if SERVERS[server].parent else "server")
    assert "✗" in shown.stdout


def bad_input_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    (tmp_path / "notwsgi.py").write_text("app = 42\n")
    (tmp_path / "wsgiapp.py").write_text("def app(environ, start_response):\n    return []\n")
    (tmp_path / "asgiapp.py").write_text("async def app(scope, receive, send):\n    pass\n")
    (tmp_path / "broken.py").write_text("raise RuntimeError('no database configured')\n")
    (tmp_path / "silent.py").write_text(
        "import time\ntime.sleep(60)\n\ndef app(environ, start_response):\n    return []\n"
    )
    return {
        "unimportable": (["no_such_module_here:app"], "cannot be imported"),
        "failing import": (["broken.py"], "RuntimeError: no database configured"),
        "missing file": (["missing.py"], "there is no file"),
        "not an app": (["notwsgi.py:app"], "not a WSGI app"),
        "asgi on werkzeug": (["asgiapp:app"], "is an ASGI app"),
        "wsgi on uvicorn": (
            ["--server", "uvicorn", "wsgiapp.py"],
            "is a WSGI app; uvicorn serves ASGI",
        ),
        "not a stop there": (
            ["--server", "gunicorn", "--stop", "HUP"],
            "is not a stop on gunicorn",
        ),
        "unknown server": (["--server", "nginx"], "'nginx' is not one of"),
        "unknown stop": (["--stop", "NICELY"], "'NICELY' is not one of"),
        "kill-parent without one": (["--stop", "KILL-PARENT"], "needs a server with a parent"),
        # Its import never ends: found while the drill imports it to tell WSGI from ASGI.
        "never answers": (["silent.py", "--start-timeout", "1"], "took over 1 s to import"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "unimportable",
        "failing import",
        "missing file",
        "not an app",
        "asgi on werkzeug",
        "wsgi on uvicorn",
        "not a stop there",
        "unknown server",
        "unknown stop",
        "kill-parent without one",
        "never answers",
    ],
)
def test_bad_input_is_one_line_and_status_2(tmp_path, case):
    args, expected = bad_input_cases(tmp_path)[case]
    result = drill(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("lastcall: error:")]
    assert len(errors) == 1, result.stderr
    assert expected in errors[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_a_port_that_will_not_open(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = drill("--port", str(port))
    assert result.returncode == 2
    assert f"port {port} will not open" in result.stderr
    assert "Traceback" not in result.stderr


def without_packages(tmp_path: Path, hidden: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """An interpreter that cannot import ``hidden``, for real: without site (-S), on a copy of
    site-packages (links) that lacks them. Its command and environment."""
    site = Path(sysconfig.get_paths()["purelib"])
    copy = tmp_path / "site-packages"
    copy.mkdir()
    for entry in site.iterdir():
        if not entry.name.lower().startswith(hidden):
            (copy / entry.name).symlink_to(entry)
    source = Path(lastcall.__file__).resolve().parents[1]  # the editable install's src/
    env = {"PYTHONPATH": os.pathsep.join([str(copy), str(source)])}
    python = [sys.executable, "-S"]
    specs = ", ".join(f"u.find_spec({name!r})" for name in hidden)
    probe = subprocess.run(
        [*python, "-c", f"import importlib.util as u; print({specs}, u.find_spec('click'))"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    )
    assert probe.stdout.split()[: len(hidden)] == ["None"] * len(hidden)
    assert probe.stdout.split()[-1] != "None"
    return python, env


def test_a_server_that_is_not_installed_names_its_extra(tmp_path):
    """gunicorn hidden for real: it cannot be imported or found."""
    python, env = without_packages(tmp_path, ("gunicorn",))
    result = drill("--server", "gunicorn", python=python, env=env)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("lastcall: error:")]
    assert errors == [
        "lastcall: error: gunicorn is not installed: pip install 'lastcall[gunicorn]'"
    ]


def test_without_the_cli_extra_one_line_names_it():
    code = "import sys; sys.modules['rich'] = None; from lastcall.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", code, "drill"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        (
            "lastcall: the lastcall command needs its extra: pip install 'lastcall[cli]' "
            "(rich is missing)"
        )
    ]


def test_ctrl_c_during_a_drill_ends_every_process_it_started(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LASTCALL_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lastcall",
            "drill",
            "--server",
            "werkzeug-reload",
            "--request-seconds",
            "10",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert proc.stderr is not None
        lines = []
        deadline = time.monotonic() + WAIT
        while not any("requests in flight" in line for line in lines):
            assert time.monotonic() < deadline, "".join(lines)
            lines.append(proc.stderr.readline())
        os.kill(proc.pid, signal.SIGINT)
        _, rest = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, "".join(lines) + rest
    assert "interrupted" in rest
    (app,) = started_pids("".join(lines))
    assert live_processes_in_session(app) == []


class _Dom(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.classes: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.classes.extend((dict(attrs).get("class") or "").split())

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is missing, and .ci/run should have installed it")
        pytest.skip("chromium is not installed here (.ci/run installs Debian's chromium)")
    return found


def test_html_report_shows_the_timeline_in_chromium(tmp_path):
    browser = chromium()
    page, out = tmp_path / "drill.html", tmp_path / "drill.json"
    result = drill("--requests", "6", "--html", str(page), "--json", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,900"]
    url = page.as_uri()
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=60, check=True
    )
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == 1100  # the width asked for
    assert len(png) > 10_000, "the screenshot is blank"
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    parsed = _Dom()
    parsed.feed(dom)
    assert parsed.classes.count("request") == len(data["requests"])
    assert parsed.classes.count("fate-200") >= 4 + 6
    assert parsed.classes.count("mark-signal") == 1
    assert parsed.classes.count("mark-exit") == 1
    assert parsed.classes.count("mark-phase") == len(data["phases"]) >= 2
    assert parsed.classes.count("mark-hook") == len(data["hooks"]) >= 3
    text = " ".join(parsed.text)
    assert "SIGTERM" in text and "flush_orders" in text
    assert data["verdict"] in text
