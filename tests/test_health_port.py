"""Health on a port of its own: probes answered while the app is busy, and during the stop."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import statistics
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import WAIT, free_port
from test_process_triggers import BUSY_MAIN, PRELUDE

from lastcall import Coordinator
from lastcall._config import resolve
from lastcall._integration import Integration


def probe(port: int, path: str) -> tuple[int, dict[str, object]]:
    """GET ``path`` on the health port; retried only until the listener is up (bounded)."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())
        except urllib.error.URLError as error:
            if not isinstance(error.reason, ConnectionRefusedError) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


BUSY = """
lastcall.install(prestop_delay=3, grace=6)
lastcall.on_shutdown(say("close"))
out("ready")
while True:
    sum(range(10**6))  # the only worker, always busy
"""


def test_probes_are_answered_while_the_app_is_busy_and_tell_the_stop(spawn):
    """Steps: the app's main thread never stops computing; /readyz on the health port says
    200; after SIGTERM, during the pre-stop delay, /readyz says 503 stopping and /livez 200."""
    port = free_port()
    child = spawn(PRELUDE + BUSY, env={"LASTCALL_HEALTH_PORT": str(port)})
    assert probe(port, "/readyz") == (200, {"status": "ready"})
    assert probe(port, "/livez") == (200, {"status": "alive"})
    child.send(signal.SIGTERM)
    child.wait_for("shutdown started", stream="stderr")
    assert probe(port, "/readyz") == (503, {"status": "stopping"})
    assert probe(port, "/livez") == (200, {"status": "alive"})
    assert child.finish() == -signal.SIGTERM


def test_readiness_can_be_turned_off_and_on_with_a_reason(spawn):
    """Steps: the app turns readiness off (its own SIGUSR1 handler) and on (SIGUSR2);
    /readyz follows with the reason, /livez stays 200."""
    port = free_port()
    child = spawn(
        PRELUDE
        + """
lastcall.install()
signal.signal(signal.SIGUSR1, lambda *_: lastcall.set_not_ready("shedding load"))
signal.signal(signal.SIGUSR2, lambda *_: lastcall.set_ready())
out("ready")
while True:
    time.sleep(0.05)
""",
        env={"LASTCALL_HEALTH_PORT": str(port)},
    )
    assert probe(port, "/readyz")[0] == 200
    child.send(signal.SIGUSR1)
    deadline = time.monotonic() + WAIT
    while probe(port, "/readyz")[0] == 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert probe(port, "/readyz") == (503, {"status": "not_ready", "reason": "shedding load"})
    assert probe(port, "/livez")[0] == 200
    child.send(signal.SIGUSR2)
    while probe(port, "/readyz")[0] == 503 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert probe(port, "/readyz") == (200, {"status": "ready"})
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM


def test_readiness_toggle_in_process():
    coordinator = Coordinator(run_at_exit=False)
    server = Integration(coordinator)
    assert coordinator.readiness() == ("ready", None)
    server.expect_serving()
    assert coordinator.readiness() == ("starting", None)
    server.serving()
    booted: list[int] = []
    server.expect_serving(until=lambda: len(booted) >= 2)  # a master counting workers
    booted.append(1)
    assert coordinator.readiness() == ("starting", None)
    booted.append(2)
    assert coordinator.readiness() == ("ready", None)
    booted.clear()
    assert coordinator.readiness() == ("ready", None)  # once serving, not asked again
    coordinator.set_not_ready("shedding load")
    assert coordinator.readiness() == ("not_ready", "shedding load")
    coordinator.set_ready()
    assert coordinator.readiness() == ("ready", None)
    coordinator.shutdown()
    assert coordinator.readiness() == ("stopping", None)


def test_a_bad_or_taken_port_is_one_line_at_start_up(spawn):
    with pytest.raises(ValueError, match="LASTCALL_HEALTH_PORT='http' is not a port number"):
        resolve(environ={"LASTCALL_HEALTH_PORT": "http"})
    with pytest.raises(ValueError, match="from 0 to 65535"):
        resolve(health_port=70000)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        child = spawn(
            PRELUDE
            + """
try:
    lastcall.install()
except OSError as exc:
    out("refused:", exc)
out("ready")
""",
            env={"LASTCALL_HEALTH_PORT": str(port)},
        )
        assert child.finish() == 0
        line = child.wait_for("refused:")
        assert f"LASTCALL_HEALTH_PORT={port}: cannot listen on 127.0.0.1:{port}" in line


