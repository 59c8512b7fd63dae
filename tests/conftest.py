"""Real child processes for the tests, and a check that none is left behind.

Every child starts in a session of its own, so whatever it forks can be
found again afterwards by session id, and ended by PID if it outlived the
test (which then fails).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import pytest

from lastcall.cli.cleanup import session_processes

# The worker tests' RabbitMQ node: session-scoped, so defined here once (a module importing
# it would make a node of its own), one per test process, shared by the modules.
pytest_plugins = ["brokers"]

if TYPE_CHECKING:
    from collections.abc import Iterator

    from websockets.sync.client import ClientConnection

WAIT = 15.0  # upper bound for any single wait on a child; tests never sleep blindly
EXIT_WAIT = 3.0  # for a test's last processes to be gone once its child has ended

# The suite runs in parallel (pytest-xdist, ``-n`` in pyproject's addopts). A
# matrix runs several drills at once itself and measures timing-sensitive
# stops, as a user runs it: on a machine not busy with other tests. Tests
# marked so share one worker and run first, alone (``_alone_first``): run
# last, their worker sat idle for most of the run waiting for its turn.
MATRIX = pytest.mark.xdist_group("matrix")
ALONE_WAIT = 1200.0  # at most, for the tests that run alone to be done (not a test's timeout)
LONG_TEST = 300  # s: a test whose own timeout is longer starts right after those
_ALONE_IN_RUN = pytest.StashKey[bool]()


def _runs_alone(item: pytest.Item) -> bool:
    return item.get_closest_marker("xdist_group") is not None


def _starting_order(item: pytest.Item) -> int:
    """0: runs alone; 1: a long one (a timeout of its own, minutes: the legs); 2: the rest."""
    if _runs_alone(item):
        return 0
    timeout = item.get_closest_marker("timeout")
    return 1 if timeout is not None and timeout.args and timeout.args[0] > LONG_TEST else 2


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that run alone first, then the long ones: xdist hands out work in this order.

    A long one begun late (the oldest-versions leg, 6 minutes) was the run's last to end.
    """
    items.sort(key=_starting_order)  # stable: the rest keep their order


