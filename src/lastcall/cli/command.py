"""The command line: ``lastcall drill [APP] [options]`` and ``lastcall drill --matrix``.

Exit status: 0 when the stop was clean (with ``--matrix``: every lastcall
scenario), 1 when it was not, 2 for bad input (one line, no traceback),
130 when interrupted. Every process a drill starts has ended by then.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

if TYPE_CHECKING:
    from collections.abc import Mapping

    from rich.table import Table

    from lastcall.cli.result import Result
    from lastcall.cli.worker_result import WorkerResult

from lastcall.cli import appkind, cleanup, inputs, render
from lastcall.cli.clients import Ask
from lastcall.cli.drill import Drill
from lastcall.cli.frameworks import FRAMEWORKS
from lastcall.cli.matrix import SCENARIOS, plans, run_matrix
from lastcall.cli.plan import STOPS, DrillError, Plan, fit
from lastcall.cli.servers import SERVERS, installed
from lastcall.cli.worker_drill import WorkerDrill
from lastcall.cli.worker_matrix import run_worker_matrix, worker_plans
from lastcall.cli.worker_plan import WORKER_STOPS, WorkerPlan

BAD_INPUT = 2
# A worker drill's jobs, their seconds and the grace: one drill, and each of a matrix's.
_WORKER_DEFAULTS = {False: (6, 2.0, 10.0), True: (3, 0.5, 3.0)}
INTERRUPTED = 130


@click.group()
@click.version_option(package_name="lastcall")
def cli() -> None:
    """lastcall: graceful shutdown for Python services."""


@cli.command()
@click.argument("app", required=False)
@click.option(
    "--cmd",
    metavar="COMMAND",
    help="Drill a service however it starts: COMMAND runs as given (no shell unless you write "
    "one), {port} becomes the port, {python} this interpreter; with --worker, {broker} the "
    "broker's URL, {queue} the jobs' queue, {name} a name for each worker (-n {name}@%h).  "
    "Example: --cmd 'gunicorn -b 127.0.0.1:{port} mysite.wsgi'",
)
@click.option(
    "--worker",
    type=click.Choice([*FRAMEWORKS, "all"]),
    help="Drill a queue worker instead of a server: the demo job on this framework's demo "
    "worker (or on --cmd's worker), jobs enqueued, a stop while they run, a second worker "
    "after it; each job counted.  With --matrix, all: every installed framework.  "
    "Example: --worker celery --plain",
)
@click.option(
    "--broker",
    metavar="URL",
    help="With --worker: the broker to use, {broker} in --cmd: redis://..., amqp://... (Celery, "
    "Dramatiq), or rabbitmq for a private rabbitmq-server.  [default: a private redis-server "
    "on a free port]",
)
@click.option(
    "--pool",
    multiple=True,
    help="With --worker: how the demo worker runs its jobs; --matrix takes it more than once.  "
    "celery: prefork, threads, solo, gevent; rq: fork (Worker), simple (SimpleWorker); "
    "dramatiq: threads (1 process), processes (2).  [default: the first; --matrix: every "
    "installed one]",
)
@click.option(
    "--acks-late",
    is_flag=True,
    help="With --worker celery: the demo task acknowledged as it ends (task_acks_late), not as "
    "it starts.",
)
@click.option(
    "--queue",
    help="With --worker: the queue the jobs go to.  [default: the framework's own: default, "
    "celery]",
)
@click.option(
    "--jobs",
    type=click.IntRange(1, 100),
    help="With --worker: jobs of --job-seconds before the stop, beside one longer than the "
    "grace and one enqueued during the stop.  [default: 6; --matrix: 3]",
)
@click.option(
    "--job-seconds",
    type=click.FloatRange(0.01, 60),
    help="With --worker: how long each job runs.  [default: 2; --matrix: 0.5]",
)
@click.option(
    "--vs-cmd",
    metavar="COMMAND",
    help="With --matrix --cmd: the command to compare with (its column comes first).",
)
@click.option(
    "--server",
    type=click.Choice(list(SERVERS)),
    multiple=True,
    help="How to serve APP; --matrix takes it more than once.  "
    "[default: werkzeug; --matrix: every installed one]",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    help="Worker processes, on servers that have them (gunicorn, hypercorn, granian).",
)
@click.option(
    "--stop",
    type=click.Choice(list(dict.fromkeys(STOPS + WORKER_STOPS)), case_sensitive=False),
    help="How to end it: a signal to the app (KILL-PARENT, KILL-CHILD: to the reloader or "
    "master, or to the serving child), "
    "os._exit in a request, an unhandled exception, a normal exit; with --worker: TERM, INT, "
    "INT-INT (a second Ctrl-C 0.5 s after the first) or KILL.  [default: TERM]",
)
@click.option(
    "--requests",
    type=click.IntRange(1, 200),
    help="Requests in flight at the stop (with --cmd: clients asking back to back).  "
    "[default: 16; on gunicorn's one sync worker and with --matrix: 4]",
)
@click.option(
    "--request-seconds",
    type=click.FloatRange(0, 60),
    help="How long the drill holds each request in flight before the app sees it (not with "
    "--cmd: point --path at a slow route instead).  [default: 1; on gunicorn's one sync "
    "worker and with --matrix: 0.5]",
)
@click.option(
    "--stop-after",
    type=click.FloatRange(0, 60),
    default=0.25,
    show_default=True,
    help="Seconds after all are in flight.",
)
@click.option(
    "--grace",
    type=click.FloatRange(0.1, 300),
    help="LASTCALL_GRACE for the app.  [default: 10; --matrix: 3]",
)
@click.option(
    "--prestop-delay",
    type=click.FloatRange(0, 60),
    default=0.0,
    show_default=True,
    help="LASTCALL_PRESTOP_DELAY for the app.",
)
@click.option(
    "--factory",
    is_flag=True,
    help="APP names a function that returns the app (called with no arguments), as uvicorn's "
    "--factory.",
)
@click.option(
    "--plain", is_flag=True, help="Serve APP without lastcall (the demo: its atexit twin)."
)
@click.option(
    "--port", type=click.IntRange(1, 65535), help="Port on 127.0.0.1.  [default: a free one]"
)
@click.option("--path", default="/", show_default=True, help="What each request asks for.")
@click.option("--method", default="GET", show_default=True, help="Each request's method.")
@click.option(
    "--header",
    "headers",
    multiple=True,
    metavar="'NAME: VALUE'",
    help="A header on each request; give it more than once for more.",
)
@click.option("--data", help="Each request's body (with --grpc-method: the message, in JSON).")
@click.option(
    "--grpc-method",
    metavar="/PACKAGE.SERVICE/METHOD",
    help="With --cmd: make this unary RPC instead of HTTP requests, its message from the "
    "*_pb2.py here; and read the standard health service after the stop.",
)
@click.option(
    "--data-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Each request's body, read from a file.",
)
@click.option(
    "--expect",
    type=click.IntRange(100, 599),
    metavar="STATUS",
    help="The status a served request gets.  [default: any 2xx]",
)
@click.option(
    "--start-timeout",
    type=click.FloatRange(0.1, 600),
    default=15.0,
    show_default=True,
    help="Seconds for the app to answer.",
)
@click.option(
    "--matrix",
    is_flag=True,
    help="Every stop, plain beside lastcall (APP as shipped and with lastcall, on the servers "
    "that serve its kind; the demo app's atexit twin and itself; --vs-cmd and --cmd; with "
    "--worker, its demo worker as shipped and with lastcall).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the results as JSON; the app's log and reports are kept beside it, in NAME-logs/.",
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a self-contained HTML report with the timeline.",
)
def drill(  # noqa: PLR0917  # click passes one parameter per option
    app: str | None,
    cmd: str | None,
    worker: str | None,
    broker: str | None,
    pool: tuple[str, ...],
    acks_late: bool,
    queue: str | None,
    jobs: int | None,
    job_seconds: float | None,
    vs_cmd: str | None,
    server: tuple[str, ...],
    workers: int,
    stop: str | None,
    requests: int | None,
    request_seconds: float | None,
    stop_after: float,
    grace: float | None,
    prestop_delay: float,
    factory: bool,
    plain: bool,
    port: int | None,
    path: str,
    method: str,
    headers: tuple[str, ...],
    data: str | None,
    grpc_method: str | None,
    data_file: Path | None,
    expect: int | None,
    start_timeout: float,
    matrix: bool,
    json_path: Path | None,
    html_path: Path | None,
) -> int:
    """Start APP (or --cmd), put requests in flight, stop it, show what every client and hook saw.

    APP is module:app, module:create_app() (literal arguments allowed), a .py
    file, or a module or package holding app, application, create_app or
    make_app; without APP or --cmd, a built-in demo app whose write-behind
    buffer is flushed to SQLite by a shutdown hook. With --worker, a queue
    worker instead: its demo worker (or --cmd) on a private redis-server, jobs
    enqueued, a stop while they run, and what became of each job.
    """
    _check_outputs(json_path, html_path)
    if worker is not None:
        refused = {"--server": server or None, "--requests": requests, "--html": html_path,
                   "--port": port, "--vs-cmd": vs_cmd}  # fmt: skip
        _check_worker_options(app, refused)
        frameworks = _frameworks(worker, matrix=matrix, cmd=cmd, plain=plain)
        defaults = _WORKER_DEFAULTS[matrix]
        worker_plan = WorkerPlan(
            framework=frameworks[0],
            cmd=cmd,
            broker=broker,
            acks_late=acks_late,
            queue=queue,
            stop=(stop or "TERM").upper(),
            jobs=jobs or defaults[0],
            job_seconds=job_seconds or defaults[1],
            stop_after=stop_after,
            grace=grace or defaults[2],
            plain=plain,
            start_timeout=start_timeout,
        )
        stops = [worker_plan.stop] if stop or not matrix else list(WORKER_STOPS)
        pools = list(dict.fromkeys(pool))
        return _run_worker_drills(worker_plan, frameworks, pools, stops, json_path, matrix=matrix)
    _check_no_worker_options(
        stop=stop,
        broker=broker,
        queue=queue,
        jobs=jobs,
        job_seconds=job_seconds,
        pool=pool[0] if pool else None,
        acks_late=acks_late or None,
    )
    _check_cmd_options(
        cmd, plain=plain, server=server, request_seconds=request_seconds, workers=workers
    )
    if vs_cmd is not None and not (matrix and cmd):
        raise DrillError("--vs-cmd goes with --matrix --cmd: the two commands side by side")
    base = Plan(
        app=_app_spec(app, factory=factory),
        cmd=cmd,
        stop=(stop or "TERM").upper(),
        stop_after=stop_after,
        prestop_delay=prestop_delay,
        workers=workers,
        plain=plain,
        port=port,
        ask=Ask(method.upper(), path, _headers(headers), _body(data, data_file), grpc_method),
        expect=expect,
        start_timeout=start_timeout,
    )
    out = Console(highlight=False)
    # The apps' logs and reports, kept beside --json (else removed, their warnings shown).
    logs = None if json_path is None else json_path.parent / f"{json_path.stem}-logs"
    if matrix:
        if plain or port:
            raise DrillError("--matrix drills the app both ways; leave out --plain and --port")
        if cmd and vs_cmd is None:
            raise DrillError("--matrix --cmd compares two commands: add --vs-cmd 'COMMAND'")
        base = replace(
            base,
            requests=requests or 4,
            request_seconds=0.5 if request_seconds is None else request_seconds,
            grace=grace or 3.0,
        )
        stops = [base.stop] if stop else list(SCENARIOS)
        servers = _matrix_servers(out, base, list(dict.fromkeys(server)))
        results, code = _drill_matrix(out, base, servers, stops, vs_cmd, logs=logs)
    else:
        if len(server) > 1:
            raise DrillError("one --server for a single drill; --matrix takes several")
        plan = replace(
            base,
            server=server[0] if server else "werkzeug",
            requests=requests or 16,
            request_seconds=1.0 if request_seconds is None else request_seconds,
            grace=grace or 10.0,
        )
        plan, note = fit(plan, given=requests is not None or request_seconds is not None)
        _check_single(plan)
        if note:
            out.print(f"note: {note}", soft_wrap=not out.is_terminal)
        results, code = _drill_once(out, plan, logs=logs)
    _show_warnings(out, results, logs)
    if json_path:
        render.write_json(json_path, results)
    if html_path:
        render.write_html(html_path, results, "lastcall drill")
    return code


def _check_outputs(json_path: Path | None, html_path: Path | None) -> None:
    """Before the drill runs, not after: an output that cannot be written is bad input."""
    for option, output in (("--json", json_path), ("--html", html_path)):
        if output is not None:
            inputs.check_output(option, output)


def _check_no_worker_options(
    *,
    stop: str | None,
    broker: str | None,
    queue: str | None,
    jobs: int | None,
    job_seconds: float | None,
    pool: str | None,
    acks_late: bool | None,
) -> None:
    if stop is not None and stop.upper() not in STOPS:
        raise DrillError(f"--stop {stop.upper()} is a worker drill's stop: add --worker NAME")
    given = {"--broker": broker, "--queue": queue, "--jobs": jobs, "--job-seconds": job_seconds,
             "--pool": pool, "--acks-late": acks_late}  # fmt: skip
    for option, value in given.items():
        if value is not None:
            raise DrillError(f"{option} goes with --worker NAME (a queue worker's drill)")


def _check_worker_options(app: str | None, refused: Mapping[str, object]) -> None:
    """Refuse, by name, what only a server's drill takes."""
    if app is not None:
        raise DrillError(
            "--worker takes no APP: without one it runs its demo worker; for your own, give "
            "--cmd 'COMMAND' (e.g. --cmd 'celery -A tasks -b {broker} worker -I "
            "lastcall.cli.demo_celery')"
        )
    for option, value in refused.items():
        if value is not None:
            raise DrillError(f"{option} is for a server's drill; leave it out with --worker")


