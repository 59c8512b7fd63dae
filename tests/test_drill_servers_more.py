"""``lastcall drill --server granian`` and ``--server daphne``: the demo's ASGI twin, and an APP.

granian is started as ``granian --interface asgi`` (``python -m lastcall.granian`` with
lastcall), daphne as ``daphne``, each on the drill's app; the drill's JSON says what the
clients and the processes saw. As shipped, granian's worker never runs the app's ``atexit``
hooks (it ends by ``os._exit``) and its master exits 0; daphne cancels every request in flight
(daphne#177) and exits 0. With lastcall both are clean.
"""

from __future__ import annotations

import json
import signal

import pytest
from conftest import MATRIX
from test_drill import DEMO_HOOKS, drill, fates, short, without_packages
from test_drill_inputs import refused

pytest.importorskip("granian")
pytest.importorskip("daphne")

SHORT = ("--requests", "4", "--request-seconds", "0.5")
STARLETTE_APP = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def hello(request):
    return PlainTextResponse("hello")


app = Starlette(routes=[Route("/", hello)])
"""


def drilled(tmp_path, *args: str, ok: bool = True) -> dict:
    out = tmp_path / "drill.json"
    result = drill(*args, *SHORT, "--json", str(out), cwd=tmp_path)
    assert (result.returncode == 0) is ok, result.stdout + result.stderr
    return json.loads(out.read_text())


def assert_clean(data: dict, *, stop: int = signal.SIGTERM) -> None:
    """Every request answered, new connections refused (never reset), exit by the signal.

    A new connection made before the stop reached the worker (granian's master passes it on;
    slowly on a loaded machine) is served, as it should be.
    """
    assert fates(data, "in flight") == ["200"] * 4, data["verdict"]
    late = fates(data, "late")
    assert late and set(late) <= {"refused", "200"}, data["verdict"]
    assert data["exit_status"] == 128 + stop
    assert data["problems"] == [] and data["left_behind"] == [], data["verdict"]


@pytest.mark.parametrize("server", ["granian", "daphne"])
def test_the_demo_on_granian_and_daphne_with_lastcall_is_clean(tmp_path, server):
    data = drilled(tmp_path, "--server", server)
    assert_clean(data)
    assert data["lost_writes"] == 0 and data["stored"] == data["acknowledged"] == 8
    hooks = data["hooks"]
    assert {h["pid"] for h in hooks} == {data["serving"]}
    assert {short(h["name"]) for h in hooks} >= {*DEMO_HOOKS, "asgi drain"}
    assert len(hooks) == len({h["name"] for h in hooks}), "a hook ran twice"
    assert data["hooks_where"] == ("child" if server == "granian" else "server")


def test_granian_as_shipped_loses_the_writes_and_exits_0(tmp_path):
    """granian drains on its own, but its worker ends by os._exit (multiprocessing): the
    demo's atexit flush never runs; and its master exits 0."""
    data = drilled(tmp_path, "--server", "granian", "--plain", ok=False)
    assert fates(data, "in flight") == ["200"] * 4, data["verdict"]
    assert data["hooks_where"] == "none"
    assert data["lost_writes"] == data["acknowledged"] == 8
    assert data["exit_status"] == 0


def test_daphne_as_shipped_cuts_every_request_in_flight(tmp_path):
    """daphne#177: kill_all_applications cancels what is in flight; exit 0."""
    data = drilled(tmp_path, "--server", "daphne", "--plain", ok=False)
    assert fates(data, "in flight") == ["reset"] * 4, data["verdict"]
    assert data["dropped"] == 4
    assert data["exit_status"] == 0


def test_granian_workers_each_drain_and_the_master_ends_by_sigint(tmp_path):
    data = drilled(tmp_path, "--server", "granian", "--workers", "2", "--stop", "INT")
    assert_clean(data, stop=signal.SIGINT)
    assert len(data["workers"]) == 2
    assert {h["pid"] for h in data["hooks"]} == set(data["workers"])


