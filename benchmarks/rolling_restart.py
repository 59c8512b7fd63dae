"""Rolling restart behind HAProxy: requests lost while 3 replicas restart one by one.

For each server, the same run measures the server as shipped (a naive
/readyz that always says 200) and with lastcall (readiness red at SIGTERM,
a pre-stop delay a little longer than two health-check intervals, then the
drain). HAProxy (Debian's package, installed when missing) checks /readyz
every 200 ms and is configured without retries, so every failure shows;
``--retries`` repeats the run with ``retries 3`` and ``option redispatch``.

Load: about RATE requests/s for DURATION seconds to 127.0.0.1 only, a new
connection each; meanwhile each replica gets SIGTERM, is waited for, started
again, and waited for until HAProxy sees it up, one after another.

Run: python benchmarks/rolling_restart.py [--servers werkzeug,waitress] [--retries]
[--duration S]. Servers: gunicorn, gunicorn-gthread, waitress, uvicorn, werkzeug,
granian, daphne, aiohttp, tornado. gRPC balances in the client, not behind a proxy:
its rolling restart is grpc_rolling_restart.py.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECK_INTERVAL = 0.2  # HAProxy's health check period (seconds)
PRESTOP_DELAY = 2.5 * CHECK_INTERVAL  # "a little longer than two health-check intervals"
RATE = 200  # requests per second
DURATION = 20.0  # seconds of load
GRACE = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_haproxy() -> str:
    path = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if path:
        return path
    print("HAProxy is missing; installing Debian's package ...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "haproxy"], check=True, capture_output=True)
    return shutil.which("haproxy") or "/usr/sbin/haproxy"


def replica_argv(server: str, port: int, *, lastcall: bool) -> list[str]:
    """The command for one replica: the server as shipped, or with lastcall's integration."""
    bind = f"127.0.0.1:{port}"
    if server in ("werkzeug", "waitress", "aiohttp", "tornado"):
        return [sys.executable, str(HERE / "rolling_app.py")]
    if server in ("gunicorn", "gunicorn-gthread"):
        argv = [sys.executable, "-m", "gunicorn", "-b", bind, "-w", "2", "--chdir", str(HERE)]
        if server == "gunicorn-gthread":
            argv += ["-k", "gthread", "--threads", "4"]
        if lastcall:
            argv += ["-c", "python:lastcall.gunicorn"]
        return [*argv, "rolling_app:wsgi_app"]  # lastcall.gunicorn wraps the app itself
    if server == "uvicorn":
        target = "rolling_app:asgi_with_lastcall" if lastcall else "rolling_app:asgi_app"
        argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "--port", str(port)]
        return [*argv, *(["--factory"] if lastcall else []), "--log-level", "warning", target]
    if server == "granian":  # with lastcall, granian's command line whose master ends by the signal
        module = "lastcall.granian" if lastcall else "granian"
        argv = [sys.executable, "-m", module, "--interface", "asgi", "--working-dir", str(HERE)]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        target = (
            ["--factory", "rolling_app:asgi_with_lastcall"]
            if lastcall
            else ["rolling_app:asgi_app"]
        )
        return [*argv, *target]
    if server == "daphne":  # rolling_app builds daphne_app for the SERVER it is told
        argv = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "-v", "0"]
        return [*argv, "rolling_app:daphne_app"]
    raise SystemExit(f"unknown server {server!r}")


@dataclass
class Replica:
    server: str
    lastcall: bool
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "PORT": str(self.port),
            "SERVER": self.server,
            "LASTCALL": "1" if self.lastcall else "0",
            "LASTCALL_PRESTOP_DELAY": str(PRESTOP_DELAY),
            "LASTCALL_GRACE": str(GRACE),
        }
        self.proc = subprocess.Popen(
            replica_argv(self.server, self.port, lastcall=self.lastcall),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd=HERE,  # daphne imports rolling_app from the working directory
        )
        wait_ready(self.port)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(GRACE + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def wait_ready(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"a replica on port {port} did not answer within {timeout} s")


HAPROXY_CONFIG = """
global
    maxconn 2000
defaults
    mode http
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    retries {retries}
    {redispatch}
frontend front
    bind 127.0.0.1:{front}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /readyz
    default-server inter {inter}ms fall 2 rise 2
{servers}
"""


@dataclass
class Tally:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, error: str | None) -> None:
        with self.lock:
            self.sent += 1
            if error is None:
                self.ok += 1
            else:
                self.failed += 1
                self.errors[error] = self.errors.get(error, 0) + 1


