"""``lastcall drill`` on apps it did not write: every APP form, ``--cmd``, honest verdicts,
request options, the matrix on a user's app, output in a file, and ``lastcall.testing``.

Real servers on loopback; every drill's session is checked empty afterwards
(``drill`` in test_drill.py, or the leader pid from the JSON).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MATRIX, free_port, live_processes_in_session
from test_drill import drill, short, started_pids

SLOW_APP = '''
import json
import os
import time


def app(environ, start_response):
    """Sleeps on /slow; notes what it was asked, so a test can see the request arrive."""
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    with open(os.path.join(os.path.dirname(__file__), "asked.jsonl"), "a") as out:
        asked = [environ["REQUEST_METHOD"], body.decode(), environ.get("HTTP_X_TOKEN", "")]
        out.write(json.dumps(asked) + "\\n")
    if environ["PATH_INFO"] == "/slow":
        time.sleep(0.5)
    if environ["PATH_INFO"] not in ("/", "/slow"):
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
'''


@pytest.fixture
def slow_app(tmp_path: Path) -> Path:
    (tmp_path / "slowapp.py").write_text(SLOW_APP)
    return tmp_path


def errors_of(result: subprocess.CompletedProcess[str]) -> list[str]:
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr + result.stdout
    return [line for line in lines if line.startswith("lastcall: error:")]


SHOP = '''
import os
import sqlite3

from flask import Flask


def create_app(database="shop.sqlite", *, greeting="hello"):
    """A factory that makes its SQLite database, as Flask's tutorial app does."""
    app = Flask(__name__, instance_relative_config=True)
    os.makedirs(app.instance_path, exist_ok=True)
    path = os.path.join(app.instance_path, database)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE IF NOT EXISTS item (name TEXT)")
        db.execute("INSERT INTO item VALUES (?)", (greeting,))

    @app.get("/")
    def index():
        with sqlite3.connect(path) as db:
            (count,) = db.execute("SELECT count(*) FROM item").fetchone()
        return f"{greeting} from {database}: {count}\\n"

    return app
