"""The WSGI middleware on a real threaded Werkzeug server, and called directly.

Threading and streaming are checked over real sockets on 127.0.0.1; what a
server cannot show (Werkzeug always sends ``Connection: close`` itself, and
closes every response) is checked by calling the middleware as a server
would. Tests wait on events with bounded timeouts, never on sleeps.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import TYPE_CHECKING, Any

import flask
import pytest
from werkzeug.serving import make_server
from werkzeug.test import EnvironBuilder

import lastcall
from lastcall import Coordinator
from lastcall.wsgi import LastCallMiddleware

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication as App

WAIT = 10.0  # upper bound for any single wait

Environ = dict[str, Any]


@pytest.fixture
def coordinator() -> Coordinator:
    return Coordinator(run_at_exit=False)


@pytest.fixture
def serve() -> Iterator[Callable[[App], int]]:
    """Serve an app on a real threaded Werkzeug server; return its port.

    At the end the server is shut down and every thread it started must
    have ended.
    """
    before = set(threading.enumerate())
    servers = []

    def start(app: App) -> int:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        servers.append((server, thread))
        return server.server_port

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(WAIT)
    # lastcall's log hand-off thread lives as long as the process, by design
    new = {t for t in set(threading.enumerate()) - before if t.name != "lastcall-log"}
    for thread in new:
        thread.join(WAIT)
    assert not {t for t in new if t.is_alive()}, "threads left running"


def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


class Gate:
    """Requests that enter and are held until released, counted as they arrive."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._cond = threading.Condition()
        self.entered = 0

    def enter(self) -> None:
        with self._cond:
            self.entered += 1
            self._cond.notify_all()
        assert self.release.wait(WAIT), "never released"

    def wait_entered(self, count: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.entered >= count, WAIT), self.entered


def held_app(gate: Gate) -> App:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        gate.enter()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    return app


def hello(environ: Environ, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"app saw {environ['PATH_INFO']}".encode()]


def call(
    app: LastCallMiddleware, path: str = "/", method: str = "GET"
) -> tuple[list[tuple[str, list[tuple[str, str]]]], Iterable[bytes]]:
    """Call the middleware as a server would; return what start_response got, and the body."""
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: object = None
    ) -> Callable[[bytes], None]:
        started.append((status, headers))
        return lambda data: None

    environ = EnvironBuilder(path=path, method=method).get_environ()
    return started, app(environ, start_response)


# ---------------------------------------------------------------- counting


def test_in_flight_is_exact_under_20_concurrent_requests(
    serve: Callable[[App], int], coordinator: Coordinator
) -> None:
    gate = Gate()
    middleware = LastCallMiddleware(held_app(gate), coordinator=coordinator)
    port = serve(middleware)
    statuses: list[int] = []
    clients = [
        threading.Thread(target=lambda: statuses.append(get(port, "/work")[0])) for _ in range(20)
    ]
    for client in clients:
        client.start()
    try:
        gate.wait_entered(20)
        assert middleware.in_flight == 20
        # Health answers while the app is saturated, and is not counted.
        status, _, body = get(port, "/readyz")
        assert (status, json.loads(body)) == (200, {"status": "ready"})
        assert middleware.in_flight == 20
    finally:
        gate.release.set()
        for client in clients:
            client.join(WAIT)
    assert statuses == [200] * 20
    assert middleware.wait_idle(WAIT)
    assert middleware.in_flight == 0


def test_a_streamed_response_counts_until_the_server_closes_it(
    serve: Callable[[App], int], coordinator: Coordinator
) -> None:
    resume = threading.Event()
    closed = threading.Event()

    def stream() -> Iterator[bytes]:
        try:
            yield b"first,"
            assert resume.wait(WAIT)
            yield b"last"
        finally:
            closed.set()

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return stream()  # the app has returned; the response has not

    middleware = LastCallMiddleware(app, coordinator=coordinator)
    port = serve(middleware)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        conn.request("GET", "/stream")
        response = conn.getresponse()
        assert response.read(6) == b"first,"
        assert middleware.in_flight == 1
        resume.set()
        assert response.read() == b"last"
    finally:
        resume.set()
        conn.close()
    assert middleware.wait_idle(WAIT)
    assert closed.is_set()
    assert middleware.in_flight == 0


def test_fully_iterated_still_counts_until_close_and_close_counts_once(
    coordinator: Coordinator,
) -> None:
    middleware = LastCallMiddleware(hello, coordinator=coordinator)
    _, body = call(middleware)
    assert list(body) == [b"app saw /"]
    assert middleware.in_flight == 1
    body.close()  # type: ignore[attr-defined]
    body.close()  # type: ignore[attr-defined]
    assert middleware.in_flight == 0