def one_request(port: int, tally: Tally) -> None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        conn.close()
        tally.record(None if response.status == 200 else f"HTTP {response.status}")
    except OSError as exc:
        tally.record(type(exc).__name__)


def run_load(port: int, tally: Tally, stop: threading.Event, duration: float) -> None:
    """Open-loop load at RATE/s for ``duration`` s (or until ``stop``), bounded in count."""
    with ThreadPoolExecutor(max_workers=64) as pool:
        began = time.monotonic()
        for i in range(int(RATE * duration)):
            due = began + i / RATE
            delay = due - time.monotonic()
            if delay > 0 and stop.wait(delay):
                break
            pool.submit(one_request, port, tally)


def measure(
    haproxy: str, server: str, *, lastcall: bool, retries: bool, duration: float = DURATION
) -> Tally:
    replicas = [Replica(server, lastcall, free_port()) for _ in range(3)]
    front = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="lastcall-rolling-"))
    haproxy_proc = None
    try:
        for replica in replicas:
            replica.start()
        servers = "\n".join(
            f"    server r{i} 127.0.0.1:{r.port} check" for i, r in enumerate(replicas)
        )
        config = HAPROXY_CONFIG.format(
            retries=3 if retries else 0,
            redispatch="option redispatch" if retries else "",
            front=front,
            inter=int(CHECK_INTERVAL * 1000),
            servers=servers,
        )
        (workdir / "haproxy.cfg").write_text(config)
        haproxy_proc = subprocess.Popen(
            [haproxy, "-db", "-f", str(workdir / "haproxy.cfg")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_ready(front)
        tally = Tally()
        stop = threading.Event()
        load = threading.Thread(target=run_load, args=(front, tally, stop, duration))
        load.start()
        time.sleep(1.0)  # steady state before the first restart
        for replica in replicas:
            replica.stop()
            replica.start()
            time.sleep(4 * CHECK_INTERVAL)  # HAProxy needs `rise 2` checks to route to it again
        load.join(duration + 15)
        stop.set()
        return tally
    finally:
        for replica in replicas:
            replica.kill()
        if haproxy_proc is not None:
            haproxy_proc.terminate()
            haproxy_proc.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="gunicorn-gthread,waitress,uvicorn,werkzeug")
    parser.add_argument("--retries", action="store_true", help="also run with HAProxy retries")
    parser.add_argument("--duration", type=float, default=DURATION, help="seconds of load")
    args = parser.parse_args()
    if "grpc" in args.servers.split(","):
        raise SystemExit("gRPC balances in the client: run benchmarks/grpc_rolling_restart.py")
    haproxy = ensure_haproxy()
    rows = []
    for server in args.servers.split(","):
        for retries in (False, True) if args.retries else (False,):
            plain = measure(
                haproxy, server, lastcall=False, retries=retries, duration=args.duration
            )
            with_lastcall = measure(
                haproxy, server, lastcall=True, retries=retries, duration=args.duration
            )
            rows.append((server, retries, plain, with_lastcall))
    print(
        f"{'server':<18}{'retries':<9}{'sent':>6}{'failed as shipped':>19}"
        f"{'failed with lastcall':>22}  errors as shipped / with lastcall"
    )
    for server, retries, plain, ours in rows:
        print(
            f"{server:<18}{'yes' if retries else 'no':<9}{plain.sent:>6}"
            f"{plain.failed:>12} ({plain.failed / max(plain.sent, 1):5.1%})"
            f"{ours.failed:>14} ({ours.failed / max(ours.sent, 1):5.1%})"
            f"  {plain.errors or '-'} / {ours.errors or '-'}"
        )
    print(
        f"(3 replicas behind HAProxy, health check every {CHECK_INTERVAL * 1000:.0f} ms, "
        f"~{RATE} req/s for {args.duration:.0f} s; "
        f"pre-stop delay {PRESTOP_DELAY:.2f} s with lastcall)"
    )


if __name__ == "__main__":
    main()
