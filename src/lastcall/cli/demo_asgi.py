"""The demo app as plain ASGI, the lastcall way: what the drill serves on uvicorn and hypercorn."""

from __future__ import annotations

import lastcall
from lastcall.asgi import LastCallMiddleware
from lastcall.cli._demo import close_db, flush_orders, make_asgi_app

app = LastCallMiddleware(make_asgi_app())
lastcall.on_shutdown(close_db)
lastcall.on_shutdown(flush_orders)  # registered last, runs first
