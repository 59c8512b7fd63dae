"""The hooks registry: what runs at the stop, in which phase, in what order.

Registration order is kept by serial; ``_by_func`` finds a function's serials
at once, so unregistering is O(1) (functions that cannot be hashed are
scanned for). Within a phase the last registered runs first, as with ``atexit``.
"""

from __future__ import annotations

import contextlib
import itertools
import threading

from lastcall._hooks import PHASES
from lastcall._log import logger

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see _hooks)
if TYPE_CHECKING:
    from lastcall._hooks import Hook, HookFunc


class HookRegistry:
    """The hooks of one coordinator; its lock is held for a few bytecodes at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hooks: dict[int, Hook] = {}
        self._by_func: dict[object, list[int]] = {}
        self._serials = itertools.count()
        self._running: str | None = None  # the phase a stop is running

    def add(self, hook: Hook) -> None:
        """Register ``hook``; a warning if its phase has already run in the stop under way."""
        with self._lock:
            serial = next(self._serials)
            self._hooks[serial] = hook
            with contextlib.suppress(TypeError):  # unhashable: remove() scans for it
                self._by_func.setdefault(hook.func, []).append(serial)
            running = self._running
        if running is not None and PHASES.index(hook.phase) <= PHASES.index(running):
            logger.warning(
                "hook %s registered for the %s phase while the stop is in its %s phase: "
                "it will not run",
                hook.name,
                hook.phase,
                running,
            )

    def remove(self, func: HookFunc) -> bool:
        """Remove every registration of ``func``; True if there was one."""
        with self._lock:
            try:
                hash(func)  # dict.pop() on an empty dict does not hash: ask first
                serials = self._by_func.pop(func, [])
            except TypeError:
                serials = [n for n, h in self._hooks.items() if h.func is func or h.func == func]
            for serial in serials:
                del self._hooks[serial]
        return bool(serials)

    def clear(self) -> None:
        with self._lock:
            self._hooks.clear()
            self._by_func.clear()

    def inherited(self) -> list[Hook]:
        """The hooks a forked child keeps (``inherit=True``); in the child, without the lock.

        A thread of the parent may have held it at the fork (inside ``add``), and no
        thread is left in the child to release it; the child has one thread only.
        """
        return [h for h in self._hooks.values() if h.inherit]

    def all(self) -> tuple[Hook, ...]:
        with self._lock:
            return tuple(self._hooks.values())

    def run_phase(self, phase: str | None) -> list[Hook]:
        """Mark ``phase`` as running (None: the stop is over); its hooks, last registered first."""
        with self._lock:
            self._running = phase
            return [h for h in reversed(self._hooks.values()) if h.phase == phase]