BUSY_APP = """
import os, time

time.sleep(0.5)  # the app takes a while to load: the master's /readyz says starting

def app(environ, start_response):
    if environ["PATH_INFO"] == "/busy":
        os.write(1, b"busy\\n")
        time.sleep(3)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done"]
"""


def test_gunicorn_master_serves_the_health_port_for_a_busy_worker(spawn):
    """Steps: gunicorn, one sync worker, LASTCALL_HEALTH_PORT: the master answers /readyz
    starting until the worker has loaded the app, then 200, in well under a second while the
    only worker is busy for 3 s; after SIGTERM /readyz 503 stopping, /livez 200; the busy
    request still gets its 200."""
    pytest.importorskip("gunicorn")  # the core's legs on other Pythons have no servers
    from test_gunicorn import collect, send_slow, start, wait_lines

    health = free_port()
    child = start(
        spawn, workers=1, app=BUSY_APP, env={"LASTCALL_HEALTH_PORT": str(health)}, wait=False
    )
    assert probe(health, "/readyz") == (503, {"status": "starting"})
    wait_lines(child, "ready; its shutdown hooks", 1)
    assert probe(health, "/readyz") == (200, {"status": "ready"})

    busy, readers = collect(send_slow(child.port, 1, "/busy"))
    child.wait_for("busy")
    began = time.monotonic()
    assert probe(health, "/readyz") == (200, {"status": "ready"})
    assert time.monotonic() - began < 0.5
    child.send(signal.SIGTERM)
    deadline = time.monotonic() + WAIT
    while probe(health, "/readyz")[0] == 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert probe(health, "/readyz") == (503, {"status": "stopping"})
    assert probe(health, "/livez") == (200, {"status": "alive"})
    assert child.finish() == -signal.SIGTERM, child.output()
    readers[0].join(WAIT)
    assert busy == [(200, b"done")]


# ---------------------------------------------------------------- bounded under load

READYZ = b"GET /readyz HTTP/1.1\r\nHost: probe\r\n\r\n"
SLOW_CLIENTS = 500  # connections that trickle a request they never finish
TRICKLE_EVERY = 0.5  # seconds between their bytes
TRICKLE_FOR = 3.0  # seconds in all