def _check_cmd_options(
    cmd: str | None,
    *,
    plain: bool,
    server: tuple[str, ...],
    request_seconds: float | None,
    workers: int,
) -> None:
    """Refuse what needs the drill to start the app itself."""
    if cmd is None:
        return
    if workers > 1:
        raise DrillError("--cmd starts its own workers: write their number in COMMAND")
    if plain or server:
        raise DrillError("--cmd starts the app its own way: leave out --plain and --server")
    if request_seconds is not None:
        raise DrillError(
            "--request-seconds needs the drill in front of the app, which --cmd cannot put "
            "there: point --path at a route that takes that long"
        )


def _check_single(plan: Plan) -> None:
    """Before it starts: the plan, and whether its server serves APP's kind (WSGI, ASGI)."""
    plan.check()
    if plan.app is not None:
        try:
            appkind.check(plan.app, plan.server, plan.start_timeout)
        except appkind.AppKindError as exc:
            raise DrillError(str(exc)) from None


def _matrix_servers(out: Console, base: Plan, given: list[str]) -> list[str]:
    """The servers a matrix runs: those given, or every installed one that serves APP's kind.

    APP is imported once, up front, to tell (``cli/appkind.py``): a server of
    another kind given by name is one line at once; left to the matrix, it is
    skipped, and the output says so, as it says which are not installed.
    """
    if given:
        if base.app is not None:
            kind = _app_kind(base)
            for name in given:
                reason = appkind.mismatch(base.app, kind, name, serves=SERVERS[name].kind)
                if reason:
                    raise DrillError(reason)
        return given
    for server in SERVERS.values():
        missing = server.missing()
        if missing and base.cmd is None:
            note = f"note: {escape(missing)}; the matrix skips it"
            out.print(note, soft_wrap=not out.is_terminal)
    every = installed()
    if base.app is None or base.cmd is not None:  # the demo has a twin of every kind
        return [s.name for s in every]
    kind = _app_kind(base)
    servers = [s.name for s in every if s.kind == kind]
    skipped = [s.name for s in every if s.name not in servers]
    if not servers:
        raise DrillError(
            f"APP {base.app!r} is {appkind.named(kind)}, and no server installed here serves "
            f"it: install one for it (pip install 'lastcall[{_EXTRA.get(kind, kind)}]')"
        )
    if skipped:
        out.print(
            f"note: {base.app} is {appkind.named(kind)}; the matrix skips {', '.join(skipped)}, "
            "which serve other kinds",
            soft_wrap=not out.is_terminal,
        )
    return servers


