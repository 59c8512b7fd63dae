"""asyncio apps: async hooks on the app's own loop, signals inside ``asyncio.run()``.

Real processes and real signals. Each app makes a server and a client
connection on its loop; its async hooks write on that connection and close
it (a loop-bound stream: on any other loop this fails with "attached to a
different loop"), and say which loop they ran on.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import signal
import sys
from typing import TYPE_CHECKING

import pytest

from lastcall import Coordinator

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import Child

APP = """
import asyncio
import sys

import lastcall

RUNNER, MODE, END = {runner!r}, {mode!r}, {end!r}
state = {{}}


def out(*words):
    print(*words, flush=True)


if MODE == "top":
    lastcall.install(grace=8)


async def serve(reader, writer):
    state["peer"] = writer  # no task left waiting: asyncio.run's teardown would cancel it


@lastcall.on_shutdown(phase="pre_stop")
async def pre_stop():
    state["pre_stop began"].set()
    # Tasks of its own, still running when asyncio.run cancels every task (on_stopping).
    await asyncio.gather(asyncio.sleep(0.3), asyncio.wait_for(asyncio.sleep(0.3), 5))
    out("pre_stop ok", asyncio.get_running_loop() is state["loop"])


@lastcall.on_shutdown
async def close_connection():
    writer = state["writer"]
    writer.write(b"bye\\n")
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    state["peer"].close()  # since 3.12, wait_closed() waits for the server's connections too
    state["server"].close()
    await state["server"].wait_closed()
    out("hook ok", asyncio.get_running_loop() is state["loop"])


async def main():
    state["loop"] = asyncio.get_running_loop()
    state["pre_stop began"] = asyncio.Event()
    if MODE == "inside":
        lastcall.install(grace=8)
    elif MODE == "top":
        lastcall.use_loop(asyncio.get_running_loop())
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    state["server"] = server
    state["reader"], state["writer"] = await asyncio.open_connection("127.0.0.1", port)
    out("ready")
    if END == "forever":
        await asyncio.Event().wait()
    elif END == "on_stopping":
        await lastcall.stopping
        await state["pre_stop began"].wait()  # return with a hook in flight
        out("main returns")
    elif END == "raise":
        raise RuntimeError("boom")


if RUNNER == "uvloop":
    import uvloop

    factory = uvloop.new_event_loop
else:
    factory = asyncio.new_event_loop
if MODE == "loop_arg":
    with asyncio.Runner(loop_factory=factory) as runner:
        lastcall.install(grace=8, loop=runner.get_loop())
        runner.run(main())
elif RUNNER == "uvloop":
    uvloop.run(main())
else:
    asyncio.run(main())
out("asyncio.run returned")
"""

RUNNERS = ["asyncio", "uvloop"]
SIGNALS = [signal.SIGTERM, signal.SIGINT]


def start_app(spawn: Callable[..., Child], runner: str, mode: str, end: str) -> Child:
    if runner == "uvloop" and importlib.util.find_spec("uvloop") is None:
        pytest.skip("uvloop is not installed (pip install uvloop)")
    if mode == "loop_arg" and sys.version_info < (3, 11):
        pytest.skip("asyncio.Runner is new in Python 3.11")
    report = spawn.script_dir / "report.json"  # type: ignore[attr-defined]
    source = APP.format(runner=runner, mode=mode, end=end)
    ready = end in ("forever", "on_stopping")
    return spawn(source, env={"LASTCALL_REPORT": str(report)}, wait_ready=ready)


def check_hooks_ran_on_the_app_loop(
    child: Child, spawn: Callable[..., Child], trigger: str
) -> None:
    output = child.output()
    report = json.loads((spawn.script_dir / "report.json").read_text())  # type: ignore[attr-defined]
    assert report["trigger"] == trigger, report
    outcomes = [(h["name"], h["outcome"]) for h in report["hooks"]]
    assert outcomes == [("pre_stop", "ok"), ("close_connection", "ok")], report
    assert child.lines("pre_stop ok") == ["pre_stop ok True"], output
    assert child.lines("hook ok") == ["hook ok True"], output
    assert "different loop" not in output, output
    assert output.count("Traceback") == (trigger == "exception"), output  # the app's own, if any


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_install_inside_main_hooks_on_the_app_loop(
    spawn: Callable[..., Child], runner: str, sig: signal.Signals
) -> None:
    """install() inside asyncio.run's coroutine: a signal runs the hooks on that loop."""
    child = start_app(spawn, runner, "inside", "forever")
    child.send(sig)
    assert child.finish() == -sig, child.output()
    check_hooks_ran_on_the_app_loop(child, spawn, sig.name)
    assert "KeyboardInterrupt" not in child.output()


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("mode", ["top", "loop_arg"])
def test_install_at_top_with_the_loop_given(
    spawn: Callable[..., Child], runner: str, mode: str
) -> None:
    """install() at module top, then use_loop() inside main, or install(loop=...)."""
    child = start_app(spawn, runner, mode, "forever")
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    check_hooks_ran_on_the_app_loop(child, spawn, "SIGTERM")


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize("mode", ["inside", "top"])
def test_main_returning_on_stopping_keeps_the_loop_for_the_hooks(
    spawn: Callable[..., Child], runner: str, sig: signal.Signals, mode: str
) -> None:
    """The main coroutine returns as soon as the stop begins; asyncio.run waits for the hooks."""
    child = start_app(spawn, runner, mode, "on_stopping")
    child.send(sig)
    assert child.finish() == -sig, child.output()
    check_hooks_ran_on_the_app_loop(child, spawn, sig.name)
    assert child.lines("main returns") == ["main returns"]


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("mode", ["inside", "top", "loop_arg"])
def test_normal_end_runs_the_hooks_on_the_app_loop(
    spawn: Callable[..., Child], runner: str, mode: str
) -> None:
    """asyncio.run returns with no stop begun: the hooks run on its loop before it closes."""
    child = start_app(spawn, runner, mode, "normal")
    assert child.finish() == 0, child.output()
    check_hooks_ran_on_the_app_loop(child, spawn, "exit")
    # The hooks ran before asyncio.run returned, not at interpreter exit.
    assert child.stdout[-1] == "asyncio.run returned", child.output()


