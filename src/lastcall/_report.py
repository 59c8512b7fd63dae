"""The report: what ran, where, how long, and how the process ended.

It is logged (one INFO summary; each failed hook was logged at ERROR, with
its traceback, when it failed) and, when
``LASTCALL_REPORT`` names a path, written there as JSON. The file is
written to a temporary name beside it and renamed, so a reader never sees
half a report, and it is created mode 0600 because hook errors can carry
secrets from tracebacks.
"""

from __future__ import annotations

import contextlib
import logging
import os

from lastcall._config import report_file, unfit_target
from lastcall._log import log

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see _hooks)
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any

    from lastcall._hooks import Outcome, Phase


class HookResult:
    """How one hook went."""

    __slots__ = ("duration", "error", "name", "outcome", "phase", "stack")

    def __init__(  # one argument per field of the JSON form
        self,
        name: str,
        phase: Phase,
        outcome: Outcome,
        duration: float = 0.0,
        error: str | None = None,
        *,
        stack: str | None = None,
    ) -> None:
        self.name = name
        self.phase: Phase = phase
        self.outcome: Outcome = outcome
        self.duration = duration
        self.error = error
        self.stack = stack  # an overrun hook: where it was, innermost frame last

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _HOOK_FIELDS}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HookResult) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(tuple(self.to_dict().values()))

    def __repr__(self) -> str:
        return f"HookResult({self.name!r}, {self.phase!r}, {self.outcome!r}, {self.duration:.3f})"


_HOOK_FIELDS = ("name", "phase", "outcome", "duration", "error", "stack")


