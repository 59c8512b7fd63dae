"""Ending everything a drill started, however it started it and however the drill ends.

The app or worker under drill is started here (:func:`start`), in a session of its own.
A process the drill starts gets ``LASTCALL_DRILL_OWNER`` in its environment,
and every process it starts in turn inherits it: a daemon (``gunicorn
--daemon``'s double fork), a ``setsid ... &`` child in a session of its own,
their workers. They are found again by that mark in ``/proc/PID/environ``,
by the session of the process the drill started, and by the listening
socket they hold on the drill's port (``/proc/net/tcp`` inode, then
``/proc/*/fd``) for a command that cleared its environment. Each is ended
by PID with SIGKILL: this runs when the drill is over, whatever was left.

The drill's own SIGTERM and SIGHUP (a CI job's timeout, a closed terminal)
become :class:`TerminatedError` in the main thread, so that the same ``finally``
that ends a drill's processes runs for them as for Ctrl-C.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lastcall.cli.plan import DrillError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from types import FrameType

OWNER = "LASTCALL_DRILL_OWNER"
# This run of the drill: its pid and a random part, so that a later process given the
# same pid can never take another run's processes for its own.
RUN = f"{os.getpid()}-{secrets.token_hex(4)}"
_COUNTER = itertools.count(1)
_GONE_WAIT = 5.0  # seconds for SIGKILLed processes to be gone (zombies count as gone)
_POLL = 0.02
_ROUNDS = 5  # a process may start another while being ended: look again


class TerminatedError(BaseException):
    """The drill itself was sent SIGTERM or SIGHUP: end what it started, then die by it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def new_mark() -> str:
    """A mark for one drill's processes (its value of ``LASTCALL_DRILL_OWNER``)."""
    return f"{RUN}.{next(_COUNTER)}"


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start the user's command (or the demo's) in a session of its own, its output in ``log``.

    Its own session is how :func:`end` finds it and what it starts. A program that
    cannot be run is bad input: ``DrillError``, in one line.
    """
    with log.open("wb") as out:
        try:
            return subprocess.Popen(  # noqa: S603  # the user's own command; no shell
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise DrillError(
                f"--cmd cannot start {argv[0]!r} ({exc.strerror}); give a program on PATH "
                "or its path, and write sh -c '...' for a shell"
            ) from None


def _pids() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def _stat(pid: int) -> list[str] | None:
    """``/proc/PID/stat``'s fields after the name (state first); None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # comm, in parentheses, may hold spaces
    return None if fields[0] in ("Z", "X") else fields


def owner(pid: int) -> str | None:
    """The mark a process carries, if any (None also when gone or not ours to read)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    prefix = f"{OWNER}=".encode()
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode(errors="replace")
    return None


def marked(mark: str) -> set[int]:
    """Live processes carrying ``mark`` (or, for :data:`RUN`, any mark of this run)."""
    found = set()
    for pid in _pids():
        carried = owner(pid)
        if carried is None:
            continue
        if (carried == mark or (mark == RUN and carried.startswith(f"{RUN}."))) and _stat(
            pid
        ) is not None:
            found.add(pid)
    return found


def session_processes(sid: int, among: Iterable[int] | None = None) -> dict[int, int]:
    """Live (not zombie) processes in session ``sid``: pid -> parent pid. Linux /proc.

    ``among``: look at those pids only, not every process on the machine.
    """
    found = {}
    for pid in _pids() if among is None else among:
        fields = _stat(pid)  # state ppid pgrp session ...
        if fields is not None and int(fields[3]) == sid:
            found[pid] = int(fields[1])
    return found


def listening_inodes(port: int) -> set[int]:
    """Inodes of the sockets listening on ``port`` (IPv4 and IPv6)."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/net/{table}").read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(fields[9]))
    return inodes


def holding(port: int, among: Iterable[int] | None = None) -> set[int]:
    """Processes holding a socket that listens on ``port``."""
    wanted = {f"socket:[{inode}]" for inode in listening_inodes(port)}
    if not wanted:
        return set()
    found = set()
    for pid in _pids() if among is None else among:
        with contextlib.suppress(OSError):  # gone, or not ours to read
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):  # closed since listed
                    if str(fd.readlink()) in wanted:
                        found.add(pid)
                        break
    return found


def started_by(mark: str, sid: int | None = None, port: int | None = None) -> set[int]:
    """Every live process the drill started: by mark, by session, by the port they hold."""
    found = marked(mark)
    others = set()
    if sid is not None:
        others |= set(session_processes(sid))
    if port is not None:
        others |= holding(port)
    # Never another drill's: the port may be free, and taken again, by now.
    found |= {pid for pid in others if owner(pid) in (None, mark)}
    found.discard(os.getpid())
    return found


def end(mark: str, sid: int | None = None, port: int | None = None) -> list[int]:
    """SIGKILL, by PID, every process the drill started; wait until they are gone.

    Returns the PIDs ended. A process that starts another while being ended
    is looked for again, a few rounds.
    """
    ended: list[int] = []
    for _ in range(_ROUNDS):
        # Nothing found is looked at twice: a process that forked and exited while /proc was
        # read (a daemon's double fork: gunicorn --daemon) is gone from that listing's scan,
        # and its child, forked before it exited, is in the next listing only.
        pids = started_by(mark, sid, port) or started_by(mark, sid, port)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        ended.extend(sorted(pids - set(ended)))
        _until_gone(pids)
    return ended


def end_all() -> list[int]:
    """End every process any drill of this run started (the run was interrupted)."""
    return end(RUN)


def _until_gone(pids: set[int]) -> None:
    deadline = time.monotonic() + _GONE_WAIT
    while time.monotonic() < deadline and any(_stat(pid) is not None for pid in pids):
        time.sleep(_POLL)


@contextlib.contextmanager
def terminate_as_error() -> Iterator[None]:
    """SIGTERM and SIGHUP to the drill raise :class:`TerminatedError` in the main thread."""

    def handler(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
        for sig in previous:  # a second one must not cut the ending of what the drill started
            signal.signal(sig, signal.SIG_IGN)
        raise TerminatedError(signum)

    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)


def die_by(signum: int) -> None:
    """End this process by ``signum``, as a supervisor expects (143 for SIGTERM)."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
