"""What a worker drill runs: each worker in a session of its own, ended by PID however it ends.

A worker carries its own drill mark (``cli/cleanup.py``) and writes its log,
its lastcall reports and the plain demo's hook lines in a directory of its own.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from typing import TYPE_CHECKING

from lastcall.cli import cleanup

if TYPE_CHECKING:
    from pathlib import Path

_END_WAIT = 5.0  # seconds for a killed worker to be reaped


class Worker:
    """One worker the drill started, in a session of its own, its output in ``directory``."""

    def __init__(self, argv: list[str], env: dict[str, str], directory: Path) -> None:
        self.directory = directory
        self.mark = cleanup.new_mark()
        directory.mkdir()
        env = {
            **env,
            cleanup.OWNER: self.mark,
            "LASTCALL_REPORT": str(directory / "report-{pid}.json"),
            "LASTCALL_DEMO_EVENTS": str(directory / "hooks.jsonl"),
        }
        self.proc: subprocess.Popen[bytes] | None = cleanup.start(
            argv, env, directory / "worker.log"
        )
        self.pid = self.proc.pid
        self.status: int | None = None

    def alive(self) -> bool:
        """Whether the process the drill started still runs."""
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """``sig`` to the process the drill started, if it still runs."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def processes(self) -> set[int]:
        """Its processes now, in its session (``end`` also finds any that left it by the mark)."""
        return set(cleanup.session_processes(self.pid))

    def wait(self, timeout: float) -> bool:
        """Until the process the drill started has ended (its status kept): whether it did."""
        if self.proc is None:
            return True
        try:
            status = self.proc.wait(max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return False
        self.status = 128 - status if status < 0 else status  # as a shell shows it
        self.proc = None
        return True

    def end(self) -> list[int]:
        """SIGKILL, by PID, whatever it started and is still running; the pids ended."""
        sid = self.pid if self.proc is not None else None  # its session, while not reaped
        ended = cleanup.end(self.mark, sid)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.wait(_END_WAIT)
        return ended

    def last_line(self) -> str:
        """Its log's last line: what a worker that would not start said last."""
        log = (self.directory / "worker.log").read_text(encoding="utf-8", errors="replace")
        lines = [line for line in log.splitlines() if line.strip()]
        return lines[-1].strip() if lines else "no output"
