"""``lastcall drill --worker``: the worker drill, through the command line, on real brokers.

Each drill starts a private redis-server and two real workers (A, stopped by a
real signal; B, started after it), enqueues the demo job and counts, from the
records each job writes in Redis, what became of every job. The tests read the
drill's JSON, never its prose, and check that nothing it started is left.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from brokers import redis_server  # noqa: F401  # the fixture
from conftest import WAIT
from test_drill import drill
from test_drill_cleanup import carrying, marked_drill

if TYPE_CHECKING:
    from brokers import Redis

FRAMEWORKS = ["rq", "celery", "dramatiq"]
GRACE = 3.0
QUICK = ["--jobs", "3", "--job-seconds", "0.3", "--grace", str(GRACE)]
JOBS = 3 + 2  # the short ones, the long one, the one enqueued during the stop
NONE_ELSE = {"completed twice": 0, "queued": 0, "held": 0, "running": 0, "lost": 0}


def worker_drill(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    """The drill's exit status, its JSON, its output; its redis-server is gone after."""
    out = tmp_path / "drill.json"
    result = drill(*args, "--json", str(out))
    said = result.stdout + result.stderr
    assert out.exists(), said
    for pid in re.findall(r"a private redis-server \(pid (\d+)\)", result.stderr):
        assert not Path(f"/proc/{pid}").exists(), f"redis-server {pid} left running"
    return result.returncode, json.loads(out.read_text()), said


def runs(job: dict[str, Any]) -> list[tuple[str, bool]]:
    """Each run of a job: in which worker, and whether it completed."""
    return [(run["worker"], run["completed"] is not None) for run in job["runs"]]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_with_lastcall_every_job_completes_once_and_the_worker_ends_by_the_signal(
    tmp_path: Path, framework: str
) -> None:
    """SIGTERM while jobs run: none lost, none twice, the long one put back and done by B.

    Worker A finishes its short jobs, starts no other, puts the long one back at the
    end of its budget and exits by SIGTERM within the grace; the demo's hook runs once.
    """
    pytest.importorskip(framework)
    status, data, said = worker_drill(tmp_path, "--worker", framework, *QUICK)
    assert status == 0, said
    assert data["clean"], data["verdict"]
    assert data["outcomes"] == {"completed once": JOBS, **NONE_ELSE}, data["verdict"]
    assert data["started_late"] == 0
    assert data["exit_status"] == 128 + signal.SIGTERM
    assert data["left_behind"] == []
    assert data["stop_seconds"] < GRACE + 1.0
    long, *_, during = data["jobs"]
    assert (long["kind"], during["kind"]) == ("long", "during the stop")
    assert runs(long) == [("A", False), ("B", True)], long  # put back, completed by B
    assert runs(during) == [("B", True)], during  # A took nothing after the signal
    assert "requeued" in [j["outcome"] for j in data["reported_jobs"]]  # lastcall's account
    a_pids = {p["pid"] for p in data["processes"]}
    hooks = [(h["pid"], h["name"]) for h in data["hooks"] if h["name"].endswith("close_records")]
    assert len(hooks) == len(set(hooks)) >= 1, data["hooks"]  # once in each process it ran in
    assert {pid for pid, _ in hooks} <= a_pids


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_plain_shows_what_the_framework_does_as_shipped(tmp_path: Path, framework: str) -> None:
    """The same drill without lastcall: worker A waits for the long job past the grace.

    It is killed as an orchestrator would (SIGKILL), so it does not end by SIGTERM, and
    the long job is not back at once: lost (Celery acknowledged it as it started) or
    held for the dead worker until the broker's timeout (RQ's StartedJobRegistry,
    Dramatiq's ack set).
    """
    pytest.importorskip(framework)
    status, data, said = worker_drill(tmp_path, "--worker", framework, "--plain", *QUICK)
    assert status == 1, said
    assert not data["clean"]
    assert data["left_behind"], data["verdict"]  # still running when the grace was up
    assert data["exit_status"] != 128 + signal.SIGTERM
    long = data["jobs"][0]
    assert long["outcome"] in ("held", "lost"), long
    assert ("B", True) not in runs(long)  # never back on its queue for worker B
    assert data["reported_jobs"] == []  # no lastcall in it


