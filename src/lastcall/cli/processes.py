"""What the app's processes did: seen from outside in ``/proc``, and in what they wrote.

From outside: which processes the app's session holds and when each went
(:class:`ProcessWatch`), which of them serve (hold the listening socket),
and the kernel's count of connections on the port. From the files the app
leaves in the drill's directory: which process ran which hook and when (each
process's lastcall report, ``LASTCALL_REPORT``, or the plain ``atexit``
demo's events file), the demo's rows in SQLite, and its log's warnings.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lastcall import PHASES, Report
from lastcall.cli.cleanup import holding, session_processes

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

POLL = 0.02  # seconds between two looks at what the app does
_FULL_SCAN_EVERY = 10  # samples: the known processes every POLL, every process now and then
# Warnings, deprecations, and lastcall's own start-up line on a server outside its tested range.
_WARNING = re.compile(r"warn|deprecat|outside the versions", re.IGNORECASE)
_WARNINGS_SHOWN = 5


@dataclass
class HookRecord:
    """One hook that ran: where, when (drill clock) and how it went."""

    name: str
    phase: str | None
    pid: int
    role: str
    started: float
    ended: float
    outcome: str


@dataclass
class ProcessRecord:
    """One process of the app's session, as seen in /proc."""

    pid: int
    ppid: int
    role: str
    first_seen: float
    gone: float
    exit_status: int | None = None
    left_behind: bool = False


class ProcessWatch:
    """Samples the app's session: when each process went (every 20 ms), and new ones.

    Reading every process's stat takes milliseconds, and a matrix runs eight
    drills at once: the processes known are looked at every 20 ms, the whole
    machine every 10th time, for processes the app has started since.
    """

    def __init__(self, sid: int, now: Callable[[], float]) -> None:
        self._sid = sid
        self._now = now
        self.seen: dict[int, list[float]] = {}  # pid -> [ppid, first seen, seen gone]
        self.alive: set[int] = set()
        self._stop = threading.Event()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="drill-ps", daemon=True)
        self._thread.start()

    def _sample(self, *, known_only: bool = False) -> None:
        current = session_processes(self._sid, self.alive if known_only else None)
        now = self._now()  # after the scan: a process gone from it was gone by now
        for pid, ppid in current.items():
            self.seen.setdefault(pid, [ppid, now, now])[2] = now + POLL
        for pid in self.alive - set(current):
            self.seen[pid][2] = now
        self.alive = set(current)

    def _run(self) -> None:
        samples = 0
        while not self._stop.wait(POLL):
            samples += 1
            self._sample(known_only=samples % _FULL_SCAN_EVERY != 0)

    def close(self) -> None:
        """Stop sampling, after one last look."""
        self._stop.set()
        self._thread.join()
        self._sample()

    def records(
        self, roles: dict[int, str], exit_status: int, left: list[int], stop_sent: float
    ) -> list[ProcessRecord]:
        """Every process seen, and those ``left`` outside the session (a daemon, a setsid child).

        ``exit_status`` is the session leader's: the process the drill started.
        """
        processes = [
            ProcessRecord(
                pid,
                int(ppid),
                roles.get(pid, "other"),
                first,
                last,
                exit_status if pid == self._sid else None,
                left_behind=pid in left,
            )
            for pid, (ppid, first, last) in sorted(self.seen.items())
        ]
        return processes + [
            ProcessRecord(pid, 0, "other", stop_sent, stop_sent, left_behind=True)
            for pid in left
            if pid not in self.seen
        ]


def serving_processes(leader: int, port: int) -> list[int]:
    """The processes that serve on ``port``: the deepest of the session's holding its socket.

    A master and its workers all hold the listening socket; the workers
    serve. ``[leader]`` when it serves alone, or when nothing is found.
    """
    tree = session_processes(leader)
    holders = sorted(holding(port, tree))

    def depth(pid: int) -> int:
        return 0 if pid == leader or pid not in tree else 1 + depth(tree[pid])

    deepest = max(map(depth, holders), default=0)
    return [pid for pid in holders if depth(pid) == deepest] or [leader]


def _tcp_rows(port: int) -> Iterator[tuple[str, int]]:
    """(state, rx_queue) of the IPv4 sockets bound to 127.0.0.1:port."""
    local = f"0100007F:{port:04X}"
    for row in Path("/proc/net/tcp").read_text(encoding="ascii").splitlines()[1:]:
        fields = row.split()
        if fields[1] == local:
            yield fields[3], int(fields[4].split(":")[1], 16)


def open_connections(port: int) -> int:
    """Connections to 127.0.0.1:port the kernel has accepted and nobody has closed yet."""
    return sum(state == "01" for state, _ in _tcp_rows(port))  # ESTABLISHED


def listen_backlog(port: int) -> int:
    """Connections the kernel accepted on 127.0.0.1:port that no process has taken yet.

    For a listening socket, /proc/net/tcp's rx_queue is its accept queue's length.
    """
    return next((queued for state, queued in _tcp_rows(port) if state == "0A"), 0)  # LISTEN


# ---------------------------------------------------------------- what they wrote


def hooks_run(
    directory: Path, roles: dict[int, str], clock: float, prestop_delay: float, serving: int
) -> tuple[list[HookRecord], list[tuple[str, float]]]:
    """The hooks each process ran, and when the serving process began each phase.

    From each process's lastcall report; the plain demo's from its events
    file. Times on the drill's clock (``clock``: its zero, on ``time.time()``).
    """
    hooks: list[HookRecord] = []
    phases: list[tuple[str, float]] = []
    reports = [
        Report.from_dict(json.loads(path.read_text(encoding="utf-8")))
        for path in sorted(directory.glob("report-*.json"))
    ]
    for report in reports:
        role = roles.get(report.pid, "other")
        at = report.started_at - clock
        phase_at = {PHASES[0]: at}  # the stop begins with pre_stop, hooks or not
        for phase in PHASES:
            for hook in (h for h in report.hooks if h.phase == phase):  # in the order run
                phase_at.setdefault(phase, at)
                ended = at + hook.duration
                hooks.append(
                    HookRecord(hook.name, phase, report.pid, role, at, ended, hook.outcome)
                )
                at = ended
            if phase == PHASES[0]:
                at += prestop_delay
        if report.pid == serving:
            phases = sorted(phase_at.items(), key=lambda item: item[1])
    reported = {report.pid for report in reports}
    events = directory / "hooks.jsonl"
    lines = events.read_text(encoding="utf-8").splitlines() if events.exists() else []
    hooks += [
        HookRecord(
            event["hook"],
            None,
            event["pid"],
            roles.get(event["pid"], "other"),
            event["started"] - clock,
            event["ended"] - clock,
            "ok",
        )
        for event in map(json.loads, lines)
        if event["pid"] not in reported
    ]
    return hooks, phases


def stored_rows(database: Path) -> int:
    """The demo's orders in SQLite: what its shutdown hook flushed."""
    if not database.exists():
        return 0
    with contextlib.closing(sqlite3.connect(database)) as db:
        try:
            return int(db.execute("SELECT count(*) FROM orders").fetchone()[0])
        except sqlite3.OperationalError:  # no flush ever created the table
            return 0


def warnings_in(log: Path) -> list[str]:
    """The last few lines of the app's log that warn: what it said while starting, say."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    found = [line.strip() for line in text.splitlines() if _WARNING.search(line)]
    return list(dict.fromkeys(found))[-_WARNINGS_SHOWN:]