def _app_kind(base: Plan) -> str:
    assert base.app is not None  # noqa: S101
    try:
        return appkind.probe(base.app, base.start_timeout)
    except appkind.AppKindError as exc:
        raise DrillError(str(exc)) from None


_EXTRA = {appkind.WSGI: "gunicorn", appkind.ASGI: "asgi"}


def _drill_once(out: Console, plan: Plan, *, logs: Path | None) -> tuple[list[Result], int]:
    """One drill, its progress on stderr; exit status 0 only for a clean stop."""
    console = Console(stderr=True, highlight=False)
    with console.status("drill") as status:

        def progress(message: str) -> None:
            status.update(message)
            console.print(f"[dim]{escape(message)}[/]", soft_wrap=not console.is_terminal)

        result = Drill(plan, progress, directory=logs).run()
    for table in render.drill_tables(result):
        _show(out, table)
    out.print(render.verdict(result), soft_wrap=not out.is_terminal)
    return [result], 0 if result.clean else 1


def _frameworks(worker: str, *, matrix: bool, cmd: str | None, plain: bool) -> list[str]:
    """The frameworks a worker drill runs: the one named, or with ``all`` every installed one."""
    if matrix and (cmd is not None or plain):
        raise DrillError(
            "--worker --matrix drills the demo workers both ways; leave out --cmd and --plain"
        )
    if worker != "all":
        return [worker]
    if not matrix:
        raise DrillError("--worker all goes with --matrix; name one framework for one drill")
    found = [name for name, framework in FRAMEWORKS.items() if framework.missing() is None]
    if not found:
        raise DrillError("no queue framework is installed here: pip install 'lastcall[rq]'")
    return found


