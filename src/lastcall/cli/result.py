"""What one drill saw, and what it makes of it: served, dropped, left behind, the verdict.

The records come from the clients (``clients.py``) and the processes
(``processes.py``); :class:`Result` holds them on the drill's clock and
judges them against what the stop allows: a process killed where no code
of its own can run is never a clean stop, and is not blamed for what it
could not do.
"""

from __future__ import annotations

import signal
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from lastcall.cli.plan import SIGNALS

if TYPE_CHECKING:
    from lastcall.cli.clients import RequestRecord
    from lastcall.cli.plan import Plan
    from lastcall.cli.processes import HookRecord, ProcessRecord


_UNANSWERED = ("refused", "reset", "timed out")  # else an HTTP status, or an RPC's code


@dataclass
class Result:
    """Everything one drill saw. Times are seconds on the drill's clock (0: first request)."""

    plan: Plan
    port: int
    leader: int
    serving: int
    workers: list[int]
    stop_sent: float
    ended: float
    exit_status: int | None
    stop_seconds: float | None
    requests: list[RequestRecord] = field(default_factory=list)
    hooks: list[HookRecord] = field(default_factory=list)
    phases: list[tuple[str, float]] = field(default_factory=list)
    processes: list[ProcessRecord] = field(default_factory=list)
    acknowledged: int | None = None
    stored: int | None = None
    hooks_known: bool = True  # False: a plain user app, or a --cmd app that wrote no report
    warnings: list[str] = field(default_factory=list)  # the app's log's last warning lines
    directory: str | None = None  # where the app's log and reports were kept, if they were

    @property
    def in_flight(self) -> list[RequestRecord]:
        """The requests in flight when the stop was sent."""
        return [r for r in self.requests if r.kind == "in flight"]

    @property
    def served(self) -> int:
        """How many of those got the expected status (``--expect``, else a 2xx)."""
        return sum(self.plan.expected(r.fate) for r in self.in_flight)

    @property
    def dropped(self) -> int:
        """Requests in flight at the stop that got no answer (reset or timed out)."""
        return sum(r.fate in ("reset", "timed out") for r in self.in_flight)

    @property
    def refused(self) -> int:
        """Requests in flight at the stop whose connection was refused."""
        return sum(r.fate == "refused" for r in self.in_flight)

    @property
    def late_lost(self) -> int:
        """New connections after the stop that were accepted and then lost (reset, timed out)."""
        return sum(r.kind == "late" and r.fate in ("reset", "timed out") for r in self.requests)

    @property
    def failed(self) -> int:
        """Requests in flight at the stop answered, but not with the expected status (a 503)."""
        return len(self.in_flight) - self.served - self.dropped - self.refused

    @property
    def abrupt(self) -> bool:
        """The serving process was ended where no code of its own can run."""
        serving_is_leader = self.serving == self.leader
        return self.plan.stop in ("KILL-CHILD", "OS-EXIT") or (
            self.plan.stop == "KILL" and serving_is_leader
        )

    @property
    def clean(self) -> bool:
        """Nothing went wrong, and no process was killed (a kill is never a clean stop)."""
        return not self.plan.kills and not self.failures()

    @property
    def lost(self) -> int | None:
        """Writes acknowledged to clients but not in SQLite; None for a user's app."""
        if self.acknowledged is None or self.stored is None:
            return None
        return max(0, self.acknowledged - self.stored)

    @property
    def left_behind(self) -> list[int]:
        """Processes still running after the grace (ended by the drill)."""
        return [p.pid for p in self.processes if p.left_behind]

    @property
    def serving_role(self) -> str:
        """The role of the process that served: where hooks belong."""
        return "server" if self.serving == self.leader else "child"

    def hooks_where(self) -> str:
        """``child``, ``parent``, ``child+parent``, ``server``, ``none`` or ``unknown``."""
        if not self.hooks_known:
            return "unknown"
        roles = sorted(
            {h.role for h in self.hooks}, key=["server", "child", "parent", "other"].index
        )
        return "+".join(roles) or "none"

    def failures(self) -> dict[str, str]:
        """What went worse than this way of stopping allows, by column; empty when clean.

        A process killed by SIGKILL or ``os._exit`` can run nothing: what it
        held is lost with it, so only what happens around it counts then.
        """
        found: dict[str, str] = {}
        if not self.in_flight:
            found["in flight"] = (
                "no request was in flight at the stop: make them last longer (--request-seconds; "
                "with --cmd, a slower --path) or stop sooner (--stop-after)"
            )
        abrupt = self.abrupt
        lost = [f"{self.dropped} dropped"] if self.dropped else []
        lost += [f"{self.failed} answered otherwise"] if self.failed else []
        if lost and not abrupt:
            drain_ok = any(h.phase == "drain" and h.outcome == "ok" for h in self.hooks)
            found["dropped"] = f"requests in flight: {', '.join(lost)}" + (
                ", although the drain hook reported ok" if drain_ok else ""
            )
        if self.late_lost and not abrupt:
            found["late"] = f"{self.late_lost} new connections accepted and then lost"
        hooks = self._hook_problems()
        if hooks:
            found["hooks"] = "; ".join(hooks)
        if self.left_behind:
            pids = ", ".join(map(str, self.left_behind))
            found["orphans"] = (
                f"it did not stop: pid {pids} still running after the grace (ended by the drill)"
                if self.leader in self.left_behind
                else f"left behind, still running: pid {pids} (ended by the drill)"
            )
        if self.lost and not abrupt:
            found["lost"] = f"{self.lost} acknowledged writes lost"
        if self.stop_seconds is not None and self.stop_seconds > self.plan.grace:
            found["stop"] = f"took {self.stop_seconds:.1f} s, over the {self.plan.grace:g} s grace"
        ends_by = self.ends_by
        if ends_by is not None and self.exit_status not in (None, 128 + ends_by):
            name = signal.Signals(ends_by).name
            found["exit"] = (
                f"the process it started exited {self.exit_status}, not by {name} "
                f"({128 + ends_by}): a supervisor cannot tell it stopped as asked"
            )
        return found

    @property
    def ends_by(self) -> int | None:
        """The signal the process the drill started should die by: a graceful stop's own."""
        if self.plan.stop not in ("TERM", "INT", "HUP") or self.left_behind:
            return None
        return SIGNALS[self.plan.stop]

    def problems(self) -> list[str]:
        """The failures, in words."""
        return list(self.failures().values())

    def _hook_problems(self) -> list[str]:
        found = []
        elsewhere = sorted({h.pid for h in self.hooks if h.role != self.serving_role})
        if elsewhere:
            found.append(
                "hooks ran in pid "
                + ", ".join(f"{pid} ({self._role(pid)})" for pid in elsewhere)
                + ", which does not hold the app's work"
            )
        runs = [(h.pid, h.name) for h in self.hooks]
        twice = sorted({name for pid, name in runs if runs.count((pid, name)) > 1})
        if twice:
            found.append(f"hooks ran more than once: {', '.join(twice)}")
        if self.hooks_known and not self.hooks and not self.abrupt:
            found.append("no shutdown hook ran")
        return found

    def _role(self, pid: int) -> str:
        return next((p.role for p in self.processes if p.pid == pid), "other")

    def verdict(self) -> str:
        """The one line: ``clean stop: 16/16 requests served, 0 refused, ...``."""
        problems = self.problems()
        head = "clean stop" if not problems else "unclean stop"
        if not problems and self.plan.kills:
            head = (
                "abrupt stop, not clean (nothing can run in a process ended this way)"
                if self.abrupt
                else "not a clean stop (no kill is one), though what served stopped cleanly"
            )
        parts = [f"{self.served}/{len(self.in_flight)} requests served", f"{self.refused} refused"]
        if self.dropped:
            parts.append(f"{self.dropped} dropped")
        if self.failed:
            statuses = sorted(
                {
                    r.fate
                    for r in self.in_flight
                    if r.fate not in _UNANSWERED and not self.plan.expected(r.fate)
                }
            )
            parts.append(f"{self.failed} answered {'/'.join(statuses)}")
        if self.lost is not None:
            parts.append(f"{self.lost} lost writes")
        parts.append(self._hooks_phrase())
        if self.left_behind:
            left = len(self.left_behind)
            parts.append(f"{left} {'process' if left == 1 else 'processes'} left behind")
        elif self.stop_seconds is not None:
            parts.append(f"{self.stop_seconds:.2f} s")
        line = f"{head}: {', '.join(parts)}"
        return f"{line} ({'; '.join(problems)})" if problems else line

    def _hooks_phrase(self) -> str:
        if not self.hooks_known:
            return "hooks unknown (no lastcall report)"
        pids = sorted({h.pid for h in self.hooks})
        if not pids:
            return "no hooks ran"
        runs = [(h.pid, h.name) for h in self.hooks]
        once = len(set(runs)) == len(runs)
        if len(pids) == 1 and once:
            role = self._role(pids[0])
            where = "" if role in ("server", "child") else f", the {role}"
            return f"hooks ran once in pid {pids[0]}{where}"
        if once and {self._role(pid) for pid in pids} == {"child"}:
            return f"hooks ran once in each serving process (pid {', '.join(map(str, pids))})"
        return "hooks ran in " + " and ".join(f"pid {pid} ({self._role(pid)})" for pid in pids)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: every field, plus the judgements."""
        data = asdict(self)
        body = self.plan.ask.body
        data["plan"]["ask"]["body"] = None if body is None else body.decode(errors="replace")
        data["plan"]["path"] = self.plan.ask.path  # where it was before --method and the rest
        data.update(
            served=self.served,
            dropped=self.dropped,
            refused=self.refused,
            late_lost=self.late_lost,
            failed=self.failed,
            abrupt=self.abrupt,
            clean=self.clean,
            lost_writes=self.lost,
            left_behind=self.left_behind,
            hooks_where=self.hooks_where(),
            problems=self.problems(),
            verdict=self.verdict(),
        )
        return data
