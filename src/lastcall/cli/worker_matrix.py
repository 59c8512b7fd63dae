"""``lastcall drill --worker NAME --matrix``: each stop, the framework as shipped beside lastcall.

Each (framework, stop) runs twice, the demo worker plain and with lastcall,
each drill with its own redis-server, workers and files, side by side; Ctrl-C
cancels them all and ends their processes.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from lastcall.cli import cleanup
from lastcall.cli.worker_drill import WorkerDrill

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from lastcall.cli.worker_plan import WorkerPlan
    from lastcall.cli.worker_result import WorkerResult

_MAX_AT_ONCE = 4  # each drill runs a redis-server and two workers of several processes


@dataclass
class WorkerRow:
    """One stop on one framework: the plain result beside lastcall's."""

    framework: str
    stop: str
    plain: WorkerResult | None = None
    lastcall: WorkerResult | None = None


def worker_plans(base: WorkerPlan, frameworks: list[str], stops: list[str]) -> list[WorkerPlan]:
    """Every (framework, stop, variant)."""
    return [
        replace(base, framework=framework, stop=stop, plain=plain)
        for framework in frameworks
        for stop in stops
        for plain in (True, False)
    ]


def run_worker_matrix(
    plans: list[WorkerPlan],
    done: Callable[[WorkerPlan, WorkerResult], None] = lambda _plan, _result: None,
    *,
    directory: Path | None = None,
) -> list[WorkerRow]:
    """Run the plans side by side; the rows in the plans' order."""
    cancel = threading.Event()
    rows = {(p.framework, p.stop): WorkerRow(p.framework, p.stop) for p in plans}
    workers = min(_MAX_AT_ONCE, 2 * (os.cpu_count() or 1), len(plans))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="drill")
    futures: dict[Future[WorkerResult], WorkerPlan] = {}
    try:
        for plan in plans:
            drill = WorkerDrill(plan, directory=directory, cancel=cancel)
            futures[pool.submit(drill.run)] = plan
        for future in as_completed(futures):
            plan = futures[future]
            result = future.result()
            row = rows[plan.framework, plan.stop]
            if plan.plain:
                row.plain = result
            else:
                row.lastcall = result
            done(plan, result)
    except BaseException:
        cancel.set()  # each drill's next wait raises, and it ends its workers
        for future in futures:
            future.cancel()
        cleanup.end_all()
        raise
    finally:
        pool.shutdown(wait=True)
    return list(rows.values())
