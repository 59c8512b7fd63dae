"""The drill's clients: every request on a new connection, its fate and its timing.

Fates, in the words an operator uses: an HTTP status (``200``, ``503``...);
``refused`` (the connection was refused: nothing listened, which a load
balancer retries elsewhere); ``reset`` (accepted, then closed or reset
without a response: the request was lost); ``timed out``.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from lastcall.cli.runner import HOST

DELAY_HEADER = "X-Lastcall-Drill-Delay"


@dataclass
class RequestRecord:
    """One request: when it started and ended (seconds on the drill's clock) and how."""

    index: int
    kind: str  # "before" the stop (acknowledged writes), "in flight" at the stop, "late"
    started: float
    ended: float
    fate: str
    detail: str = ""

    @property
    def served(self) -> bool:
        """Answered 200: the request was served."""
        return self.fate == "200"


def fate_of(exc: httpx.HTTPError) -> str:
    """Tell a refused connection from one that was accepted and then lost."""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, ConnectionRefusedError):
                return "refused"
            cause = cause.__cause__ or cause.__context__
        return "refused" if "refused" in str(exc).lower() else "reset"
    return "reset"


class Load:
    """Requests to one app, each on a connection of its own, run on a bounded thread pool.

    ``write`` makes each request an order to the demo app (``POST
    /order?id=N``) so acknowledged writes can be checked against SQLite;
    otherwise each is ``GET path``.
    """

    def __init__(
        self, port: int, *, clock: float, timeout: float, workers: int, path: str, write: bool
    ) -> None:
        self._clock = clock
        self._path = path
        self._write = write
        self._client = httpx.Client(
            base_url=f"http://{HOST}:{port}",
            timeout=timeout,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
            headers={"Connection": "close"},
        )
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="drill-client")
        self._lock = threading.Lock()
        self._futures: list[Future[RequestRecord]] = []

    def now(self) -> float:
        """Seconds on the drill's clock."""
        return time.time() - self._clock

    def send(self, kind: str, delay: float = 0.0) -> Future[RequestRecord]:
        """Start one request now, on a new connection; ``delay`` makes it stay in flight."""
        with self._lock:
            index = len(self._futures)
            future = self._pool.submit(self._one, index, kind, delay)
            self._futures.append(future)
        return future

    def _one(self, index: int, kind: str, delay: float) -> RequestRecord:
        headers = {DELAY_HEADER: str(delay)} if delay else {}
        started = self.now()
        try:
            if self._write:
                response = self._client.post("/order", params={"id": index}, headers=headers)
            else:
                response = self._client.get(self._path, headers=headers)
        except httpx.HTTPError as exc:
            return RequestRecord(index, kind, started, self.now(), fate_of(exc), str(exc))
        return RequestRecord(index, kind, started, self.now(), str(response.status_code))

    def control(self, action: str, timeout: float) -> httpx.Response:
        """A drill control request (``/_drill/...``); transport errors are the caller's."""
        return self._client.get(f"/_drill/{action}", timeout=timeout)

    def results(self, timeout: float) -> list[RequestRecord]:
        """Every request's record, in the order they were sent; waits at most ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            futures = list(self._futures)
        return [f.result(max(0.0, deadline - time.monotonic())) for f in futures]

    def close(self) -> None:
        """Let go of the pool and the client; requests still running end with their server."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
