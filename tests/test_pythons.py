"""The core's tests on every other supported Python this machine has (3.10, 3.12, 3.13).

The default interpreter runs the whole suite; these legs run the core's
test files again under each other version, in an environment of their
own (``tests/envs.py``). A version missing here is skipped with its reason.
"""

from __future__ import annotations

import pytest
from envs import assert_passed, environment, require_python, run_tests

CORE_TESTS = [
    "tests/test_coordinator.py",
    "tests/test_process_triggers.py",
    "tests/test_stops_end.py",
    "tests/test_stop_needs_nothing.py",
    "tests/test_report_path.py",
    "tests/test_overrun.py",
    "tests/test_health_port.py",
    "tests/test_asyncio_apps.py",
    "tests/test_lastresort.py",
    "tests/test_listener.py",
]
REQUIREMENTS = [
    *("click>=8.1", "rich>=13", "httpx>=0.27"),  # conftest finds processes with the drill's code
    *("pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "gevent>=24.2", "uvloop>=0.19"),
]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("version", ["3.10", "3.12", "3.13"])
def test_core_on_python(version: str) -> None:
    python = require_python(version)
    leg = f"python{version}"
    env_python = environment(leg, python, REQUIREMENTS)
    assert_passed(run_tests(env_python, CORE_TESTS), f"core tests on {leg} ({python})")
