"""How a drill is shown: rich tables and the verdict, JSON, and a self-contained HTML timeline."""

from __future__ import annotations

import html
import json
import signal
import textwrap
from collections import Counter
from typing import TYPE_CHECKING

from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from lastcall.cli.inputs import write_atomically
from lastcall.cli.plan import STOP_WORDS

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import Console

    from lastcall.cli.matrix import Row
    from lastcall.cli.plan import Plan
    from lastcall.cli.processes import HookRecord
    from lastcall.cli.result import Result
    from lastcall.cli.worker_matrix import WorkerRow
    from lastcall.cli.worker_result import WorkerResult

FATE_COLOURS = {
    "200": "#2ca02c",
    "503": "#bcbd22",
    "refused": "#9e9e9e",
    "reset": "#ff7f0e",
    "timed out": "#9467bd",
}
OTHER_COLOUR = "#8c564b"
_UNCUT = 10_000  # columns: wider than any table
_BEFORE_SHOWN = 24  # requests answered before the stop, drawn in the timeline
_LABEL_CHARS = 26  # a hook's name in the timeline's margin
_FINE = ("refused", "NOT_SERVING", "SERVING")  # what a new client may be told after the stop
KINDS = ("before", "in flight", "late", "health")
KIND_WORDS = {
    "before": "answered before the stop",
    "in flight": "in flight at the stop",
    "late": "new connections after the stop",
    "health": "gRPC health checks after the stop",
}


def describe_status(status: int | None) -> str:
    """``143 (SIGTERM)``: what a shell shows, and what it means."""
    if status is None:
        return "unknown"
    if status > 128:  # noqa: PLR2004  # 128 + N: death by signal N
        try:
            return f"{status} ({signal.Signals(status - 128).name})"
        except ValueError:
            return str(status)
    return str(status)


def short(hook: str) -> str:
    """A hook's name without its module: ``flush_orders``."""
    return hook if ":" in hook else hook.rsplit(".", 1)[-1]


def seconds(value: float | None) -> str:
    """``1.21 s``, or a dash when there is no value."""
    return "—" if value is None else f"{value:.2f} s"


# ---------------------------------------------------------------- terminal


def drill_tables(result: Result) -> list[Table]:
    """What the clients saw, and what the processes did."""
    clients = Table(title="What the clients saw", title_justify="left")
    for column in ("requests", "fate", "count", "started", "ended", "longest"):
        clients.add_column(column, justify="right" if column != "requests" else "left")
    for kind in KINDS:
        records = [r for r in result.requests if r.kind == kind]
        for fate, count in sorted(Counter(r.fate for r in records).items()):
            same = [r for r in records if r.fate == fate]
            style = "green" if fate in _FINE or result.plan.expected(fate) else "red"
            if fate == "refused" and kind == "in flight":
                style = "red"
            clients.add_row(
                KIND_WORDS[kind],
                Text(fate, style=style),
                str(count),
                seconds(min(r.started for r in same) - result.stop_sent),
                seconds(max(r.ended for r in same) - result.stop_sent),
                seconds(max(r.ended - r.started for r in same)),
            )
    clients.caption = "times from the stop; a refused new connection is retried elsewhere"
    processes = Table(title="What the processes did", title_justify="left")
    for column in ("pid", "role", "hook", "phase", "started", "took", "outcome"):
        processes.add_column(column)
    for process in result.processes:
        hooks = [h for h in result.hooks if h.pid == process.pid]
        if process.left_behind:
            ended = "left behind (ended by the drill)"
        else:
            at = seconds(process.gone - result.stop_sent)
            status = process.exit_status
            ended = f"gone at {at}" if status is None else f"exit {describe_status(status)} at {at}"
        processes.add_row(str(process.pid), process.role, "", "", "", "", Text(ended, style="dim"))
        for hook in hooks:
            processes.add_row(
                "",
                "",
                short(hook.name),
                hook.phase or "atexit",
                seconds(hook.started - result.stop_sent),
                seconds(hook.ended - hook.started),
                _outcome(result, hook),
            )
    if result.acknowledged is not None:
        processes.caption = (
            f"writes: {result.acknowledged} acknowledged to clients, "
            f"{result.stored} found in SQLite"
        )
    return [clients, processes]


def _outcome(result: Result, hook: HookRecord) -> Text:
    """A hook's own word, unless a drain that says ok lost requests: then the clients' too."""
    lost = result.dropped + result.failed
    if hook.phase == "drain" and hook.outcome == "ok" and lost:
        return Text(f"ok by its own account; {lost} in flight lost", style="red")
    return Text(hook.outcome)


