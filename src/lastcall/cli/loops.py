"""The process ``lastcall drill`` starts for aiohttp and tornado: the app on its own loop.

``python -m lastcall.cli.loops APP --server aiohttp|tornado --port N --grace S
[--plain] --error-file F``. Each is served as its users serve it: aiohttp's
app by ``web.run_app``, its ``shutdown_timeout`` the drill's grace, with
``LastCall(app)`` unless ``--plain``; tornado's by the ``HTTPServer`` that
``app.listen()`` would make, in ``asyncio.run``, with ``LastCall(server)``
unless ``--plain``. The drill's instruments (``runner.Controls``) sit inside
lastcall's counting, as for ASGI, so a delayed request is one lastcall
counts in flight. Bad input is one line in the error file and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, Any

from lastcall.cli.runner import CONTROL, HOST, BadInputError, Controls, check_port, fail, load

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiohttp.typedefs import Middleware
    from tornado import web as tornado_web

DELAY_HEADER = "X-Lastcall-Drill-Delay"


def _checked(spec: str, app: object, kind: type[Any], server: str) -> None:
    if not isinstance(app, kind):
        raise BadInputError(
            f"APP {spec!r} is {type(app).__name__!r}, not {kind.__module__}.{kind.__name__}; "
            f"--server {server} serves one (name it as module:app, or a factory as module:make())"
        )


# ---------------------------------------------------------------- aiohttp


def serve_aiohttp(spec: str, port: int, grace: float, *, plain: bool) -> None:
    """``web.run_app(app)``, lastcall's ``LastCall(app)`` first unless plain."""
    from aiohttp import web  # noqa: PLC0415  # only where aiohttp is installed

    app = load(spec)
    _checked(spec, app, web.Application, "aiohttp")
    assert isinstance(app, web.Application)  # noqa: S101  # for the type checker
    if not plain:
        from lastcall.aiohttp import LastCall  # noqa: PLC0415  # not in --plain runs

        LastCall.of(app)  # the app's own, if it made one
    app.middlewares.append(_aiohttp_control(Controls()))  # innermost
    web.run_app(app, host=HOST, port=port, shutdown_timeout=grace, print=None)


def _aiohttp_control(controls: Controls) -> Middleware:
    from aiohttp import web  # noqa: PLC0415

    async def control(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path.startswith(CONTROL):
            body = await controls.answer(request.path.removeprefix(CONTROL))
            return web.Response(body=body, content_type="application/json")
        delay = request.headers.get(DELAY_HEADER)
        if delay:
            await controls.hold(float(delay))
        return await handler(request)

    return web.middleware(control)  # a new-style middleware: aiohttp 3 still takes old ones


# ---------------------------------------------------------------- tornado


def serve_tornado(spec: str, port: int, *, plain: bool) -> None:
    """``app.listen(port)``'s server, then ``LastCall(server)`` unless plain, until stopped."""
    from tornado import web  # noqa: PLC0415  # only where tornado is installed

    app = load(spec)
    _checked(spec, app, web.Application, "tornado")
    assert isinstance(app, web.Application)  # noqa: S101  # for the type checker
    controls = Controls()
    app.add_handlers(r".*", [(rf"{CONTROL}(.*)", _tornado_handler(), {"controls": controls})])

    async def main() -> None:
        server = _tornado_server(app, controls)
        server.listen(port, HOST)
        if not plain:
            from lastcall.tornado import LastCall  # noqa: PLC0415  # not in --plain runs

            LastCall(server)
        await asyncio.Event().wait()

    asyncio.run(main())


def _tornado_handler() -> type[tornado_web.RequestHandler]:
    from tornado import web  # noqa: PLC0415

    class Control(web.RequestHandler):
        def initialize(self, controls: Controls) -> None:
            self.controls = controls

        async def get(self, action: str) -> None:
            self.set_header("Content-Type", "application/json")
            self.finish(await self.controls.answer(action))

    return Control


def _tornado_server(app: tornado_web.Application, controls: Controls) -> Any:  # noqa: ANN401
    """An ``HTTPServer`` whose every request may be held first (``X-Lastcall-Drill-Delay``).

    Its own ``start_request``, which ``LastCall(server)`` wraps in turn: lastcall
    sees the request from its headers, while it is held.
    """
    from tornado import httputil  # noqa: PLC0415
    from tornado.httpserver import HTTPServer  # noqa: PLC0415

    class Held(httputil.HTTPMessageDelegate):
        def __init__(self, delegate: httputil.HTTPMessageDelegate) -> None:
            self.delegate = delegate  # the name lastcall's adapter follows to the handler

        def headers_received(
            self,
            start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
            headers: httputil.HTTPHeaders,
        ) -> Awaitable[None] | None:
            delay = headers.get(DELAY_HEADER)
            if delay:
                return self._after(float(delay), start_line, headers)
            return self.delegate.headers_received(start_line, headers)

        async def _after(
            self,
            delay: float,
            start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
            headers: httputil.HTTPHeaders,
        ) -> None:
            await controls.hold(delay)
            then = self.delegate.headers_received(start_line, headers)
            if then is not None:
                await then

        def data_received(self, chunk: bytes) -> Awaitable[None] | None:
            return self.delegate.data_received(chunk)

        def finish(self) -> None:
            self.delegate.finish()

        def on_connection_close(self) -> None:
            self.delegate.on_connection_close()

    class DrillServer(HTTPServer):
        def start_request(
            self, server_conn: object, request_conn: httputil.HTTPConnection
        ) -> httputil.HTTPMessageDelegate:
            return Held(super().start_request(server_conn, request_conn))

    return DrillServer(app)


def main(argv: list[str] | None = None) -> None:
    """Check the input, serve until stopped."""
    parser = argparse.ArgumentParser(prog="python -m lastcall.cli.loops")
    parser.add_argument("app")
    parser.add_argument("--server", choices=("aiohttp", "tornado"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--grace", type=float, default=10.0, help="aiohttp's shutdown_timeout")
    parser.add_argument("--plain", action="store_true", help="serve the app without lastcall")
    parser.add_argument("--error-file")
    args = parser.parse_args(argv)
    try:
        check_port(args.port)
        if args.server == "aiohttp":
            serve_aiohttp(args.app, args.port, args.grace, plain=args.plain)
        else:
            serve_tornado(args.app, args.port, plain=args.plain)
    except BadInputError as exc:
        fail(args.error_file, str(exc))


if __name__ == "__main__":
    main()
