"""What the demo apps share: routes, a write-behind buffer, and the hooks' bodies.

The write-up lastcall began with had a Flask app whose exit handlers
printed, and a route that called ``os._exit``. Here the handlers do real
work: ``/order`` acknowledges a write to the client at once and keeps it in
memory (a write-behind buffer, as caches and batching clients do), and a
shutdown hook flushes the buffer to SQLite. A write acknowledged but never
flushed is a lost write, which ``lastcall drill`` counts.

``demo_app`` (Flask, WSGI), ``demo_asgi`` (plain ASGI, for uvicorn and
hypercorn), ``demo_aiohttp``, ``demo_tornado`` and ``demo_grpc`` (the order
as an RPC) register the hooks with
lastcall; their ``*_plain`` twins with ``atexit``; everything else is this
module, so each pair differs only in how it stops. Environment:
``LASTCALL_DEMO_DB`` (the SQLite file) and ``LASTCALL_DEMO_EVENTS`` (a file
each hook appends one JSON line to, saying which process ran it and when:
a plain ``atexit`` app writes no lastcall report).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from lastcall.cli._events import record

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    from aiohttp import web as aiohttp_web
    from flask import Flask
    from tornado import web as tornado_web

    Scope = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
    Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

DB_PATH = os.environ.get("LASTCALL_DEMO_DB") or str(
    Path(tempfile.gettempdir()) / "lastcall-demo.db"
)
_buffer: list[int] = []
_lock = threading.Lock()
_db = sqlite3.connect(DB_PATH, check_same_thread=False)


def say(*words: object) -> None:
    """One line on stdout naming the process, so parent and child can be told apart."""
    sys.stdout.write(" ".join(map(str, words)) + f" (pid {os.getpid()})\n")
    sys.stdout.flush()


def _take_order(order_id: int) -> None:
    with _lock:
        _buffer.append(order_id)


def make_app() -> Flask:
    """The routes: a write-behind ``/order``, a slow one, and the write-up's ``os._exit``."""
    from flask import Flask, request  # noqa: PLC0415  # the ASGI demo runs without Flask

    app = Flask("lastcall-demo")

    @app.get("/")
    def index() -> str:
        return "Hi\n"

    @app.post("/order")
    def order() -> str:
        order_id = int(request.args["id"])
        _take_order(order_id)
        return f"ok {order_id}\n"

    @app.get("/slow")
    def slow() -> str:
        time.sleep(float(request.args.get("seconds", "2")))
        return "done\n"

    @app.get("/user/<name>")
    def user(name: str) -> str:
        if name == "Tom":
            return f"Hello {name}\n"
        say("I will use OS EXIT!!")
        os._exit(0)  # no hook can run after this

    return app


def make_asgi_app() -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The same routes as plain ASGI (no framework to install), for uvicorn and hypercorn."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # nothing to start; the hooks are the stop
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path, method = scope["path"], scope["method"]
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        status, body = 404, "not found\n"
        if path == "/" and method == "GET":
            status, body = 200, "Hi\n"
        elif path == "/order" and method == "POST":
            _take_order(int(query["id"]))
            status, body = 200, f"ok {query['id']}\n"
        elif path == "/slow" and method == "GET":
            await asyncio.sleep(float(query.get("seconds", "2")))
            status, body = 200, "done\n"
        elif path.startswith("/user/"):
            name = path.removeprefix("/user/")
            if name != "Tom":
                say("I will use OS EXIT!!")
                os._exit(0)  # no hook can run after this
            status, body = 200, f"Hello {name}\n"
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body.encode()})

    return app


def make_aiohttp_app() -> aiohttp_web.Application:
    """The same routes as an aiohttp application."""
    from aiohttp import web  # noqa: PLC0415  # only where aiohttp is installed

    async def index(_request: web.Request) -> web.Response:
        return web.Response(text="Hi\n")

    async def order(request: web.Request) -> web.Response:
        order_id = int(request.query["id"])
        _take_order(order_id)
        return web.Response(text=f"ok {order_id}\n")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("seconds", "2")))
        return web.Response(text="done\n")

    async def user(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name != "Tom":
            say("I will use OS EXIT!!")
            os._exit(0)  # no hook can run after this
        return web.Response(text=f"Hello {name}\n")

    app = web.Application()
    app.add_routes(
        [
            web.get("/", index),
            web.post("/order", order),
            web.get("/slow", slow),
            web.get("/user/{name}", user),
        ]
    )
    return app


def make_tornado_app() -> tornado_web.Application:
    """The same routes as a tornado application."""
    from tornado import web  # noqa: PLC0415  # only where tornado is installed

    class Text(web.RequestHandler):
        def text(self, body: str) -> None:
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(body)

    class Index(Text):
        def get(self) -> None:
            self.text("Hi\n")

    class Order(Text):
        def post(self) -> None:
            order_id = int(self.get_query_argument("id"))
            _take_order(order_id)
            self.text(f"ok {order_id}\n")

    class Slow(Text):
        async def get(self) -> None:
            await asyncio.sleep(float(self.get_query_argument("seconds", "2")))
            self.text("done\n")

    class User(Text):
        def get(self, name: str) -> None:
            if name != "Tom":
                say("I will use OS EXIT!!")
                os._exit(0)  # no hook can run after this
            self.text(f"Hello {name}\n")

    return web.Application(
        [(r"/", Index), (r"/order", Order), (r"/slow", Slow), (r"/user/([^/]+)", User)]
    )


def make_grpc_handler() -> object:
    """The order as an RPC: ``/lastcall.demo.Orders/Take``, ``{"id": N}`` in JSON (no protoc)."""
    import grpc  # noqa: PLC0415  # only where grpcio is installed

    def take(request: bytes, _context: object) -> bytes:
        order_id = int(json.loads(request)["id"])
        _take_order(order_id)
        return json.dumps({"ok": order_id}).encode()

    handler = grpc.unary_unary_rpc_method_handler(take)
    return grpc.method_handlers_generic_handler("lastcall.demo.Orders", {"Take": handler})


def close_db() -> None:
    """Registered first, so it runs last: after the flush, as ``atexit`` order promises."""
    started = time.time()
    _db.close()
    say("hook: close_db")
    record("close_db", started)


def flush_orders() -> None:
    """Write the acknowledged orders to SQLite; whatever is not flushed is lost."""
    started = time.time()
    with _lock:
        pending = list(_buffer)
        _buffer.clear()
    with _db:
        _db.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY)")
        _db.executemany("INSERT OR IGNORE INTO orders VALUES (?)", [(i,) for i in pending])
    say(f"hook: flush_orders wrote {len(pending)} orders")
    record("flush_orders", started)
