"""Rolling restart of 3 gRPC replicas behind a client-side round_robin balancer.

gRPC fleets balance in the client, not in a proxy: one channel over every
replica, grpc's own ``round_robin`` policy, and client-side health checking
(the channel watches each replica's ``grpc.health.v1.Health`` and picks only
those SERVING). The same run measures three servers, each a ``grpc.server``
with a unary RPC that holds its thread as long as the request says (``--work-ms``):

- ``no handling``: ``server.start(); server.wait_for_termination()``, as in
  grpc's ``helloworld`` example and most services (SIGTERM kills it);
- ``stop(grace) on SIGTERM``: a SIGTERM handler calling ``server.stop(GRACE)``
  and waiting for it, as grpc's graceful shutdown guide shows;
- ``LastCall(server)``: with grpcio-health-checking, NOT_SERVING at SIGTERM,
  a pre-stop delay of PRESTOP_DELAY s, then the drain.

Load: about RATE unary RPCs/s for DURATION s on one channel to 127.0.0.1 only;
meanwhile each replica gets SIGTERM, is waited for, started again, and waited
for until the channel routes RPCs to it, one after another. Each RPC is
counted by its status code.

Run: python benchmarks/grpc_rolling_restart.py [--duration S] [--rate N] [--work-ms MS]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

# Before grpc loads: its core logs, once per replica without a health service, that it
# assumes the replica healthy; the table's note says so once.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc
from rolling_restart import Tally, free_port

METHOD = "/lastcall.bench.Work/Do"
MODES = {  # mode: its name in the table
    "none": "no handling (helloworld)",
    "stop": "stop(grace) on SIGTERM (grpc's guide)",
    "lastcall": "LastCall(server)",
}
WORK_SECONDS = 0.02  # each RPC holds the server a little, so some are in flight at a stop
RATE = 200  # RPCs per second
DURATION = 20.0  # seconds of load
GRACE = 10.0
PRESTOP_DELAY = 0.5  # the health Watch stream tells the client at once; this covers its pick
TIMEOUT = 5.0  # each RPC's deadline
SERVICE_CONFIG = json.dumps(
    {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}
)


def serve(port: int, mode: str) -> None:
    """One replica: the work service on 127.0.0.1:port, stopped the way ``mode`` says."""

    def work(request: bytes, _context: grpc.ServicerContext) -> bytes:
        time.sleep(float(request or 0))
        return str(os.getpid()).encode()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=10))
    handler = grpc.unary_unary_rpc_method_handler(work)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("lastcall.bench.Work", {"Do": handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    if mode == "lastcall":
        from lastcall.grpc import LastCall  # only in this mode

        LastCall(server)
    elif mode == "stop":

        def on_sigterm(_signum: int, _frame: object) -> None:
            server.stop(GRACE).wait(GRACE)

        signal.signal(signal.SIGTERM, on_sigterm)
    server.start()
    server.wait_for_termination()


@dataclass
class Replica:
    mode: str
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        """Start it; its pid once it answers an RPC of its own."""
        env = {
            **os.environ,
            "LASTCALL_PRESTOP_DELAY": str(PRESTOP_DELAY),
            "LASTCALL_GRACE": str(GRACE),
        }
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(self.port), self.mode],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            pid = channel.unary_unary(METHOD)(b"", timeout=20, wait_for_ready=True)
        return int(pid)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(GRACE + 5)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@dataclass
class Seen:
    """The pids that answered the load, so a restart waits until its replica is picked."""

    pids: set[int] = field(default_factory=set)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def add(self, pid: int) -> None:
        with self.changed:
            if pid not in self.pids:
                self.pids.add(pid)
                self.changed.notify_all()

    def wait_for(self, pid: int, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: pid in self.pids, timeout)


@dataclass
class Load:
    """How much: ``rate`` unary RPCs/s for ``duration`` s, each holding its replica ``work`` s."""

    duration: float = DURATION
    rate: int = RATE
    work: float = WORK_SECONDS


def run_load(
    channel: grpc.Channel, load: Load, tally: Tally, seen: Seen, stop: threading.Event
) -> None:
    """Open-loop RPCs as ``load`` says (or until ``stop``), then the wait for their ends."""
    rpc = channel.unary_unary(METHOD)
    request = str(load.work).encode()  # how long the replica holds it
    calls = []

    def done(call: grpc.Future) -> None:
        code = call.code()
        if code == grpc.StatusCode.OK:
            seen.add(int(call.result()))
        tally.record(None if code == grpc.StatusCode.OK else code.name)

    began = time.monotonic()
    for i in range(int(load.rate * load.duration)):
        delay = began + i / load.rate - time.monotonic()
        if delay > 0 and stop.wait(delay):
            break
        call = rpc.future(request, timeout=TIMEOUT)
        call.add_done_callback(done)
        calls.append(call)
    for call in calls:
        call.exception(TIMEOUT + 1)  # waits for its end


def measure(mode: str, load: Load) -> Tally:
    replicas = [Replica(mode, free_port()) for _ in range(3)]
    try:
        for replica in replicas:
            replica.start()
        target = "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in replicas)
        options = [("grpc.service_config", SERVICE_CONFIG)]
        with grpc.insecure_channel(target, options=options) as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
            tally, seen, stop = Tally(), Seen(), threading.Event()
            sender = threading.Thread(target=run_load, args=(channel, load, tally, seen, stop))
            sender.start()
            time.sleep(1.0)  # steady state before the first restart
            for replica in replicas:
                replica.stop()
                pid = replica.start()
                if not seen.wait_for(pid, 15):
                    print(f"{MODES[mode]}: the channel sent nothing to the new replica in 15 s")
            sender.join(load.duration + TIMEOUT + 15)
            stop.set()
            sender.join()
        return tally
    finally:
        for replica in replicas:
            replica.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=DURATION, help="seconds of load")
    parser.add_argument("--rate", type=int, default=RATE, help="RPCs per second (at most 500)")
    parser.add_argument("--work-ms", type=float, default=WORK_SECONDS * 1000, help="per RPC")
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1])
        return
    if not 0 < args.duration <= 120 or not 0 < args.rate <= 500 or not 0 <= args.work_ms <= 1000:
        raise SystemExit(
            "--duration is 0-120 s, --rate 1-500 RPC/s, --work-ms 0-1000: the load stays bounded"
        )
    load = Load(args.duration, args.rate, args.work_ms / 1000)
    rows = [(name, measure(mode, load)) for mode, name in MODES.items()]
    print(f"{'server':<40}{'sent':>6}{'OK':>7}{'failed':>16}  failed by status code")
    for name, tally in rows:
        failed = f"{tally.failed} ({tally.failed / max(tally.sent, 1):.1%})"
        print(f"{name:<40}{tally.sent:>6}{tally.ok:>7}{failed:>16}  {tally.errors or '-'}")
    print(
        f"(3 replicas, one channel: round_robin with client-side health checking; "
        f"~{load.rate} unary RPC/s for {load.duration:.0f} s, {load.work * 1000:.0f} ms each; "
        f"grace {GRACE:.0f} s; LastCall's pre-stop delay {PRESTOP_DELAY} s; "
        f"grpcio {grpc.__version__})\n(the servers as shipped have no health service: the "
        "channel checks it, gets UNIMPLEMENTED and takes them as healthy, as grpc specifies)"
    )


if __name__ == "__main__":
    main()
