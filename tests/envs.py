"""Other environments for the test legs: another Python, or other versions of the servers.

A leg builds a virtual environment once (kept in ``.venv-legs/NAME`` and
rebuilt when its Python or its requirements change), installs lastcall
there from this checkout, and runs some of this suite's test files in it.
A leg whose Python is not on this machine is skipped with the reason
printed (``-ra``); nothing is skipped silently.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LEGS = ROOT / ".venv-legs"
INSTALL_TIMEOUT = 300.0
RUN_TIMEOUT = 600.0


def find_python(version: str) -> Path | None:
    """An interpreter for ``version`` ("3.10") that runs: under pyenv, or on PATH."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = sorted((pyenv_root / "versions").glob(f"{version}.*/bin/python{version}"))
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(Path(on_path))  # a pyenv shim fails unless its version is selected
    for python in candidates:
        probe = subprocess.run([str(python), "-c", "pass"], capture_output=True, check=False)
        if probe.returncode == 0:
            return python
    return None


def require_python(version: str) -> Path:
    """The interpreter for ``version``, or skip the leg saying which is missing and why."""
    python = find_python(version)
    if python is None:
        pytest.skip(
            f"Python {version} is not on this machine (PATH or pyenv); its leg is skipped. "
            f"Install python{version} to run it."
        )
    return python


def environment(name: str, python: Path, requirements: list[str]) -> Path:
    """A venv with lastcall (editable, from this checkout) and ``requirements``; its python."""
    venv = LEGS / name
    bin_python = venv / "bin" / "python"
    stamp = hashlib.sha256("\n".join([str(python), *requirements]).encode()).hexdigest()
    stamp_file = venv / "leg-stamp"
    if bin_python.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return bin_python
    shutil.rmtree(venv, ignore_errors=True)
    _run([str(python), "-m", "venv", str(venv)])
    _run(
        [
            str(bin_python),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-e",
            str(ROOT),
            *requirements,
        ],
    )
    stamp_file.write_text(stamp)
    return bin_python


def run_tests(python: Path, paths: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run pytest on ``paths`` with the leg's ``python``; the output is kept for the failure."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "VIRTUAL_ENV")}
    return subprocess.run(
        # two at once: the outer run has its own tests going beside this one
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", *args, *paths],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def assert_passed(result: subprocess.CompletedProcess[str], leg: str) -> str:
    """Fail with the inner run's output unless it passed; return its closing line."""
    tail = result.stdout.strip().splitlines()[-1:] or ["(no output)"]
    if result.returncode != 0:
        pytest.fail(f"{leg}: {tail[0]}\n{result.stdout[-20000:]}\n{result.stderr[-5000:]}")
    print(f"{leg}: {tail[0]}", file=sys.stderr)  # which leg ran what
    return tail[0]


def _run(command: list[str]) -> None:
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"could not build a leg environment: {' '.join(command)}\n{result.stderr}")
