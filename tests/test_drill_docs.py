"""The drill's documented examples run as written: taken from the docs, so the docs cannot drift."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

from test_drill_cleanup import MARK, carrying

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_EXAMPLE = "def test_my_app_stops_clean(lastcall_drill):"

MYAPP = """
from flask import Flask


def create_app():
    app = Flask(__name__)

    @app.get("/")
    def index():
        return "hello"

    return app
"""


def python_block(page: Path, starting: str) -> str:
    """The ```python block of ``page`` that holds ``starting``."""
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.DOTALL)
    (block,) = [b for b in blocks if starting in b]
    return block


def test_the_fixture_example_is_the_same_in_the_readme_and_the_drill_page():
    readme = python_block(ROOT / "README.md", FIXTURE_EXAMPLE)
    assert readme == python_block(ROOT / "docs" / "drill.md", FIXTURE_EXAMPLE)


def test_the_fixture_example_passes_as_written(tmp_path):
    """The README's own test, against a Flask factory app: run by pytest, it passes."""
    (tmp_path / "test_example.py").write_text(python_block(ROOT / "README.md", FIXTURE_EXAMPLE))
    (tmp_path / "myapp.py").write_text(MYAPP)
    token = secrets.token_hex(8)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LASTCALL_", "PYTEST_"))}
    env[MARK] = token
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "test_example.py"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )  # fmt: skip
    assert carrying(token) == []  # every process the drill started has ended
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
