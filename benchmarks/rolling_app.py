"""One replica for the rolling-restart benchmark: a small app on the server named by SERVER.

Environment: PORT, SERVER (werkzeug | waitress), LASTCALL
("1": the lastcall integration; "0": the server as shipped, with a naive
/readyz that always answers 200, as most apps have).
"""

from __future__ import annotations

import os
import time

WITH_LASTCALL = os.environ.get("LASTCALL") == "1"
WORK_SECONDS = 0.02  # each request holds the server a little, so some are in flight at a stop


def wsgi_app(environ: dict, start_response):  # noqa: ANN001, ANN201
    if environ.get("PATH_INFO") == "/readyz":  # only reached without lastcall
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ready"]
    time.sleep(WORK_SECONDS)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


async def asgi_app(scope, receive, send):  # noqa: ANN001, ANN201
    import asyncio

    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] != "/readyz":
        await asyncio.sleep(WORK_SECONDS)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


if WITH_LASTCALL:
    from lastcall.wsgi import LastCallMiddleware

    app = LastCallMiddleware(wsgi_app)
else:
    app = wsgi_app


def asgi_with_lastcall():  # noqa: ANN201  # uvicorn --factory: built in the serving process
    from lastcall.asgi import LastCallMiddleware

    return LastCallMiddleware(asgi_app)


def main() -> None:
    port = int(os.environ["PORT"])
    server = os.environ["SERVER"]
    if server == "werkzeug":
        from werkzeug.serving import run_simple

        if WITH_LASTCALL:
            import lastcall
            from lastcall._servers import werkzeug as lastcall_werkzeug  # as the drill runs it

            lastcall_werkzeug.enable(lastcall.default)
        run_simple("127.0.0.1", port, app, threaded=True)
    elif server == "waitress":
        if WITH_LASTCALL:
            from lastcall.waitress import serve
        else:
            from waitress import serve
        serve(app, host="127.0.0.1", port=port, threads=8)
    else:
        raise SystemExit(f"rolling_app.py runs werkzeug or waitress itself, not {server!r}")


if __name__ == "__main__":
    main()
