"""The matrix and the drill say what they did: the app's kind decides its servers, a stop the
command answers by reloading is n/a, a reset new connection has a column of its own, and the
app's log reaches the person drilling.
"""

from __future__ import annotations

import json
import signal
import time

from conftest import MATRIX
from rich.console import Console
from test_drill import drill, fates, matrix_results, short, without_packages
from test_drill_any_app import GUNICORN_WITH_LASTCALL, SLOW_APP
from test_drill_inputs import QUICK, refused

from lastcall.cli import render
from lastcall.cli.clients import RequestRecord, classify
from lastcall.cli.matrix import Row
from lastcall.cli.plan import Plan
from lastcall.cli.result import Result
from lastcall.cli.servers import installed
from lastcall.testing import drill as drill_function

ASGI_APP = "async def app(scope, receive, send):\n    pass\n"
AIOHTTP_APP = """
from aiohttp import web

async def hello(request):
    return web.Response(text="hello")

app = web.Application()
app.add_routes([web.get("/", hello)])
"""


def test_an_asgi_app_on_gunicorn_is_one_line_at_once(tmp_path):
    """Before: gunicorn's worker failed to load it, again and again, and after 15 s the drill
    said the app "did not answer". Now the app is imported once, up front."""
    (tmp_path / "asgiapp.py").write_text(ASGI_APP)
    line = refused(tmp_path, "asgiapp:app", "--server", "gunicorn")
    assert "APP 'asgiapp:app' is an ASGI app; gunicorn serves WSGI apps" in line
    assert "--server uvicorn" in line


def test_the_function_refuses_an_app_of_the_wrong_kind_at_once(tmp_path, monkeypatch):
    (tmp_path / "asgiapp.py").write_text(ASGI_APP)
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    try:
        drill_function("asgiapp:app", server="gunicorn", directory=tmp_path / "kept")
    except ValueError as exc:
        assert "is an ASGI app; gunicorn serves WSGI apps" in str(exc)
    else:
        raise AssertionError("an ASGI app on gunicorn was drilled")
    assert time.monotonic() - started < QUICK
    assert not (tmp_path / "kept").exists()  # nothing started