def threads_of(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/task").iterdir())


def timed_readyz(port: int, host: str = "127.0.0.1", timeout: float = WAIT) -> tuple[float, bytes]:
    """Seconds for one /readyz to be answered in full, and its status line."""
    began = time.perf_counter()
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall(READYZ)
        answer = b""
        while chunk := conn.recv(4096):
            answer += chunk
    return time.perf_counter() - began, answer.split(b"\r\n", 1)[0]


class SlowClients:
    """Connections that send a request line, then a byte every so often and never the end.

    One the server dropped is opened again at the next byte, so ``count`` keep
    trying for as long as the test trickles (a slowloris).
    """

    OPENING = 1.0  # seconds, at most, spent opening connections per call (a full backlog)

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.budget = time.monotonic() + self.OPENING
        self.conns = [self._open() for _ in range(count)]
        self.reopened = 0

    def _open(self) -> socket.socket | None:
        if time.monotonic() > self.budget:
            return None  # tried again at the next byte
        try:
            conn = socket.create_connection(("127.0.0.1", self.port), timeout=0.2)
            conn.sendall(b"GET /readyz HTTP/1.1\r\nX-Slow: ")
        except OSError:
            return None  # a full backlog (on main, say): tried again at the next byte
        conn.setblocking(False)  # noqa: FBT003  # positional only
        return conn

    def trickle(self) -> None:
        self.budget = time.monotonic() + self.OPENING
        for i, conn in enumerate(self.conns):
            try:
                if conn is None or conn.recv(1, socket.MSG_PEEK) == b"":
                    raise ConnectionResetError  # dropped by the server: open another
            except BlockingIOError:  # still open, nothing said to it
                try:
                    conn.send(b"a")  # type: ignore[union-attr]
                    continue
                except OSError:
                    pass
            except OSError:
                pass
            if conn is not None:
                conn.close()
            self.conns[i] = self._open()
            self.reopened += 1

    def closed_by_server(self) -> list[int]:
        """Which connections the server has closed (by their order of opening)."""
        closed = []
        for i, conn in enumerate(self.conns):
            try:
                if conn is None or conn.recv(1, socket.MSG_PEEK) == b"":
                    closed.append(i)
            except BlockingIOError:
                pass
            except OSError:
                closed.append(i)
        return closed

    def close(self) -> None:
        for conn in self.conns:
            if conn is not None:
                conn.close()


def test_slow_clients_take_no_threads_and_probes_and_the_stop_go_on(spawn):
    """Steps: 500 connections trickle a byte every 0.5 s for 3 s (one dropped is opened
    again); meanwhile /readyz answers, half of them within 50 ms and all within 0.5 s, and
    the child's thread count never grows; then SIGTERM: the hook runs, it ends by the signal.
    On main (a thread per connection) the child held about 500 threads."""
    port = free_port()
    child = spawn(
        PRELUDE + "lastcall.install()\nlastcall.on_shutdown(say('close'))\n" + BUSY_MAIN,
        env={"LASTCALL_HEALTH_PORT": str(port)},
    )
    assert probe(port, "/readyz")[0] == 200
    before = threads_of(child.pid)
    slow = SlowClients(port, SLOW_CLIENTS)
    try:
        latencies: list[float] = []
        threads: list[int] = []
        end = time.monotonic() + TRICKLE_FOR
        while time.monotonic() < end:
            slow.trickle()
            tick = time.monotonic() + TRICKLE_EVERY
            while time.monotonic() < tick:
                try:
                    seconds, status = timed_readyz(port, timeout=1.0)
                except OSError:  # no answer within the kubelet's default probe timeout
                    seconds, status = float("inf"), b""
                assert status == b"HTTP/1.1 200 OK"
                latencies.append(seconds)
                threads.append(threads_of(child.pid))
                time.sleep(0.05)  # pacing the probes, not waiting for anything
    finally:
        child.send(signal.SIGTERM)  # the slow clients still there
        code = child.finish()
        slow.close()
    assert code == -signal.SIGTERM, child.output()
    assert "hook:close" in child.stdout
    assert max(threads) <= before, f"threads {before} before, up to {max(threads)} with them"
    assert statistics.median(latencies) < 0.05, sorted(latencies)
    assert max(latencies) < 0.5, sorted(latencies)
    assert slow.reopened > 0  # beyond the 256 the listener keeps, the oldest were dropped


def burst(port: int, count: int, host: str = "127.0.0.1") -> list[tuple[bytes, float] | None]:
    """``count`` probes started at once: each one's status line and seconds, None if unanswered.

    Every connection is begun before any is served (non-blocking connects), the request
    sent as soon as its connection is up; bounded by WAIT in all.
    """
    selector = selectors.DefaultSelector()
    results: list[tuple[bytes, float] | None] = []
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(count):
        conn = socket.socket(family, socket.SOCK_STREAM)
        conn.setblocking(False)  # noqa: FBT003  # positional only
        conn.connect_ex((host, port))
        selector.register(conn, selectors.EVENT_WRITE, [time.perf_counter(), b""])
    deadline = time.monotonic() + WAIT
    while selector.get_map() and time.monotonic() < deadline:
        for key, mask in selector.select(0.1):
            conn, state = key.fileobj, key.data
            assert isinstance(conn, socket.socket)
            try:
                if mask & selectors.EVENT_WRITE:
                    if conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                        conn.send(READYZ)
                        selector.modify(conn, selectors.EVENT_READ, state)
                        continue
                    data = None
                else:
                    data = conn.recv(4096)
            except OSError:
                data = None
            if data:
                state[1] += data
                continue
            answered = data == b"" and state[1].startswith(b"HTTP/1.1 ")
            seconds = time.perf_counter() - state[0]
            results.append((state[1].split(b"\r\n", 1)[0], seconds) if answered else None)
            selector.unregister(conn)
            conn.close()
    for key in list(selector.get_map().values()):
        results.append(None)
        selector.unregister(key.fileobj)
        key.fileobj.close()  # type: ignore[union-attr]
    selector.close()
    return results


def test_a_thousand_probes_at_once_are_all_answered_within_a_second(spawn):
    """Steps: 1,000 probes begun at once on the health port: every one answered 200, the
    slowest under 1 s (a backlog of 5 on main: some waited out 1 s and 3 s SYN retries)."""
    port = free_port()
    child = spawn(
        PRELUDE + "lastcall.install()\n" + BUSY_MAIN, env={"LASTCALL_HEALTH_PORT": str(port)}
    )
    assert probe(port, "/readyz")[0] == 200
    results = burst(port, 1000)
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM
    assert_all_answered(results, within=1.0)


def assert_all_answered(results: list[tuple[bytes, float] | None], within: float) -> None:
    answered = [r for r in results if r is not None]
    assert len(answered) == len(results), f"{len(results) - len(answered)} unanswered"
    assert {status for status, _ in answered} == {b"HTTP/1.1 200 OK"}
    slowest = max(seconds for _, seconds in answered)
    assert slowest < within, f"slowest {slowest:.3f} s"


# A descriptor limit of 1024 (systemd's default soft limit): the listener keeps at most
# 1024 // 8 = 128 connections waiting, so slow clients leave the app its descriptors.
LOW_FD_LIMIT = """
import resource
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
"""
KEPT = 128


def descriptors_of(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


def test_beyond_its_limit_the_oldest_waiting_connections_are_dropped(spawn):
    """Steps: descriptor limit 1024, so 128 connections may wait; 300 connections each send a
    request line and no more, one after the other: the 172 opened first are closed by the
    listener (oldest first, each once it had 0.25 s to finish), the newest 128 stay open, the
    child's descriptors never grow by more than 128, and /readyz still answers. On main all
    300 were held, a thread each, until their 5 s timeout."""
    port = free_port()
    child = spawn(
        PRELUDE + LOW_FD_LIMIT + "lastcall.install()\n" + BUSY_MAIN,
        env={"LASTCALL_HEALTH_PORT": str(port)},
    )
    assert probe(port, "/readyz")[0] == 200
    before = descriptors_of(child.pid)
    slow = SlowClients(port, 300)
    try:
        dropped: set[int] = set()
        descriptors = []
        deadline = time.monotonic() + WAIT
        while len(dropped) < 300 - KEPT and time.monotonic() < deadline:
            descriptors.append(descriptors_of(child.pid))
            dropped = set(slow.closed_by_server())
            time.sleep(0.02)  # polling, bounded by WAIT
        answer = timed_readyz(port)[1]
    finally:
        slow.close()
        child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM
    # The oldest first: what was dropped is a prefix of the order they connected in, at
    # least the 172 beyond the limit (one more may go while the loop above looks).
    assert dropped == set(range(len(dropped))), sorted(dropped)
    assert 300 - KEPT <= len(dropped) <= 300 - KEPT + 1, len(dropped)
    assert answer == b"HTTP/1.1 200 OK"
    # Near the limit, never the 300: one accepted while the oldest still had time to speak,
    # and what a loaded machine shows of descriptors being closed as they are counted.
    assert max(descriptors) <= before + KEPT + 8, (before, max(descriptors))


def test_a_burst_beyond_its_limit_is_delayed_not_reset(spawn):
    """Steps: descriptor limit 1024 (128 may wait), 400 probes begun at once, each sending
    its request only once all are connecting: all answered within 1 s. Dropping the oldest
    at once, the first ones were closed before they spoke (119 to 250 of 400 unanswered)."""
    port = free_port()
    child = spawn(
        PRELUDE + LOW_FD_LIMIT + "lastcall.install()\n" + BUSY_MAIN,
        env={"LASTCALL_HEALTH_PORT": str(port)},
    )
    assert probe(port, "/readyz")[0] == 200
    results = burst(port, 400)
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM
    assert_all_answered(results, within=1.0)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")
@pytest.mark.parametrize(("host", "probed"), [("::1", ["::1"]), ("::", ["::1", "127.0.0.1"])])
def test_ipv6_hosts_answer(spawn, host, probed):
    """Steps: LASTCALL_HEALTH_HOST=::1 answers on ::1; ``::`` on ::1 and on 127.0.0.1 (dual
    stack). On main both were refused at install() ("choose a free port")."""
    port = free_port()
    child = spawn(
        PRELUDE + "lastcall.install()\n" + BUSY_MAIN,
        env={"LASTCALL_HEALTH_PORT": str(port), "LASTCALL_HEALTH_HOST": host},
    )
    for address in probed:
        assert timed_readyz(port, address)[1] == b"HTTP/1.1 200 OK"
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()


BAD_HOSTS = ["no-such-host.invalid", "127.0.0.1:8081", "a" * 64]


def test_a_bad_host_is_one_line_at_install(spawn):
    """Steps: install() with each bad host raises OSError in one line naming
    LASTCALL_HEALTH_HOST (on main: "choose a free port", and a long label a UnicodeError
    from deep in the socket module)."""
    child = spawn(
        PRELUDE
        + f"""
for host in {BAD_HOSTS!r}:
    try:
        lastcall.Coordinator(run_at_exit=False).install(health_port=0, health_host=host)
    except Exception as exc:
        out("refused:", type(exc).__name__, repr(str(exc)))
out("ready")
"""
    )
    assert child.finish() == 0, child.output()
    lines = child.lines("refused:")
    assert len(lines) == len(BAD_HOSTS), child.output()
    for host, line in zip(BAD_HOSTS, lines, strict=True):
        assert line.startswith("refused: OSError "), line
        message = eval(line.split(" ", 2)[2])  # noqa: S307  # the repr it printed
        assert "\n" not in message
        assert message.startswith(f"LASTCALL_HEALTH_HOST={host!r} is not an address"), message
        assert "free port" not in message


# ---------------------------------------------------------------- at a pids limit

PIDS_V1 = Path("/sys/fs/cgroup/pids")
CGROOT_V2 = Path("/sys/fs/cgroup")


def make_pids_cgroup() -> Path | None:
    """A new pids cgroup (v1 or v2), or None if this machine will not let us make one."""
    if (PIDS_V1 / "cgroup.procs").exists():
        parent = PIDS_V1
    else:
        controllers = CGROOT_V2 / "cgroup.controllers"
        if not controllers.exists() or "pids" not in controllers.read_text().split():
            return None
        parent = CGROOT_V2
    group = parent / f"lastcall-health-test-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
    except OSError:
        return None
    if not (group / "pids.max").exists():  # v2 without pids enabled for children
        group.rmdir()
        return None
    return group


def remove_cgroup(group: Path) -> None:
    """rmdir once its processes are gone (they leave it when they are reaped); bounded."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            group.rmdir()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        else:
            return


TRICKLERS = 80


def test_at_its_pids_limit_slow_clients_do_not_break_the_stop(spawn, tmp_path):
    """Steps: the child in a pids cgroup whose pids.max is its thread count + 4; 80
    connections trickle; SIGTERM: the hook runs, the report is written, it ends by the
    signal. On main the 80 connections took every thread the limit allowed."""
    group = make_pids_cgroup()
    if group is None:
        pytest.skip("cannot make a pids cgroup here (needs root and a writable pids hierarchy)")
    port = free_port()
    report = tmp_path / "report.json"
    child = spawn(
        PRELUDE + "lastcall.install()\nlastcall.on_shutdown(say('close'))\n" + BUSY_MAIN,
        env={"LASTCALL_HEALTH_PORT": str(port), "LASTCALL_REPORT": str(report)},
    )
    try:
        assert probe(port, "/readyz")[0] == 200
        (group / "cgroup.procs").write_text(str(child.pid))
        (group / "pids.max").write_text(str(threads_of(child.pid) + 4))
        slow = SlowClients(port, TRICKLERS)
        try:
            for _ in range(3):
                slow.trickle()
                time.sleep(0.2)  # pacing the bytes, not waiting for anything
            assert timed_readyz(port)[1] == b"HTTP/1.1 200 OK"
            child.send(signal.SIGTERM)
            assert child.finish() == -signal.SIGTERM, child.output()
        finally:
            slow.close()
    finally:
        if child.proc.poll() is None:  # failed before it ended: the cgroup must empty
            child.proc.kill()
            child.proc.wait()
        remove_cgroup(group)
    assert "hook:close" in child.stdout, child.output()
    hooks = json.loads(report.read_text())["hooks"]
    assert [(h["name"], h["outcome"]) for h in hooks] == [("close", "ok")], hooks


FORKS = """
lastcall.install()
forking = threading.Event()
signal.signal(signal.SIGUSR1, lambda *_: forking.set())
out("ready")
while not forking.wait(0.05):
    pass
pid = os.fork()
if pid == 0:
    time.sleep(WAIT)  # holds whatever it inherited; ended by the test before then
    os._exit(0)
out("forked", pid)
while True:
    time.sleep(0.05)
"""


def wait_accepted(pid: int, port: int, client: socket.socket) -> None:
    """Wait (bounded) until process ``pid`` holds the server side of ``client``'s connection."""
    peer = f":{client.getsockname()[1]:04X}"
    local = f":{port:04X}"
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        inodes = [
            fields[9]
            for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
            if (fields := line.split())[1].endswith(local) and fields[2].endswith(peer)
        ]
        held = {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
        if inodes and f"socket:[{inodes[0]}]" in held:
            return
        time.sleep(0.01)  # polling, bounded
    pytest.fail(f"process {pid} never accepted the connection from {client.getsockname()}")


def test_a_forked_child_holds_none_of_the_listeners_connections(spawn):
    """Steps: a connection sends half a request; the process forks; the listener drops the
    connection at its 2 s deadline and the client sees the end at once: the child closed
    its inherited copy (on main a connection's thread had no deadline but 5 s per byte,
    and the child kept its descriptor open)."""
    port = free_port()
    child = spawn(PRELUDE + f"WAIT = {WAIT}\n" + FORKS, env={"LASTCALL_HEALTH_PORT": str(port)})
    assert probe(port, "/readyz")[0] == 200
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as slow:
        slow.sendall(b"GET /readyz HTTP/1.1\r\n")
        wait_accepted(child.pid, port, slow)
        child.send(signal.SIGUSR1)
        forked = int(child.wait_for("forked").split()[1])
        try:
            began = time.monotonic()
            slow.settimeout(4)
            try:
                end = slow.recv(100)
            except TimeoutError:
                end = None
            waited = time.monotonic() - began
        finally:
            os.kill(forked, signal.SIGKILL)
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM
    assert end == b"", f"no end of the connection after {waited:.1f} s"
    assert waited < 3.5  # the deadline is 2 s from its accept, which came before the fork


OUT_OF_DESCRIPTORS = """
import resource
resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
lastcall.install()
release = threading.Event()
signal.signal(signal.SIGUSR1, lambda *_: release.set())
out("ready")
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
out("full")
while not release.wait(0.05):
    pass
for fd in held:
    os.close(fd)
while True:
    time.sleep(0.05)
"""


def cpu_seconds(pid: int) -> float:
    """User and system time of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_descriptors_the_listener_waits_without_spinning(spawn):
    """Steps: the app has used every descriptor it may; a probe connects (the kernel takes
    it, the listener cannot accept it): over the next second the process uses under 50 ms of
    CPU (on main the listener retried accept() without pause); once the app frees its
    descriptors the probe is answered."""
    port = free_port()
    child = spawn(PRELUDE + OUT_OF_DESCRIPTORS, env={"LASTCALL_HEALTH_PORT": str(port)})
    child.wait_for("full")
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as waiting:
        waiting.sendall(READYZ)
        began_cpu, began = cpu_seconds(child.pid), time.monotonic()
        deadline = began + 1.0
        while time.monotonic() < deadline:  # a second of wall time, bounded
            time.sleep(deadline - time.monotonic())
        used = cpu_seconds(child.pid) - began_cpu
        child.send(signal.SIGUSR1)
        answer = waiting.recv(100)
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert used < 0.05, f"{used:.3f} s of CPU in a second, waiting for a descriptor"
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer
