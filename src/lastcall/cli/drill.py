"""One drill: start the app, put requests in flight, stop it one way, record what everyone saw.

This module is the sequence only, read top to bottom from :meth:`Drill.run`;
each step is done elsewhere. What it runs: ``launch.py`` starts the app (under a
server from ``servers.py``, or ``--cmd``) in a session of its own, sends the
stop and ends every process it started. What it measures: ``clients.py``
(each request's fate), ``processes.py`` (the processes seen in ``/proc``,
the hooks each ran by its lastcall report, the demo's rows in SQLite).
What it makes of it: ``result.py``; how it is shown: ``render.py``.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

from lastcall.cli.clients import Load, classify
from lastcall.cli.launch import App
from lastcall.cli.plan import STOP_WORDS, DrillError
from lastcall.cli.processes import (
    POLL,
    ProcessWatch,
    hooks_run,
    listen_backlog,
    open_connections,
    stored_rows,
    warnings_in,
)
from lastcall.cli.result import Result

if TYPE_CHECKING:
    from collections.abc import Callable

    from lastcall.cli.clients import RequestRecord
    from lastcall.cli.grpc_client import GrpcLoad
    from lastcall.cli.plan import Plan

WRITES_BEFORE = 4  # demo orders acknowledged before the stop: what a lost flush loses
_PROBE_INTERVAL = 0.1
_MAX_PROBES = 40
_EXIT_MARGIN = 1.0  # beyond the grace, before a process still running counts as left behind
_REPLACED_EVERY = 0.3  # seconds: how often a --cmd app is looked at for a reload
_MOST_PER_CLIENT = 200  # a --cmd client's requests before the stop: traffic stays bounded


class CancelledError(Exception):
    """The drill was asked to stop (Ctrl-C in a matrix run)."""


class Drill:
    """One run of a plan. ``run()`` returns the result and leaves no process behind.

    ``directory`` keeps the drill's files (the app's log and lastcall reports)
    there; without it they go to a temporary directory, removed afterwards.
    """

    def __init__(
        self,
        plan: Plan,
        progress: Callable[[str], None] = lambda _: None,
        cancel: threading.Event | None = None,
        directory: Path | None = None,
    ) -> None:
        plan.check()
        self.plan = plan
        self._progress = progress
        self._cancel = cancel or threading.Event()
        self._keep = directory
        self._dir = Path()
        self._clock = time.time()

    def _now(self) -> float:
        return time.time() - self._clock

    def _wait(self, seconds: float) -> None:
        if self._cancel.wait(max(0.0, seconds)):
            raise CancelledError

    def run(self) -> Result:
        """Drill once; raises ``DrillError`` for bad input, always ends every process."""
        if self._keep is not None:
            self._keep.mkdir(parents=True, exist_ok=True)
        prefix = f"{self.plan.where}-{self.plan.stop}-{self.plan.variant}-".lower()
        self._dir = Path(tempfile.mkdtemp(prefix=prefix, dir=self._keep))
        app = App(self.plan, self._dir, self._progress, self._wait)
        try:
            port, serving = app.start()
            return self._drill(app, port, serving)
        finally:
            app.end()
            if self._keep is None:
                shutil.rmtree(self._dir, ignore_errors=True)

    def _drill(self, app: App, port: int, serving: int) -> Result:
        plan = self.plan
        scheme = "grpc" if plan.grpc else "http"
        self._progress(f"pid {serving} serves on {scheme}://127.0.0.1:{port}")
        timeout = plan.request_seconds + plan.grace + 5
        self._clock = time.time()  # the timeline starts with the first request
        clients = WRITES_BEFORE + plan.requests + 2 * _MAX_PROBES  # probes: RPC and health
        if plan.grpc:
            from lastcall.cli.grpc_client import GrpcLoad  # noqa: PLC0415  # grpcio installed

            request = b"" if plan.demo else plan.rpc_request
            load: Load = GrpcLoad(
                port,
                clock=self._clock,
                timeout=timeout,
                workers=clients,
                ask=plan.ask,
                write=plan.demo,
                request=request,
            )
        else:
            load = Load(
                port,
                clock=self._clock,
                timeout=timeout,
                workers=clients,
                ask=plan.ask,
                write=plan.demo,
            )
        watch = ProcessWatch(app.leader, self._now)
        stopping = threading.Event()
        try:
            for future in [load.send("before") for _ in range(WRITES_BEFORE)]:
                future.result(timeout)
            for _ in range(plan.requests):
                if plan.cmd is None:
                    load.send("in flight", plan.request_seconds)
                else:
                    load.keep_sending("in flight", stopping, _MOST_PER_CLIENT)
            self._until_in_flight(port, load)
            self._progress(
                f"{plan.requests} requests in flight"
                if plan.cmd is None
                else f"{plan.requests} clients asking {plan.ask} again as soon as answered"
            )
            self._wait(plan.stop_after)
            workers = app.serving(serving)
            stopping.set()
            stop_sent = self._now()
            app.send_stop(serving, load.control)
            (self._dir / "stopped").touch()  # delayed requests still held may now end
            self._progress(f"sent {STOP_WORDS[plan.stop]}; opening new connections meanwhile")
            self._probe_until_gone(app, load, watch, stop_sent, workers)
            left = sorted(watch.alive | app.marked())  # daemons too
            if left:
                self._progress(f"still running after the grace: pid {left}; ending them")
                app.end_left_behind()
            status = app.exit_status(timeout)
            watch.close()
            records = load.results(timeout)
        finally:
            stopping.set()
            watch.close()
            load.close()
        return self._result(app, port, serving, workers, stop_sent, status, left, records, watch)

    def _until_in_flight(self, port: int, load: Load) -> None:
        """Until every request has entered the app or waits, accepted by the kernel, in the backlog.

        A server with fewer threads than requests (a sync worker has one)
        leaves the rest queued: in flight to the client, not yet to the app.
        With ``--cmd``, until as many were answered or are open at once.
        """
        entered = self._dir / "entered"
        deadline = time.monotonic() + self.plan.start_timeout
        while time.monotonic() < deadline:
            if self.plan.cmd is None:
                inside = entered.stat().st_size if entered.exists() else 0
                taken = inside + listen_backlog(port)
            else:
                taken = max(load.answered - WRITES_BEFORE, open_connections(port))
            if taken >= self.plan.requests:
                return
            self._wait(POLL)
        raise DrillError(
            f"the app did not take {self.plan.requests} requests at once within "
            f"{self.plan.start_timeout:g} s; try fewer --requests"
        )

    def _probe_until_gone(
        self, app: App, load: Load, watch: ProcessWatch, stop_sent: float, workers: list[int]
    ) -> None:
        """New connections through the drain, until every process is gone or the grace is up."""
        until = stop_sent + self.plan.grace + _EXIT_MARGIN
        probes = 0
        # Not in the very instant of the stop: a connection made then races the signal
        # itself (the server may see either first), which measures the race, not the drain.
        next_probe = stop_sent + _PROBE_INTERVAL / 2
        next_look = stop_sent + _REPLACED_EVERY
        while watch.alive and self._now() < until:
            if probes < _MAX_PROBES and self._now() >= next_probe:
                load.send("late")
                if self.plan.grpc:  # the health service: NOT_SERVING while it still serves
                    cast("GrpcLoad", load).check_health("health")
                probes += 1
                next_probe += _PROBE_INTERVAL
            if self._now() >= next_look:
                app.refuse_if_replaced(workers, watch.alive)
                next_look += _REPLACED_EVERY
            self._wait(POLL)

    def _result(  # noqa: PLR0917  # what the drill gathered, handed over once
        self,
        app: App,
        port: int,
        serving: int,
        workers: list[int],
        stop_sent: float,
        status: int,
        left: list[int],
        records: list[RequestRecord],
        watch: ProcessWatch,
    ) -> Result:
        plan = self.plan
        leader = app.leader
        roles = {leader: "parent", **dict.fromkeys(workers, "child")}
        if leader == serving:
            roles = {leader: "server"}
        exit_status = 128 - status if status < 0 else status
        processes = watch.records(roles, exit_status, left, stop_sent)
        ended = max([stop_sent, *(p.gone for p in processes)])
        classify(records, stop_sent)
        hooks, phases = hooks_run(self._dir, roles, self._clock, plan.prestop_delay, serving)
        result = Result(
            plan=plan,
            port=port,
            leader=leader,
            serving=serving,
            workers=workers,
            stop_sent=stop_sent,
            ended=ended,
            exit_status=exit_status,
            stop_seconds=None if left else ended - stop_sent,
            requests=records,
            hooks=hooks,
            phases=phases,
            processes=processes,
            warnings=warnings_in(self._dir / "app.log"),
            directory=str(self._dir) if self._keep is not None else None,
        )
        if plan.cmd is not None or (plan.plain and not plan.demo):
            # Unless it writes a lastcall report, an app's own atexit handlers are not seen.
            result.hooks_known = any(self._dir.glob("report-*.json"))
        if plan.demo:
            result.acknowledged = sum(plan.expected(r.fate) for r in records)
            result.stored = stored_rows(self._dir / "demo.db")
        return result
