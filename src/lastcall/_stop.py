"""The stop: every phase in order, each hook within its time, and the report of it.

``Stop.run`` is the whole sequence. For each phase (``pre_stop``, ``drain``,
``workers``, ``cleanup``, ``final``) the hooks run on a runner thread, the
last registered first, each within its timeout and what is left of the
grace; a hook that overruns is abandoned and a fresh runner takes the ones
after it. The ``pre_stop`` phase ends with the pre-stop delay (still
serving while load balancers notice readiness is red); the ``drain`` phase
ends by waiting for ``busy`` blocks within the drain budget. What was left
running is named in the report, with its stack.

The coordinator makes one ``Stop`` once its state turned to ``stopping``,
and finishes the report (file, log, callbacks) once ``run`` returns.
"""

from __future__ import annotations

import logging
import os
import time

from lastcall import _children, _watchdog
from lastcall._config import drain_reserve
from lastcall._hooks import PHASES, Finished, Runner
from lastcall._log import log
from lastcall._report import HookResult, Report

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see _hooks)
if TYPE_CHECKING:
    import asyncio
    import signal
    from collections.abc import Callable
    from typing import Any

    from lastcall._busy import BusyWork
    from lastcall._config import Settings
    from lastcall._hooks import Hook
    from lastcall._registry import HookRegistry

BUSY_STEP = "lastcall: wait for busy work"


