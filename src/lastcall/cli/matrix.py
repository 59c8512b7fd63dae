"""``lastcall drill --matrix``: the write-up's experiment as a product.

Every scenario against the demo app twice, written with plain ``atexit``
and with lastcall, on every installed server; drills run side by side
(each has its own port, session and files), so the whole matrix takes
about as long as its slowest few drills.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from lastcall.cli.drill import Drill, Plan
from lastcall.cli.servers import SERVERS

if TYPE_CHECKING:
    from collections.abc import Callable

    from lastcall.cli.drill import Result

SCENARIOS = ("TERM", "INT", "HUP", "KILL-PARENT", "KILL-CHILD", "OS-EXIT", "EXCEPTION", "EXIT")
_MAX_AT_ONCE = 8


@dataclass
class Row:
    """One scenario on one server: the plain result beside lastcall's, or why it does not apply."""

    server: str
    stop: str
    plain: Result | None = None
    lastcall: Result | None = None
    not_applicable: str | None = None

    @staticmethod
    def failures(result: Result) -> list[str]:
        """The matrix columns this result fails in."""
        failed = result.failures()
        columns = {"late": "dropped"}  # a new connection lost counts as dropped
        return sorted({columns.get(name, name) for name in failed})


def plans(base: Plan, servers: list[str], stops: list[str]) -> list[Plan]:
    """Every (server, stop, variant) that applies: see ``Server.why_not``."""
    return [
        replace(base, server=server, stop=stop, plain=plain)
        for server in servers
        for stop in stops
        if SERVERS[server].why_not(stop) is None
        for plain in (True, False)
    ]


def run_matrix(
    all_plans: list[Plan],
    done: Callable[[Plan, Result], None] = lambda _plan, _result: None,
    servers: list[str] | None = None,
    stops: list[str] | None = None,
) -> list[Row]:
    """Run the plans side by side; Ctrl-C cancels them all and ends their processes.

    With ``servers`` and ``stops``, the pairs that do not apply are rows too, saying why.
    """
    cancel = threading.Event()
    workers = min(_MAX_AT_ONCE, 2 * (os.cpu_count() or 1), len(all_plans))
    rows: dict[tuple[str, str], Row] = {
        (server, stop): Row(server, stop, not_applicable=SERVERS[server].why_not(stop))
        for server in servers or []
        for stop in stops or []
    }
    for plan in all_plans:
        rows.setdefault((plan.server, plan.stop), Row(plan.server, plan.stop))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="drill") as pool:
        futures: dict[Future[Result], Plan] = {
            pool.submit(Drill(plan, cancel=cancel).run): plan for plan in all_plans
        }
        try:
            for future in as_completed(futures):
                plan, result = futures[future], future.result()
                row = rows[plan.server, plan.stop]
                if plan.plain:
                    row.plain = result
                else:
                    row.lastcall = result
                done(plan, result)
        except BaseException:
            cancel.set()
            for future in futures:
                future.cancel()
            raise
    return list(rows.values())