class Report:
    """Everything one shutdown did. ``trigger`` says why it began.

    ``trigger`` is a signal name (``"SIGTERM"``), ``"exit"`` (the interpreter
    ended normally or by ``sys.exit``), ``"exception"``, or ``"manual"``
    (``trigger()`` or ``shutdown()``); ``reason`` adds detail in words.
    ``exit_status`` is what a shell will see (128+N after a signal), or
    ``None`` when the interpreter decides it (a normal exit). ``busy`` names
    the ``lastcall.busy`` blocks still running when the drain gave up on them, and
    those the stop cancelled (``"cancelled": true``: ``asyncio.run``'s teardown);
    ``requests`` the HTTP requests still in flight then (method, path, seconds).
    ``problems`` names what the stop went on without (a watchdog thread that could
    not start, say), in words. ``jobs``: for a queue worker, each job the stop
    touched (``id``, ``name``, ``outcome``: ``completed`` or ``requeued``, ``seconds``).
    ``write_error`` says why the JSON file could not be written (not in the file).
    """

    def __init__(  # one argument per field of the JSON form
        self,
        trigger: str,
        reason: str,
        pid: int,
        started_at: float,
        *,
        hooks: list[HookResult] | None = None,
        duration: float = 0.0,
        exit_status: int | None = None,
        forced: bool = False,
        busy: list[dict[str, Any]] | None = None,
        requests: list[dict[str, Any]] | None = None,
        problems: list[str] | None = None,
        jobs: list[dict[str, Any]] | None = None,
    ) -> None:
        self.trigger = trigger
        self.reason = reason
        self.pid = pid
        self.started_at = started_at
        self.hooks: list[HookResult] = hooks if hooks is not None else []
        self.duration = duration
        self.exit_status = exit_status
        self.forced = forced
        self.busy: list[dict[str, Any]] = busy if busy is not None else []
        self.requests: list[dict[str, Any]] = requests if requests is not None else []
        self.problems: list[str] = problems if problems is not None else []
        self.jobs: list[dict[str, Any]] = jobs if jobs is not None else []
        self.write_error: str | None = None  # why the file could not be written: not in it

    def __repr__(self) -> str:
        return f"<Report {self.summary()}>"

    @property
    def failed(self) -> list[HookResult]:
        return [h for h in self.hooks if h.outcome in ("error", "timeout")]

    def count(self, outcome: Outcome) -> int:
        return sum(1 for h in self.hooks if h.outcome == outcome)

    def summary(self) -> str:
        """The one line logged at INFO when a shutdown ends."""
        counts = ", ".join(
            f"{self.count(outcome)} {outcome}"
            for outcome in ("ok", "error", "timeout", "skipped")
            if self.count(outcome) or outcome == "ok"
        )
        status = "decided by the interpreter" if self.exit_status is None else self.exit_status
        forced = " (forced)" if self.forced else ""
        jobs = ""
        if self.jobs:
            outcomes = [job.get("outcome") for job in self.jobs]
            by_outcome = ", ".join(
                f"{outcomes.count(o)} {o}" for o in ("completed", "requeued") if o in outcomes
            )
            jobs = f", {len(self.jobs)} jobs ({by_outcome})"
        return (
            f"shutdown{forced} after {self.trigger} ({self.reason}) in pid {self.pid}: "
            f"{len(self.hooks)} hooks, {counts}{jobs}, {self.duration:.3f} s, "
            f"exit status {status}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "trigger": self.trigger,
            "reason": self.reason,
            "pid": self.pid,
            "started_at": self.started_at,
            "hooks": [h.to_dict() for h in self.hooks],
            "duration": self.duration,
            "exit_status": self.exit_status,
            "forced": self.forced,
            "busy": self.busy,
            "requests": self.requests,
            "problems": self.problems,
            "jobs": self.jobs,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """Read back what :meth:`to_dict` wrote (another process's report file)."""
        fields = {**data, "hooks": [HookResult(**h) for h in data.get("hooks", [])]}
        return cls(**fields)

    def log(self) -> None:
        """The INFO summary; failed hooks were logged at ERROR as they failed."""
        log.log(logging.INFO, "%s", self.summary())

    def write(self, path_template: str) -> Path:
        """Write the report as JSON, atomically, mode 0600; ``{pid}`` expands. Returns the path.

        Only a regular file is written (or replaced): a device, FIFO, socket or
        directory at the path, or a path under ``/proc`` or ``/sys``, raises
        ``ValueError``. It uses ``os`` calls and the modules ``prepare_writing()``
        imported (at ``install()``): no import at stop time, where another
        thread may hold the import lock. Whatever fails is also kept in
        ``write_error``, for whoever holds the report when the file is missing.
        """
        try:
            path = self._write(report_file(path_template, self.pid))
        except Exception as exc:
            self.write_error = f"{type(exc).__name__}: {exc}"
            raise
        return _writing_tools()[1](path)

    def _write(self, path: str) -> str:
        problem = unfit_target(path)
        if problem is not None:
            raise ValueError(f"{path!r} {problem}")
        text = _writing_tools()[0](self.to_dict(), indent=2) + "\n"
        directory, name = os.path.split(path)  # os calls, not pathlib: see write()
        if directory:
            os.makedirs(directory, exist_ok=True)  # noqa: PTH103
        tmp, fd = _create_temporary(directory, name)
        try:
            try:
                data = memoryview(text.encode("utf-8"))
                while data:
                    data = data[os.write(fd, data) :]
            finally:
                os.close(fd)
            os.replace(tmp, path)  # noqa: PTH105
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # noqa: PTH108
            raise
        return path


def prepare_writing() -> None:
    """Import now what ``Report.write`` needs, so a stop imports nothing (see ``write``)."""
    global _writing  # noqa: PLW0603  # a cache, filled once
    if _writing is None:
        import json  # noqa: PLC0415  # only when a report is asked for: import time
        import pathlib  # noqa: PLC0415

        _writing = (json.dumps, pathlib.Path)


_writing: tuple[Callable[..., str], type[Path]] | None = None


def _writing_tools() -> tuple[Callable[..., str], type[Path]]:
    """``json.dumps`` and ``Path``: imported by ``install()``, else now (the watcher, a test)."""
    if _writing is None:
        prepare_writing()
    assert _writing is not None  # noqa: S101
    return _writing


def _create_temporary(directory: str, name: str) -> tuple[str, int]:
    """A new file beside the report, mode 0600, named so it cannot be mistaken for one."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{os.urandom(4).hex()}.tmp")  # noqa: PTH118
        try:
            return tmp, os.open(tmp, flags, 0o600)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {name} after 100 tries")
