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
from typing import TYPE_CHECKING

# httpx imports httpcore only when its first Client is made, and a matrix makes its first
# ones on several drill threads at once: a SIGTERM to the drill, raised on the main thread
# in the middle of that import, left the drill threads waiting on its module lock for ever
# (the matrix never ended). Imported here, once, before any drill thread runs.
import httpcore  # noqa: F401
import httpx

from lastcall.cli.runner import HOST

if TYPE_CHECKING:
    from collections.abc import Callable

DELAY_HEADER = "X-Lastcall-Drill-Delay"


@dataclass(frozen=True)
class Ask:
    """What each client asks a user's app: ``--method``, ``--path``, ``--header``, ``--data``.

    ``grpc_method``: an RPC instead (``--grpc-method``), its request ``body`` as JSON.
    """

    method: str = "GET"
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    grpc_method: str | None = None

    def __str__(self) -> str:
        return f"RPC {self.grpc_method}" if self.grpc_method else f"{self.method} {self.path}"


@dataclass
class RequestRecord:
    """One request: when it started and ended (seconds on the drill's clock) and how."""

    index: int
    kind: str  # "before" the stop, "in flight" at the stop, "late" (a new connection after it)
    started: float
    ended: float
    fate: str
    detail: str = ""


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


def classify(records: list[RequestRecord], stop_sent: float) -> None:
    """What a ``--cmd`` client's request was: in flight at the stop, or not.

    Answered before the stop: ``before``. Refused: its connection was made
    after the listener closed, so it was a new connection after the stop
    (``late``), never a request in flight at it.
    """
    for record in records:
        if record.kind != "in flight":
            continue
        if record.ended < stop_sent:
            record.kind = "before"
        elif record.fate == "refused":
            record.kind = "late"


class Load:
    """Requests to one app, each on a connection of its own, run on a bounded thread pool.

    ``write`` makes each request an order to the demo app (``POST
    /order?id=N``) so acknowledged writes can be checked against SQLite;
    otherwise each asks what ``ask`` says.
    """

    def __init__(
        self, port: int, *, clock: float, timeout: float, workers: int, ask: Ask, write: bool
    ) -> None:
        self._clock = clock
        self._ask = ask
        self._write = write
        self._client = httpx.Client(
            base_url=f"http://{HOST}:{port}",
            timeout=timeout,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
            headers={"Connection": "close"},
        )
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="drill-client")
        self._lock = threading.Lock()
        self._futures: list[Future[None]] = []
        self._records: list[RequestRecord] = []
        self._sent = 0

    def now(self) -> float:
        """Seconds on the drill's clock."""
        return time.time() - self._clock

    @property
    def answered(self) -> int:
        """How many requests have ended so far, whatever their fate."""
        with self._lock:
            return len(self._records)

    def send(self, kind: str, delay: float = 0.0) -> Future[None]:
        """Start one request now, on a new connection; ``delay`` makes it stay in flight."""
        return self._submit(self._one, kind, delay)

    def keep_sending(self, kind: str, until: threading.Event, most: int) -> Future[None]:
        """One client asking again as soon as it is answered, until ``until`` is set.

        For an app the drill cannot slow down (``--cmd``): whatever the app's
        pace, a request is in flight on every client the moment the stop is sent.
        """

        def loop() -> None:
            for _ in range(most):
                if until.is_set():
                    return
                self._one(kind, 0.0)

        return self._submit(loop)

    def _submit(self, task: Callable[..., None], *args: object) -> Future[None]:
        with self._lock:
            future = self._pool.submit(task, *args)
            self._futures.append(future)
        return future

    def _one(self, kind: str, delay: float) -> None:
        with self._lock:
            index, self._sent = self._sent, self._sent + 1
        headers = dict(self._ask.headers)
        if delay:
            headers[DELAY_HEADER] = str(delay)
        started = self.now()
        try:
            if self._write:
                response = self._client.post("/order", params={"id": index}, headers=headers)
            else:
                response = self._client.request(
                    self._ask.method, self._ask.path, headers=headers, content=self._ask.body
                )
        except httpx.HTTPError as exc:
            record = RequestRecord(index, kind, started, self.now(), fate_of(exc), str(exc))
        else:
            record = RequestRecord(index, kind, started, self.now(), str(response.status_code))
        with self._lock:
            self._records.append(record)

    def control(self, action: str, timeout: float) -> httpx.Response:
        """A drill control request (``/_drill/...``); transport errors are the caller's."""
        return self._client.get(f"/_drill/{action}", timeout=timeout)

    def results(self, timeout: float) -> list[RequestRecord]:
        """Every request's record, in the order they were sent; waits at most ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            futures = list(self._futures)
        for future in futures:
            future.result(max(0.0, deadline - time.monotonic()))
        with self._lock:
            return sorted(self._records, key=lambda record: record.index)

    def close(self) -> None:
        """Let go of the pool and the client; requests still running end with their server."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