def test_closing_without_iterating_closes_the_apps_iterable(coordinator: Coordinator) -> None:
    class Body:
        closed = False

        def __iter__(self) -> Iterator[bytes]:
            yield b"never read"

        def close(self) -> None:
            self.closed = True

    inner = Body()

    def app(environ: Environ, start_response: StartResponse) -> Body:
        start_response("200 OK", [])
        return inner

    middleware = LastCallMiddleware(app, coordinator=coordinator)
    _, body = call(middleware)
    assert middleware.in_flight == 1
    body.close()  # type: ignore[attr-defined]
    assert inner.closed
    assert middleware.in_flight == 0


def test_app_raising_leaves_no_count(coordinator: Coordinator) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        raise RuntimeError("boom")

    middleware = LastCallMiddleware(app, coordinator=coordinator)
    with pytest.raises(RuntimeError, match="boom"):
        call(middleware)
    assert middleware.in_flight == 0


def test_start_response_raising_leaves_no_count(coordinator: Coordinator) -> None:
    middleware = LastCallMiddleware(hello, coordinator=coordinator)

    def start_response(*args: object) -> None:
        raise ValueError("headers already sent")

    environ = EnvironBuilder(path="/").get_environ()
    with pytest.raises(ValueError, match="headers already sent"):
        middleware(environ, start_response)  # type: ignore[arg-type]
    assert middleware.in_flight == 0


def test_errors_on_a_real_server_leave_no_count(
    serve: Callable[[App], int], coordinator: Coordinator
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        if environ["PATH_INFO"] == "/raise":
            raise RuntimeError("boom in the view")

        def broken_stream() -> Iterator[bytes]:
            yield b"partial"
            raise RuntimeError("boom in the stream")

        start_response("200 OK", [("Content-Type", "text/plain")])
        return broken_stream()

    middleware = LastCallMiddleware(app, coordinator=coordinator)
    port = serve(middleware)
    assert get(port, "/raise")[0] == 500
    with pytest.raises(http.client.HTTPException):  # the stream breaks off mid-body
        get(port, "/stream")
    assert middleware.wait_idle(WAIT)
    assert middleware.in_flight == 0


def test_wait_idle_wakes_when_the_last_request_closes(coordinator: Coordinator) -> None:
    middleware = LastCallMiddleware(hello, coordinator=coordinator)
    _, first = call(middleware)
    _, second = call(middleware)
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(middleware.wait_idle(WAIT)))
    waiter.start()
    first.close()  # type: ignore[attr-defined]
    assert middleware.in_flight == 1
    second.close()  # type: ignore[attr-defined]
    waiter.join(WAIT)
    assert results == [True]


def test_wait_idle_returns_false_on_timeout(coordinator: Coordinator) -> None:
    middleware = LastCallMiddleware(hello, coordinator=coordinator)
    _, body = call(middleware)
    began = time.monotonic()
    assert middleware.wait_idle(0.05) is False
    assert time.monotonic() - began >= 0.04
    body.close()  # type: ignore[attr-defined]
    assert middleware.wait_idle(0) is True


# ---------------------------------------------------------------- health


def test_readyz_is_red_in_pre_stop_while_livez_stays_green(
    serve: Callable[[App], int], coordinator: Coordinator
) -> None:
    gate = Gate()
    middleware = LastCallMiddleware(held_app(gate), coordinator=coordinator)
    port = serve(middleware)
    status, _, body = get(port, "/readyz")
    assert (status, json.loads(body)) == (200, {"status": "ready"})
    seen: dict[str, tuple[int, dict[str, str], bytes]] = {}

    @coordinator.on_shutdown(phase="pre_stop")
    def probe() -> None:
        seen["readyz"] = get(port, "/readyz")
        seen["livez"] = get(port, "/livez")

    holder = threading.Thread(target=get, args=(port, "/slow"))
    holder.start()
    try:
        gate.wait_entered(1)
        report = coordinator.shutdown()
    finally:
        gate.release.set()
        holder.join(WAIT)
    assert [h.outcome for h in report.hooks] == ["ok"]
    status, headers, body = seen["readyz"]
    assert status == 503
    assert json.loads(body) == {"status": "stopping", "in_flight": 1}
    assert headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "no-store"
    status, headers, body = seen["livez"]
    assert (status, json.loads(body)) == (200, {"status": "alive"})
    assert headers["Cache-Control"] == "no-store"
    assert get(port, "/livez")[0] == 200  # after the stop too: the process is still alive
    assert middleware.wait_idle(WAIT)


def test_health_before_the_stop(coordinator: Coordinator) -> None:
    middleware = LastCallMiddleware(hello, coordinator=coordinator)
    for path, expected in (("/livez", {"status": "alive"}), ("/readyz", {"status": "ready"})):
        started, body = call(middleware, path)
        status, headers = started[0]
        assert status == "200 OK"
        assert json.loads(b"".join(body)) == expected
        assert dict(headers) == {
            "Content-Type": "application/json",
            "Content-Length": str(len(json.dumps(expected))),
            "Cache-Control": "no-store",
        }
    assert middleware.in_flight == 0


