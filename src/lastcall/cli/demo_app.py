"""The demo app, the lastcall way: ``lastcall drill`` runs it when no APP is given.

Run it by hand too: ``python -m lastcall.cli.demo_app`` (with the reloader;
``NO_RELOAD=1`` without), then stop it any way you like.
"""

from __future__ import annotations

import os

import lastcall
from lastcall.cli._demo import close_db, flush_orders, make_app
from lastcall.flask import LastCall

app = make_app()
LastCall(app)
lastcall.on_shutdown(close_db)
lastcall.on_shutdown(flush_orders)  # registered last, runs first

if __name__ == "__main__":
    port = int(os.environ.get("PORT", "5000"))
    app.run(host="127.0.0.1", port=port, debug=not os.environ.get("NO_RELOAD"))
