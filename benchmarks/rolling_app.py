"""One replica for the rolling-restart benchmark: a small app on the server named by SERVER.

Environment: PORT, SERVER (werkzeug | waitress | aiohttp | tornado run here;
gunicorn, uvicorn, granian, daphne import the app), LASTCALL ("1": the lastcall
integration; "0": the server as shipped, with a naive /readyz that always
answers 200, as most apps have).
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


# daphne imports an attribute and calls no factory: built as daphne imports this module.
daphne_app = (
    asgi_with_lastcall() if WITH_LASTCALL and os.environ.get("SERVER") == "daphne" else asgi_app
)


def serve_aiohttp(port: int) -> None:
    """``web.run_app``, its own drain bounded by the grace; ``LastCall(app)`` with lastcall."""
    import asyncio

    from aiohttp import web

    async def work(_request: web.Request) -> web.Response:
        await asyncio.sleep(WORK_SECONDS)
        return web.Response(text="ok")

    async def ready(_request: web.Request) -> web.Response:  # shadowed by lastcall's
        return web.Response(text="ready")

    aiohttp_app = web.Application()
    aiohttp_app.add_routes([web.get("/readyz", ready), web.get("/", work)])
    if WITH_LASTCALL:
        from lastcall.aiohttp import LastCall

        LastCall(aiohttp_app)
    grace = float(os.environ["LASTCALL_GRACE"])
    web.run_app(aiohttp_app, host="127.0.0.1", port=port, shutdown_timeout=grace, print=None)


def serve_tornado(port: int) -> None:
    """``app.listen(port)`` in ``asyncio.run``; ``LastCall(server)`` with lastcall."""
    import asyncio

    from tornado import web

    class Work(web.RequestHandler):
        async def get(self) -> None:
            await asyncio.sleep(WORK_SECONDS)
            self.write("ok")

    class Ready(web.RequestHandler):  # shadowed by lastcall's
        def get(self) -> None:
            self.write("ready")

    async def run() -> None:
        server = web.Application([(r"/readyz", Ready), (r"/", Work)]).listen(port, "127.0.0.1")
        if WITH_LASTCALL:
            from lastcall.tornado import LastCall

            LastCall(server)
        await asyncio.Event().wait()

    asyncio.run(run())


def main() -> None:
    port = int(os.environ["PORT"])
    server = os.environ["SERVER"]
    if server == "aiohttp":
        serve_aiohttp(port)
    elif server == "tornado":
        serve_tornado(port)
    elif server == "werkzeug":
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
        raise SystemExit(
            f"rolling_app.py runs werkzeug, waitress, aiohttp or tornado, not {server!r}"
        )


if __name__ == "__main__":
    main()
