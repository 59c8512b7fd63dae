"""The demo app on tornado, the lastcall way: the hooks with lastcall, ``LastCall(server)``.

``LastCall`` takes the ``HTTPServer`` that ``app.listen()`` returns, so the
drill applies it once it listens (``cli/loops.py``), as ``main`` does here.
Run it by hand: ``python -m lastcall.cli.demo_tornado`` (``PORT``, 8888 by default).
"""

from __future__ import annotations

import asyncio
import os

import lastcall
from lastcall.cli._demo import close_db, flush_orders, make_tornado_app

app = make_tornado_app()
lastcall.on_shutdown(close_db)
lastcall.on_shutdown(flush_orders)  # registered last, runs first


async def main() -> None:
    """Serve until stopped, as a tornado app's own script does."""
    from lastcall.tornado import LastCall  # noqa: PLC0415  # the drill applies its own

    LastCall(app.listen(int(os.environ.get("PORT", "8888")), "127.0.0.1"))
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
