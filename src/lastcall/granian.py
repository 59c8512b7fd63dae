"""granian whose master ends by the signal that stopped it: ``python -m lastcall.granian``.

granian's own command line, options, help and errors, unchanged::

    python -m lastcall.granian --interface asgi --workers 4 myapp:app

The app is wrapped by hand (``lastcall.asgi.LastCallMiddleware``), as for
plain ``granian``, which drains each worker (``lastcall._servers.granian``).
What this adds is the master's end: granian's master never imports the
app, so lastcall has no say there, and after a graceful stop it exits 0.
Started this way, it ends by the signal that stopped it (143 after
SIGTERM, 130 after Ctrl-C), as every process lastcall stops does. An error
keeps granian's own status.
"""

from __future__ import annotations

import sys

from lastcall._config import module_or_exit, settings_or_exit
from lastcall._servers import granian as adapter
from lastcall._signals import die_by, stop_signals_seen

__all__ = ("main",)


def main(argv: list[str] | None = None) -> int:
    """Run granian's command line (``granian.cli:cli``); end by its stop signal."""
    settings_or_exit()  # before granian starts, in one line
    cli = module_or_exit("granian.cli").cli
    adapter.hold_wsgi_workers()
    with stop_signals_seen() as seen:
        try:
            cli.main(
                sys.argv[1:] if argv is None else argv,
                prog_name="granian",
                auto_envvar_prefix="GRANIAN",  # as granian.cli.entrypoint
            )
            status = 0
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 1
    if status == 0 and seen:
        die_by(seen[0], exit_functions=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
