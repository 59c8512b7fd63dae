"""The ``lastcall`` command: ``lastcall drill`` shows how a service really stops.

Its dependencies (click, rich, httpx) are the optional extra
``lastcall[cli]``; without them the command says so in one line. Nothing
here is imported by ``import lastcall``.
"""

from __future__ import annotations

import sys

__all__ = ("main",)

_MISSING = "the lastcall command needs its extra: pip install 'lastcall[cli]'"


def main() -> None:
    """Entry point of the ``lastcall`` script and ``python -m lastcall``."""
    try:
        from lastcall.cli.command import run  # noqa: PLC0415  # needs the optional extra
    except ImportError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in ("click", "rich", "httpx"):
            raise
        sys.stderr.write(f"lastcall: {_MISSING} ({missing} is missing)\n")
        sys.exit(2)
    sys.exit(run())
