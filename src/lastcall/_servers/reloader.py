"""The reloader parent of a development server, as Werkzeug's and Django's runserver share it.

Both reloaders run the app in a child process, started again when it exits
with status 3 (a code change). lastcall's parent, in place of theirs:

* runs none of the app's hooks (the caller stands it aside first);
* passes SIGTERM, SIGINT and SIGHUP on to the child as SIGTERM, giving a
  terminal's Ctrl-C, which reached the child too, a head start;
* ends by the signal it was sent once the child has stopped (a stop by
  SIGINT ends by SIGINT, though the child was passed SIGTERM); otherwise,
  the way the child ended, by its signal or status. It says so in one line
  if the child ended without running its shutdown hooks (the child writes
  ``clean`` to a pipe once they ran: ``in_child``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, NoReturn

from lastcall._integration import Integration
from lastcall._signals import die_by

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

    from lastcall._coordinator import Coordinator

__all__ = ("RELOAD_EXIT_CODE", "in_child", "run_children")

RELOAD_EXIT_CODE = 3  # both reloaders: "restart me"
_PARENT_ENV = "LASTCALL_RELOADER_PARENT"  # the parent's pid, as the child should see it
_CLEAN_FD_ENV = "LASTCALL_RELOADER_FD"  # where the child reports a completed shutdown
_CLEAN = b"clean\n"
_CTRL_C_HEAD_START = 0.5  # seconds the child's own SIGINT has before our SIGTERM


def run_children(
    next_child: Callable[[], tuple[list[str], dict[str, str]]],
    warn: Callable[[str], None],
    name: str = "reloader",
) -> NoReturn:
    """Start the serving child, pass signals on, start it again on a code change, end as it did.

    ``next_child()`` gives each child's command line and the environment it
    adds (the reloader's own "you are the child" variable); ``warn`` logs a
    line the reloader's way, and ``name`` is what that line calls the reloader.
    """
    while True:
        args, child_env = next_child()
        read_end, write_end = os.pipe()
        os.set_inheritable(write_end, True)  # noqa: FBT003  # positional only
        env = {
            **os.environ,
            **child_env,
            _PARENT_ENV: str(os.getpid()),
            _CLEAN_FD_ENV: str(write_end),
        }
        child = subprocess.Popen(args, env=env, close_fds=False)  # noqa: S603
        os.close(write_end)
        received: list[int] = []  # the signals this process was sent, passed on
        _forward_signals(child, received)
        status = child.wait()
        clean = _read_now(read_end) == _CLEAN
        if status == RELOAD_EXIT_CODE and not received:
            continue  # a code change
        if not clean:
            warn(
                f"the {name} child (pid {child.pid}) ended with {_describe_status(status)} "
                "without running its shutdown hooks; cleanup that must survive this belongs "
                "in lastcall.last_resort()"
            )
        if received and status <= 0:
            die_by(received[0])  # stopped as asked: by the signal this process was sent
        _end_like(status)


def in_child(coordinator: Coordinator, reason: str) -> None:
    """In a child of ``run_children``: stop if the parent dies; tell it when the hooks ran."""
    parent = os.environ.get(_PARENT_ENV)
    if not parent:
        return
    Integration(coordinator).stop_when_parent_dies(int(parent), reason)
    fd = int(os.environ.pop(_CLEAN_FD_ENV))
    os.set_inheritable(fd, False)  # noqa: FBT003  # positional only

    def tell(_: object) -> None:
        with contextlib.suppress(OSError):
            os.write(fd, _CLEAN)

    coordinator.when_done(tell)


def _describe_status(status: int) -> str:
    """A ``Popen.returncode`` in words: ``SIGTERM`` or ``status 1``."""
    return signal.Signals(-status).name if status < 0 else f"status {status}"


def _forward_signals(child: subprocess.Popen[bytes], received: list[int]) -> None:
    def terminate() -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)

    def forward(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
        received.append(signum)
        if signum != signal.SIGINT:
            terminate()
            return
        # A terminal's Ctrl-C reached the child too: let it begin its stop by that
        # SIGINT (and end by it), rather than race our SIGTERM to it; the SIGTERM
        # follows for a SIGINT sent to this process alone. Once stopping, the
        # child takes a SIGTERM as nothing new.
        later = threading.Timer(_CTRL_C_HEAD_START, terminate)
        later.daemon = True
        later.start()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)


def _read_now(fd: int) -> bytes:
    """What the child wrote, without waiting: a process it forked may hold the pipe open."""
    os.set_blocking(fd, False)  # positional only
    try:
        return os.read(fd, len(_CLEAN))
    except BlockingIOError:
        return b""
    finally:
        os.close(fd)


def _end_like(status: int) -> NoReturn:
    """End this process the way the child ended: by the same signal, or status."""
    if status < 0:
        die_by(-status)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