@pytest.mark.parametrize("runner", RUNNERS)
def test_an_error_ending_main_runs_the_hooks_on_the_app_loop(
    spawn: Callable[..., Child], runner: str
) -> None:
    """The main coroutine raises: the hooks run on its loop, the stop says why, status 1."""
    child = start_app(spawn, runner, "inside", "raise")
    assert child.finish() == 1, child.output()
    check_hooks_ran_on_the_app_loop(child, spawn, "exception")
    assert "RuntimeError: boom" in child.output()


def test_hooks_on_the_app_loop_outlast_the_app_cancelling_tasks_but_not_their_timeout() -> None:
    """An app cancelling every task (its own shutdown) does not cancel lastcall's hooks."""
    coordinator = Coordinator(run_at_exit=False)
    seen: list[str] = []

    @coordinator.on_shutdown(timeout=0.5)
    async def too_slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("too_slow cancelled")
            raise

    @coordinator.on_shutdown
    async def quick() -> None:  # runs first: the last registered
        try:  # a hook's own time limits still cancel it
            await asyncio.wait_for(asyncio.sleep(30), 0.05)
        except asyncio.TimeoutError:
            seen.append("wait_for timed out")
        if sys.version_info >= (3, 11):
            try:
                async with asyncio.timeout(0.05):
                    await asyncio.sleep(30)
            except TimeoutError:
                seen.append("timeout timed out")
        await asyncio.sleep(0.2)
        seen.append("quick done")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        coordinator.use_loop(loop)
        stop = loop.run_in_executor(None, coordinator.shutdown)
        await coordinator.stopping
        while not stop.done():  # the app's shutdown: cancel everything, again and again
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()
            await asyncio.sleep(0.01)
        report = await stop
        outcomes = [(h.name.rsplit(".", 1)[-1], h.outcome) for h in report.hooks]
        assert outcomes == [("quick", "ok"), ("too_slow", "timeout")], report.hooks

    asyncio.run(scenario())
    timed_out = ["wait_for timed out", "timeout timed out"][: 1 + (sys.version_info >= (3, 11))]
    assert seen == [*timed_out, "quick done", "too_slow cancelled"]


def test_use_loop_none_leaves_the_stop_to_the_interpreter_exit(spawn: Callable[..., Child]) -> None:
    """A program that goes on after asyncio.run: use_loop(None) lets the loop end alone."""
    child = spawn(
        """
        import asyncio
        import lastcall

        @lastcall.on_shutdown
        async def hook():
            print("hook ran", flush=True)

        async def main():
            lastcall.install(grace=5)
            lastcall.use_loop(None)

        asyncio.run(main())
        print("asyncio.run returned", lastcall.stopping.is_set(), flush=True)
        """,
        wait_ready=False,
    )
    assert child.finish() == 0, child.output()
    assert child.stdout == ["asyncio.run returned False", "hook ran"], child.output()


BUSY_CUT_OFF = """
import asyncio, json, sys
import lastcall

async def job():
    async with lastcall.busy("nightly-import"):
        print("job started", flush=True)
        await asyncio.sleep(30)

async def main():
    lastcall.install(grace=5)
    task = asyncio.create_task(job())
    await asyncio.sleep(0)
    print("ready", flush=True)
    await lastcall.stopping  # the README's pattern: main returns, asyncio.run cancels the job

asyncio.run(main())
"""


def test_busy_work_cut_off_by_asyncio_run_is_named_in_the_report(
    spawn: Callable[..., Child], tmp_path
) -> None:
    """Steps: a task holds ``async with lastcall.busy("nightly-import")``; main awaits
    ``lastcall.stopping`` and returns at SIGTERM, so asyncio.run cancels the task. The report
    names the cancelled work and the busy step is not "ok" (on main: "wait for busy work: ok",
    nothing named)."""
    report = tmp_path / "report.json"
    child = spawn(BUSY_CUT_OFF, env={"LASTCALL_REPORT": str(report)})
    child.wait_for("job started")
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    written = json.loads(report.read_text())
    assert [b["name"] for b in written["busy"]] == ["nightly-import"], written
    assert written["busy"][0]["cancelled"] is True
    assert "await asyncio.sleep(30)" in written["busy"][0]["stack"]
    busy_steps = [h for h in written["hooks"] if h["name"] == "lastcall: wait for busy work"]
    assert [h["outcome"] for h in busy_steps] == ["error"], written
    assert "busy work nightly-import cancelled" in child.output()
