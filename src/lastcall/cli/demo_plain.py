"""The demo app as the write-up wrote it, with ``atexit``: the drill's point of comparison."""

from __future__ import annotations

import atexit
import os

from lastcall.cli._demo import close_db, flush_orders, make_app

app = make_app()
atexit.register(close_db)
atexit.register(flush_orders)  # registered last, runs first

if __name__ == "__main__":
    port = int(os.environ.get("PORT", "5000"))
    app.run(host="127.0.0.1", port=port, debug=not os.environ.get("NO_RELOAD"))
