"""The command line: ``lastcall drill [APP] [options]`` and ``lastcall drill --matrix``.

Exit status: 0 when the stop was clean (with ``--matrix``: every lastcall
scenario), 1 when it was not, 2 for bad input (one line, no traceback),
130 when interrupted. Every process a drill starts has ended by then.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress

from lastcall.cli import render
from lastcall.cli.drill import STOPS, Drill, DrillError, Plan, Result
from lastcall.cli.matrix import SCENARIOS, Row, plans, run_matrix
from lastcall.cli.servers import SERVERS, installed

BAD_INPUT = 2
INTERRUPTED = 130


@click.group()
@click.version_option(package_name="lastcall")
def cli() -> None:
    """lastcall: graceful shutdown for Python services."""


@cli.command()
@click.argument("app", required=False)
@click.option(
    "--server",
    type=click.Choice(list(SERVERS)),
    multiple=True,
    help="How to serve the app; --matrix takes it more than once.  "
    "[default: werkzeug; --matrix: every installed one]",
)
@click.option(
    "--stop",
    type=click.Choice(STOPS, case_sensitive=False),
    help="How to end it: a signal to the app (KILL-PARENT, KILL-CHILD: to the reloader or "
    "master, or to the serving child), "
    "os._exit in a request, an unhandled exception, a normal exit.  [default: TERM]",
)
@click.option(
    "--requests",
    type=click.IntRange(1, 200),
    help="Requests in flight at the stop.  [default: 16; --matrix: 4]",
)
@click.option(
    "--request-seconds",
    type=click.FloatRange(0, 60),
    help="How long each takes.  [default: 1; --matrix: 0.5, so that one sync gunicorn "
    "worker serves them within the grace]",
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
    "--plain", is_flag=True, help="Serve the app without lastcall (the demo: its atexit twin)."
)
@click.option(
    "--port", type=click.IntRange(1, 65535), help="Port on 127.0.0.1.  [default: a free one]"
)
@click.option("--path", default="/", show_default=True, help="What a user's app is asked for.")
@click.option(
    "--start-timeout",
    type=click.FloatRange(0.1, 600),
    default=15.0,
    show_default=True,
    help="Seconds for the app to answer.",
)
@click.option(
    "--matrix", is_flag=True, help="Every stop, plain atexit beside lastcall, on the demo app."
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the results as JSON.",
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a self-contained HTML report with the timeline.",
)
def drill(  # noqa: PLR0917  # click passes one parameter per option
    app: str | None,
    server: tuple[str, ...],
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
    start_timeout: float,
    matrix: bool,
    json_path: Path | None,
    html_path: Path | None,
) -> int:
    """Start APP, put requests in flight, stop it, and show what every client and hook saw.

    APP is module:app, module:create_app() (literal arguments allowed), a .py
    file, or a module or package holding app, application, create_app or
    make_app; without it, a built-in demo app whose write-behind buffer is
    flushed to SQLite by a shutdown hook.
    """
    base = Plan(
        app=_app_spec(app, factory=factory),
        stop_after=stop_after,
        prestop_delay=prestop_delay,
        plain=plain,
        port=port,
        path=path,
        start_timeout=start_timeout,
    )
    console = Console(stderr=True, highlight=False)
    out = Console(highlight=False)
    if matrix:
        if app or plain or port:
            raise DrillError(
                "--matrix drills the demo app both ways; leave out APP, --plain, --port"
            )
        servers = list(dict.fromkeys(server)) or [s.name for s in installed()]
        stops = [stop.upper()] if stop else list(SCENARIOS)
        base = replace(
            base,
            requests=requests or 4,
            request_seconds=0.5 if request_seconds is None else request_seconds,
            grace=grace or 3.0,
        )
        for each in servers:
            replace(base, server=each).check()
        results, rows = _matrix(console, plans(base, servers, stops), servers, stops)
        out.print(render.matrix_table(rows))
        failed = [r for r in results if not r.plan.plain and r.problems()]
        code = 1 if failed else 0
    else:
        if len(server) > 1:
            raise DrillError("one --server for a single drill; --matrix takes several")
        plan = replace(
            base,
            server=server[0] if server else "werkzeug",
            stop=(stop or "TERM").upper(),
            requests=requests or 16,
            request_seconds=1.0 if request_seconds is None else request_seconds,
            grace=grace or 10.0,
        )
        with console.status("drill") as status:

            def progress(message: str) -> None:
                status.update(message)
                console.print(f"[dim]{message}[/]")

            result = Drill(plan, progress).run()
        results = [result]
        for table in render.drill_tables(result):
            out.print(table)
        out.print(render.verdict(result))
        code = 1 if result.problems() else 0
    if json_path:
        render.write_json(json_path, results)
    if html_path:
        render.write_html(html_path, results, "lastcall drill")
    return code


def _app_spec(app: str | None, *, factory: bool) -> str | None:
    """APP as the runner loads it: ``--factory`` turns ``module:name`` into ``module:name()``."""
    if not factory:
        return app
    target, _, name = (app or "").partition(":")
    if not name:
        raise DrillError("--factory needs APP as module:function, the function that makes the app")
    return app if name.rstrip().endswith(")") else f"{target}:{name}()"


def _matrix(
    console: Console, all_plans: list[Plan], servers: list[str], stops: list[str]
) -> tuple[list[Result], list[Row]]:
    results: list[Result] = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("drills", total=len(all_plans))

        def done(plan: Plan, result: Result) -> None:
            results.append(result)
            progress.advance(task)
            console.print(f"[dim]{plan.server} {plan.stop} {plan.variant}: {result.verdict()}[/]")

        rows = run_matrix(all_plans, done, servers, stops)
    return results, rows


def run() -> int:
    """Run the command; bad input is one line and status 2, never a traceback."""
    try:
        code = cli.main(prog_name="lastcall", standalone_mode=False)
    except (click.ClickException, DrillError) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        sys.stderr.write(f"lastcall: error: {message}\n")
        return BAD_INPUT
    except (KeyboardInterrupt, click.Abort):
        sys.stderr.write("lastcall: interrupted; every process the drill started has ended\n")
        return INTERRUPTED
    return code if isinstance(code, int) else 0
