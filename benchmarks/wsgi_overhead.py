"""Per-request overhead of ``LastCallMiddleware``, in-process, no network.

Each request is a WSGI call as a server makes it: a copy of one prebuilt
environ, the response iterated and closed. The bare app and the wrapped apps
run interleaved in the same process, in short rounds (0.05 s of Flask each,
alternating which goes first), so drift and a neighbour's bursts hit all
alike; each variant is compared with bare in the same round, and the table
shows the median over rounds.
Two apps: a trivial Flask view (``return "ok"``) and a bare WSGI callable,
which isolates the middleware's own cost from Flask's noise. Two ways the
middleware runs: on its own (it counts every response, wrapping it), and
under a server adapter (``count_with``: gunicorn, waitress and Werkzeug
count their own requests, so responses pass through). A third wrapper is
the floor: a class whose ``__call__`` only forwards, what any class-based
middleware costs before it does anything. The target, under an adapter: a
Flask view at most 1% over bare, the middleware alone at most 0.3 µs.
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


class Forwarding:
    """The cheapest class-based middleware: ``__call__`` forwards, nothing more."""

    def __init__(self, app: App) -> None:
        self.app = app

    def __call__(self, environ: object, start_response: Callable[..., object]) -> Iterable[bytes]:
        return self.app(environ, start_response)


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


def compare(app: App, rounds: int, requests: int) -> dict[str, list[float]]:
    """Per-request seconds for each variant, rounds interleaved in one process."""
    counting = LastCallMiddleware(app, coordinator=Coordinator(run_at_exit=False))
    adapted = LastCallMiddleware(app, coordinator=Coordinator(run_at_exit=False))
    adapted.count_with(lambda: 0)
    variants = {
        "bare": app,
        "forwarding": Forwarding(app),
        "counting": counting,
        "adapter": adapted,
    }
    environ = EnvironBuilder(path="/").get_environ()
    for candidate in variants.values():  # warm up, and check each answers
        per_request(candidate, environ, requests // 10)
    if counting.in_flight:
        raise RuntimeError(f"{counting.in_flight} requests still counted after the warm-up")
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(rounds):
        order = list(variants.items())
        for name, candidate in order if round_ % 2 else reversed(order):
            times[name].append(per_request(candidate, environ, requests))
    return times


def paired(times: dict[str, list[float]], variant: str) -> tuple[float, float]:
    """Median over rounds of ``variant`` against bare in the same round: ratio, and µs added."""
    rounds = list(zip(times["bare"], times[variant], strict=True))
    return (
        statistics.median(v / b for b, v in rounds),
        statistics.median((v - b) * 1e6 for b, v in rounds),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()

    print(f"{'app':<12}{'wrapper':<34}{'µs':>9}{'ratio':>9}{'+µs':>8}")
    labels = {
        "bare": "none (baseline)",
        "forwarding": "forwarding class (the floor)",
        "counting": "lastcall, counting responses",
        "adapter": "lastcall, under a server adapter",
    }
    verdicts = []
    for name, app in (("flask view", flask_app()), ("plain wsgi", plain_app)):
        times = compare(app, args.rounds, args.requests)
        for variant, label in labels.items():
            ratio, added = paired(times, variant)
            median = statistics.median(times[variant]) * 1e6
            print(f"{name:<12}{label:<34}{median:>9.3f}{ratio:>8.3f}x{added:>8.3f}")
        ratio, added = paired(times, "adapter")
        if name == "flask view":
            verdicts.append(f"flask view under an adapter ≤ 1%: {'yes' if ratio <= 1.01 else 'NO'}")
        else:
            _, floor = paired(times, "forwarding")
            verdicts.append(
                f"the middleware alone ≤ 0.3 µs: {'yes' if added <= 0.3 else 'NO'} "
                f"(+{added:.3f} µs; +{added - floor:.3f} µs over the forwarding floor)"
            )
    print(
        f"(medians of {args.rounds} interleaved rounds of {args.requests:,} requests each; "
        "ratio and +µs against the baseline in the same round)"
    )
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
