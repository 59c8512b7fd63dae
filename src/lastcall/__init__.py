"""Graceful shutdown for Python services.

One coordinator per process turns every way the process can end into one
ordered, time-boxed, exactly-once shutdown, and reports what it did::

    import lastcall

    lastcall.install()              # SIGTERM, SIGINT, SIGHUP and normal exit

    @lastcall.on_shutdown
    def close_pool() -> None: ...
"""

from __future__ import annotations

from lastcall._config import Settings
from lastcall._coordinator import Coordinator
from lastcall._hooks import PHASES, Hook, Phase
from lastcall._lastresort import LastResort as _LastResort
from lastcall._report import HookResult, Report
from lastcall._stoptoken import StopToken

__all__ = (
    "PHASES",
    "Coordinator",
    "Hook",
    "HookResult",
    "Phase",
    "Report",
    "Settings",
    "StopToken",
    "busy",
    "default",
    "install",
    "last_resort",
    "on_shutdown",
    "set_not_ready",
    "set_ready",
    "shutdown",
    "stopping",
    "trigger",
    "uninstall",
    "unregister",
    "use_loop",
)

default: Coordinator = Coordinator()
"""The process's coordinator, used by the functions below."""

install = default.install
busy = default.busy
set_ready = default.set_ready
set_not_ready = default.set_not_ready
uninstall = default.uninstall
on_shutdown = default.on_shutdown
unregister = default.unregister
use_loop = default.use_loop
trigger = default.trigger
shutdown = default.shutdown
stopping: StopToken = default.stopping
last_resort = _LastResort(default).last_resort
"""Run cleanup from a watcher process if this one dies without a shutdown."""
