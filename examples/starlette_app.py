"""A Starlette app (FastAPI works the same way) that stops without dropping a request.

Run it under either server; both keep serving through the pre-stop delay:

    LASTCALL_PRESTOP_DELAY=5 uvicorn examples.starlette_app:app --host 0.0.0.0 --port 8000
    LASTCALL_PRESTOP_DELAY=5 hypercorn examples.starlette_app:app --workers 0 -b 0.0.0.0:8000

then ``kill -TERM <pid>``: /readyz turns 503 at once, / still answers for 5 s,
requests in flight finish, the SSE stream says goodbye, the hooks run once
(the async one on the server's own loop) and the process exits with 143.
With FastAPI: ``app = LastCallMiddleware(FastAPI(lifespan=lifespan))``.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

import lastcall
from lastcall.asgi import LastCallMiddleware

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.cache = {}  # opened here, closed by the app's own teardown below
    yield
    app.state.cache.clear()


async def index(_request: Request) -> Response:
    await asyncio.sleep(1)  # a request that takes a while: it finishes during the drain
    return PlainTextResponse("hello\n")


async def events(_request: Request) -> Response:
    async def stream() -> AsyncIterator[str]:
        tick = 0
        # wait_async returns True once the stop has begun: end the stream cleanly.
        while not await lastcall.stopping.wait_async(1.0):
            tick += 1
            yield f"data: tick {tick}\n\n"
        yield "event: bye\ndata: server stopping, reconnect elsewhere\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


@lastcall.on_shutdown
async def close_clients() -> None:
    # Runs on the server's loop, so clients bound to it can be closed here.
    print("closing clients bound to the server's loop")


@lastcall.on_shutdown(phase="final")
def goodbye() -> None:
    print("goodbye")


app = LastCallMiddleware(
    Starlette(routes=[Route("/", index), Route("/events", events)], lifespan=lifespan)
)
