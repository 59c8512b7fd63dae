"""The demo app on aiohttp, the lastcall way: ``LastCall(app)``, the hooks with lastcall.

Run it by hand too: ``python -m lastcall.cli.demo_aiohttp`` (``PORT``, 8080 by default).
"""

from __future__ import annotations

import os

from aiohttp import web

import lastcall
from lastcall.aiohttp import LastCall
from lastcall.cli._demo import close_db, flush_orders, make_aiohttp_app

app = make_aiohttp_app()
LastCall(app)
lastcall.on_shutdown(close_db)
lastcall.on_shutdown(flush_orders)  # registered last, runs first

if __name__ == "__main__":
    web.run_app(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8080")))