def test_a_second_sigint_ends_at_once_with_every_job_back(tmp_path: Path) -> None:
    """Ctrl-C twice, 0.5 s apart, on RQ (which alone ignores a second signal within 1 s)."""
    pytest.importorskip("rq")
    args = ["--worker", "rq", "--stop", "INT-INT", *QUICK, "--grace", "20"]
    status, data, said = worker_drill(tmp_path, *args)
    assert status == 0, said
    assert data["outcomes"] == {"completed once": JOBS, **NONE_ELSE}, data["verdict"]
    assert data["exit_status"] == 128 + signal.SIGINT
    assert data["stop_seconds"] < 3.0  # at once, not at the end of the 20 s grace


def test_dramatiq_ends_130_after_sigint_to_its_main_process(tmp_path: Path) -> None:
    """Dramatiq's INT cell, run as the docs say (``python -m lastcall.dramatiq``): clean, 130.

    Plain ``dramatiq`` would exit 143: its main process forwards SIGINT as SIGTERM.
    """
    pytest.importorskip("dramatiq")
    status, data, said = worker_drill(tmp_path, "--worker", "dramatiq", "--stop", "INT", *QUICK)
    assert status == 0, said
    assert data["clean"], data["verdict"]
    assert data["outcomes"] == {"completed once": JOBS, **NONE_ELSE}, data["verdict"]
    assert data["exit_status"] == 128 + signal.SIGINT


def test_a_users_worker_command_on_its_broker(tmp_path: Path, redis_server: Redis) -> None:  # noqa: F811
    """--cmd and --broker: the user's own worker command on their Redis, {broker} filled in.

    RQ imports the demo job by name.
    """
    pytest.importorskip("rq")
    cmd = "{python} -m rq.cli worker --url {broker} --worker-class lastcall.rq.SimpleWorker"
    args = ["--worker", "rq", "--cmd", cmd, "--broker", redis_server.url, *QUICK]
    status, data, said = worker_drill(tmp_path, *args)
    assert status == 0, said
    assert "private redis-server" not in said
    assert data["outcomes"] == {"completed once": JOBS, **NONE_ELSE}, data["verdict"]
    assert data["exit_status"] == 128 + signal.SIGTERM


def test_a_start_counts_late_from_a_moment_after_the_signal_and_only_in_worker_a() -> None:
    """``started_late``: a job worker A began over ``TAKEN_AT_THE_SIGNAL`` after the signal.

    A start within that moment is one the worker took as the signal came; worker B's
    starts are the takeover, never late.
    """
    from lastcall.cli.worker_plan import WorkerPlan
    from lastcall.cli.worker_result import TAKEN_AT_THE_SIGNAL, JobRecord, Run, WorkerResult

    def job(n: int, worker: str, started: float) -> JobRecord:
        return JobRecord(n, str(n), "short", 0.3, 0.0, [Run(1, worker, started, started + 0.3)])

    sent, moment = 10.0, TAKEN_AT_THE_SIGNAL
    jobs = [job(0, "A", sent - 1), job(1, "A", sent + moment / 2), job(2, "B", sent + 5)]
    result = WorkerResult(WorkerPlan(), 1, 2, sent, sent + 6, 143, 1.0, [], jobs, [], [], [], [])
    assert result.started_late() == 0 and "late" not in result.failures()
    jobs.append(job(3, "A", sent + moment * 1.5))
    assert result.started_late() == 1
    assert result.failures()["late"] == "1 started in worker A after the signal"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--worker", "rq", "tasks:app"], "--worker takes no APP"),
        (["--worker", "rq", "--broker", "amqp://guest@127.0.0.1//"], "rq runs on Redis only"),
        (["--worker", "rq", "--broker", "rabbitmq"], "rq runs on Redis only"),
        (["--worker", "celery", "--broker", "ftp://host/"], "neither a Redis nor an AMQP URL"),
        (["--worker", "celery", "--pool", "eventlet"], "not one of celery's; choose one of"),
        (["--worker", "rq", "--pool", "threads"], "not one of rq's; choose one of fork, simple"),
        (["--worker", "dramatiq", "--pool", "solo"], "not one of dramatiq's"),
        (["--worker", "rq", "--pool", "fork", "--pool", "simple"], "one --pool for a single"),
        (
            ["--worker", "rq", "--pool", "simple", "--cmd", "rq worker --url {broker}"],
            "write its pool in COMMAND",
        ),
        (["--worker", "rq", "--acks-late"], "--acks-late is Celery's task_acks_late"),
        (
            [
                "--worker",
                "celery",
                "--broker",
                "amqp://guest@127.0.0.1//",
                "--cmd",
                "celery -A tasks -b {broker} worker",
            ],
            "add -n {name}@%h to COMMAND",
        ),
        (["--worker", "rq", "--matrix", "--pool", "solo"], "not one of rq's"),
        (["--pool", "solo"], "--pool goes with --worker"),
        (["--acks-late"], "--acks-late goes with --worker"),
        (["--worker", "rq", "--broker", "redis://127.0.0.1:1/0"], "no Redis answers there"),
        (["--worker", "rq", "--cmd", "rq worker"], "--cmd has no {broker}"),
        (["--worker", "rq", "--server", "gunicorn"], "--server is for a server's drill"),
        (["--stop", "INT-INT"], "is a worker drill's stop: add --worker"),
        (["--worker", "rq", "--stop", "HUP"], "not a worker drill's stop"),
        (["--worker", "all"], "--worker all goes with --matrix"),
        (["--worker", "rq", "--matrix", "--plain"], "leave out --cmd and --plain"),
        (["--jobs", "3"], "--jobs goes with --worker"),
    ],
)
def test_bad_input_is_one_line(args: list[str], words: str) -> None:
    result = drill(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("lastcall: error: ") and words in line, line


def test_a_cmd_that_cannot_start_is_one_error_line_and_status_2() -> None:
    """The private broker is up by then (its line comes first): one error line, exit 2."""
    result = drill("--worker", "rq", "--cmd", "no-such-program --url {broker} {name}")
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("lastcall: error:")]
    assert len(errors) == 1 and "--cmd cannot start 'no-such-program'" in errors[0], errors


