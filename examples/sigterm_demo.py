"""Watch lastcall handle a SIGTERM, the signal Kubernetes, Docker and systemd send.

Run it with no arguments: it starts a small service as a child process (the
same file with ``--service``), sends it SIGTERM the way an orchestrator
would, and prints what the service said and the report it wrote.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def service() -> None:
    import lastcall  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="  service | %(name)s: %(message)s")
    lastcall.install(grace=5)

    def worker() -> None:
        while not lastcall.stopping.wait(0.1):
            pass  # a background loop: polls the stop token instead of sleeping
        print("  service | worker loop saw the stop token and ended", flush=True)

    loop = threading.Thread(target=worker)
    loop.start()

    @lastcall.on_shutdown(phase="workers")
    def join_worker() -> None:
        loop.join()

    @lastcall.on_shutdown
    def close_database() -> None:
        print("  service | closing the database (registered first, runs last)", flush=True)

    @lastcall.on_shutdown
    def flush_cache() -> None:
        print("  service | flushing the cache (registered last, runs first)", flush=True)

    @lastcall.on_shutdown(timeout=0.5)
    def stuck_exporter() -> None:
        time.sleep(60)  # a hook that hangs is abandoned at its timeout

    print("  service | ready", flush=True)
    while True:
        time.sleep(1)


def main() -> int:
    report = Path(tempfile.mkdtemp()) / "report.json"
    env = {**os.environ, "LASTCALL_REPORT": str(report), "PYTHONUNBUFFERED": "1"}
    print("starting the service ...")
    child = subprocess.Popen(
        [sys.executable, __file__, "--service"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert child.stdout is not None
    for line in child.stdout:
        print(line, end="")
        if "ready" in line:
            break
    print(f"sending SIGTERM to pid {child.pid}, as `docker stop` would ...")
    sent = time.monotonic()
    child.send_signal(signal.SIGTERM)
    for line in child.stdout:
        print(line, end="")
    status = child.wait()
    took = time.monotonic() - sent
    name = signal.Signals(-status).name if status < 0 else f"status {status}"
    shown = 128 - status if status < 0 else status
    print(f"service ended by {name} after {took:.2f} s (a shell would show {shown})")
    data = json.loads(report.read_text())
    print(f"report ({report}):")
    for hook in data["hooks"]:
        print(
            f"  {hook['phase']:<8} {hook['name']:<45} {hook['outcome']:<8} {hook['duration']:.3f} s"
        )
    report.unlink()
    report.parent.rmdir()
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--service"]:
        service()
    else:
        sys.exit(main())
