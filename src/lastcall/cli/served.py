"""The app for a server that imports an attribute and calls no factory (daphne).

``lastcall.cli.served:application`` is what :func:`lastcall.cli.runner.asgi`
builds from the ``LASTCALL_DRILL_*`` variables, made as daphne imports it.
"""

from __future__ import annotations

from lastcall.cli.runner import asgi

application = asgi()