def _run_worker_drills(
    base: WorkerPlan,
    frameworks: list[str],
    pools: list[str],
    stops: list[str],
    json_path: Path | None,
    *,
    matrix: bool,
) -> int:
    """One worker drill, or with ``--matrix`` each stop on each framework's pools both ways.

    Its JSON and the workers' logs beside ``--json``. Exit status 0 when the drill
    (every lastcall drill of a matrix) is clean.
    """
    logs = None if json_path is None else json_path.parent / f"{json_path.stem}-logs"
    out = Console(highlight=False)
    if not matrix:
        if len(pools) > 1:
            raise DrillError("one --pool for a single drill; --matrix takes several")
        base = replace(base, pool=pools[0] if pools else None)
        base.check()
        result, code = _drill_worker(out, base, logs=logs)
        results = [result]
    else:
        frameworks = _on_the_broker(out, base, frameworks)
        plans = worker_plans(base, frameworks, pools, stops)
        results, code = _worker_matrix(out, plans, logs=logs)
    _show_warnings(out, results, logs)
    if json_path:
        render.write_json(json_path, results)
    return code


def _on_the_broker(out: Console, base: WorkerPlan, frameworks: list[str]) -> list[str]:
    """On RabbitMQ, the frameworks that run there; the matrix says which it skips."""
    if not base.on_amqp or len(frameworks) == 1:  # one framework: its plan says why not
        return frameworks
    skipped = [f for f in frameworks if not FRAMEWORKS[f].amqp_too]
    if skipped:
        note = f"note: {', '.join(skipped)} runs on Redis only; the matrix skips it on RabbitMQ"
        out.print(note, soft_wrap=not out.is_terminal)
    return [f for f in frameworks if f not in skipped]


def _worker_matrix(
    out: Console, plans: list[WorkerPlan], *, logs: Path | None
) -> tuple[list[WorkerResult], int]:
    """Side by side; SIGKILL counts as clean when every job completed once.

    No code runs in a process ended that way: the matrix compares, it does not ask
    the impossible.
    """
    for each in plans:
        each.check()
    console = Console(stderr=True, highlight=False)
    results: list[WorkerResult] = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("drills", total=len(plans))

        def done(plan: WorkerPlan, result: WorkerResult) -> None:
            progress.advance(task)
            results.append(result)
            what = f"{plan.framework} {plan.pool_name} {plan.stop} {plan.variant}"
            console.print(
                f"[dim]{what}: {escape(result.verdict())}[/]", soft_wrap=not console.is_terminal
            )

        rows = run_worker_matrix(plans, done, directory=logs)
    _show(out, render.worker_matrix_table(rows))
    lastcall = [r for r in results if not r.plan.plain]
    failed = [r for r in lastcall if r.any_job_not_once() or (not r.clean and not r.plan.kills)]
    return results, 1 if failed else 0


def _drill_worker(out: Console, plan: WorkerPlan, *, logs: Path | None) -> tuple[WorkerResult, int]:
    """One worker drill, its progress on stderr; exit status 0 only for a clean stop."""
    console = Console(stderr=True, highlight=False)
    with console.status("drill") as status:

        def progress(message: str) -> None:
            status.update(message)
            console.print(f"[dim]{escape(message)}[/]", soft_wrap=not console.is_terminal)

        result = WorkerDrill(plan, progress, directory=logs).run()
    for table in render.worker_tables(result):
        _show(out, table)
    out.print(render.verdict(result), soft_wrap=not out.is_terminal)
    return result, 0 if result.clean else 1


def _drill_matrix(
    out: Console,
    base: Plan,
    servers: list[str],
    stops: list[str],
    vs_cmd: str | None,
    *,
    logs: Path | None,
) -> tuple[list[Result], int]:
    """Every scenario both ways; exit status 0 when every lastcall (``--cmd``) drill is clean.

    Stops that kill count as clean here when nothing worse happened than that
    way of stopping allows: the matrix compares, it does not ask the impossible.
    """
    console = Console(stderr=True, highlight=False)
    servers = servers or [s.name for s in installed()]
    all_plans = plans(base, servers, stops, vs_cmd)
    for each in all_plans:
        each.check()
    results: list[Result] = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("drills", total=len(all_plans))

        def done(plan: Plan, result: Result | None) -> None:
            progress.advance(task)
            if result is not None:
                results.append(result)
                console.print(
                    f"[dim]{plan.where} {plan.stop} {plan.variant}: {escape(result.verdict())}[/]",
                    soft_wrap=not console.is_terminal,
                )

        rows = run_matrix(base, all_plans, done, servers, stops, directory=logs)
    _show(out, render.matrix_table(rows, base, vs_cmd))
    failed = [r for r in results if not r.plan.plain and r.problems()]
    return results, 1 if failed else 0


def _show_warnings(
    out: Console, results: list[Result] | list[WorkerResult], logs: Path | None
) -> None:
    """What the app warned of in its log (start-up warnings, say), and where the log is kept."""
    said: dict[str, int] = {}
    for result in results:
        for line in result.warnings:
            said[line] = said.get(line, 0) + 1
    for line, times in list(said.items())[-5:]:
        where = f" (in {times} of {len(results)} drills)" if len(results) > 1 else ""
        out.print(f"the app warned{where}: {escape(line)}", soft_wrap=not out.is_terminal)
    if logs is not None:
        out.print(f"the app's log and reports are kept in {logs}", soft_wrap=not out.is_terminal)


def _show(out: Console, table: Table) -> None:
    """A table at its full width when the output is a file or a pipe (a CI log): nothing cut."""
    if not out.is_terminal:
        out.width = max(out.width, render.natural_width(out, table))  # print() only narrows
    out.print(table)


def _app_spec(app: str | None, *, factory: bool) -> str | None:
    """APP as the runner loads it: ``--factory`` turns ``module:name`` into ``module:name()``."""
    if not factory:
        return app
    target, _, name = (app or "").partition(":")
    if not name:
        raise DrillError("--factory needs APP as module:function, the function that makes the app")
    return app if name.rstrip().endswith(")") else f"{target}:{name}()"


def _headers(given: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for header in given:
        name, colon, value = header.partition(":")
        if not colon or not name.strip():
            raise DrillError(f"--header {header!r} is not 'Name: value'; write it as 'Name: value'")
        pairs.append((name.strip(), value.strip()))
    return tuple(pairs)


def _body(data: str | None, data_file: Path | None) -> bytes | None:
    if data is not None and data_file is not None:
        raise DrillError("give --data or --data-file, not both")
    if data_file is not None:
        return inputs.read_data_file(data_file)
    return None if data is None else inputs.data_bytes(data)


def run() -> int:
    """Run the command; bad input is one line and status 2, never a traceback.

    However it ends (Ctrl-C, its own SIGTERM or SIGHUP included), every process
    a drill started has ended first; a SIGTERM or SIGHUP then ends the command
    by that same signal, as a supervisor expects.
    """
    try:
        with cleanup.terminate_as_error():
            code = cli.main(prog_name="lastcall", standalone_mode=False)
    except (click.ClickException, DrillError, inputs.InputError) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        sys.stderr.write(f"lastcall: error: {message}\n")
        return BAD_INPUT
    except (KeyboardInterrupt, click.Abort):
        cleanup.end_all()
        sys.stderr.write("lastcall: interrupted; every process the drill started has ended\n")
        return INTERRUPTED
    except cleanup.TerminatedError as exc:
        cleanup.end_all()
        sys.stderr.write(f"lastcall: stopped by {exc}; every process the drill started has ended\n")
        sys.stderr.flush()
        cleanup.die_by(exc.signum)
        return 128 + exc.signum  # if the signal is blocked here
    return code if isinstance(code, int) else 0
