"""The stop token: set once, the moment a shutdown begins.

Background loops poll it (``while not stopping.wait(5): ...``); asyncio code
awaits its twin (``await stopping`` or ``await stopping.wait_async(5)``).
Futures are resolved with ``call_soon_threadsafe`` because the shutdown
usually begins on another thread than the event loop's.
"""

from __future__ import annotations

import threading

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see _hooks)
if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Generator
    from typing import Any


class StopToken:
    """Like :class:`threading.Event`, read-only for users, and awaitable.

    ``is_set()`` says whether shutdown has begun; ``wait(timeout)`` blocks
    until it begins or ``timeout`` passes and says which.
    """

    def __init__(self) -> None:
        self._renew()

    def _renew(self) -> None:
        """Fresh primitives: after a fork, or once gevent has patched ``threading``."""
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._futures: set[asyncio.Future[None]] = set()
        # Bound straight to the Event: middleware checks this on every request.
        self.is_set: Callable[[], bool] = self._event.is_set

    def wait(self, timeout: float | None = None) -> bool:
        """Block until shutdown begins or ``timeout`` passes; True if it began."""
        return self._event.wait(timeout)

    async def wait_async(self, timeout: float | None = None) -> bool:
        """The asyncio twin of :meth:`wait`."""
        import asyncio  # noqa: PLC0415  # only asyncio users pay for importing it

        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._event.is_set():
                return True
            self._futures.add(future)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            return False
        finally:
            with self._lock:
                self._futures.discard(future)
        return True

    def __await__(self) -> Generator[Any, None, bool]:
        return self.wait_async().__await__()

    def __repr__(self) -> str:
        return f"<StopToken {'set' if self.is_set() else 'clear'}>"

    def _set(self) -> None:
        with self._lock:
            self._event.set()
            futures = list(self._futures)
        for future in futures:
            future.get_loop().call_soon_threadsafe(resolve_future, future)


def resolve_future(future: asyncio.Future[None]) -> None:
    """Set ``future``'s result unless it is done: for ``call_soon_threadsafe`` from any thread."""
    if not future.done():
        future.set_result(None)
