"""The demos' record of a hook that ran, for apps that write no lastcall report (``atexit``).

Each hook appends one JSON line to ``LASTCALL_DEMO_EVENTS``: its name, the
process that ran it, when it started and ended; ``processes.hooks_run``
reads them beside the lastcall reports.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

EVENTS = "LASTCALL_DEMO_EVENTS"


def record(hook: str, started: float) -> None:
    """One line for ``hook``, begun at ``started`` (``time.time()``) and ended now."""
    events = os.environ.get(EVENTS)
    if events:
        line = json.dumps(
            {"hook": hook, "pid": os.getpid(), "started": started, "ended": time.time()}
        )
        with Path(events).open("a", encoding="utf-8") as out:
            out.write(line + "\n")