def test_head_on_health_has_headers_and_no_body(coordinator: Coordinator) -> None:
    middleware = LastCallMiddleware(hello, coordinator=coordinator)
    started, body = call(middleware, "/livez", method="HEAD")
    assert started[0][0] == "200 OK"
    assert list(body) == []


def test_switched_off_endpoints_reach_the_app(
    serve: Callable[[App], int], coordinator: Coordinator
) -> None:
    middleware = LastCallMiddleware(
        hello, coordinator=coordinator, livez_path=None, readyz_path="/healthz/ready"
    )
    assert (middleware.livez_path, middleware.readyz_path) == (None, "/healthz/ready")
    port = serve(middleware)
    assert get(port, "/livez")[2] == b"app saw /livez"
    assert get(port, "/readyz")[2] == b"app saw /readyz"
    status, _, body = get(port, "/healthz/ready")
    assert (status, json.loads(body)) == (200, {"status": "ready"})
    off = LastCallMiddleware(hello, coordinator=coordinator, livez_path=None, readyz_path=None)
    _, response = call(off, "/livez")
    assert list(response) == [b"app saw /livez"]
    assert off.in_flight == 1  # the app served it, so it counts
    response.close()  # type: ignore[attr-defined]


def test_default_coordinator_is_the_process_one() -> None:
    middleware = LastCallMiddleware(hello)
    assert middleware._stopping is lastcall.stopping


# ---------------------------------------------------------------- Connection: close


def test_connection_close_only_while_stopping_and_never_duplicated(
    coordinator: Coordinator,
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("connection", "keep-alive")])
        return [b"ok"]

    middleware = LastCallMiddleware(app, coordinator=coordinator)
    started, body = call(middleware)
    body.close()  # type: ignore[attr-defined]
    assert started[0][1] == [("Content-Type", "text/plain"), ("connection", "keep-alive")]
    coordinator.shutdown()
    started, body = call(middleware)
    body.close()  # type: ignore[attr-defined]
    assert started[0][1] == [("Content-Type", "text/plain"), ("Connection", "close")]


def test_a_request_begun_before_the_stop_closes_its_connection(coordinator: Coordinator) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        coordinator.shutdown()  # the stop begins while this request is in flight
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    middleware = LastCallMiddleware(app, coordinator=coordinator)
    started, body = call(middleware)
    body.close()  # type: ignore[attr-defined]
    assert ("Connection", "close") in started[0][1]


# ---------------------------------------------------------------- Flask


def test_wraps_a_flask_app(serve: Callable[[App], int], coordinator: Coordinator) -> None:
    app = flask.Flask(__name__)
    gate = Gate()

    @app.get("/slow")
    def slow() -> str:
        gate.enter()
        return "done"

    middleware = LastCallMiddleware(app.wsgi_app, coordinator=coordinator)
    app.wsgi_app = middleware  # type: ignore[method-assign]
    port = serve(app)
    holder = threading.Thread(target=get, args=(port, "/slow"))
    holder.start()
    try:
        gate.wait_entered(1)
        assert middleware.in_flight == 1
        assert get(port, "/readyz")[0] == 200
    finally:
        gate.release.set()
        holder.join(WAIT)
    assert middleware.wait_idle(WAIT)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"app": "myapp:app"}, TypeError, "WSGI callable as app; got 'myapp:app'"),
        ({"coordinator": lastcall}, TypeError, "coordinator must be a lastcall.Coordinator"),
        ({"livez_path": "livez"}, ValueError, "livez_path must be a path starting with '/'"),
        ({"readyz_path": ""}, ValueError, "readyz_path must be a path starting with '/'"),
        ({"readyz_path": b"/readyz"}, ValueError, "readyz_path must be a path"),
        ({"livez_path": "/health", "readyz_path": "/health"}, ValueError, "must differ"),
    ],
)
def test_bad_input_is_one_line_naming_the_fix(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    app = kwargs.pop("app", hello)
    with pytest.raises(error) as caught:
        LastCallMiddleware(app, **kwargs)  # type: ignore[arg-type]
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_readyz_says_not_ready_with_the_reason_and_stopping_wins():
    coordinator = Coordinator(run_at_exit=False)
    app = LastCallMiddleware(hello, coordinator=coordinator)
    coordinator.set_not_ready("shedding load")
    started, body = call(app, "/readyz")
    assert started[0][0].startswith("503")
    assert json.loads(b"".join(body)) == {"status": "not_ready", "reason": "shedding load"}
    coordinator.set_ready()
    started, _ = call(app, "/readyz")
    assert started[0][0].startswith("200")
    coordinator.set_not_ready("shedding load")
    coordinator.shutdown()
    _, body = call(app, "/readyz")
    assert json.loads(b"".join(body))["status"] == "stopping"