def worker_tables(result: WorkerResult) -> list[Table]:
    """What became of each job, and what worker A's processes did."""
    jobs = Table(title="What became of each job", title_justify="left")
    for column in ("job", "enqueued", "length", "outcome", "runs"):
        jobs.add_column(column, justify="right" if column in ("job", "length") else "left")
    for job in result.jobs:
        when = "during the stop" if job.kind == "during the stop" else "before the stop"
        runs = "; ".join(
            f"{run.worker} pid {run.pid} {seconds(run.started - result.stop_sent)} → "
            + (
                "not completed"
                if run.completed is None
                else seconds(run.completed - result.stop_sent)
            )
            for run in job.runs
        )
        style = "green" if job.outcome == "completed once" else "red"
        jobs.add_row(
            str(job.n), when, f"{job.seconds:g} s", Text(job.outcome, style=style), runs or "—"
        )
    jobs.caption = "times from the stop; A is the worker stopped, B the one started after it"
    processes = Table(title="What worker A's processes did", title_justify="left")
    for column in ("pid", "role", "hook", "phase", "started", "took", "outcome"):
        processes.add_column(column)
    for process in result.processes:
        if process.left_behind:
            ended = "still running after the grace (SIGKILL)"
        else:
            at = seconds(process.gone - result.stop_sent)
            status = process.exit_status
            ended = f"gone at {at}" if status is None else f"exit {describe_status(status)} at {at}"
        processes.add_row(str(process.pid), process.role, "", "", "", "", Text(ended, style="dim"))
        for hook in (h for h in result.hooks if h.pid == process.pid):
            processes.add_row(
                "",
                "",
                short(hook.name),
                hook.phase or "atexit",
                seconds(hook.started - result.stop_sent),
                seconds(hook.ended - hook.started),
                hook.outcome,
            )
    return [jobs, processes]


def verdict(result: Result | WorkerResult) -> Text:
    """The one line, green when clean."""
    return Text(result.verdict(), style="bold green" if result.clean else "bold red")


_MATRIX_COLUMNS = ("dropped", "reset", "hooks", "orphans", "lost", "stop", "exit")


def matrix_table(rows: list[Row], base: Plan, vs_cmd: str | None = None) -> Table:
    """Plain beside lastcall (or ``vs_cmd`` beside ``--cmd``); failing cells are marked."""
    labels = ("--vs-cmd", "--cmd") if base.cmd is not None else ("plain", "lastcall")
    table = Table(title=f"lastcall drill --matrix: {_matrix_subject(base)}")
    table.add_column("server")
    table.add_column("stop")
    for variant in labels:
        for name in _MATRIX_COLUMNS:
            table.add_column(f"{variant}\n{name}", justify="right")
    reasons: dict[str, list[str]] = {}
    for row in rows:
        cells: list[Text | str] = [row.server, STOP_WORDS[row.stop]]
        if row.not_applicable:
            reasons.setdefault(row.not_applicable, []).append(f"{row.server} {row.stop}")
            table.add_row(*cells, *[Text("n/a", style="dim")] * (2 * len(_MATRIX_COLUMNS)))
            continue
        for result in (row.plain, row.lastcall):
            cells.extend(_matrix_cells(row, result))
        for plain, reason in row.variant_not_applicable.items():
            variant = labels[0] if plain else labels[1]
            reasons.setdefault(reason, []).append(f"{row.server} {row.stop} {variant}")
        table.add_row(*cells)
    caption = (
        "✗: worse than this way of stopping allows. dropped: requests in flight at the stop "
        "not served; reset: new connections after the stop accepted, then lost (a refused one "
        "is retried elsewhere). hooks: the process that ran the app's "
        "shutdown hooks (server: the only process; child: the serving child of a reloader or "
        "master; parent: that reloader or master; unknown: no lastcall report to tell)"
    )
    if base.cmd is not None:
        caption += f"\n--vs-cmd: {vs_cmd}\n--cmd: {base.cmd}"
    for reason, where in reasons.items():
        caption += f"\nn/a ({', '.join(where)}): {reason}"
    table.caption = caption
    return table


_WORKER_COLUMNS = ("once", "twice", "not back", "late", "hooks", "stop", "exit")


