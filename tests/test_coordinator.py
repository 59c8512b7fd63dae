"""The coordinator driven directly: ordering, time, isolation, bad input.

A fake clock that hooks advance makes the grace arithmetic deterministic;
real threads are still used to run the hooks, as in production.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import signal
import threading
import time
from types import ModuleType

import pytest

import lastcall
from lastcall import Coordinator
from lastcall._config import resolve


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def coordinator(clock: FakeClock) -> Coordinator:
    return Coordinator(clock=clock, run_at_exit=False)


def recorder(coordinator: Coordinator, calls: list[str], name: str, **options: object) -> None:
    def hook() -> None:
        calls.append(name)

    coordinator.on_shutdown(hook, name=name, **options)  # type: ignore[call-overload]


def test_phases_in_order_and_last_registered_first(coordinator: Coordinator) -> None:
    calls: list[str] = []
    for phase in reversed(lastcall.PHASES):
        recorder(coordinator, calls, f"{phase}-1", phase=phase)
        recorder(coordinator, calls, f"{phase}-2", phase=phase)
    report = coordinator.shutdown()
    expected = [f"{phase}-{n}" for phase in lastcall.PHASES for n in (2, 1)]
    assert calls == expected
    assert [h.name for h in report.hooks] == expected
    assert all(h.outcome == "ok" for h in report.hooks)


def test_decorator_forms_all_register(coordinator: Coordinator) -> None:
    calls: list[str] = []

    @coordinator.on_shutdown
    def bare() -> None:
        calls.append("bare")

    @coordinator.on_shutdown(phase="final", name="named")
    def with_options() -> None:
        calls.append("options")

    def plain() -> None:
        calls.append("plain")

    assert coordinator.on_shutdown(plain) is plain
    assert bare.__name__ == "bare"  # the decorator hands the function back
    report = coordinator.shutdown()
    assert calls == ["plain", "bare", "options"]
    assert report.hooks[-1].name == "named"


def test_hook_added_during_shutdown_for_a_later_phase_runs(coordinator: Coordinator) -> None:
    calls: list[str] = []

    @coordinator.on_shutdown(phase="drain")
    def adds_one() -> None:
        calls.append("drain")
        recorder(coordinator, calls, "late-cleanup")

    coordinator.shutdown()
    assert calls == ["drain", "late-cleanup"]


def test_unregister(coordinator: Coordinator) -> None:
    calls: list[str] = []

    def hook() -> None:
        calls.append("hook")

    coordinator.on_shutdown(hook)
    coordinator.on_shutdown(hook, phase="final")
    assert coordinator.unregister(hook) is True
    assert coordinator.unregister(hook) is False
    assert coordinator.shutdown().hooks == []
    assert calls == []


def test_shutdown_runs_once_and_returns_the_same_report(coordinator: Coordinator) -> None:
    calls: list[str] = []
    recorder(coordinator, calls, "once")
    first = coordinator.shutdown()
    second = coordinator.shutdown()
    assert first is second
    assert calls == ["once"]
    assert coordinator.stopping.is_set()
    assert first.exit_status is None  # shutdown() leaves the process running


def test_concurrent_shutdowns_run_hooks_once(coordinator: Coordinator) -> None:
    calls: list[str] = []
    recorder(coordinator, calls, "once")
    barrier = threading.Barrier(10)
    reports = []

    def call() -> None:
        barrier.wait()
        reports.append(coordinator.shutdown())

    threads = [threading.Thread(target=call) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert calls == ["once"]
    assert len({id(r) for r in reports}) == 1


def test_grace_spent_skips_what_is_left(clock: FakeClock) -> None:
    coordinator = Coordinator(clock=clock, run_at_exit=False)
    coordinator._settings = resolve(grace=10)  # what install() would set, without signals
    calls: list[str] = []

    @coordinator.on_shutdown(phase="drain", name="slow")
    def slow() -> None:
        calls.append("slow")
        clock.advance(11)

    recorder(coordinator, calls, "after")
    recorder(coordinator, calls, "last", phase="final")
    report = coordinator.shutdown()
    assert calls == ["slow"]
    assert [(h.name, h.outcome) for h in report.hooks] == [
        ("slow", "ok"),
        ("after", "skipped"),
        ("last", "skipped"),
    ]
    assert report.duration == pytest.approx(11)


def test_hanging_sync_hook_is_abandoned_and_the_next_runs(coordinator: Coordinator) -> None:
    release = threading.Event()
    calls: list[str] = []

    @coordinator.on_shutdown(timeout=0.2, name="hangs")
    def hangs() -> None:
        release.wait(30)
        calls.append("hangs finished")

    recorder(coordinator, calls, "first")  # runs before `hangs`
    recorder(coordinator, calls, "final", phase="final")
    report = coordinator.shutdown()
    still_hanging = not release.is_set() and "hangs finished" not in calls
    release.set()
    assert still_hanging
    assert [(h.name, h.outcome) for h in report.hooks] == [
        ("first", "ok"),
        ("hangs", "timeout"),
        ("final", "ok"),
    ]
    assert "abandoned" in (report.hooks[1].error or "")


def test_default_hook_timeout_is_what_remains_of_the_grace() -> None:
    coordinator = Coordinator(run_at_exit=False)
    coordinator._settings = resolve(grace=0.3)
    release = threading.Event()
    coordinator.on_shutdown(lambda: release.wait(30), name="hangs")
    report = coordinator.shutdown()
    release.set()
    assert report.hooks[0].outcome == "timeout"
    assert report.hooks[0].duration < 30


def test_async_hook_is_cancelled_at_its_timeout(coordinator: Coordinator) -> None:
    seen: list[str] = []

    @coordinator.on_shutdown(timeout=0.3, name="slow-async")
    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    @coordinator.on_shutdown(name="quick-async")
    async def quick() -> None:
        await asyncio.sleep(0)
        seen.append("quick")

    report = coordinator.shutdown()
    assert seen == ["quick", "cancelled"]
    assert [(h.name, h.outcome) for h in report.hooks] == [
        ("quick-async", "ok"),
        ("slow-async", "timeout"),
    ]


def test_errors_are_isolated_logged_and_reported(
    coordinator: Coordinator, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []
    recorder(coordinator, calls, "survivor")

    @coordinator.on_shutdown(name="raises")
    def raises() -> None:
        raise KeyError("cache")

    @coordinator.on_shutdown(name="exits")
    def exits() -> None:
        raise SystemExit(2)

    with caplog.at_level(logging.INFO, logger="lastcall"):
        report = coordinator.shutdown()
    assert calls == ["survivor"]
    outcomes = {h.name: (h.outcome, h.error or "") for h in report.hooks}
    assert outcomes["raises"][0] == "error"
    assert "Traceback" in outcomes["raises"][1]
    assert "KeyError: 'cache'" in outcomes["raises"][1]
    assert outcomes["exits"][0] == "error"
    assert "sys.exit(2)" in outcomes["exits"][1]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert any("KeyError" in r.getMessage() for r in errors)
    summaries = [
        r for r in caplog.records if r.levelno == logging.INFO and "shutdown" in r.getMessage()
    ]
    assert "1 ok, 2 error" in summaries[-1].getMessage()


def test_report_to_dict_is_json(coordinator: Coordinator) -> None:
    coordinator.on_shutdown(lambda: None, name="noop")
    data = json.loads(json.dumps(coordinator.shutdown("unit test").to_dict()))
    assert data["trigger"] == "manual"
    assert data["reason"] == "unit test"
    assert data["hooks"][0]["name"] == "noop"


# ---------------------------------------------------------------- stop token


def test_stop_token_wait_and_async_twin(coordinator: Coordinator) -> None:
    token = coordinator.stopping
    assert token.wait(0.01) is False

    async def waiter() -> tuple[bool, bool]:
        early = await token.wait_async(0.01)
        threading.Timer(0.05, coordinator.shutdown).start()
        await token
        return early, await token.wait_async(0)

    early, late = asyncio.run(waiter())
    assert (early, late) == (False, True)
    assert token.is_set()
    assert token.wait(0) is True


# ---------------------------------------------------------------- settings and bad input


def test_arguments_win_over_environment_over_defaults() -> None:
    env = {"LASTCALL_GRACE": "12", "LASTCALL_REPORT": "/tmp/r.json", "LASTCALL_SIGNALS": "TERM"}
    assert resolve(environ={}).grace == 25
    from_env = resolve(environ=env)
    assert (from_env.grace, from_env.report, from_env.signals) == (
        12,
        "/tmp/r.json",
        (signal.SIGTERM,),
    )
    explicit = resolve(grace=3, report="/x.json", signals=["SIGUSR1"], environ=env)
    assert (explicit.grace, explicit.report, explicit.signals) == (3, "/x.json", (signal.SIGUSR1,))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"grace": -1}, ValueError, "grace must be a finite number of seconds, more than zero"),
        ({"grace": math.nan}, ValueError, "grace must be a finite number"),
        ({"grace": "10"}, TypeError, "grace must be a number of seconds"),
        ({"prestop_delay": -0.5}, ValueError, "prestop_delay must be a finite number"),
        ({"signals": ["SIGTERN"]}, ValueError, "unknown or unsupported signal 'SIGTERN'"),
        ({"signals": ["SIGKILL"]}, ValueError, "choose from SIGTERM"),
        ({"signals": [9]}, ValueError, "lastcall cannot handle SIGKILL"),
        ({"signals": []}, ValueError, "at least one signal"),
        ({"exit_code": 300}, ValueError, "exit_code must be a whole number from 0 to 255"),
        (
            {"environ": {"LASTCALL_GRACE": "soon"}},
            ValueError,
            "LASTCALL_GRACE='soon' is not a number",
        ),
        ({"environ": {"LASTCALL_GRACE": "-3"}}, ValueError, "LASTCALL_GRACE='-3' must be"),
        ({"environ": {"LASTCALL_SIGNALS": "TERM,BOGUS"}}, ValueError, "signal 'BOGUS'"),
    ],
)
def test_bad_settings_are_refused_with_one_line(kwargs, error, message) -> None:
    with pytest.raises(error) as info:
        resolve(**kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        (("not callable",), {}, TypeError, "on_shutdown() needs a callable"),
        ((), {"phase": "teardown"}, ValueError, "unknown phase 'teardown'; choose one of pre_stop"),
        ((), {"timeout": -1}, ValueError, "timeout must be a finite number of seconds, more"),
        ((), {"timeout": math.nan}, ValueError, "timeout must be a finite number of seconds"),
        ((), {"timeout": "5"}, TypeError, "timeout must be a number of seconds"),
    ],
)
def test_bad_registrations_are_refused_at_once(coordinator, args, kwargs, error, message) -> None:
    with pytest.raises(error) as info:
        coordinator.on_shutdown(*args, **kwargs)
    assert message in str(info.value)
    assert coordinator.hooks == ()


def test_install_rejects_bad_input_before_touching_handlers(coordinator: Coordinator) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ValueError, match="unknown or unsupported signal"):
        coordinator.install(signals=["SIGTERM", "NOPE"])
    assert signal.getsignal(signal.SIGTERM) is before


def test_uninstall_restores_previous_handlers(coordinator: Coordinator) -> None:
    def framework(signum: int, frame: object) -> None: ...

    original = signal.signal(signal.SIGUSR1, framework)
    try:
        coordinator.install(signals=["SIGUSR1"])
        assert signal.getsignal(signal.SIGUSR1) != framework
        coordinator.uninstall()
        assert signal.getsignal(signal.SIGUSR1) is framework
    finally:
        coordinator.uninstall()
        signal.signal(signal.SIGUSR1, original)


def test_install_is_idempotent(coordinator: Coordinator) -> None:
    original = signal.getsignal(signal.SIGUSR2)
    try:
        assert coordinator.install(signals=["SIGUSR2"]) is coordinator
        coordinator.install(signals=["SIGUSR2"])
        coordinator.uninstall()
        assert signal.getsignal(signal.SIGUSR2) is original
    finally:
        coordinator.uninstall()


def test_public_names_are_exported() -> None:
    for name in lastcall.__all__:
        assert hasattr(lastcall, name), name
    public = {n for n in dir(lastcall) if not n.startswith("_")}
    # Integrations are public submodules (lastcall.wsgi), imported on demand.
    modules = {n for n in public if isinstance(getattr(lastcall, n), ModuleType)}
    assert public - modules == set(lastcall.__all__)


def test_shutdown_can_skip_the_prestop_delay() -> None:
    """Where nothing serves any more (gunicorn's master), the delay would only wait."""
    coordinator = Coordinator(run_at_exit=False)
    coordinator._settings = resolve(prestop_delay=5)
    seen: list[float] = []
    coordinator.on_shutdown(lambda: seen.append(time.monotonic()), phase="pre_stop", name="a")
    coordinator.on_shutdown(lambda: seen.append(time.monotonic()), phase="drain", name="b")
    coordinator.shutdown(prestop_delay=0)
    assert len(seen) == 2
    assert seen[1] - seen[0] < 4  # not the configured 5 s


def test_a_short_timeout_after_a_long_running_hook_is_still_kept() -> None:
    """The watcher sleeps until the running hook's time is up (here, the grace);
    a later hook with a shorter timeout must wake it, not wait for the grace.
    """
    coordinator = Coordinator(run_at_exit=False)
    coordinator._settings = resolve(grace=20)
    release = threading.Event()
    coordinator.on_shutdown(lambda: release.wait(30), name="hangs", timeout=0.3)
    coordinator.on_shutdown(lambda: time.sleep(0.2), name="slow but fine")  # runs first
    began = time.monotonic()
    report = coordinator.shutdown()
    took = time.monotonic() - began
    release.set()
    assert [(h.name, h.outcome) for h in report.hooks] == [
        ("slow but fine", "ok"),
        ("hangs", "timeout"),
    ]
    assert took < 5, f"waited {took:.1f} s: the 0.3 s timeout was not watched"


def test_report_jobs_are_counted_in_the_summary_and_read_back():
    """A worker's stop: the jobs it touched are in the JSON and counted in the summary line."""
    from lastcall._report import Report

    jobs = [
        {"id": "a1", "name": "tasks.add", "outcome": "completed", "seconds": 1.2},
        {"id": "b2", "name": "tasks.slow", "outcome": "requeued", "seconds": 9.0},
        {"id": "c3", "name": "tasks.slow", "outcome": "requeued", "seconds": 9.0},
    ]
    report = Report("SIGTERM", "signal received", 7, 0.0, jobs=jobs)
    assert "3 jobs (1 completed, 2 requeued)" in report.summary()
    assert Report.from_dict(report.to_dict()).jobs == jobs
    assert "jobs" not in Report("SIGTERM", "signal received", 7, 0.0).summary()


def test_jobs_noted_during_a_stop_are_in_its_report_and_file(tmp_path):
    """A worker integration notes the jobs its drain touched; one noted again replaces itself."""
    from lastcall import Coordinator
    from lastcall._integration import Integration

    coordinator = Coordinator(run_at_exit=False)
    worker = Integration(coordinator)
    path = tmp_path / "report.json"
    coordinator._settings = coordinator.settings.replace(report=str(path))

    def drain() -> None:
        worker.note_job({"id": "a", "name": "t.slow", "outcome": "completed", "seconds": 0.0})
        worker.note_job({"id": "b", "name": "t.fast", "outcome": "completed", "seconds": 0.1})
        worker.note_job({"id": "a", "name": "t.slow", "outcome": "requeued", "seconds": 9.0})

    coordinator.on_shutdown(drain, phase="drain")
    worker.note_job({"id": "z", "name": "t.x", "outcome": "completed", "seconds": 1.0})
    report = coordinator.shutdown()
    assert [(j["id"], j["outcome"]) for j in report.jobs] == [("b", "completed"), ("a", "requeued")]
    assert json.loads(path.read_text())["jobs"] == report.jobs
    assert "2 jobs (1 completed, 1 requeued)" in report.summary()
