"""The drain: one sequence, the same for every server, read top to bottom.

Like uvicorn's ``Server.shutdown``: stop accepting, let what was accepted
finish within a budget, then cancel the rest and say how many. What
differs between servers is only how each step is done, which is the
adapter's business (one module per server beside this one); the order,
the budget and the log lines are decided here, once.

1. **Pre-stop delay**, where the adapter still owes one (a gunicorn
   worker on a full stop; elsewhere the core's ``pre_stop`` phase has
   already kept serving while readiness was red).
2. **Close the door**: take what the listen backlog already holds, to be
   served, then stop listening so new connections are refused, never
   accepted and reset.
3. **Wait until idle**, within ``Integration.drain_budget()`` (the hooks
   after the drain keep their share of the grace), closing keep-alive
   connections as they fall idle.
4. **Cancel what overran**, and say so (the requests, by method and path,
   in the report); the stop goes on to the hooks.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Protocol

from lastcall._integration import Integration
from lastcall._log import log

if TYPE_CHECKING:
    from lastcall._coordinator import Coordinator

__all__ = ("Adapter", "drain")

_IDLE_POLL = 0.05  # seconds between closing idle keep-alive connections while waiting


class Adapter(Protocol):
    """What the drain asks of a server; each answer is the server's own way of doing it."""

    @property
    def name(self) -> str:
        """Who is draining, for the log lines: ``waitress``, ``worker 1234``."""
        ...

    def prestop_delay(self) -> float:
        """Seconds to keep serving before the door closes (0 when the core already waited)."""
        ...

    def close_door(self) -> int:
        """Stop accepting; take the backlog to serve; refuse new connections. How many taken."""
        ...

    def in_flight(self) -> int:
        """Requests (or connections) still being served."""
        ...

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for nothing in flight; whether that came."""
        ...

    def close_idle(self) -> None:
        """Close keep-alive connections that carry no request now."""
        ...

    def cancel(self) -> int:
        """Cancel, or give up on, what is still running; how many."""
        ...


def drain(
    adapter: Adapter, coordinator: Coordinator, *, budget: float | None = None, jobs: bool = False
) -> bool:
    """Run the four steps on ``adapter`` within the drain budget; whether it ended idle.

    ``budget`` caps ``Integration.drain_budget()`` (the ASGI middleware's ``drain_timeout``).
    ``jobs``: a worker's queue, no listen backlog; its adapter says in its framework's words
    what it put back and what runs when the door closes, and the connection line is not said.
    """
    allowed = Integration(coordinator).drain_budget()
    deadline = time.monotonic() + (allowed if budget is None else min(allowed, budget))

    delay = min(adapter.prestop_delay(), max(0.0, deadline - time.monotonic()))
    if delay > 0:
        log.log(logging.INFO, "pre-stop delay: %s still serving for %.3g s", adapter.name, delay)
        threading.Event().wait(delay)

    taken = adapter.close_door()
    if not jobs:
        log.log(
            logging.INFO,
            "%s stopped accepting; serving %d connection(s) taken from the backlog",
            adapter.name,
            taken,
        )

    while not adapter.wait_idle(min(_IDLE_POLL, max(0.0, deadline - time.monotonic()))):
        adapter.close_idle()
        if time.monotonic() >= deadline:
            break
    else:
        log.log(logging.INFO, "%s drained: nothing left in flight", adapter.name)
        return True

    left = adapter.in_flight()
    Integration(coordinator).note_requests_in_flight()  # while they are still there to list
    cancelled = adapter.cancel()
    log.log(
        logging.WARNING,
        "%s: drain budget spent with %d still in flight; %d cancelled, the stop goes on",
        adapter.name,
        left,
        cancelled,
    )
    return False
