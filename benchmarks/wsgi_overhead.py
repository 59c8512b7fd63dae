"""Per-request overhead of ``LastCallMiddleware``, in-process, no network.

Each request is a WSGI call as a server makes it: a copy of one prebuilt
environ, the response iterated and closed. The bare app and the wrapped app
run interleaved in the same process (rounds alternate which goes first, so
drift hits both alike); the table shows the best and the median round.
Two apps: a trivial Flask view (``return "ok"``, the target: at most 3% and
at most 1 µs a request) and a bare WSGI callable, which isolates the
middleware's own cost from Flask's noise.
Run: python benchmarks/wsgi_overhead.py [--rounds N] [--requests N]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable, Iterable

import flask
from werkzeug.test import EnvironBuilder

from lastcall import Coordinator
from lastcall.wsgi import LastCallMiddleware

App = Callable[..., Iterable[bytes]]


def flask_app() -> App:
    app = flask.Flask("bench")

    @app.get("/")
    def index() -> str:
        return "ok"

    return app


def plain_app(_environ: object, start_response: Callable[..., object]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def start_response(_status: str, _headers: object, _exc_info: object = None) -> Callable[..., None]:
    return write


def write(data: bytes) -> None:
    pass


def per_request(app: App, environ: dict[str, object], requests: int) -> float:
    """Seconds per request over ``requests`` calls."""
    gc.collect()
    began = time.perf_counter()
    for _ in range(requests):
        response = app(environ.copy(), start_response)
        for _chunk in response:
            pass
        close = getattr(response, "close", None)
        if close is not None:
            close()
    return (time.perf_counter() - began) / requests


def compare(app: App, rounds: int, requests: int) -> tuple[list[float], list[float]]:
    wrapped = LastCallMiddleware(app, coordinator=Coordinator(run_at_exit=False))
    environ = EnvironBuilder(path="/").get_environ()
    for candidate in (app, wrapped):  # warm up, and check both answer
        per_request(candidate, environ, requests // 10)
    if wrapped.in_flight:
        raise RuntimeError(f"{wrapped.in_flight} requests still counted after the warm-up")
    bare_times: list[float] = []
    wrapped_times: list[float] = []
    for round_ in range(rounds):
        order = ((app, bare_times), (wrapped, wrapped_times))
        for candidate, times in order if round_ % 2 else reversed(order):
            times.append(per_request(candidate, environ, requests))
    return bare_times, wrapped_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--requests", type=int, default=10_000)
    args = parser.parse_args()

    print(
        f"{'app':<12}{'round':<8}{'bare µs/req':>13}{'with µs/req':>13}{'ratio':>9}"
        f"{'overhead µs':>13}  target (≤3%, ≤1 µs)"
    )
    for name, app in (("flask view", flask_app()), ("plain wsgi", plain_app)):
        bare, wrapped = compare(app, args.rounds, args.requests)
        for label, pick in (("best", min), ("median", statistics.median)):
            b, w = pick(bare) * 1e6, pick(wrapped) * 1e6
            ok = "yes" if w / b <= 1.03 and w - b <= 1.0 else "NO"
            if name == "plain wsgi":
                ok = "(cost of the middleware alone)"
            print(f"{name:<12}{label:<8}{b:>13.3f}{w:>13.3f}{w / b:>8.3f}x{w - b:>13.3f}  {ok}")
    print(f"({args.rounds} interleaved rounds of {args.requests:,} requests each)")


if __name__ == "__main__":
    main()
