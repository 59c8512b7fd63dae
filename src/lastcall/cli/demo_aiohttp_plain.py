"""The demo app on aiohttp with ``atexit``, as it would be written without lastcall."""

from __future__ import annotations

import atexit

from lastcall.cli._demo import close_db, flush_orders, make_aiohttp_app

app = make_aiohttp_app()
atexit.register(close_db)
atexit.register(flush_orders)  # registered last, runs first
