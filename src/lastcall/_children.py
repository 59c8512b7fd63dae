"""Processes a stop's hooks started and left running: named and ended with the stop.

A hook that starts a process (``subprocess.Popen``, ``sh -c ...``) and overruns
its time is abandoned, and so is the process it started: without this, that
process outlives the service as an orphan, holding what it held, and nothing
says so. Once a stop that ends the process has had a hook time out, the
children started since the stop began and still alive are logged, put in the
report's ``problems`` and sent SIGKILL with everything they started in turn
(``sh -c "...; sleep 45"``'s sleep is a grandchild): the grace is spent, and
there is no time left to ask politely. A hook that means to leave a process running detaches
it (a double fork), so it is no longer this process's child.

Linux only (elsewhere nothing is done): read from ``/proc``
(``/proc/PID/task/*/children`` needs a kernel option that is often off, so
every ``/proc/N/stat`` is read: a few milliseconds, paid only after a hook
timed out). A child is killed through a
pidfd opened before its parent is checked again, so a PID reused meanwhile is
never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

_LINUX = hasattr(time, "CLOCK_BOOTTIME") and hasattr(os, "pidfd_open")


def clock() -> float:
    """Now, on the clock ``/proc/N/stat``'s start times count from (seconds since boot)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if _LINUX else 0.0


def end_children_started_since(began: float) -> list[str]:
    """SIGKILL this process's children started at ``began`` (``clock()``) or later, and theirs.

    Returns one line for each child, naming it, for the log and the report.
    """
    if not _LINUX:
        return []  # elsewhere such a process is left as it was
    me = os.getpid()
    since = int(began * os.sysconf("SC_CLK_TCK"))
    table = _processes()
    ended = []
    for pid, (parent, started) in table.items():
        if parent != me or started < since:
            continue
        command = _command(pid)
        tree = _descendants(pid, table)
        # The deepest first: each is checked against its parent, which must still be alive
        # (once it is gone, the kernel gives its children to another parent).
        killed = [_kill(descendant, table[descendant][0]) for descendant in reversed(tree)]
        # The top one too; it may have ended on its own meanwhile, once its child was killed
        # (``sh -c``), and been reaped by the hook: what was killed is still said.
        if _kill(pid, me) or any(killed):
            also = f" and {len(tree)} it started" if tree else ""
            ended.append(
                f"process {pid} ({command}){also}, started by a hook, still running at the "
                "stop's end: killed"
            )
    return ended


def _processes() -> dict[int, tuple[int, int]]:
    """Every process: ``{pid: (parent pid, start time in clock ticks since boot)}``."""
    table = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                stat = _stat(int(entry.name))
                if stat is not None:
                    table[int(entry.name)] = stat
    return table


def _descendants(pid: int, table: dict[int, tuple[int, int]]) -> list[int]:
    found: list[int] = []
    parents = [pid]
    while parents:
        parents = [child for child, (parent, _) in table.items() if parent in parents]
        found.extend(parents)
    return found


def _kill(pid: int, parent: int) -> bool:
    """SIGKILL ``pid`` if it is still ``parent``'s child: checked through a pidfd, not by PID."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False  # gone already
    try:
        stat = _stat(pid)
        if stat is None or stat[0] != parent:
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        return False
    finally:
        os.close(pidfd)
    return True


def _stat(pid: int) -> tuple[int, int] | None:
    """``(parent pid, start time in clock ticks since boot)``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:  # noqa: PTH123  # one small read
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After "pid (comm)": state ppid ... starttime is field 22 of stat(5), 20th here.
    return int(fields[1]), int(fields[19])


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:  # noqa: PTH123
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return "?"
