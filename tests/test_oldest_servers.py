"""The server tests again, against the oldest version of each server lastcall supports.

The default environment has the newest releases; this leg builds one with
the lower bounds of ``pyproject.toml`` (``tests/envs.py``) and runs the
server test files there, so a bound that stops being true fails here with
the inner run's output. The versions are the ``oldest`` ends of the ranges
in ``lastcall._servers.versions``; a test checks that the two agree.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from envs import ROOT, assert_passed, environment, run_tests

from lastcall._servers import versions

OLDEST = {
    "flask": "2.3.0",
    "werkzeug": "2.3.0",
    "gunicorn": "24.1.0",
    "waitress": "3.0.0",
    "uvicorn": "0.30.0",
    "uvicorn-worker": "0.2.0",
    "hypercorn": "0.16.0",
    "starlette": "0.37.0",
    "gevent": "24.10.1",
    "django": "4.2",
    "grpcio": "1.62.3",
    "grpcio-health-checking": "1.62.3",
    "celery": "5.7.0",
    "aiohttp": "3.9.0",
    "tornado": "6.3.3",
    "dramatiq": "1.17.0",
    "granian": "2.8.0",
    "daphne": "4.0.0",
    "rq": "2.0.0",
}
TOOLS = ["click>=8.1", "rich>=13", "httpx>=0.27"]
TOOLS += ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5"]
TOOLS += ["redis>=4.5"]  # celery's Redis client, for its broker in the worker tests
TOOLS += ["websockets>=12"]  # the WebSocket client of the aiohttp and tornado tests
TOOLS += ["pika>=1.3"]  # dramatiq's RabbitMQ client
SERVER_TESTS = [
    "tests/test_matrix.py",
    "tests/test_versions.py",
    "tests/test_adapters.py",
    "tests/test_gunicorn.py",
    "tests/test_uvicorn_worker.py",
    "tests/test_uvicorn_workers.py",
    "tests/test_waitress.py",
    "tests/test_asgi.py",
    "tests/test_flask_devserver.py",
    "tests/test_werkzeug_backlog.py",
    "tests/test_gunicorn_gevent.py",
    "tests/test_django.py",
    "tests/test_wsgiref.py",
    "tests/test_listener.py",
    "tests/test_gunicorn_asgi.py",
    "tests/test_unwrapped_apps.py",
    "tests/test_grpc.py",
    "tests/test_celery.py",
    "tests/test_aiohttp.py",
    "tests/test_tornado.py",
    "tests/test_celery_rabbitmq.py",
    "tests/test_dramatiq.py",
    "tests/test_granian.py",
    "tests/test_daphne.py",
    "tests/test_rq.py",
    "tests/test_celery_gevent.py",
]
# The drill's own files (test_drill_workers, test_drill_servers_more, test_drill_grpc) run on
# the newest releases only: they go through the same adapters, tested above, and the suite
# must stay under 15 minutes.


def test_oldest_versions_are_the_bounds_and_the_gates() -> None:
    """pyproject's lower bounds, this leg's pins and each adapter's tested range agree."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    for name, version in OLDEST.items():
        for bound in re.findall(rf'"{name}(?:\[[\w,]+\])?>=([\d.]+)"', text):
            assert version.startswith(bound), f"{name}>={bound} in pyproject, {version} here"
    gated = (versions.WERKZEUG, versions.GUNICORN, versions.WAITRESS, versions.UVICORN)
    workers = (versions.CELERY, versions.DRAMATIQ, versions.RQ)
    servers = (versions.GEVENT, versions.DJANGO, versions.GRPC, versions.AIOHTTP, versions.TORNADO)
    servers += (versions.GRANIAN, versions.DAPHNE)
    for tested in (*gated, *servers, *workers):
        assert OLDEST[tested.distribution].startswith(tested.oldest), tested
    assert OLDEST["hypercorn"].startswith(versions.HYPERCORN.oldest)


@pytest.mark.timeout(900)
def test_server_tests_on_the_oldest_versions() -> None:
    pins = [f"{name}=={version}" for name, version in OLDEST.items()]
    python = environment("oldest-servers", Path(sys.executable), [*pins, *TOOLS])
    leg = "server tests on the oldest versions (" + ", ".join(pins) + ")"
    assert_passed(run_tests(python, SERVER_TESTS, "-k", "not matrix_lastcall_cells_are_clean"), leg)
