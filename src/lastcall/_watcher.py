"""The last-resort watcher: a separate interpreter that runs hooks after the app died.

``lastcall._lastresort`` starts it as ``python -I -S _watcher.py FD``: isolated
mode and no ``site``, so it starts fast and small and imports nothing of the
app or of lastcall. What the app could import arrives with the messages and
is used only to import a hook when one must run: its ``sys.path`` (the latest
sent) and the site directories whose ``.pth`` files its ``site`` processed
(an editable install's import finder is one), processed here then. FD is the
watcher's end of a socket pair whose other end only the app holds; it
carries JSON lines::

    {"hello": 1, "pid": 123, "path": [...], "sites": [...], "report": "/run/report-{pid}.json"}
    {"hook": {"name": "...", "target": "pkg.mod:func", "args": [...], "timeout": 10.0,
              "cwd": "/srv/app"}, "path": [...]}
    {"hook": {"name": "...", "target": ["rm", "-f", "/run/app.pid"], "args": [], "timeout": 5.0,
              "cwd": "/srv/app"}}
    done

and answers ``ready`` once greeted (the app's monitor thread reads it; its
end-of-file there tells the app the watcher has ended).

``done`` means the app shut down through lastcall: exit, run nothing. End of
file without ``done`` means the app died (the kernel closed its end): run the
hooks last-registered-first, each within its timeout, log to stderr, write the
report (trigger ``died without shutdown``) and exit.

Each hook runs in the working directory the app had when it registered it.
A command runs in a new session, so an overrun kills its whole process group;
its output reaches stderr through the watcher (below).
A function runs on a daemon thread here rather than in another interpreter: no
second start-up between the death and the cleanup, and one that overruns is
abandoned and ends with the watcher, which leaves with ``os._exit`` right after
the last hook so that no stray thread or exit handler can keep it alive.

Its stderr (and stdout) is the app's stderr, often a pipe that a log
collector reads, or that nobody reads once the app is gone. A blocked write
there must not cost a hook: everything the watcher, its hooks and their
commands write goes through ``Output``, whose thread alone writes to the
descriptor; what finds its buffer full is dropped (and counted), never waited for.
"""

from __future__ import annotations

import _thread  # built in: a lock without importing threading
import contextlib
import json
import os
import sys
import time

TYPE_CHECKING = False  # typing is not imported at run time: start-up stays small
if TYPE_CHECKING:
    import logging
    import threading  # imported at run time once there is something to run or say
    from collections.abc import Callable
    from typing import Any

    from lastcall._hooks import Outcome, Phase

    Done = tuple[Outcome, str | None]  # outcome, error

LASTCALL_WATCHER = True  # lastcall._lastresort looks for this: no watcher in the watcher
TRIGGER = "died without shutdown"
PHASE: Phase = "final"  # the report's phase for last-resort hooks: they run after everything
_STATUS_WAIT = 1.0  # how long to wait for the dead app's exit status to be readable
_STAT_STATE, _STAT_STARTTIME, _STAT_EXIT_CODE = 0, 19, 49  # /proc/PID/stat after "comm)"


def lastresort_report_path(template: str) -> str:
    """``report-{pid}.json`` -> ``report-{pid}.lastresort.json``: never the core's file."""
    head, slash, tail = template.rpartition("/")
    stem, dot, suffix = tail.rpartition(".")
    if dot and stem and "{pid}" not in suffix:
        return f"{head}{slash}{stem}.lastresort.{suffix}"
    return f"{template}.lastresort"


