"""gunicorn ``-k gevent`` under ``-c python:lastcall.gunicorn`` (Flask apps often run so).

Real masters, workers, signals and sockets, with ``test_gunicorn.py``'s app
and helpers: the app prints ``hook:app <pid>`` from its hook and ``slow
<pid>`` when a slow request (1 s of ``time.sleep``, which yields to gevent's
hub) starts.
"""

from __future__ import annotations

import signal
import time

import pytest
from conftest import WAIT
from test_gunicorn import (
    assert_drained_in_order,
    assert_no_worker_outlives_the_master,
    collect,
    get,
    hooks,
    send_slow,
    start,
    wait_lines,
    worker_pids,
)

pytest.importorskip("gevent")


@pytest.mark.parametrize("worker_class", ["gevent", "gevent_pywsgi"])
def test_sigterm_gives_readiness_red_then_refuses_and_finishes_in_flight(spawn, worker_class):
    """Steps: 2 gevent workers (gunicorn's own or gevent's pywsgi server), 4 requests of
    1 s in flight; SIGTERM to the master with a 1 s pre-stop delay. Readiness red in every
    worker while ``/`` and ``/livez`` still answer 200; then new connections are refused;
    all 4 get 200; each worker runs its hook once; the master ends by SIGTERM.
    """
    child = start(spawn, "-k", worker_class, env={"LASTCALL_PRESTOP_DELAY": "1"})
    assert get(child.port, "/readyz") == 200
    conns = send_slow(child.port, 4)
    wait_lines(child, "slow", 4, stream="stdout")
    results, threads = collect(conns)
    child.send(signal.SIGTERM)
    deadline = time.monotonic() + WAIT
    while get(child.port, "/readyz") != 503:
        assert time.monotonic() < deadline, child.output()
        time.sleep(0.02)
    # New connections go to either worker: each is red, and each still serves.
    assert [get(child.port, "/readyz") for _ in range(4)] == [503] * 4, child.output()
    assert get(child.port, "/") == 200
    assert get(child.port, "/livez") == 200
    assert_drained_in_order(child, results, threads, 4)


def test_sigterm_serves_what_the_backlog_holds(spawn):
    """Steps: 2 gevent workers of one connection each: 2 requests in flight, 2 queued
    in the listen backlog; SIGTERM to the master. All 4 get 200 (gunicorn alone
    closes the socket and resets the 2), then new connections are refused, and
    no worker prints gevent's EINVAL error when a sibling shuts the socket.
    """
    child = start(spawn, "-k", "gevent", "--worker-connections", "1")
    conns = send_slow(child.port, 4)
    wait_lines(child, "slow", 2, stream="stdout")  # both workers busy
    child.send(signal.SIGTERM)
    results, threads = collect(conns)
    assert_drained_in_order(child, results, threads, 4)
    assert not any("Traceback" in line or "EINVAL" in line for line in child.stderr)


def test_sigkill_to_the_master_leaves_no_worker_serving(spawn):
    child = start(spawn, "-k", "gevent")
    child.send(signal.SIGKILL)
    assert_no_worker_outlives_the_master(child)


def test_hup_reload_leaves_the_socket_to_the_new_workers(spawn):
    """A worker stopped alone (HUP reload) must not shut the socket its successors share."""
    child = start(spawn, "-k", "gevent")
    old = worker_pids(child)
    child.send(signal.SIGHUP)
    wait_lines(child, "ready; its shutdown hooks", 4)
    for pid in old:
        wait_lines(child, f"hook:app {pid}", 1, stream="stdout")
    assert [get(child.port, "/") for _ in range(4)] == [200] * 4, child.output()
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert sorted(hooks(child, "app")) == sorted(worker_pids(child))