def worker_matrix_table(rows: list[WorkerRow]) -> Table:
    """Each framework, pool and stop, as shipped beside lastcall; failing cells are marked."""
    table = Table(title="lastcall drill --worker --matrix: the demo worker, plain | lastcall")
    table.add_column("worker")
    table.add_column("pool")
    table.add_column("stop")
    for variant in ("plain", "lastcall"):
        for name in _WORKER_COLUMNS:
            table.add_column(f"{variant}\n{name}", justify="right")
    for row in rows:
        cells: list[Text | str] = [row.framework, row.pool, row.stop]
        for result in (row.plain, row.lastcall):
            cells.extend(_worker_cells(result))
        table.add_row(*cells)
    table.caption = (
        "✗: worse than this way of stopping allows. once, twice: jobs completed once, more "
        "than once; not back: neither completed nor back on the queue (lost, or held for the "
        "gone worker until the broker's timeout); late: jobs the stopped worker began after "
        "the signal; hooks: the processes that ran shutdown hooks; stop: until the stopped "
        "worker's last process was gone (killed: still running when the grace was up)"
    )
    return table


def _worker_cells(result: WorkerResult | None) -> list[Text | str]:
    if result is None:
        return ["—"] * len(_WORKER_COLUMNS)
    failed = result.failures()
    not_back = sum(result.count(o) for o in ("queued", "held", "running", "lost"))
    roles = sorted({p.role for p in result.processes if p.pid in {h.pid for h in result.hooks}})
    values = {
        "once": (f"{result.count('completed once')}/{len(result.jobs)}", False),
        "twice": (str(result.count("completed twice")), "completed twice" in failed),
        "not back": (str(not_back), bool(not_back)),
        "late": (str(result.started_late()), "late" in failed),
        "hooks": (", ".join(roles) or "none", "no hooks" in failed or "hooks twice" in failed),
        "stop": (
            "killed" if result.stop_seconds is None else seconds(result.stop_seconds),
            "killed" in failed,
        ),
        "exit": (describe_status(result.exit_status), "exit" in failed),
    }
    return [
        Text(f"✗ {value}", style="bold red") if bad else Text(value)
        for value, bad in values.values()
    ]


def _matrix_subject(base: Plan) -> str:
    if base.cmd is not None:
        return "two commands"
    if base.demo:
        return "the demo app, plain atexit | lastcall"
    return f"{base.app}, as shipped | with lastcall"


def _matrix_cells(row: Row, result: Result | None) -> list[Text | str]:
    if result is None:
        return ["n/a"] * len(_MATRIX_COLUMNS)
    failed = set(row.failures(result))
    values = {
        "dropped": str(result.dropped + result.failed),
        "reset": str(result.late_lost),
        "hooks": result.hooks_where(),
        "orphans": str(len(result.left_behind)),
        "lost": "—" if result.lost is None else str(result.lost),
        "stop": seconds(result.stop_seconds),
        "exit": "—" if result.exit_status is None else str(result.exit_status),
    }
    return [
        Text(f"✗ {value}", style="bold red") if name in failed else Text(value)
        for name, value in values.items()
    ]


def natural_width(console: Console, renderable: Table) -> int:
    """The width a table takes when nothing is cut or folded."""
    options = console.options.update_width(_UNCUT)
    return Measurement.get(console, options, renderable).maximum


# ---------------------------------------------------------------- files


def write_json(path: Path, results: list[Result] | list[WorkerResult]) -> None:
    """One drill as an object, a matrix as a list."""
    data = results[0].to_dict() if len(results) == 1 else [r.to_dict() for r in results]
    write_atomically(path, json.dumps(data, indent=2) + "\n")


