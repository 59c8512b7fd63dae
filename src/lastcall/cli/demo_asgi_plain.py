"""The ASGI demo app with ``atexit``, as the write-up would have written it for uvicorn."""

from __future__ import annotations

import atexit

from lastcall.cli._demo import close_db, flush_orders, make_asgi_app

app = make_asgi_app()
atexit.register(close_db)
atexit.register(flush_orders)  # registered last, runs first