def _alone_done(config: pytest.Config) -> Path:
    """The run's file (shared by the workers) saying the tests that run alone are done."""
    base = config._tmp_path_factory.getbasetemp().parent  # type: ignore[attr-defined]
    return base / "alone.done"


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After the last test that runs alone (on the one worker they share): the others start."""
    last = nextitem is None or not _runs_alone(nextitem)
    if hasattr(item.config, "workerinput") and _runs_alone(item) and last:
        _alone_done(item.config).touch()


# Children start with SIGINT at its default, as from an interactive shell: a
# test run launched in the background (``cmd &``) would otherwise pass on
# SIGINT ignored, and Python keeps it ignored.
# A child starts as a shell would start it: SIGINT at its default, no signal blocked (a
# mask survives fork and exec, and the thread that starts a child may block some).
LAUNCH = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "signal.pthread_sigmask(signal.SIG_SETMASK, []); os.execv(sys.argv[1], sys.argv[1:])"
)


def live_processes_in_session(sid: int) -> list[int]:
    """PIDs of processes (not zombies) whose session id is ``sid``."""
    return list(session_processes(sid))


def signal_another_thread(pid: int, sig: int) -> int:
    """Send ``sig`` to a thread of ``pid`` other than its main one that does not block it.

    As the kernel may, with a signal sent to the process; returns the thread's id.
    """
    for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
        status = (task / "status").read_text().splitlines()
        blocked = next(int(line.split()[1], 16) for line in status if line.startswith("SigBlk:"))
        if int(task.name) != pid and not blocked & (1 << (sig - 1)):
            libc = ctypes.CDLL(None, use_errno=True)
            assert libc.tgkill(pid, int(task.name), sig) == 0, os.strerror(ctypes.get_errno())
            return int(task.name)
    raise AssertionError(f"no thread of {pid} but its main one takes {sig}")


def free_port() -> int:
    """A port free on 127.0.0.1 a moment ago (the server binds it soon after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def knock(port: int) -> str:
    """One new connection and request: ``200``, ``refused``, or what went wrong (a reset)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: probe\r\n\r\n")
            head = conn.recv(64)
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return repr(exc)
    return head.split(b" ")[1].decode() if head else "closed without an answer"


def close_code(websocket: ClientConnection) -> int | None:
    """Read a WebSocket until the server closes it: the code it sent (None: no close frame)."""
    from websockets.exceptions import ConnectionClosed  # a test extra

    try:
        while True:
            websocket.recv(timeout=WAIT)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None


def refused(port: int) -> bool:
    """Whether a new connection to 127.0.0.1:port is refused (not accepted, not reset)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def wait_session_empty(sid: int, timeout: float = WAIT) -> None:
    """Wait, bounded, until no process of session ``sid`` is left."""
    deadline = time.monotonic() + timeout
    while live_processes_in_session(sid):
        if time.monotonic() > deadline:
            pytest.fail(f"processes still running: {live_processes_in_session(sid)}")
        time.sleep(0.05)


@dataclass
class Child:
    """A Python process running a test's script, its output read as it comes."""

    proc: subprocess.Popen[str]
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _pumps: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            pump = threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
            pump.start()
            self._pumps.append(pump)

    def _pump(self, stream: TextIO, sink: list[str]) -> None:
        with stream:
            for line in stream:
                with self._cond:
                    sink.append(line.rstrip("\n"))
                    self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        with self._cond:
            return "\n".join(["--- stdout", *self.stdout, "--- stderr", *self.stderr])

    def wait_for(self, text: str, timeout: float = WAIT, *, stream: str = "stdout") -> str:
        """Wait until a line containing ``text`` appears; return that line."""
        sink = self.stdout if stream == "stdout" else self.stderr
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in sink:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                ended = not any(p.is_alive() for p in self._pumps)
                if left <= 0 or ended:
                    pytest.fail(f"no line with {text!r} within {timeout} s\n{self.output()}")
                self._cond.wait(min(left, 0.1))

    def send(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def finish(self, timeout: float = WAIT) -> int:
        """Wait for the child to exit and its output to be read; return its status."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # SIGABRT: faulthandler (PYTHONFAULTHANDLER, set at spawn) prints where
            # every thread of the child was, so the failure says why it hung.
            self.proc.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(2)
            self.proc.kill()
            self.proc.wait()
            for pump in self._pumps:
                pump.join(WAIT)
            pytest.fail(f"child {self.pid} still running after {timeout} s\n{self.output()}")
        for pump in self._pumps:
            pump.join(WAIT)
        return code

    def lines(self, prefix: str) -> list[str]:
        with self._cond:
            return [line for line in self.stdout if line.startswith(prefix)]


@pytest.fixture(autouse=True)
def _alone_first(request: pytest.FixtureRequest) -> None:
    """Under xdist, a test waits until the MATRIX tests (handed out first) are done."""
    config = request.config
    if not hasattr(config, "workerinput") or _runs_alone(request.node):
        return
    if _ALONE_IN_RUN not in config.stash:  # the items left after -k and the like
        config.stash[_ALONE_IN_RUN] = any(map(_runs_alone, request.session.items))
    if not config.stash[_ALONE_IN_RUN]:
        return
    done = _alone_done(config)
    deadline = time.monotonic() + ALONE_WAIT
    while not done.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {ALONE_WAIT:.0f} s for the tests that run alone to be done")
        time.sleep(0.1)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[object]:
    """Start ``python script`` (the text given) in its own session; check it leaves nothing."""
    children: list[Child] = []

    def start(
        source: str,
        *,
        env: dict[str, str] | None = None,
        argv: list[str] | None = None,
        wait_ready: bool = True,
    ) -> Child:
        script = tmp_path / f"scenario_{len(children)}.py"
        script.write_text(textwrap.dedent(source))
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("LASTCALL_")}
        full_env = {**inherited, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1", **(env or {})}
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, *(argv or [sys.executable, str(script)])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
            cwd=tmp_path,
            start_new_session=True,
        )
        child = Child(proc)
        children.append(child)
        if wait_ready:
            child.wait_for("ready")
        return child

    start.script_dir = tmp_path  # type: ignore[attr-defined]
    yield start
    leftovers = []
    for child in children:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()
            leftovers.append(child.pid)
        for pump in child._pumps:
            pump.join(WAIT)
        # What outlives its parent by a moment (multiprocessing's resource tracker, say)
        # is not left behind: what still runs after this is.
        deadline = time.monotonic() + EXIT_WAIT
        while live_processes_in_session(child.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        for pid in live_processes_in_session(child.pid):
            leftovers.append(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"processes left behind (now killed): {leftovers}"