_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 2em; }
.verdict { font-weight: bold; } .clean { color: #1b7f1b; } .unclean { color: #b00020; }
svg text { font: 11px system-ui, sans-serif; } .axis line { stroke: #ccc; }
.mark-signal { stroke: #d62728; stroke-width: 2; }
.mark-phase { stroke: #1f77b4; stroke-dasharray: 4 3; }
.mark-hook { stroke: #17becf; } .mark-exit { stroke: #222; stroke-width: 2; }
.hook { fill: #17becf; } .legend rect { stroke: none; }
"""


def write_html(path: Path, results: list[Result], title: str) -> None:
    """One page, no scripts, no network: a verdict and a timeline per drill."""
    sections = [
        f'<section class="drill"><h2>{html.escape(_label(r))}</h2>'
        f'<p class="verdict {"unclean" if r.problems() else "clean"}">'
        f"{html.escape(r.verdict())}</p>{timeline(r)}</section>"
        for r in results
    ]
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>\n"
    )
    write_atomically(path, page)


def _label(result: Result) -> str:
    plan = result.plan
    if plan.cmd is not None:
        return f"{plan.cmd}: {STOP_WORDS[plan.stop]}"
    return f"{plan.name} ({plan.variant}) on {plan.server}: {STOP_WORDS[plan.stop]}"


def timeline(result: Result) -> str:
    """An SVG: one bar per request, a lane per hook, and lines for the stop, phases and exit."""
    left, width, row, top = 260, 700, 12, 52
    before = [r for r in result.requests if r.kind == "before"]
    # --cmd clients ask back to back: hundreds answered before the stop say no more than the last.
    requests = before[-_BEFORE_SHOWN:] + [r for r in result.requests if r.kind != "before"]
    hooks = result.hooks
    times = [0.0, result.ended, *(r.ended for r in requests), *(h.ended for h in hooks)]
    start, end = min(times + [r.started for r in requests]), max(times) * 1.02 + 0.05
    scale = width / (end - start)

    def x(t: float) -> float:
        return left + (t - start) * scale

    lanes = len(requests) + len(hooks)
    height = top + lanes * row + 60
    parts = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{left + width + 20}" '
            f'height="{height}" role="img" aria-label="timeline of {len(requests)} requests">'
        )
    ]
    step = _tick(end - start)
    tick = step * int(start / step)
    while tick <= end:
        parts.append(
            f'<g class="axis"><line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{top - 5}" '
            f'y2="{height - 50}"/><text x="{x(tick):.1f}" y="{height - 36}" '
            f'text-anchor="middle">{tick:.1f} s</text></g>'
        )
        tick += step
    for i, r in enumerate(requests):
        y = top + i * row
        colour = FATE_COLOURS.get(r.fate, OTHER_COLOUR)
        tip = f"request {r.index} ({r.kind}): {r.fate}, {r.started:.2f}-{r.ended:.2f} s"
        parts.append(
            f'<rect class="request fate-{r.fate.replace(" ", "-")}" data-kind="{r.kind}" '
            f'x="{x(r.started):.1f}" y="{y}" width="{max(1.5, (r.ended - r.started) * scale):.1f}" '
            f'height="{row - 3}" fill="{colour}"><title>{html.escape(tip)}</title></rect>'
        )
        if i == 0 or requests[i - 1].kind != r.kind:
            parts.append(
                f'<text x="{left - 6}" y="{y + 8}" text-anchor="end">{KIND_WORDS[r.kind]}</text>'
            )
    for j, h in enumerate(hooks):
        y = top + (len(requests) + j) * row
        name = short(h.name)
        label = f"{textwrap.shorten(name, _LABEL_CHARS, placeholder='…')} (pid {h.pid}, {h.role})"
        parts.append(
            f'<line class="mark mark-hook" x1="{x(h.started):.1f}" x2="{x(h.started):.1f}" '
            f'y1="{top - 5}" y2="{y + row}"/><rect class="hook" data-pid="{h.pid}" '
            f'x="{x(h.started):.1f}" y="{y}" width="{max(2.0, (h.ended - h.started) * scale):.1f}" '
            f'height="{row - 3}"><title>{html.escape(label)}: {h.outcome}</title></rect>'
            f'<text x="{left - 6}" y="{y + 8}" text-anchor="end">{html.escape(label)}</text>'
        )
    marks = [("signal", result.stop_sent, STOP_WORDS[result.plan.stop])]
    marks += [("phase", at, phase) for phase, at in result.phases]
    marks.append(("exit", result.ended, "left behind" if result.left_behind else "exit"))
    for n, (kind, at, text) in enumerate(marks):
        parts.append(
            f'<line class="mark mark-{kind}" x1="{x(at):.1f}" x2="{x(at):.1f}" y1="{top - 5}" '
            f'y2="{height - 50}"/><text class="mark-label" x="{x(at) + 3:.1f}" '
            f'y="{12 + 12 * (n % 3)}">{html.escape(text)}</text>'
        )
    parts.append(_legend(height - 18))
    parts.append("</svg>")
    return "".join(parts)


def _tick(span: float) -> float:
    for step in (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0):
        if span / step <= 12:  # noqa: PLR2004  # at most a dozen labels
            return step
    return 30.0


def _legend(y: float) -> str:
    items = [*FATE_COLOURS.items(), ("hook", "#17becf")]
    return (
        '<g class="legend">'
        + "".join(
            f'<rect x="{260 + 110 * i}" y="{y - 9}" width="12" height="9" fill="{colour}"/>'
            f'<text x="{276 + 110 * i}" y="{y}">{html.escape(name)}</text>'
            for i, (name, colour) in enumerate(items)
        )
        + "</g>"
    )
