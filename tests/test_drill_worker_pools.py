"""``lastcall drill --worker``'s choices: ``--pool``, ``--broker rabbitmq``, ``--acks-late``.

Real workers on real brokers (a private redis-server, a private RabbitMQ
node the drill boots itself), stopped by real signals; the tests read the
drill's JSON. Each would fail without its option: the pool shows in where
the jobs ran (the worker's main process, or processes of its own), the
broker in the node the drill started and stopped, ``acks_late`` in which
jobs a SIGKILL loses. The matrix over pools is ``test_drill_workers.py``'s
(RQ's two pools, one stop: 4 drills); ``--matrix`` alone runs every installed
pool of every framework on every stop, minutes, not a test's seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_drill_workers import JOBS, NONE_ELSE, QUICK, worker_drill

from lastcall.cli.broker import RABBITMQ_NOT_INSTALLED

RABBITMQ = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


def runs_in(data: dict[str, Any], worker: str) -> set[int]:
    """The pids in which ``worker`` (A or B) ran jobs."""
    return {run["pid"] for job in data["jobs"] for run in job["runs"] if run["worker"] == worker}


def nodes_gone(tmp_path: Path) -> int:
    """Every RabbitMQ node the drill booted (its files kept beside --json) has ended; how many.

    Every process of a node has its directory in its environment.
    """
    nodes = list(tmp_path.glob("**/rabbitmq/mnesia"))
    assert nodes, "no RabbitMQ node was started"
    mine = str(tmp_path).encode()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and mine in (entry / "environ").read_bytes():
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                assert state in ("Z", "X"), f"pid {entry.name} of a RabbitMQ node left running"
    return len(nodes)


@pytest.mark.parametrize(
    ("framework", "pool", "module"),
    [
        ("celery", "solo", "celery"),
        ("celery", "threads", "celery"),
        ("celery", "gevent", "gevent"),
        ("rq", "simple", "rq"),
        ("dramatiq", "processes", "dramatiq"),
    ],
)
def test_each_pool_runs_the_jobs_its_own_way_and_stops_clean(
    tmp_path: Path, framework: str, pool: str, module: str
) -> None:
    """SIGTERM with lastcall on each pool: clean, and the jobs ran where that pool runs them.

    solo, threads, gevent and RQ's SimpleWorker run every job in worker A's main
    process (the default prefork pool and RQ's work horse never do); Dramatiq's
    ``processes`` runs two worker processes (its default ``threads``: one).
    """
    pytest.importorskip(framework)
    pytest.importorskip(module)
    args = ["--worker", framework, "--pool", pool, *QUICK]
    status, data, said = worker_drill(tmp_path, *args)
    assert status == 0, said
    assert data["plan"]["pool"] == pool
    assert data["clean"], data["verdict"]
    assert data["outcomes"] == {"completed once": JOBS, **NONE_ELSE}, data["verdict"]
    assert data["exit_status"] == 128 + signal.SIGTERM
    ran_in_a = runs_in(data, "A")
    if framework == "dramatiq":
        assert data["worker_a"] not in ran_in_a
        hooks = {h["pid"] for h in data["hooks"] if h["name"].endswith("close_records")}
        assert len(hooks) == 2, data["hooks"]  # one hook per worker process, two processes
    else:
        assert ran_in_a == {data["worker_a"]}, data["jobs"]


@pytest.mark.skipif(not RABBITMQ.exists(), reason="apt-get install rabbitmq-server")
def test_a_celery_matrix_on_one_private_rabbitmq_node(tmp_path: Path) -> None:
    """--matrix --broker rabbitmq: the drill boots one node, a queue per drill, both ways.

    As shipped, worker A waits for the long job past the grace and is killed. With
    lastcall the long job goes back by ``basic_reject(requeue)`` and worker B runs
    it, and the job enqueued during the stop runs in B only. The node is gone after.
    """
    pytest.importorskip("celery")
    args = ["--worker", "celery", "--matrix", "--stop", "TERM", "--pool", "prefork",
            "--broker", "rabbitmq"]  # fmt: skip
    status, data, said = worker_drill(tmp_path, *args, *QUICK)
    plain, lastcall = sorted(data, key=lambda d: not d["plan"]["plain"])
    assert status == 0, said  # the matrix's status follows its lastcall cells
    assert {plain["plan"]["queue"], lastcall["plan"]["queue"]} == {"celery-0", "celery-1"}
    assert lastcall["plan"]["broker"].startswith("amqp://guest:guest@127.0.0.1:")
    assert plain["left_behind"], plain["verdict"]  # as shipped: past the grace
    assert lastcall["clean"] and not lastcall["failures"], lastcall["verdict"]
    assert lastcall["outcomes"] == {"completed once": JOBS, **NONE_ELSE}, lastcall["verdict"]
    long, *_, during = lastcall["jobs"]
    assert [r["worker"] for r in long["runs"]] == ["A", "B"], long
    assert [r["worker"] for r in during["runs"]] == ["B"], during
    assert nodes_gone(tmp_path) == 1  # one node for both drills


@pytest.mark.skipif(not RABBITMQ.exists(), reason="apt-get install rabbitmq-server")
def test_dramatiq_on_a_private_rabbitmq_node(tmp_path: Path) -> None:
    """--broker rabbitmq on Dramatiq: every job completed once, exit by SIGTERM, node gone."""
    pytest.importorskip("dramatiq")
    status, data, said = worker_drill(tmp_path, "--worker", "dramatiq", "--broker", "rabbitmq",
                                      *QUICK)  # fmt: skip
    assert "a private rabbitmq-server (pid" in said
    assert data["outcomes"] == {"completed once": JOBS, **NONE_ELSE}, data["verdict"]
    assert data["exit_status"] == 128 + signal.SIGTERM, data["verdict"]
    assert status == 0 and data["clean"], data["verdict"]
    long = data["jobs"][0]
    assert [r["worker"] for r in long["runs"]] == ["A", "B"], long
    assert nodes_gone(tmp_path) == 1


@pytest.mark.parametrize("acks_late", [True, False], ids=["acks-late", "acks-early"])
def test_a_sigkill_loses_no_running_job_with_or_without_acks_late(
    tmp_path: Path, acks_late: bool
) -> None:
    """SIGKILL to Celery's worker while its jobs run (prefork, Redis, lastcall).

    With --acks-late the running jobs' messages are still the broker's, and the
    last-resort watcher puts them back; without it Celery acknowledged each as it
    started, and the watcher publishes it again from the copy the worker kept. Either
    way worker B completes each once. (The job enqueued just after the SIGKILL is left
    out: on Redis it can meet worker A's BRPOP still outstanding in the dying process,
    which takes it off the list.)
    """
    pytest.importorskip("celery")
    # Jobs of 1.5 s: still running at the SIGKILL, 0.25 s after the first began.
    args = ["--worker", "celery", "--stop", "KILL", *QUICK, "--job-seconds", "1.5"]
    _, data, said = worker_drill(tmp_path, *args, *(["--acks-late"] if acks_late else []))
    assert data["plan"]["acks_late"] is acks_late, said
    running = [job for job in data["jobs"] if job["kind"] != "during the stop"]
    assert all(job["runs"][0]["worker"] == "A" for job in running), running
    assert {job["outcome"] for job in running} == {"completed once"}, data["verdict"]
    assert {run["worker"] for job in running for run in job["runs"][1:]} == {"B"}


def test_without_rabbitmq_server_one_line_says_how_to_get_one(tmp_path: Path) -> None:
    """--broker rabbitmq where Debian's rabbitmq-server is not installed: how to install it.

    The drill runs in a process of its own that points the server's path at a file
    that does not exist, as on a machine without the package.
    """
    pytest.importorskip("celery")
    code = (
        "import sys; from lastcall.cli import broker; "
        f"broker.RABBITMQ_SERVER = {str(tmp_path / 'absent')!r}; "
        "from lastcall.cli import main; sys.argv = ['lastcall', 'drill', '--worker', 'celery', "
        "'--broker', 'rabbitmq']; main()"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LASTCALL_")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line == f"lastcall: error: {RABBITMQ_NOT_INSTALLED}", line
    assert "apt-get install rabbitmq-server" in line
    assert not (tmp_path / "absent").exists()


def test_the_fixture_takes_the_pool_and_acks_late(lastcall_drill_worker: Any) -> None:
    """lastcall.testing.drill_worker: ``pool`` and ``acks_late``, one line for a bad one."""
    pytest.importorskip("rq")
    with pytest.raises(ValueError, match="--pool prefork is not one of rq's"):
        lastcall_drill_worker("rq", pool="prefork")
    with pytest.raises(ValueError, match="--acks-late is Celery's"):
        lastcall_drill_worker("rq", acks_late=True)
    result = lastcall_drill_worker("rq", pool="simple", jobs=2, job_seconds=0.3)
    assert result.clean, result.verdict
    assert result.result.plan.pool == "simple"
