"""The process's coordinator and the functions bound to it, made on first use.

``lastcall/__init__`` hands out these names lazily, so ``import lastcall``
costs next to nothing; importing this module (under the import lock, once)
is what makes the one default coordinator.
"""

from __future__ import annotations

from lastcall._coordinator import Coordinator
from lastcall._lastresort import LastResort

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
stopping = default.stopping
last_resort = LastResort(default).last_resort
"""Run cleanup from a watcher process if this one dies without a shutdown."""