@MATRIX
def test_matrix_of_a_wsgi_app_without_server_runs_the_servers_that_serve_it(tmp_path):
    """The README's `lastcall drill --matrix APP`: the WSGI servers run, the ASGI ones are
    named as skipped; a table and --json, exit 0 (every lastcall cell clean)."""
    (tmp_path / "slowapp.py").write_text(SLOW_APP)
    out = tmp_path / "matrix.json"
    # 4 requests of 0.5 s: 2 s in series on gunicorn's one sync worker, within the grace
    args = ["--stop", "TERM", "--grace", "5", "--json", str(out)]
    result = drill("--matrix", "slowapp:app", *args, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    wsgi = {s.name for s in installed() if s.kind == "wsgi"}
    others = [s.name for s in installed() if s.kind != "wsgi"]
    ran = {r["plan"]["server"] for r in json.loads(out.read_text())}
    assert ran == wsgi
    assert f"note: slowapp:app is a WSGI app; the matrix skips {', '.join(others)}" in result.stdout
    assert "lastcall drill --matrix: slowapp:app" in result.stdout


@MATRIX
def test_matrix_of_two_gunicorn_commands_shows_reload_and_replace_as_na(tmp_path):
    """gunicorn reloads on SIGHUP and replaces a killed worker: n/a, as in APP mode, not a
    failure of lastcall; the matrix of two gunicorn commands can exit 0."""
    (tmp_path / "slowapp.py").write_text(SLOW_APP)
    out = tmp_path / "matrix.json"
    plain = "{python} -m gunicorn -b 127.0.0.1:{port} -w 2 --graceful-timeout 5 slowapp:app"
    args = ["--cmd", GUNICORN_WITH_LASTCALL, "--vs-cmd", plain, "--path", "/slow"]
    result = drill("--matrix", *args, "--json", str(out), cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    ran = {(r["plan"]["stop"], r["plan"]["plain"]) for r in json.loads(out.read_text())}
    assert {stop for stop, _ in ran} == {"TERM", "INT", "KILL-PARENT"}
    rows = {line.split("│")[2].strip(): line for line in result.stdout.splitlines() if "│" in line}
    for stop in ("SIGHUP", "SIGKILL to the serving process"):
        assert rows[stop].count("n/a") == 14, rows[stop]  # 7 columns, both commands
    assert "is not a stop for this command" in result.stdout


def test_the_apps_log_is_kept_beside_json_and_its_warnings_shown(tmp_path):
    (tmp_path / "warns.py").write_text(
        "import warnings\n"
        "warnings.warn('SECRET_KEY is not set: sessions will not survive a restart')\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'ok']\n"
    )
    out = tmp_path / "drill.json"
    args = ["--requests", "2", "--request-seconds", "0.3", "--json", str(out)]
    result = drill("warns:app", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    said = "UserWarning: SECRET_KEY is not set"
    assert any(said in line for line in json.loads(out.read_text())["warnings"])
    assert f"the app warned: {tmp_path / 'warns.py'}" in result.stdout
    (log,) = (tmp_path / "drill-logs").glob("*/app.log")
    assert said in log.read_text()
    assert json.loads(out.read_text())["directory"] == str(log.parent)
    assert f"the app's log and reports are kept in {tmp_path / 'drill-logs'}" in result.stdout


# ---------------------------------------------------------------- what each column counts


def _result(records: list[RequestRecord], plain: bool) -> Result:
    return Result(
        plan=Plan(server="werkzeug", stop="TERM", plain=plain, requests=1),
        port=1,
        leader=10,
        serving=10,
        workers=[10],
        stop_sent=1.0,
        ended=2.0,
        exit_status=143,
        stop_seconds=1.0,
        requests=records,
        hooks_known=False,
    )


def test_a_refused_connection_is_never_in_flight_at_the_stop():
    """A --cmd client that asked again just as the stop went out was refused: it made a new
    connection after the stop, and counts there (refused: fine), not as in flight."""
    records = [
        RequestRecord(0, "in flight", 0.5, 0.9, "200"),  # answered before the stop
        RequestRecord(1, "in flight", 0.9, 1.2, "200"),
        RequestRecord(2, "in flight", 0.99, 1.01, "refused"),
    ]
    classify(records, stop_sent=1.0)
    assert [r.kind for r in records] == ["before", "in flight", "late"]


def test_a_reset_new_connection_is_marked_under_reset_not_dropped():
    """Before: the cell read `✗ 0` under `dropped`, the failure being elsewhere."""
    records = [
        RequestRecord(0, "in flight", 0.5, 1.5, "200"),
        RequestRecord(1, "late", 1.1, 1.1, "reset"),
        RequestRecord(2, "late", 1.2, 1.2, "refused"),
    ]
    row = Row("werkzeug", "TERM", plain=_result(records[:1], plain=True))
    row.lastcall = _result(records, plain=False)
    assert Row.failures(row.lastcall) == ["reset"]
    table = render.matrix_table([row], Plan())
    console = Console(width=400, record=True)
    console.print(table)
    text = console.export_text()
    header = [line for line in text.splitlines() if "dropped" in line]
    assert header and "reset" in header[0]
    (cells,) = [line for line in text.splitlines() if "SIGTERM" in line]
    values = [cell.strip() for cell in cells.split("│")[3:-1]]
    names = ["dropped", "reset", "hooks", "orphans", "lost", "stop", "exit"]
    lastcall = dict(zip(names, values[len(names) :], strict=True))
    assert lastcall["dropped"] == "0"
    assert lastcall["reset"] == "✗ 1"


# ---------------------------------------------------------------- aiohttp and tornado


@MATRIX
def test_matrix_on_aiohttp_and_tornado_shows_what_each_does_as_shipped(tmp_path):
    """The demo's aiohttp and tornado twins, plain (``atexit``) beside lastcall.

    As shipped: tornado installs no signal handler, so SIGTERM kills it with every request in
    flight (reset) and the write-behind buffer unflushed; aiohttp drains on SIGTERM but exits
    0, so a supervisor cannot tell it stopped as asked; neither handles SIGHUP, which kills
    both the same way. With lastcall every cell is clean.
    """
    term, shown = matrix_results(
        "--server", "aiohttp", "--server", "tornado", "--stop", "TERM", str(tmp_path / "t.json")
    )
    hup, _ = matrix_results("--server", "aiohttp", "--stop", "HUP", str(tmp_path / "h.json"))
    tornado = term["tornado", "TERM", True]
    assert fates(tornado, "in flight") == ["reset"] * 4, tornado["verdict"]
    assert tornado["hooks_where"] == "none"
    assert tornado["lost_writes"] == tornado["acknowledged"] == 4  # all, before the stop too
    aiohttp = term["aiohttp", "TERM", True]
    assert aiohttp["dropped"] == 0 and aiohttp["lost_writes"] == 0, aiohttp["verdict"]
    assert aiohttp["exit_status"] == 0
    assert any("exited 0, not by SIGTERM (143)" in p for p in aiohttp["problems"])
    hung_up = hup["aiohttp", "HUP", True]
    assert fates(hung_up, "in flight") == ["reset"] * 4, hung_up["verdict"]
    assert hung_up["lost_writes"] == hung_up["acknowledged"] == 4

    for (server, stop, plain), r in {**term, **hup}.items():
        if plain:
            continue
        assert r["problems"] == [], (server, stop, r["verdict"])
        assert r["served"] == 4 and r["lost_writes"] == 0 and r["left_behind"] == []
        assert r["hooks_where"] == "server"
        assert r["exit_status"] == 128 + (signal.SIGTERM if stop == "TERM" else signal.SIGHUP)
    assert "✗" in shown.stdout


def test_an_aiohttp_app_is_drilled_on_aiohttp_and_refused_elsewhere_at_once(tmp_path):
    """A user's own aiohttp app: served by web.run_app with LastCall(app), clean; named as
    the wrong kind for a WSGI server in one line, with the server that serves it."""
    (tmp_path / "aioapp.py").write_text(AIOHTTP_APP)
    out = tmp_path / "drill.json"
    args = ["--requests", "4", "--request-seconds", "0.3", "--json", str(out)]
    result = drill("aioapp:app", "--server", "aiohttp", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    assert data["served"] == 4 and data["exit_status"] == 128 + signal.SIGTERM
    assert [short(h["name"]) for h in data["hooks"]] == ["aiohttp drain", "aiohttp on_cleanup"]
    line = refused(tmp_path, "aioapp:app", "--server", "gunicorn")
    assert line.endswith(
        "APP 'aioapp:app' is an aiohttp app; gunicorn serves WSGI apps: use --server aiohttp"
    )


@MATRIX
def test_matrix_names_the_servers_it_skips_as_not_installed(tmp_path):
    """Every server but Werkzeug hidden for real (see test_drill's not-installed test): the
    matrix runs Werkzeug's two and says, per server, what is missing and its extra."""
    hidden = ("gunicorn", "waitress", "uvicorn", "hypercorn", "granian", "daphne", "aiohttp")
    hidden += ("tornado", "grpc")
    python, env = without_packages(tmp_path, hidden)
    out = tmp_path / "matrix.json"
    args = ["--stop", "TERM", "--requests", "2", "--request-seconds", "0.3", "--json", str(out)]
    result = drill("--matrix", *args, python=python, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {r["plan"]["server"] for r in json.loads(out.read_text())} == {
        "werkzeug",
        "werkzeug-reload",
    }
    servers = ("gunicorn", "gunicorn-gthread", "waitress", "uvicorn", "hypercorn", *hidden[-5:])
    for name in servers:
        extra = name.removesuffix("-gthread")
        said = (
            f"note: {name} is not installed: pip install 'lastcall[{extra}]'; the matrix skips it"
        )
        assert said in result.stdout, result.stdout
