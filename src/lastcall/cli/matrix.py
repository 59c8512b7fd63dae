"""``lastcall drill --matrix``: the write-up's experiment as a product.

Every scenario against an app twice: the demo written with plain ``atexit``
and with lastcall, a user's APP as shipped and with lastcall's integration,
or two commands (``--vs-cmd`` and ``--cmd``); on every installed server
(``--cmd``: the commands' own); drills run side by side
(each has its own port, session and files), so the whole matrix takes
about as long as its slowest few drills.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from lastcall.cli import cleanup
from lastcall.cli.drill import Drill
from lastcall.cli.plan import IN_PROCESS, NotAStopError, Plan
from lastcall.cli.servers import SERVERS

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from lastcall.cli.result import Result

SCENARIOS = ("TERM", "INT", "HUP", "KILL-PARENT", "KILL-CHILD", "OS-EXIT", "EXCEPTION", "EXIT")
_MAX_AT_ONCE = 8
_NEEDS_ROUTES = "needs the drill's routes in front of the app, which --cmd cannot put there"


@dataclass
class Row:
    """One scenario on one server: the plain result beside lastcall's, or why it does not apply."""

    server: str
    stop: str
    plain: Result | None = None
    lastcall: Result | None = None
    not_applicable: str | None = None
    # A variant found not to apply once it ran (a --cmd whose master reloads on SIGHUP):
    # its cells are n/a, the other's as measured; both: the row is n/a.
    variant_not_applicable: dict[bool, str] = field(default_factory=dict)

    @staticmethod
    def failures(result: Result) -> list[str]:
        """The matrix columns this result fails in."""
        failed = result.failures()
        columns = {"late": "reset"}  # new connections accepted, then lost
        return sorted({columns.get(name, name) for name in failed})


def plans(
    base: Plan, servers: list[str], stops: list[str], vs_cmd: str | None = None
) -> list[Plan]:
    """Every (server, stop, variant) that applies: see :func:`why_not`.

    With ``--cmd``, the plain variant is ``vs_cmd`` and servers do not apply.
    """
    if base.cmd is not None:
        return [
            replace(base, stop=stop, plain=plain, cmd=vs_cmd if plain else base.cmd)
            for stop in stops
            if why_not(base, base.server, stop) is None
            for plain in (True, False)
        ]
    return [
        replace(base, server=server, stop=stop, plain=plain)
        for server in servers
        for stop in stops
        if why_not(base, server, stop) is None
        for plain in (True, False)
    ]


def why_not(base: Plan, server: str, stop: str) -> str | None:
    """Why ``stop`` is no scenario for this plan on ``server``; None if it is."""
    if base.cmd is not None:
        return _NEEDS_ROUTES if stop in IN_PROCESS else None
    return SERVERS[server].why_not(stop)


def run_matrix(
    base: Plan,
    all_plans: list[Plan],
    done: Callable[[Plan, Result | None], None] = lambda _plan, _result: None,
    servers: list[str] | None = None,
    stops: list[str] | None = None,
    *,
    directory: Path | None = None,
) -> list[Row]:
    """Run the plans side by side; Ctrl-C cancels them all and ends their processes.

    With ``servers`` and ``stops``, the pairs that do not apply are rows too,
    saying why; so is a stop found not to apply once the app runs. ``directory``
    keeps each drill's files (the app's log, its reports) there.
    """
    cancel = threading.Event()
    workers = min(_MAX_AT_ONCE, 2 * (os.cpu_count() or 1), len(all_plans))
    wheres = ["command"] if base.cmd is not None else servers or []
    rows: dict[tuple[str, str], Row] = {
        (where, stop): Row(where, stop, not_applicable=why_not(base, where, stop))
        for where in wheres
        for stop in stops or []
    }
    for plan in all_plans:
        rows.setdefault((plan.where, plan.stop), Row(plan.where, plan.stop))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="drill")
    futures: dict[Future[Result], Plan] = {}
    try:  # from the first submission: a SIGTERM may land while the drills are handed out
        for plan in all_plans:
            futures[pool.submit(Drill(plan, cancel=cancel, directory=directory).run)] = plan
        for future in as_completed(futures):
            plan = futures[future]
            row = rows[plan.where, plan.stop]
            try:
                result = future.result()
            except NotAStopError as exc:
                row.variant_not_applicable[plan.plain] = str(exc)
                if len(row.variant_not_applicable) == 2 or base.cmd is None:  # noqa: PLR2004
                    row.not_applicable = str(exc)
                done(plan, None)
                continue
            if plan.plain:
                row.plain = result
            else:
                row.lastcall = result
            done(plan, result)
    except BaseException:
        cancel.set()  # each drill's next wait raises, and it ends its app
        for future in futures:
            future.cancel()
        cleanup.end_all()  # drills waiting on their app's exit or answers end now
        raise
    finally:
        pool.shutdown(wait=True)  # the drills, cancelled or done, end at once
    return list(rows.values())
