"""hypercorn: how it is told to stop once lastcall's drain begins.

hypercorn stops accepting the moment it is asked to, leaving no pre-stop
window. Two ways it is asked:

* **A single process** (``--workers 0``, or ``hypercorn.asyncio.serve``
  without a ``shutdown_trigger``) registers its handler with
  ``loop.add_signal_handler``. It is removed (which alone would still fire
  through the loop's wake-up fd) and run when the drain begins.
* **The worker** (the default ``--workers 1`` runs a master and a worker)
  gets no signal: the master sets a shared event that the worker polls with
  ``check_multiprocess_shutdown_event``, bound in ``hypercorn.asyncio.run``
  as the worker imports the app and awaited through the module's
  ``raise_shutdown`` once the lifespan has started. At lifespan start-up
  (never when a wrapper is built: a module may build one it does not
  serve), ``raise_shutdown`` is wrapped to hold that trigger: the master's
  request begins lastcall's stop (readiness red, pre-stop delay) and the
  worker stops accepting when the drain begins. The master keeps its own copy of
  the listening socket until the worker exits; the drain shuts the socket
  itself (``lastcall._servers.asgi``), refusing for both processes.

Tested with hypercorn 0.16 to 0.18 (``versions.HYPERCORN``). Undocumented:
``hypercorn/asyncio/run.py``'s module-level ``raise_shutdown`` (replaced, in a
worker, at lifespan start-up) and ``check_multiprocess_shutdown_event`` (read;
both the same from 0.16 to 0.18), asyncio's ``loop._signal_handlers`` and ``Handle._run``
(``Lib/asyncio/unix_events.py``, ``Lib/asyncio/events.py``).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import multiprocessing
import sys
from typing import TYPE_CHECKING, Any

from lastcall._log import logger
from lastcall._servers import versions

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import ModuleType

    from lastcall._coordinator import Coordinator

__all__ = (
    "TESTED",
    "hold_worker_trigger",
    "serve_wrapped",
    "take_loop_signal",
    "wrap_every_app",
)

TESTED = versions.HYPERCORN


def take_loop_signal(loop: asyncio.AbstractEventLoop, sig: int) -> Callable[[], object] | None:
    """Remove the handler the server added with ``loop.add_signal_handler``; how to run it."""
    handlers: dict[int, asyncio.Handle] = getattr(loop, "_signal_handlers", {})
    handle = handlers.get(sig)
    if handle is None:
        return None
    loop.remove_signal_handler(sig)
    run: Callable[[], object] = handle._run  # noqa: SLF001  # the loop's own way to call it
    return run


def hold_worker_trigger(
    coordinator: Coordinator, drain_began: Callable[[], Awaitable[None]]
) -> bool:
    """In hypercorn's worker, hold its stop until the drain begins; whether this is one.

    Called at lifespan start-up by the middleware hypercorn serves, never
    earlier: building a wrapper changes nothing. By then ``asyncio_worker``
    (``hypercorn/asyncio/run.py``) has bound its trigger, a ``partial`` of
    ``check_multiprocess_shutdown_event``; ``worker_serve`` hands it to the
    module's ``raise_shutdown`` once the lifespan has started, and that name
    is replaced here, in this worker process, by one that awaits a held
    version of the trigger instead. ``drain_began`` returns once the drain
    begins. A stop begun here (a signal to the worker, its master's death)
    stops the worker's server too.
    """
    module = sys.modules.get("hypercorn.asyncio.run")
    raise_shutdown = getattr(module, "raise_shutdown", None)
    check = getattr(module, "check_multiprocess_shutdown_event", None)
    if (
        module is None
        or raise_shutdown is None
        or check is None
        or multiprocessing.parent_process() is None
    ):
        return False
    if getattr(raise_shutdown, "__lastcall__", False):
        return True

    async def held(shutdown_event: object, sleep: Callable[[float], Awaitable[Any]]) -> None:
        master = asyncio.ensure_future(check(shutdown_event, sleep))
        ours = asyncio.ensure_future(drain_began())
        either: set[asyncio.Future[Any]] = {master, ours}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if master.done() and not ours.done():
            if not coordinator.stopping.is_set():
                coordinator.trigger("hypercorn's master asked its worker to stop")
            await ours
        master.cancel()

    async def raise_shutdown_when_held(trigger: Callable[..., Awaitable[Any]]) -> None:
        if isinstance(trigger, functools.partial) and trigger.func is check:
            trigger = functools.partial(held, *trigger.args, **trigger.keywords)
        await raise_shutdown(trigger)

    raise_shutdown_when_held.__lastcall__ = True  # type: ignore[attr-defined]
    module.raise_shutdown = raise_shutdown_when_held  # type: ignore[attr-defined]
    return True


# ---------------------------------------------------------------- python -m lastcall.hypercorn

_WORKERS = ("asyncio_worker", "uvloop_worker")  # hypercorn/asyncio/run.py; trio's is not drained
_original_workers: dict[str, Callable[..., Any]] = {}


def wrap_every_app() -> None:
    """Have each asyncio worker hypercorn runs put the app in lastcall's middleware, if not in one.

    ``hypercorn/run.py`` imports its worker function from ``hypercorn/asyncio/
    run.py`` as it starts (``asyncio_worker``, ``uvloop_worker``), and hands it
    to each worker process it spawns, pickled by name: replaced here by
    :func:`serve_wrapped`, it runs first in the worker (or in this process,
    with ``--workers 0``), and the original follows. The same from 0.16 to 0.18.
    """
    run = importlib.import_module("hypercorn.asyncio.run")
    for name in _WORKERS:
        original = getattr(run, name, None)
        if original is None or name in _original_workers:
            continue
        _original_workers[name] = original
        setattr(run, name, functools.partial(serve_wrapped, name))


def serve_wrapped(name: str, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401  # hypercorn's
    """The worker function ``name`` of hypercorn's, loading the app into lastcall's middleware."""
    run = importlib.import_module("hypercorn.asyncio.run")
    _wrap_loaded_apps(run)
    worker = _original_workers.get(name) or getattr(run, name)  # a spawned worker: the original
    worker(*args, **kwargs)


def _wrap_loaded_apps(run: ModuleType) -> None:
    """In this worker process, ``load_application`` puts an ASGI app in ``LastCallMiddleware``.

    The worker function reads that name from its module (``hypercorn/asyncio/
    run.py``) as it starts. hypercorn keeps the app it serves as ``.app`` of its ``ASGIWrapper``
    (``hypercorn/app_wrappers.py``). A WSGI app is served by hypercorn alone, said in one line.
    """
    from lastcall.asgi import LastCallMiddleware  # noqa: PLC0415  # lastcall.asgi imports this

    load = run.load_application
    if getattr(load, "__lastcall__", False):
        return

    def load_wrapped(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401  # hypercorn's
        loaded = load(*args, **kwargs)
        app = getattr(loaded, "app", None)
        if type(loaded).__name__ != "ASGIWrapper" or app is None:
            logger.warning(
                "%r is not an ASGI app: hypercorn serves it without lastcall's drain", app
            )
        elif not isinstance(app, LastCallMiddleware):
            loaded.app = LastCallMiddleware(app)
        return loaded

    load_wrapped.__lastcall__ = True  # type: ignore[attr-defined]
    run.load_application = load_wrapped  # type: ignore[attr-defined]