class Stop:
    """One stop under way: its report, its deadline, and the runner of the phase it is in."""

    def __init__(  # noqa: PLR0917  # what a stop is made of, named where it is made
        self,
        registry: HookRegistry,
        busy: BusyWork,
        settings: Settings,
        clock: Callable[[], float],
        trigger: str,
        reason: str,
        hook_mask: set[int | signal.Signals] | None = None,
    ) -> None:
        self._registry = registry
        self._hook_mask = hook_mask  # the app's signal mask, for the hooks' threads
        self._busy = busy
        self._settings = settings
        self._clock = clock
        self.report = Report(
            trigger=trigger, reason=reason, pid=os.getpid(), started_at=time.time()
        )
        self.deadline = clock() + settings.grace
        self.runner: Runner | None = None  # running the hooks of the current phase

    def run(
        self,
        *,
        exit_status: int | None,
        ends_process: bool,
        loop: asyncio.AbstractEventLoop | None,
        sleep: Callable[[float], object],
    ) -> Report:
        """Every phase in order, each hook within its time; ``sleep`` waits the pre-stop delay."""
        settings, report = self._settings, self.report
        problem = _watchdog.arm(settings.grace) if ends_process else None
        began_since_boot = _children.clock()
        start = self._clock()
        if problem is not None:
            report.problems.append(problem)
            log.log(logging.ERROR, "%s", problem)
        log.log(
            logging.INFO,
            "shutdown started by %s (%s); grace %.3g s",
            report.trigger,
            report.reason,
            settings.grace,
        )
        for phase in PHASES:
            hooks = self._registry.run_phase(phase)
            # The drain's hooks (the servers' and workers' own, waiting for work in flight
            # while the main thread may sleep in a job) keep the dispatcher's mask, every
            # signal blocked: a second Ctrl-C must find the main thread, not a thread just
            # started (the kernel may pick the running one). The other phases get the app's.
            mask = None if phase == "drain" else self._hook_mask
            while hooks:
                runner = self.runner = Runner(hooks, self._budget, self._clock, loop, mask)
                runner.start()
                overran = runner.watch()
                report.hooks.extend(record(done, took) for done, took in runner.results)
                if overran is None:
                    break
                hook = hooks[overran]
                _, _, allowed = runner.current or (0, 0.0, 0.0)
                error = f"still running after {allowed:.3g} s; abandoned"
                report.hooks.append(
                    record(Finished(hook, "timeout", error, runner.stack()), allowed)
                )
                hooks = hooks[overran + 1 :]  # a new runner for the rest
            if phase == "drain" and (len(self._busy) or self._busy.cancelled):
                report.hooks.append(self._wait_busy())
            if phase == "pre_stop" and settings.prestop_delay:
                delay = min(settings.prestop_delay, self.time_left())
                log.log(logging.INFO, "pre-stop delay: still serving for %.3g s", delay)
                sleep(delay)
        self.runner = None
        self._registry.run_phase(None)
        self._note_cancelled_busy()  # asyncio.run's teardown may come after the drain
        if ends_process and any(h.outcome == "timeout" for h in report.hooks):
            for line in _children.end_children_started_since(began_since_boot):
                report.problems.append(line)
                log.log(logging.ERROR, "%s", line)
        report.duration = self._clock() - start
        report.exit_status = exit_status
        return report

    def time_left(self) -> float:
        return max(0.0, self.deadline - self._clock())

    def drain_budget(self) -> float:
        """What is left of the grace, less the reserve the phases after the drain get."""
        return max(0.0, self.time_left() - drain_reserve(self._settings.grace))

    def _budget(self, hook: Hook) -> float:
        remaining = self.deadline - self._clock()
        return min(hook.timeout or remaining, remaining)

    def note_requests_in_flight(self, requests: list[dict[str, Any]]) -> None:
        """The drain's budget ran out: the requests still in flight, in the report and at ERROR."""
        self.report.requests = requests
        for request in requests:
            log.log(
                logging.ERROR,
                "request %s %s still in flight after %.1f s when the drain budget ran out",
                request["method"],
                request["path"],
                request["seconds"],
            )

    def note_job(self, job: dict[str, Any]) -> None:
        """A job the stop touched; noted again (put back after it ran), it replaces its entry."""
        jobs = self.report.jobs
        jobs[:] = [j for j in jobs if j.get("id") != job.get("id")]
        jobs.append(job)

    def forced(self, forced_by: str) -> str:
        """A second Ctrl-C: the hook still running goes in the report; what it was, in words."""
        runner = self.runner
        running = runner.current if runner is not None else None
        # A hook that has just returned is still ``current`` until the next begins: its
        # result is in, and this stop's ``run`` reports it (once, as "ok").
        if runner is None or running is None or running[0] < len(runner.results):
            return "nothing"
        index, began, _ = running
        hook = runner.hooks[index]
        took = time.monotonic() - began
        error = f"still running when {forced_by} forced the exit"
        self.report.hooks.append(record(Finished(hook, "timeout", error, runner.stack()), took))
        return f"{hook.name} ({hook.phase}, {took:.1f} s)"

    def _wait_busy(self) -> HookResult:
        """The drain's last step: wait for ``busy`` blocks within the drain budget."""
        began = self._clock()
        idle = self._busy.wait_idle(self.drain_budget())
        took = self._clock() - began
        cut_off = self._note_cancelled_busy()
        if not idle:
            still = self._busy.in_progress()
            self.report.busy.extend(still)
            names = ", ".join(f"{b['name']} ({b['seconds']:.1f} s)" for b in still)
            for block in still:
                log.log(
                    logging.ERROR,
                    "busy work %s still running after the drain budget, at:\n%s",
                    block["name"],
                    block["stack"] or "(its stack cannot be seen)",
                )
            return HookResult(BUSY_STEP, "drain", "timeout", took, f"still busy: {names}")
        if cut_off:
            return HookResult(BUSY_STEP, "drain", "error", took, f"cancelled: {cut_off}")
        return HookResult(BUSY_STEP, "drain", "ok", took)

    def _note_cancelled_busy(self) -> str:
        """Put busy blocks the stop cancelled in the report, at ERROR; their names, or ''."""
        cancelled = self._busy.cancelled
        new = list(cancelled)  # a copy: a task may still be cancelled meanwhile
        del cancelled[: len(new)]
        self.report.busy.extend(new)
        for block in new:
            log.log(
                logging.ERROR,
                "busy work %s cancelled after %.1f s, before it finished (asyncio.run ends the "
                "tasks left when main returns: await them first), at:\n%s",
                block["name"],
                block["seconds"],
                block["stack"] or "(its stack cannot be seen)",
            )
        return ", ".join(f"{b['name']} ({b['seconds']:.1f} s)" for b in new)


def record(done: Finished, took: float) -> HookResult:
    """A hook's result for the report; a failed or abandoned one at ERROR, with its stack."""
    hook = done.hook
    if done.outcome in ("error", "timeout"):
        log.log(
            logging.ERROR,
            "hook %s (%s) %s: %s%s",
            hook.name,
            hook.phase,
            done.outcome,
            done.error,
            f", at:\n{done.stack}" if done.stack else "",
        )
    return HookResult(hook.name, hook.phase, done.outcome, took, done.error, stack=done.stack)


def write_report(report: Report, report_path: str | None) -> None:
    """The report file, if one is asked for; any error is logged and kept in the report."""
    if not report_path:
        return
    try:
        path = report.write(report_path)
    except Exception as exc:  # any: the stop must end (kept in report.write_error)
        log.log(logging.ERROR, "could not write the report to %s: %s", report_path, exc)
    else:
        log.log(logging.DEBUG, "report written to %s", path)
