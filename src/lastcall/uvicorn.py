"""``uvicorn --workers N`` with a supervisor that stops in order: ``python -m lastcall.uvicorn``.

uvicorn's own command line, options, help and errors, unchanged::

    python -m lastcall.uvicorn myapp:app --host 0.0.0.0 --port 8000 --workers 4

The app is put in ``lastcall.asgi.LastCallMiddleware`` here, where
uvicorn loads it (in each worker), unless it is in one already: an app
nobody wrapped is drained too, as under ``-c python:lastcall.gunicorn`` and
``python -m lastcall.waitress``. That is what drains each worker. What this
adds besides is lastcall in uvicorn's supervisor, which plain ``uvicorn`` never lets it into (the
supervisor does not import the app). There, on SIGTERM or the first
SIGINT: its ``LASTCALL_HEALTH_PORT`` turns ``/readyz`` red, every worker
is stopped together (each keeps serving for ``LASTCALL_PRESTOP_DELAY``,
then finishes what it accepted), the listening socket is shut so new
connections are refused rather than queued for nobody, no hook runs in
the supervisor, and it ends by the signal (status 143 for SIGTERM), not 0.
With one worker, or ``--reload``, it is plain uvicorn.

How, and which parts of uvicorn it relies on: ``lastcall._servers.uvicorn``.
"""

from __future__ import annotations

import sys

from lastcall._config import module_or_exit, settings_or_exit
from lastcall._servers import uvicorn as adapter

__all__ = ("main",)


def main(argv: list[str] | None = None) -> None:
    """Run uvicorn's command line (``uvicorn.main:main``) with lastcall's supervisor."""
    settings_or_exit()  # before uvicorn starts, in one line
    uvicorn_main = module_or_exit("uvicorn.main")
    adapter.supervise(uvicorn_main)
    adapter.wrap_every_app(uvicorn_main)
    uvicorn_main.main.main(
        args=sys.argv[1:] if argv is None else argv, prog_name="python -m lastcall.uvicorn"
    )


if __name__ == "__main__":
    main()
