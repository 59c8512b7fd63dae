"""``lastcall drill --worker NAME --matrix``: each pool and stop, as shipped beside lastcall.

Each (framework, pool, stop) runs twice, the demo worker plain and with
lastcall, each drill with its own workers and files, side by side; Ctrl-C
cancels them all and ends their processes. Each drill has a redis-server of
its own; on a broker they share (``--broker URL``, or one private RabbitMQ
node for the whole matrix with ``--broker rabbitmq``: a node takes ~10 s to
boot) each has a queue of its own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from lastcall.cli import cleanup
from lastcall.cli.broker import PRIVATE_RABBITMQ, RabbitMQServer
from lastcall.cli.frameworks import FRAMEWORKS
from lastcall.cli.plan import DrillError
from lastcall.cli.worker_drill import WorkerDrill

if TYPE_CHECKING:
    from collections.abc import Callable

    from lastcall.cli.worker_plan import WorkerPlan
    from lastcall.cli.worker_result import WorkerResult

_MAX_AT_ONCE = 4  # each drill runs a redis-server and two workers of several processes


@dataclass
class WorkerRow:
    """One stop on one framework's pool: the plain result beside lastcall's."""

    framework: str
    pool: str
    stop: str
    plain: WorkerResult | None = None
    lastcall: WorkerResult | None = None


def worker_plans(
    base: WorkerPlan, frameworks: list[str], pools: list[str], stops: list[str]
) -> list[WorkerPlan]:
    """Every (framework, pool, stop, variant): ``pools`` (those of each framework), else all.

    ``acks_late`` goes to Celery's plans only, the others have no such choice.
    """
    plans = []
    for framework in frameworks:
        known = FRAMEWORKS[framework]
        chosen = [p for p in pools if p in known.pools] if pools else known.installed_pools()
        plans += [
            replace(
                base,
                framework=framework,
                pool=pool,
                stop=stop,
                plain=plain,
                acks_late=base.acks_late and framework == "celery",
            )
            for pool in chosen
            for stop in stops
            for plain in (True, False)
        ]
    if not plans:  # no framework named has a pool given
        problem = FRAMEWORKS[frameworks[0]].pool_problem(pools[0])
        raise DrillError(problem or f"--pool {pools[0]}: no framework drilled has it")
    return plans


def run_worker_matrix(
    plans: list[WorkerPlan],
    done: Callable[[WorkerPlan, WorkerResult], None] = lambda _plan, _result: None,
    *,
    directory: Path | None = None,
) -> list[WorkerRow]:
    """Run the plans side by side; the rows in the plans' order."""
    cancel = threading.Event()
    rows = {_key(p): WorkerRow(p.framework, p.pool_name, p.stop) for p in plans}
    workers = min(_MAX_AT_ONCE, 2 * (os.cpu_count() or 1), len(plans))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="drill")
    futures: dict[Future[WorkerResult], WorkerPlan] = {}
    node: RabbitMQServer | None = None
    files: Path | None = None  # the shared node's
    try:
        broker = plans[0].broker if plans else None
        if broker == PRIVATE_RABBITMQ:
            files = Path(tempfile.mkdtemp(prefix="matrix-", dir=_made(directory)))
            node = RabbitMQServer.start(files / "rabbitmq", cleanup.new_mark())
            broker = node.url
        for n, plan in enumerate(plans):
            if broker is not None:  # shared: a queue of each drill's own
                plan = replace(plan, broker=broker, queue=f"{plan.queue_name}-{n}")  # noqa: PLW2901
            drill = WorkerDrill(plan, directory=directory, cancel=cancel)
            futures[pool.submit(drill.run)] = plan
        for future in as_completed(futures):
            plan = futures[future]
            result = future.result()
            row = rows[_key(plan)]
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
        if node is not None:
            node.stop()
        if files is not None and directory is None:
            shutil.rmtree(files, ignore_errors=True)
    return list(rows.values())


def _key(plan: WorkerPlan) -> tuple[str, str, str]:
    return plan.framework, plan.pool_name, plan.stop


def _made(directory: Path | None) -> Path | None:
    """``directory``, made if it is given (the drills' files are kept there)."""
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    return directory