class App:
    """What the watcher knows of the process it watches."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.path: list[str] = []
        self.sites: list[str] = []  # site directories whose .pth files the app's site processed
        self.report: str | None = None
        self.hooks: list[dict[str, Any]] = []
        self.starttime: str | None = None  # with the PID, names the process for good
        self.pidfd: int | None = None  # readable once the process has ended

    def greet(self, message: dict[str, Any]) -> None:
        self.pid = int(message["pid"])
        self.path = [str(p) for p in message.get("path", [])]
        self.sites = [str(p) for p in message.get("sites", [])]
        self.report = message.get("report")
        # While the app is our parent its PID is its own: note how to find its
        # exit status later without mistaking a process that reuses the PID.
        if os.getppid() == self.pid:
            fields = _stat(self.pid)
            pidfd = _pidfd_open(self.pid)
            if fields is not None and os.getppid() == self.pid:
                self.starttime = fields[_STAT_STARTTIME]
                self.pidfd = pidfd

    def add(self, message: dict[str, Any]) -> None:
        hook = message["hook"]
        self.hooks.append(hook)
        if "report" in message:
            self.report = message["report"]
        if "path" in message:  # the app's sys.path now: what it could import at the latest
            self.path = [str(p) for p in message["path"]]
        # Import now, while idle, what running it will need: not after the death.
        import logging  # noqa: F401, PLC0415
        import threading  # noqa: F401, PLC0415

        if not isinstance(hook["target"], str):
            import subprocess  # noqa: F401, PLC0415


def main(argv: list[str]) -> int:
    import signal  # noqa: PLC0415  # built in: costs nothing

    channel_fd = int(argv[1])
    os.set_inheritable(channel_fd, False)  # noqa: FBT003  # pass_fds made it inheritable; hooks get none of it
    # gevent's socketpair makes both ends non-blocking; this end is ours alone (the app's is
    # another description): an empty non-blocking read would pass for the app's end.
    os.set_blocking(channel_fd, True)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])  # not the mask of the app thread that started us
    sys.stdout = sys.stderr = OUTPUT  # see Output: no write to the app's stderr may block
    app = App()
    # An app killed before it read our "ready" resets the socket instead of closing it:
    # the same end (seen with rq workers killed by SIGKILL a second after start-up).
    with open(channel_fd, "rb") as channel, contextlib.suppress(ConnectionResetError):
        for raw in channel:
            if not raw.endswith(b"\n"):
                break  # the app died while sending this line: that hook was never registered
            line = raw.strip()
            if line == b"done":
                return 0
            try:
                message = json.loads(line)
                if "hello" in message:
                    app.greet(message)
                    with contextlib.suppress(OSError):
                        os.write(channel_fd, b"ready\n")
                elif "hook" in message:
                    app.add(message)
            except (ValueError, KeyError, TypeError):
                sys.stderr.write(f"lastcall watcher: ignored a bad message: {line[:200]!r}\n")
    if app.pid is None or not app.hooks:
        return 0
    return run_hooks(app)


def run_hooks(app: App) -> int:
    """The app is gone without a shutdown: run its hooks, report, return the exit code."""
    assert app.pid is not None  # noqa: S101  # main() checked
    noticed, began = time.time(), time.monotonic()
    import signal  # noqa: PLC0415

    # A supervisor may SIGTERM what is left of the app's group or cgroup (systemd
    # does once the main process has died): finish the hooks, each within its
    # time limit. A handler, not SIG_IGN, so the commands we start reset it.
    signal.signal(signal.SIGTERM, _finish_first)
    status = StatusProbe(app)
    log = _logger()
    count = len(app.hooks)
    log.warning(
        "pid %d ended without a lastcall shutdown; running %d last-resort hook%s",
        app.pid,
        count,
        "" if count == 1 else "s",
    )
    sys.path[:] = app.path
    _sites_to_load[:] = app.sites  # by the first function hook, within its time limit
    results: list[tuple[str, Outcome, float, str | None]] = []
    for hook in reversed(app.hooks):
        started = time.monotonic()
        outcome, error = run_one(hook)
        results.append((hook["name"], outcome, time.monotonic() - started, error))
        if error is not None:
            log.error("last-resort hook %s %s: %s", hook["name"], outcome, error)
    write_report(app, results, noticed, time.monotonic() - began, status.result())
    return 1 if any(outcome != "ok" for _, outcome, _, _ in results) else 0


def _finish_first(signum: int, frame: object) -> None:
    """SIGTERM while the hooks run: they are already bounded, so let them end."""


_sites_to_load: list[str] = []


def load_sites() -> None:
    """Process the ``.pth`` files of the app's site directories, as its ``site`` did.

    The watcher runs with ``-S``: without this, an import finder that a
    ``.pth`` file installs (setuptools' editable installs) would be missing.
    ``site`` imported under ``-S`` does nothing until asked. Called on a
    function hook's thread, so a ``.pth`` line that hangs costs that hook its
    time limit, not every hook; each directory is taken once, by one thread.
    """
    import logging  # noqa: PLC0415
    import site  # noqa: PLC0415

    while True:
        try:
            directory = _sites_to_load.pop(0)  # atomic: a directory goes to one thread
        except IndexError:
            return
        try:
            site.addsitedir(directory)  # sys.path has it already: only its .pth files run
        except Exception as exc:
            logging.getLogger("lastcall.lastresort").warning(
                "could not process the .pth files in %s: %r", directory, exc
            )


def run_one(hook: dict[str, Any]) -> Done:
    """Run one hook within its timeout, where the app was when it registered it."""
    target, timeout, cwd = hook["target"], float(hook["timeout"]), hook.get("cwd")
    if cwd is not None:
        try:
            os.chdir(cwd)
        except OSError as exc:
            return "error", f"cannot run in its working directory: {exc}"
    if isinstance(target, str):
        return run_function(target, hook.get("args", []), timeout)
    return run_command([str(part) for part in target], timeout)


def run_command(command: list[str], timeout: float) -> Done:
    import signal  # noqa: PLC0415  # the start-up imports only what waiting needs
    import subprocess  # noqa: PLC0415

    read_end, write_end = os.pipe()  # its output, relayed through OUTPUT: never blocked
    try:
        proc = subprocess.Popen(  # noqa: S603  # the app's own command, no shell
            command,
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=write_end,
            start_new_session=True,
        )
    except OSError as exc:
        os.close(read_end)
        return "error", f"could not start: {exc}"
    finally:
        os.close(write_end)
    OUTPUT.relay(read_end)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        # Not reaped yet, so its process group ID cannot have been reused.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return "timeout", f"still running after {timeout:.3g} s; killed its process group"
    if code == 0:
        return "ok", None
    if code < 0:
        return "error", f"killed by {signal.Signals(-code).name}"
    return "error", f"exited with status {code}"


def run_function(target: str, args: list[Any], timeout: float) -> Done:
    import threading  # noqa: PLC0415

    finished: list[Done] = []

    def work() -> None:
        try:
            load_sites()
            func = resolve(target)
        except BaseException as exc:  # anything the module's own top-level code raises
            finished.append(("error", f"cannot import {target}: {type(exc).__name__}: {exc}"))
            return
        try:
            result = func(*args)
            if hasattr(result, "__await__"):  # an async function: run it to the end
                import asyncio  # noqa: PLC0415

                async def wait() -> None:
                    await result

                asyncio.run(wait())
        except SystemExit as exc:
            finished.append(("error", f"called sys.exit({exc.code!r})"))
        except BaseException as exc:
            import traceback  # noqa: PLC0415

            # Drop this frame: the traceback starts in the hook.
            tb = exc.__traceback__
            lines = traceback.format_exception(type(exc), exc, tb.tb_next if tb else None)
            finished.append(("error", "".join(lines).rstrip()))
        else:
            finished.append(("ok", None))

    thread = threading.Thread(target=work, name=f"last-resort {target}", daemon=True)
    thread.start()
    thread.join(timeout)
    if not finished:
        return "timeout", f"still running after {timeout:.3g} s; abandoned, ends with the watcher"
    return finished[0]


def resolve(target: str) -> Callable[..., object]:
    """Import ``package.module:function`` now, at run time, and return the function."""
    import importlib  # noqa: PLC0415

    module_name, _, attribute = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{attribute} is a {type(obj).__name__}, not a function")
    return obj  # type: ignore[no-any-return]


class StatusProbe:
    """Finds the dead app's exit status, if it can be known, while the hooks run.

    The watcher is not the app's parent and cannot wait for it. Once the app
    has ended (its pidfd turns readable) and until its parent reaps it, the
    app is a zombie whose ``/proc/PID/stat`` holds its wait status; the start
    time recorded while the app was alive proves the PID is still the app's.
    Once reaped, the status is gone: ``None``.
    """

    def __init__(self, app: App) -> None:
        import threading  # noqa: PLC0415

        self._app = app
        self._status: int | None = None
        self._thread: threading.Thread | None = None
        if app.pidfd is not None and app.starttime is not None:
            self._thread = threading.Thread(target=self._probe, daemon=True)
            self._thread.start()

    def _probe(self) -> None:
        import select  # noqa: PLC0415

        assert self._app.pidfd is not None  # noqa: S101
        assert self._app.pid is not None  # noqa: S101
        readable, _, _ = select.select([self._app.pidfd], [], [], _STATUS_WAIT)
        fields = _stat(self._app.pid) if readable else None
        if (
            fields is None
            or len(fields) <= _STAT_EXIT_CODE
            or fields[_STAT_STATE] != "Z"
            or fields[_STAT_STARTTIME] != self._app.starttime
        ):
            return
        try:
            code = os.waitstatus_to_exitcode(int(fields[_STAT_EXIT_CODE]))
        except ValueError:
            return
        self._status = 128 - code if code < 0 else code

    def result(self) -> int | None:
        if self._thread is not None:
            self._thread.join(_STATUS_WAIT)
        return self._status


def write_report(
    app: App,
    results: list[tuple[str, Outcome, float, str | None]],
    noticed: float,
    duration: float,
    exit_status: int | None,
) -> None:
    """Write the report in the core's format (``lastcall._report``), then log a summary.

    The summary comes last so that whoever sees it finds the report written.
    It is not ``Report.log()``: those words suit a shutdown, where an unknown
    exit status is one the interpreter decides; here it means the status is lost.
    """
    import logging  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    assert app.pid is not None  # noqa: S101
    log = logging.getLogger("lastcall.lastresort")
    written = None
    if app.report:
        try:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this lastcall
            from lastcall._report import HookResult, Report  # noqa: PLC0415

            report = Report(
                trigger=TRIGGER,
                reason=f"pid {app.pid} ended without a lastcall shutdown",
                pid=app.pid,
                started_at=noticed,
                hooks=[
                    HookResult(name, PHASE, outcome, took, error)
                    for name, outcome, took, error in results
                ],
                duration=duration,
                exit_status=exit_status,
            )
            written = report.write(lastresort_report_path(app.report))
        except (OSError, ValueError) as exc:  # a full disk, a FIFO at the path: one line
            log.error("could not write the last-resort report: %s", exc)  # noqa: TRY400
        except Exception:
            log.exception("could not write the last-resort report")
    outcomes = [outcome for _, outcome, _, _ in results]
    counts = ", ".join(
        f"{outcomes.count(outcome)} {outcome}"
        for outcome in ("ok", "error", "timeout")
        if outcome in outcomes or outcome == "ok"
    )
    known = "unknown (reaped before it could be read)" if exit_status is None else exit_status
    log.info(
        "last-resort hooks for pid %d: %d hooks, %s, %.3f s; its exit status: %s%s",
        app.pid,
        len(results),
        counts,
        duration,
        known,
        f"; report in {written}" if written else "",
    )


class Output:
    """The watcher's ``sys.stdout`` and ``sys.stderr``: writes never block.

    Each write is queued for a thread that writes it to descriptor 2 (the
    app's stderr); that thread may block on a full pipe, nothing else does.
    A write that would take the queue past ``LIMIT`` bytes is dropped; how
    many were is said once the pipe takes lines again. ``O_NONBLOCK`` on the
    descriptor is no answer: the app, and whatever shares its stderr, would see it too.
    """

    LIMIT = 256 * 1024
    RESERVE = 64 * 1024  # beyond LIMIT, for the watcher's own lines: which hook ran, how
    encoding = "utf-8"
    errors = "backslashreplace"

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._queue: list[bytes] = []
        self._size = 0
        self._dropped = 0
        self._cond: threading.Condition | None = None  # made at the first write
        self._starting = _thread.allocate_lock()
        self._idle = True
        self._broken = False
        self.buffer = _Binary(self)  # for sys.stderr.buffer.write(b"...")
        self.own = _Own(self)  # the watcher's log lines: never dropped for a hook's output
        self.closed = False

    def write(self, text: str) -> int:
        self.write_bytes(text.encode(self.encoding, self.errors))
        return len(text)

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def writable(self) -> bool:
        return True

    def write_bytes(self, data: bytes, *, own: bool = False) -> None:
        if not data or self._broken:
            return
        cond = self._cond or self._start()
        with cond:
            if self._size + len(data) > self.LIMIT + (self.RESERVE if own else 0):
                self._dropped += 1
                return
            self._queue.append(data)
            self._size += len(data)
            cond.notify()

    def relay(self, fd: int) -> None:
        """Pass on what a command writes to the pipe ``fd`` (closed at its end of file)."""
        import threading  # noqa: PLC0415

        def pump() -> None:
            with open(fd, "rb", buffering=0) as pipe:
                while chunk := pipe.read(65536):
                    self.write_bytes(chunk)

        threading.Thread(target=pump, name="lastcall-relay", daemon=True).start()

    def flush(self) -> None:
        """Nothing to do: the thread writes as soon as it can (see ``drain``)."""

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for what is queued to be written (before the watcher exits)."""
        cond = self._cond
        if cond is None:
            return True
        with cond:
            return cond.wait_for(lambda: self._idle and not self._queue, timeout)

    def _start(self) -> threading.Condition:
        import threading  # noqa: PLC0415  # imported anyway once a hook is registered

        with self._starting:  # two threads' first writes: one writer thread
            if self._cond is None:
                cond = threading.Condition()
                threading.Thread(
                    target=self._write_out, args=(cond,), name="lastcall-output", daemon=True
                ).start()
                self._cond = cond
            return self._cond

    def _write_out(self, cond: threading.Condition) -> None:
        while True:
            with cond:
                self._idle = True
                cond.notify_all()
                cond.wait_for(lambda: bool(self._queue))
                chunks, self._queue, self._size = self._queue, [], 0
                dropped, self._dropped = self._dropped, 0
                self._idle = False
            if dropped:
                note = f"lastcall watcher: {dropped} writes dropped: stderr was not being read\n"
                chunks.insert(0, note.encode())
            try:
                for chunk in chunks:
                    self._write_all(chunk)
            except OSError:  # closed, or nobody will ever read it: nothing more to say
                self._broken = True
                with cond:
                    self._queue, self._size, self._idle = [], 0, True
                    cond.notify_all()
                return

    def _write_all(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:  # someone made the shared descriptor non-blocking
                import select  # noqa: PLC0415  # this thread only, and only then

                select.select([], [self._fd], [])


class _Binary:
    """``Output.buffer``: the same queue, for bytes."""

    def __init__(self, output: Output) -> None:
        self._output = output

    def write(self, data: bytes) -> int:
        self._output.write_bytes(bytes(data))
        return len(data)

    def flush(self) -> None:
        """Nothing to do, as ``Output.flush``."""


class _Own:
    """``Output.own``: the watcher's logging writes here, with the reserve hooks cannot use."""

    def __init__(self, output: Output) -> None:
        self._output = output

    def write(self, text: str) -> int:
        self._output.write_bytes(text.encode(Output.encoding, Output.errors), own=True)
        return len(text)

    def flush(self) -> None:
        """Nothing to do, as ``Output.flush``."""


OUTPUT = Output(2)
_OUTPUT_DRAIN = 1.0  # seconds the watcher's last lines may take to go out before it exits


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name, or None."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        text = os.read(fd, 4096).decode("ascii", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)
    return text.rsplit(")", 1)[1].split()


def _pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # before Linux 5.3 or Python 3.9
        return None


def _logger() -> logging.Logger:
    import logging  # noqa: PLC0415  # only once there is something to say

    logging.raiseExceptions = False  # a closed stderr must not stop the hooks
    handler = logging.StreamHandler(OUTPUT.own)
    handler.setFormatter(
        logging.Formatter("%(levelname)s %(name)s [watcher %(process)d]: %(message)s")
    )
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return logging.getLogger("lastcall.lastresort")


if __name__ == "__main__":
    try:
        exit_code = main(sys.argv)
    except BaseException:  # a bug here: say so through OUTPUT, which os._exit would cut short
        import traceback

        traceback.print_exc()
        exit_code = 1
    OUTPUT.drain(_OUTPUT_DRAIN)
    os._exit(exit_code)
