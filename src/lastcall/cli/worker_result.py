"""What a worker drill gathered, and what it makes of it: per job, the verdict, the JSON.

A job is ``completed once`` (the promise), ``completed twice``, ``queued``
(still on its queue when nothing else moved: no worker took it back in
time), ``held`` (delivered to a worker that is gone and never acknowledged:
back only after the broker's timeout, if ever), ``running`` (still, when the
drill's wait ran out) or ``lost`` (on the broker no more, never completed).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from lastcall.cli.render import describe_status

if TYPE_CHECKING:
    from pathlib import Path

    from lastcall.cli.processes import HookRecord, ProcessRecord
    from lastcall.cli.worker_plan import WorkerPlan

OUTCOMES = ("completed once", "completed twice", "queued", "held", "running", "lost")
_PROBLEMS = {
    "completed twice": "completed twice",
    "queued": "still queued (no worker took them back in time)",
    "held": "held by the broker for worker A, which is gone (back only after its timeout)",
    "running": "still running when the drill's wait ran out",
    "lost": "lost (never completed, on the broker no more)",
}
_EXPECTED_EXIT = {"TERM": 143, "INT": 130}  # died by the signal, as a shell shows it
TAKEN_AT_THE_SIGNAL = 0.1
"""Seconds after the signal within which a job's start is one its worker took as the signal
came, not after: the job's clock starts a moment after the worker took it (a thread switch
can make that moment milliseconds), and Dramatiq's worker processes get the signal from
their main process, another moment later."""


@dataclass
class Run:
    """One run of a job: in which worker (``A`` or ``B``) and process, from when to when."""

    pid: int
    worker: str
    started: float
    completed: float | None  # None: it never completed (stopped, killed, or still running)


@dataclass
class JobRecord:
    """One job the drill enqueued, its runs, and what became of it."""

    n: int
    id: str
    kind: str  # "long", "short" or "during the stop"
    seconds: float  # its first run's length
    enqueued: float
    runs: list[Run] = field(default_factory=list)
    completions: int = 0
    outcome: str = "lost"


@dataclass
class WorkerResult:
    """Everything one worker drill gathered; the judgements are properties."""

    plan: WorkerPlan
    worker_a: int
    worker_b: int
    stop_sent: float
    ended: float
    exit_status: int | None
    stop_seconds: float | None  # None: killed at the end of the grace
    left_behind: list[int]
    jobs: list[JobRecord]
    hooks: list[HookRecord]
    processes: list[ProcessRecord]
    reported_jobs: list[dict[str, Any]]  # lastcall's own account, from worker A's reports
    warnings: list[str]
    directory: str | None = None
    hooks_known: bool = True

    def count(self, outcome: str) -> int:
        """Jobs with this outcome."""
        return sum(job.outcome == outcome for job in self.jobs)

    def outcomes(self) -> dict[str, int]:
        """Jobs by outcome, every outcome named."""
        return {outcome: self.count(outcome) for outcome in OUTCOMES}

    def started_late(self) -> int:
        """Jobs worker A began after the stop signal: no job may start once it is sent."""
        after = self.stop_sent + TAKEN_AT_THE_SIGNAL
        return sum(any(r.worker == "A" and r.started > after for r in j.runs) for j in self.jobs)

    def failures(self) -> dict[str, str]:
        """What went wrong, by name, in words."""
        found = {
            outcome: f"{self.count(outcome)} {words}"
            for outcome, words in _PROBLEMS.items()
            if self.count(outcome)
        }
        late = self.started_late()
        if late:
            found["late"] = f"{late} started in worker A after the signal"
        if self.left_behind:
            found["killed"] = (
                f"worker A still ran {self.plan.grace:g} s after the signal, past the grace "
                f"(pid {', '.join(map(str, self.left_behind))} ended with SIGKILL)"
            )
        expected = _EXPECTED_EXIT.get(self.plan.stop)
        status = self.exit_status
        if expected is not None and not self.left_behind and status != expected:
            found["exit"] = (
                f"exit status {describe_status(status)}, not {describe_status(expected)}: a "
                "supervisor cannot tell the worker was stopped"
            )
        if self.plan.stop == "INT-INT" and status == 0:
            found["exit"] = "exit status 0 after a forced stop"
        found.update(self._hook_problems())
        return found

    def _hook_problems(self) -> dict[str, str]:
        found = {}
        runs = [(h.pid, h.name) for h in self.hooks]
        twice = sorted({name for pid, name in runs if runs.count((pid, name)) > 1})
        if twice:
            found["hooks twice"] = f"hooks ran more than once in a process: {', '.join(twice)}"
        if self.hooks_known and not self.hooks and not self.plan.kills and not self.left_behind:
            found["no hooks"] = "no shutdown hook ran"
        return found

    def any_job_not_once(self) -> bool:
        """Any job not completed exactly once: what even a SIGKILL must not cause."""
        return any(job.outcome != "completed once" for job in self.jobs)

    def problems(self) -> list[str]:
        """The failures, in words."""
        return list(self.failures().values())

    @property
    def clean(self) -> bool:
        """Every job completed once, exit by the signal, within the grace, hooks run."""
        return not self.failures() and not self.plan.kills

    def verdict(self) -> str:
        """``clean stop: 8/8 jobs completed once, 0 twice, 0 lost, 0 still queued, ...``."""
        problems = self.problems()
        head = "clean stop" if not problems else "unclean stop"
        if not problems and self.plan.kills:
            head = "abrupt stop, not clean (no code of worker A ran), though no job was lost"
        parts = [
            f"{self.count('completed once')}/{len(self.jobs)} jobs completed once",
            f"{self.count('completed twice')} twice",
            f"{self.count('lost')} lost",
            f"{self.count('queued')} still queued",
        ]
        parts += [f"{self.count(o)} {o}" for o in ("held", "running") if self.count(o)]
        parts.append(self._hooks_phrase())
        parts.append(f"exit {describe_status(self.exit_status)}")
        if self.stop_seconds is not None:
            parts.append(f"{self.stop_seconds:.2f} s")
        else:
            parts.append(f"killed after {self.plan.grace:g} s")
        line = f"{head}: {', '.join(parts)}"
        return f"{line} ({'; '.join(problems)})" if problems else line

    def _hooks_phrase(self) -> str:
        if not self.hooks_known:
            return "hooks unknown (no lastcall report)"
        pids = sorted({h.pid for h in self.hooks})
        if not pids:
            return "no hooks ran"
        roles = {p.pid: p.role for p in self.processes}
        where = ", ".join(f"{pid} ({roles.get(pid, 'other')})" for pid in pids)
        return f"hooks ran in pid {where}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: every field, plus the judgements."""
        data = asdict(self)
        data.update(
            kind="worker",
            outcomes=self.outcomes(),
            started_late=self.started_late(),
            clean=self.clean,
            failures=self.failures(),
            problems=self.problems(),
            verdict=self.verdict(),
        )
        return data


def reported_jobs(directory: Path) -> list[dict[str, Any]]:
    """The jobs lastcall's reports in ``directory`` name (each with the reporting ``pid``)."""
    jobs = []
    for path in sorted(directory.glob("report-*.json")):
        report = json.loads(path.read_text(encoding="utf-8"))
        jobs += [{**job, "pid": report.get("pid")} for job in report.get("jobs", [])]
    return jobs
