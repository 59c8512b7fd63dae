"""The pytest plugin lastcall registers (entry point ``pytest11``): the fixture ``lastcall_drill``.

::

    def test_my_app_stops_clean(lastcall_drill):
        result = lastcall_drill("myapp:create_app()")
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

    from lastcall.testing import DrillResult

__all__ = ("lastcall_drill",)


@pytest.fixture
def lastcall_drill(tmp_path: Path) -> Callable[..., DrillResult]:
    """:func:`lastcall.testing.drill`, keeping each drill's files under the test's ``tmp_path``."""
    from lastcall.testing import drill  # noqa: PLC0415  # only when a test asks for it

    return functools.partial(drill, directory=tmp_path / "lastcall-drill")
