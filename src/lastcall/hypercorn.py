"""hypercorn whose master ends by the signal that stopped it: ``python -m lastcall.hypercorn``.

hypercorn's own command line, options, help and errors, unchanged::

    python -m lastcall.hypercorn myapp:app --bind 0.0.0.0:8000 --workers 4

The app is put in ``lastcall.asgi.LastCallMiddleware`` here, where hypercorn
loads it (in each worker), unless it is in one already: an app nobody
wrapped is drained too, as under ``-c python:lastcall.gunicorn`` and
``python -m lastcall.waitress``. That is what drains each worker (asyncio
and uvloop ones; a trio worker or a WSGI app is served by hypercorn alone,
the latter said in one line). What this adds besides is the master's end:
plain hypercorn's master never imports the app, so lastcall has no say
there, and after a graceful stop it exits 0. Started this way, it ends by
the signal that stopped it (143 after SIGTERM, 130 after Ctrl-C), as every
process lastcall stops does. An error keeps hypercorn's own status.
"""

from __future__ import annotations

import sys

from lastcall._config import module_or_exit, settings_or_exit
from lastcall._servers import hypercorn as adapter
from lastcall._signals import die_by, stop_signals_seen

__all__ = ("main",)


def main(argv: list[str] | None = None) -> int:
    """Run hypercorn's command line (``hypercorn.__main__:main``); end by its stop signal."""
    settings_or_exit()  # before hypercorn starts, in one line
    hypercorn_main = module_or_exit("hypercorn.__main__")
    adapter.wrap_every_app()
    with stop_signals_seen() as seen:
        status: int = hypercorn_main.main(sys.argv[1:] if argv is None else argv)
    if status == 0 and seen:
        die_by(seen[0], exit_functions=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