def test_granian_worker_ended_by_sys_exit_still_finishes_what_is_in_flight(tmp_path):
    """sys.exit on the worker's main thread ends the loop granian runs with run_until_complete;
    lastcall runs it again for the stop, so the requests on it finish (they hung for the whole
    drain budget and were lost before)."""
    data = drilled(tmp_path, "--server", "granian", "--stop", "EXIT")
    assert fates(data, "in flight") == ["200"] * 4, data["verdict"]
    assert data["problems"] == [] and data["lost_writes"] == 0
    assert data["stop_seconds"] < 3
    outcomes = {short(h["name"]): h["outcome"] for h in data["hooks"]}
    assert outcomes["the app's lifespan shutdown"] == "ok", outcomes


@pytest.mark.parametrize("stop", ["EXIT", "EXCEPTION"])
def test_daphne_ended_on_its_main_thread_still_answers_what_is_in_flight(tmp_path, stop):
    """sys.exit or an unhandled exception ends Twisted's reactor loop: lastcall turns it on
    until what is in flight is answered and Twisted has written it, its ports closed first.
    Before, daphne's ports kept accepting, and the answers still in Twisted's buffers and the
    connections accepted meanwhile were lost at the exit."""
    data = drilled(tmp_path, "--server", "daphne", "--stop", stop)
    assert fates(data, "in flight") == ["200"] * 4, data["verdict"]
    assert set(fates(data, "late")) <= {"refused", "200"}, data["verdict"]
    assert data["problems"] == [] and data["lost_writes"] == 0


@pytest.mark.parametrize("plain", [True, False])
def test_granian_master_sigkilled_leaves_no_worker_behind_with_lastcall(tmp_path, plain):
    """As shipped, the worker serves on as an orphan (ended by the drill, reported)."""
    plain_flag = ["--plain"] * plain
    data = drilled(tmp_path, "--server", "granian", "--stop", "KILL-PARENT", *plain_flag, ok=False)
    assert data["exit_status"] == 128 + signal.SIGKILL
    if plain:
        assert len(data["left_behind"]) == 1 and data["hooks_where"] == "none"
    else:
        assert data["left_behind"] == [] and data["hooks_where"] == "child"
        assert fates(data, "in flight") == ["200"] * 4 and data["lost_writes"] == 0


@pytest.mark.parametrize("server", ["granian", "daphne"])
def test_a_users_starlette_app_is_wrapped_and_drilled_clean(tmp_path, server):
    pytest.importorskip("starlette")
    (tmp_path / "starapp.py").write_text(STARLETTE_APP)
    data = drilled(tmp_path, "starapp:app", "--server", server)
    assert_clean(data)
    assert "asgi drain" in [short(h["name"]) for h in data["hooks"]]


@pytest.mark.parametrize("server", ["granian", "daphne"])
def test_a_server_that_is_not_installed_names_its_extra(tmp_path, server):
    python, env = without_packages(tmp_path, (server,))
    result = drill("--server", server, python=python, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"lastcall: error: {server} is not installed: pip install 'lastcall[{server}]'"
    )


def test_a_wsgi_app_is_refused_on_granian_at_once(tmp_path):
    (tmp_path / "wsgiapp.py").write_text(
        "def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'']\n"
    )
    line = refused(tmp_path, "wsgiapp:app", "--server", "granian")
    assert line.startswith("lastcall: error: APP 'wsgiapp:app' is a WSGI app; granian serves")


@MATRIX
def test_matrix_runs_granian_and_daphne_when_installed(tmp_path):
    """Every server but Werkzeug, granian and daphne hidden: the matrix runs those four, and
    marks granian's and daphne's plain cells where they fall short, none of lastcall's."""
    hidden = ("gunicorn", "waitress", "uvicorn", "hypercorn", "aiohttp", "tornado", "grpc")
    python, env = without_packages(tmp_path, hidden)
    out = tmp_path / "matrix.json"
    args = ["--stop", "TERM", "--json", str(out)]
    result = drill("--matrix", *args, python=python, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {
        (r["plan"]["server"], r["plan"]["stop"], r["plan"]["plain"]): r
        for r in json.loads(out.read_text())
    }
    assert {server for server, _, _ in rows} == {"werkzeug", "werkzeug-reload", "granian", "daphne"}
    assert rows["granian", "TERM", True]["exit_status"] == 0
    assert rows["daphne", "TERM", True]["dropped"] == 4
    for (server, stop, plain), r in rows.items():
        if not plain:
            assert r["left_behind"] == [] and r["dropped"] == 0, (server, stop, r["verdict"])
            assert r["lost_writes"] == 0 and "reset" not in fates(r, "late"), r["verdict"]
