"""The pytest plugin lastcall registers (entry point ``pytest11``): the drill's fixtures.

::

    def test_my_app_stops_clean(lastcall_drill):
        result = lastcall_drill("myapp:create_app()")
        assert result.clean, result.verdict

    def test_my_worker_stops_clean(lastcall_drill_worker):
        result = lastcall_drill_worker("celery", cmd="celery -A tasks -b {broker} worker "
                                       "-I lastcall.cli.demo_celery")
        assert result.clean, result.verdict

Kept apart from :mod:`lastcall.testing` so that ``drill()`` works without
pytest, and pytest loads nothing more than this small module until a test
asks for the fixture.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from lastcall.testing import DrillResult, WorkerDrillResult

__all__ = ("lastcall_drill", "lastcall_drill_worker")


@pytest.fixture
def lastcall_drill(tmp_path: Path) -> Callable[..., DrillResult]:
    """:func:`lastcall.testing.drill`, keeping each drill's files under the test's ``tmp_path``."""
    from lastcall.testing import drill  # noqa: PLC0415  # only when a test asks for it

    return functools.partial(drill, directory=tmp_path / "lastcall-drill")


@pytest.fixture
def lastcall_drill_worker(tmp_path: Path) -> Callable[..., WorkerDrillResult]:
    """:func:`lastcall.testing.drill_worker`, each drill's files under the test's ``tmp_path``."""
    from lastcall.testing import drill_worker  # noqa: PLC0415  # only when a test asks for it

    return functools.partial(drill_worker, directory=tmp_path / "lastcall-drill")