'''


def make_shop(tmp_path: Path) -> None:
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text(SHOP)
    (tmp_path / "served.py").write_text(
        "from shop import create_app\n\napplication = create_app('file.sqlite')\n"
    )


@pytest.mark.parametrize(
    ("form", "database"),
    [
        (["shop:create_app()"], "shop.sqlite"),
        (["shop:create_app('other.sqlite', greeting='hi')"], "other.sqlite"),
        (["shop:create_app", "--factory"], "shop.sqlite"),
        (["shop:create_app"], "shop.sqlite"),  # takes no arguments: called, as flask --app does
        (["shop"], "shop.sqlite"),  # a bare package: its create_app()
        (["served.py"], "file.sqlite"),  # a .py file: its application
    ],
    ids=["factory()", "factory(args)", "--factory", "function", "package", "file.py"],
)
def test_app_forms(tmp_path, form, database):
    make_shop(tmp_path)
    out = tmp_path / "drill.json"
    args = ["--requests", "2", "--request-seconds", "0.5", "--json", str(out)]
    result = drill(*form, *args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    assert data["served"] == 2
    assert (tmp_path / "instance" / database).exists()


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ("shop:make", "shop has no attribute make; it defines create_app: name the app"),
        ("shop:create_app(os.sep)", "is neither a name nor a call with literal arguments"),
        ("shop:create_app(1, 2, 3)", "the factory cannot be called so"),
        ("served", "served has none of app, application, create_app(), make_app(); it defines"),
        ("shop:os", "is 'module', not a WSGI app"),
    ],
)
def test_app_form_errors_name_what_was_found(tmp_path, form, expected):
    make_shop(tmp_path)
    (tmp_path / "served.py").write_text("def build():\n    pass\n")
    result = drill(form, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("lastcall: error:")]
    assert len(errors) == 1, result.stderr
    assert expected in errors[0]
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- --cmd

# gunicorn's own graceful timeout (30 s) leaves room for the drill's LASTCALL_GRACE.
GUNICORN_WITH_LASTCALL = (
    "{python} -m gunicorn -c python:lastcall.gunicorn -b 127.0.0.1:{port} -w 2 slowapp:app"
)


def test_cmd_gunicorn_with_lastcall_stops_clean_in_every_worker(slow_app):
    """gunicorn as its users start it, two workers, lastcall's config: clean, hooks per worker.

    1. --cmd starts gunicorn in a session of its own; the drill finds both workers in /proc.
    2. Four clients ask /slow back to back; SIGTERM to the master (the leader).
    3. Every request in flight is served; each worker's lastcall report shows its drain.
    """
    out = slow_app / "drill.json"
    result = drill(
        "--cmd", GUNICORN_WITH_LASTCALL, "--path", "/slow", "--requests", "4",
        "--json", str(out), cwd=slow_app,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    assert data["leader"] in started_pids(result.stderr)
    in_flight = [r for r in data["requests"] if r["kind"] == "in flight"]
    assert data["served"] == len(in_flight) >= 1  # about one a client, bar a race at the stop
    assert len(data["workers"]) == 2 and data["leader"] not in data["workers"]
    assert {h["pid"] for h in data["hooks"]} == set(data["workers"])
    assert data["hooks_where"] == "child"
    assert data["exit_status"] == 128 + 15  # the master ends by SIGTERM
    assert data["verdict"].startswith("clean stop: ")
    assert "hooks ran once in each serving process" in result.stdout


def test_cmd_plain_waitress_serve_drops_requests_and_exits_1(slow_app):
    out = slow_app / "drill.json"
    waitress_serve = Path(sys.executable).parent / "waitress-serve"  # as its users start it
    command = f"{waitress_serve} --listen=127.0.0.1:{{port}} slowapp:app"
    result = drill(
        "--cmd", command, "--path", "/slow", "--requests", "4", "--json", str(out), cwd=slow_app
    )
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads(out.read_text())
    assert data["dropped"] >= 1  # every client had one in flight, bar a race at the stop
    assert data["hooks_where"] == "unknown"  # no lastcall report: nothing to tell
    assert "hooks unknown (no lastcall report)" in data["verdict"]
    assert data["verdict"].startswith("unclean stop: ")
    assert data["exit_status"] == 128 + 15


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--cmd", "{python} -m waitress slowapp:app"], "--cmd has no {port}"),
        (["--cmd", "no-such-program-here --port {port}"], "--cmd cannot start"),
        (["--cmd", "x {port}", "--stop", "OS-EXIT"], "needs the drill's routes"),
        (["--cmd", "x {port}", "--plain"], "leave out --plain and --server"),
        (["--cmd", "x {port}", "--request-seconds", "2"], "point --path at a route"),
        (["--cmd", "'x {port}"], "cannot be split into words"),
        (["--vs-cmd", "x {port}"], "--vs-cmd goes with --matrix --cmd"),
        (["slowapp:app", "--header", "no colon"], "is not 'Name: value'"),
        (["slowapp:app", "--workers", "2"], "werkzeug has no workers to count; --workers goes"),
        (["--cmd", "x {port}", "--workers", "2"], "write their number in COMMAND"),
        (
            ["--cmd", "{python} -c 'import sys; sys.exit(3)' {port}"],
            "exited with status 3 before it answered",
        ),
    ],
)
def test_cmd_bad_input_is_one_line_and_status_2(slow_app, args, expected):
    result = drill(*args, cwd=slow_app)
    assert result.returncode == 2, result.stdout + result.stderr
    (error,) = errors_of(result)
    assert expected in error


# ---------------------------------------------------------------- honest verdicts


def test_a_path_that_does_not_answer_2xx_is_refused_before_any_stop(slow_app):
    result = drill("slowapp:app", "--path", "/nope", cwd=slow_app)
    assert result.returncode == 2, result.stdout + result.stderr
    expected = (
        "lastcall: error: GET /nope answered 404 before any stop, not a 2xx: pick a --path "
        "that answers, or --expect 404"
    )
    assert errors_of(result) == [expected]


def test_expect_makes_another_status_the_served_one(slow_app):
    out = slow_app / "drill.json"
    args = ["--path", "/nope", "--expect", "404", "--requests", "2", "--json", str(out)]
    result = drill("slowapp:app", *args, cwd=slow_app)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(out.read_text())["served"] == 2


@pytest.mark.parametrize("stop", ["KILL", "OS-EXIT"])
def test_a_kill_is_never_a_clean_stop(slow_app, stop):
    out = slow_app / "drill.json"
    args = ["--stop", stop, "--requests", "2", "--request-seconds", "0.5", "--json", str(out)]
    result = drill("slowapp:app", *args, cwd=slow_app)
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads(out.read_text())
    assert data["clean"] is False and data["abrupt"] is True
    assert data["verdict"].startswith("abrupt stop, not clean")


def test_method_headers_and_body_reach_the_app(slow_app):
    (slow_app / "body.txt").write_text("from a file")
    args = ["--method", "post", "--header", "X-Token: s3cret", "--requests", "2"]
    result = drill("slowapp:app", *args, "--data-file", "body.txt", cwd=slow_app)
    assert result.returncode == 0, result.stdout + result.stderr
    asked = [json.loads(line) for line in (slow_app / "asked.jsonl").read_text().splitlines()]
    assert asked and all(a == ["POST", "from a file", "s3cret"] for a in asked), asked


def test_defaults_that_cannot_be_clean_on_one_sync_worker_are_fitted(slow_app):
    out = slow_app / "drill.json"
    result = drill("slowapp:app", "--server", "gunicorn", "--json", str(out), cwd=slow_app)
    assert result.returncode == 0, result.stdout + result.stderr
    note = "note: gunicorn's sync workers serve one request at a time each: the defaults changed"
    assert note in result.stdout
    plan = json.loads(out.read_text())["plan"]
    assert (plan["requests"], plan["request_seconds"]) == (4, 0.5)


def test_a_table_written_to_a_file_is_not_cut(slow_app):
    """No COLUMNS, stdout a pipe (as in a CI log): rich would cut at 80 columns."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LASTCALL_")}
    env.pop("COLUMNS", None)
    result = subprocess.run(
        [sys.executable, "-m", "lastcall", "drill", "slowapp:app", "--requests", "2"],
        capture_output=True, text=True, env=env, cwd=slow_app, timeout=60, check=False,
    )  # fmt: skip
    for pid in started_pids(result.stderr):
        assert live_processes_in_session(pid) == []
    assert result.returncode == 0, result.stdout + result.stderr
    assert "…" not in result.stdout
    assert "werkzeug: stop accepting, finish requests in flight" in result.stdout
    assert "new connections after the stop" in result.stdout
    (verdict,) = [line for line in result.stdout.splitlines() if line.startswith("clean stop")]
    assert verdict.endswith(" s")  # the whole verdict on one line


# ---------------------------------------------------------------- --matrix on a user's app


@MATRIX
def test_matrix_on_a_users_app_plain_beside_lastcall(slow_app):
    out = slow_app / "matrix.json"
    args = ["--server", "werkzeug", "--server", "waitress", "--stop", "TERM"]
    args += ["--request-seconds", "2"]  # still in flight at the stop, however loaded the machine
    result = drill("--matrix", "slowapp:app", *args, "--json", str(out), cwd=slow_app)
    assert result.returncode == 0, result.stdout + result.stderr
    results = {(r["plan"]["server"], r["plan"]["plain"]): r for r in json.loads(out.read_text())}
    for server in ("werkzeug", "waitress"):
        assert results[server, True]["dropped"] == 4  # as shipped: dropped
        assert results[server, True]["hooks_where"] == "unknown"
        assert results[server, False]["problems"] == []
        assert results[server, False]["hooks_where"] == "server"
    assert "lastcall drill --matrix: slowapp:app, as shipped | with lastcall" in result.stdout


@MATRIX
def test_matrix_compares_two_commands(slow_app):
    out = slow_app / "matrix.json"
    plain = "{python} -m gunicorn -b 127.0.0.1:{port} -w 1 --graceful-timeout 5 slowapp:app"
    args = ["--cmd", GUNICORN_WITH_LASTCALL, "--vs-cmd", plain, "--path", "/slow"]
    stops = ["--stop", "TERM"]
    result = drill("--matrix", *args, *stops, "--json", str(out), cwd=slow_app)
    assert result.returncode == 0, result.stdout + result.stderr
    results = {r["plan"]["plain"]: r for r in json.loads(out.read_text())}
    assert results[True]["plan"]["cmd"] == plain
    assert results[True]["dropped"] >= 1  # one sync worker: those queued are reset
    assert results[False]["problems"] == []
    assert "--vs-cmd: " + plain in result.stdout


# ---------------------------------------------------------------- lastcall.testing

USER_TESTS = """
from pathlib import Path

from lastcall.testing import drill


def test_stops_clean(lastcall_drill, tmp_path):
    result = lastcall_drill("slowapp:app", server="waitress")
    Path("clean.json").write_text(result.to_json())
    assert result.clean, result.verdict
    assert list(tmp_path.glob("lastcall-drill/*/report-*.json"))  # kept for the test to read


def test_plain_waitress_stops_clean():
    result = drill("slowapp:app", server="waitress", plain=True)
    Path("plain.json").write_text(result.to_json())
    assert result.clean, result.verdict
"""


def test_a_users_own_test_suite_uses_the_fixture_and_drill(slow_app):
    (slow_app / "test_mine.py").write_text(USER_TESTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LASTCALL_", "PYTEST_"))}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_mine.py"],
        capture_output=True, text=True, env=env, cwd=slow_app, timeout=120, check=False,
    )  # fmt: skip
    for name in ("clean.json", "plain.json"):
        leader = json.loads((slow_app / name).read_text())["leader"]
        assert live_processes_in_session(leader) == []
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed, 1 passed" in result.stdout
    assert "FAILED test_mine.py::test_plain_waitress_stops_clean" in result.stdout
    assert "unclean stop: 0/4 requests served, 0 refused, 4 dropped" in result.stdout


@pytest.mark.parametrize("module", ["demo_app", "demo_plain"])
def test_cmd_kill_parent_of_a_reloader(tmp_path, module):
    """``app.run(debug=True)`` under --cmd: SIGKILL to the reloader parent, the leader.

    Plain, the serving child goes on as an orphan (found, reported, ended by the
    drill); with lastcall it notices, drains and runs its hooks. Neither exits 0.
    """
    out = tmp_path / "drill.json"
    command = f"env PORT={{port}} {{python}} -m lastcall.cli.{module}"
    args = ["--cmd", command, "--stop", "KILL-PARENT", "--grace", "1", "--requests", "4"]
    result = drill(*args, "--json", str(out), cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads(out.read_text())
    (child,) = data["workers"]
    assert child != data["leader"]
    if module == "demo_plain":
        assert data["left_behind"] == [child]
        assert data["hooks_where"] == "unknown"
    else:
        assert data["problems"] == [] and data["left_behind"] == []
        assert {h["pid"] for h in data["hooks"]} == {child}
        assert data["verdict"].startswith("not a clean stop (no kill is one)")


def test_workers_each_drain_and_run_their_hooks(slow_app):
    out = slow_app / "drill.json"
    args = ["--server", "gunicorn-gthread", "--workers", "2", "--requests", "6"]
    result = drill("slowapp:app", *args, "--json", str(out), cwd=slow_app)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    assert len(data["workers"]) == 2 and data["leader"] not in data["workers"]
    assert {h["pid"] for h in data["hooks"]} == set(data["workers"])
    assert data["hooks_where"] == "child"


def test_a_drain_hook_that_says_ok_while_requests_were_lost_is_not_clean(slow_app):
    """Six requests of 0.5 s queue for one sync worker; a 1 s grace cannot serve them all."""
    out = slow_app / "drill.json"
    args = ["--server", "gunicorn", "--requests", "6", "--request-seconds", "0.5", "--grace", "1"]
    result = drill("slowapp:app", *args, "--json", str(out), cwd=slow_app)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "take 3 s, beyond the 1 s grace, so those still queued will be dropped" in (
        result.stdout
    )
    data = json.loads(out.read_text())
    assert data["dropped"] > 0 and data["verdict"].startswith("unclean stop: ")
    drains = [h["outcome"] for h in data["hooks"] if h["phase"] == "drain"]
    if "ok" in drains:  # the integration's own word: the drill puts the clients' beside it
        assert "although the drain hook reported ok" in data["verdict"]
        assert "ok by its own account;" in result.stdout


def test_cmd_on_a_fixed_port_given_as_port(tmp_path):
    """No {port} in COMMAND: --port says where it listens, and PORT tells the app."""
    port = free_port()
    out = tmp_path / "drill.json"
    command = "env NO_RELOAD=1 {python} -m lastcall.cli.demo_app"  # it reads PORT
    args = ["--cmd", command, "--port", str(port), "--requests", "4", "--json", str(out)]
    result = drill(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    assert data["port"] == port
    assert data["hooks_where"] == "server"  # its lastcall report, through LASTCALL_REPORT
    assert {short(h["name"]) for h in data["hooks"]} >= {"flush_orders", "close_db"}