def test_without_redis_server_one_line_says_how_to_get_one(tmp_path: Path) -> None:
    """No redis-server on PATH and no --broker: how to install it, or what to pass instead."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    assert shutil.which("redis-server", path=str(bin_dir)) is None
    result = drill("--worker", "rq", env={"PATH": str(bin_dir)})
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "apt-get install redis-server" in line and "--broker" in line, line


def test_ctrl_c_ends_the_workers_and_the_redis_server(tmp_path: Path) -> None:
    """Ctrl-C to the drill mid-way: every process it started, redis-server too, is ended."""
    pytest.importorskip("rq")
    with marked_drill(tmp_path, "--worker", "rq", "--job-seconds", "30", "--grace", "30") as proc:
        assert proc.stderr is not None
        lines: list[str] = []
        deadline = time.monotonic() + WAIT
        while not any("sent SIGTERM" in line for line in lines):
            assert time.monotonic() < deadline, "".join(lines)
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        assert len(carrying(proc.token)) >= 3  # redis-server and two workers at least
        os.kill(proc.pid, signal.SIGINT)
        _, rest = proc.communicate(timeout=WAIT)
        assert proc.returncode == 130, "".join(lines) + rest
        assert carrying(proc.token) == []


def test_the_matrix_puts_plain_beside_lastcall_for_each_pool(tmp_path: Path) -> None:
    """--matrix on RQ's two pools (--pool fork --pool simple) and one stop: four drills.

    A row per pool, as shipped and with lastcall. The exit status is lastcall's: 0,
    though the plain drills beside it are not clean. (--matrix without --pool runs
    every installed pool of the framework: here the same two.)
    """
    pytest.importorskip("rq")
    args = ["--worker", "rq", "--matrix", "--stop", "TERM", "--pool", "fork", "--pool", "simple"]
    status, data, said = worker_drill(tmp_path, *args, *QUICK)
    assert status == 0, said
    seen = sorted((d["plan"]["pool"], d["plan"]["plain"], d["clean"]) for d in data)
    assert seen == [("fork", False, True), ("fork", True, False),
                    ("simple", False, True), ("simple", True, False)]  # fmt: skip
    assert {d["plan"]["stop"] for d in data} == {"TERM"}
    assert re.search(r"│ rq +│ simple +│ TERM", said), said  # the table's pool column


def test_the_fixture_drills_a_worker_in_the_users_own_test(lastcall_drill_worker: Any) -> None:
    """The pytest fixture: lastcall.testing.drill_worker, its files under tmp_path."""
    pytest.importorskip("rq")
    result = lastcall_drill_worker("rq", jobs=2, job_seconds=0.3)
    assert result.clean, result.verdict
    assert result.outcomes == {"completed once": 4, **NONE_ELSE}
    assert result.exit_status == 128 + signal.SIGTERM
    assert json.loads(result.to_json())["clean"] is True
    with pytest.raises(ValueError, match="--stop HUP is not a worker drill's stop"):
        lastcall_drill_worker("rq", stop="HUP")
