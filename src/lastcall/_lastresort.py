"""Last-resort hooks: cleanup that still runs when the process dies without a shutdown.

``atexit`` and the coordinator live inside the process, so SIGKILL, ``os._exit``,
a segfault, ``abort()`` or the OOM killer take them down with it. Only another
process can act then. The first ``last_resort()`` call starts one small watcher
(``_watcher.py``); the hooks are sent to it, and it runs them if this process
ends before a lastcall shutdown has completed.

Choices, and why:

* **How the watcher learns of the death**: this process holds the only end of
  a Unix socket pair whose other end the watcher reads. Whatever ends this
  process, the kernel closes its descriptors, and the watcher's read returns
  end-of-file at once. No PID is polled (PIDs are reused) and no port is
  opened. A socket pair rather than a pipe because ``send(MSG_NOSIGNAL)``
  cannot raise SIGPIPE: an app that restored SIGPIPE's default action (many
  command-line tools do) would otherwise be killed by writing to a dead watcher.
* **What crosses the channel**: one JSON line per message, in registration
  order: a greeting (this PID, ``sys.path`` and the site directories whose
  ``.pth`` files ``site`` processed, so the watcher can import the hooks later
  as this process could, the report path), one line per hook (with the working
  directory it runs in, and ``sys.path`` as it is then), and ``done`` once a
  lastcall shutdown completes (``Coordinator.when_done``); the watcher then
  exits without running anything. A forced stop (a second Ctrl-C skipped
  hooks) does not send ``done``: the last-resort hooks still run.
* **The watcher process**: a fresh interpreter (``python -I -S _watcher.py``),
  not a fork, so it copies none of the app's memory, locks or threads; it is
  given only its end of the socket (``close_fds``, ``pass_fds``), ``/dev/null``
  as stdin and this process's stderr for its log (never written to in a way
  that can block: see ``_watcher.Output``). Its environment is this process's
  at the first ``last_resort()`` call. It starts its own session,
  so a Ctrl-C in a terminal, a hang-up or a kill of this process group (as
  ``kill -- -PGID`` and many supervisors do) cannot take it down together
  with the process it is there to clean up after.
* **A watcher that dies**: a daemon thread reads our end of the channel; the
  watcher writes ``ready`` once it has read the greeting, and end-of-file means
  it has ended. The thread then reaps it (it is our child). If it ended while
  still needed, one warning is logged and the app carries on; the next
  ``last_resort()`` call starts a new one with every hook. ``last_resort()``
  does not wait for ``ready``: what it sent waits in the socket even if the app
  dies before the watcher has started, so registering costs the app only a
  ``fork``/``exec``.
* **Forks**: a forked child closes its copy of the socket (else the watcher
  would not see the parent die while the child lives) and keeps only the hooks
  registered with ``inherit=True``; if there are any, it gets its own watcher.
* **Supervisors**: a process that stands aside (``Integration.stand_aside``,
  the Werkzeug reloader's parent, which imports the app too) stands its
  watcher down and ignores later registrations: its child owns the cleanup.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import weakref

from lastcall._hooks import check_timeout
from lastcall._integration import Integration
from lastcall._log import logger
from lastcall._threads import start_daemon
from lastcall._triggers import forked_for_one_job

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see _hooks)
if TYPE_CHECKING:
    import socket
    import subprocess
    from collections.abc import Callable, Sequence
    from typing import Any

    from lastcall._coordinator import Coordinator
    from lastcall._report import Report

DEFAULT_TIMEOUT = 10.0
"""Seconds a last-resort hook may run when no ``timeout`` is given."""

WATCHER_SCRIPT = "_watcher.py"  # beside this file; run by path so no package is imported
PROTOCOL = 1
_JSON_TYPES = "str, int, float, bool, None, and lists and dicts of those (with str keys)"


class LastResortHook:
    """One registered last-resort hook, as the watcher will receive it."""

    __slots__ = ("args", "cwd", "inherit", "name", "target", "timeout")

    def __init__(  # noqa: PLR0917  # one argument per field of the message
        self,
        name: str,
        target: str | tuple[str, ...],  # "package.module:function" or a command
        args: tuple[Any, ...],
        timeout: float,
        inherit: bool,
        cwd: str | None = None,  # where it runs: the working directory at registration
    ) -> None:
        self.name = name
        self.target = target
        self.args = args
        self.timeout = timeout
        self.inherit = inherit
        self.cwd = cwd

    def message(self) -> dict[str, Any]:
        target = self.target if isinstance(self.target, str) else list(self.target)
        args = list(self.args)
        return {
            "name": self.name,
            "target": target,
            "args": args,
            "timeout": self.timeout,
            "cwd": self.cwd,
        }


class _Watcher:
    """The running watcher process and this process's end of its channel."""

    def __init__(self, proc: subprocess.Popen[bytes], channel: socket.socket) -> None:
        self.proc = proc
        self.channel = channel
        self.standing_down = False  # True once its exit is expected
        self.ready = threading.Event()  # set once it has read the greeting

    def send(self, message: dict[str, Any] | str) -> None:
        import json  # noqa: PLC0415  # only once a last-resort hook exists
        import socket  # noqa: PLC0415

        line = message if isinstance(message, str) else json.dumps(message, allow_nan=False)
        self.channel.sendall(line.encode() + b"\n", socket.MSG_NOSIGNAL)


class LastResort:
    """Registers last-resort hooks for one coordinator and keeps their watcher running."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator
        self._lock = threading.Lock()
        self._hooks: list[LastResortHook] = []
        self._watcher: _Watcher | None = None
        self._subscribed = False
        # A forked child keeps the parent's watcher object here, never using it:
        # dropping it would make subprocess warn about a process it cannot wait for.
        self._forgotten: list[_Watcher] = []
        reference = weakref.WeakMethod(self._after_fork_in_child)
        os.register_at_fork(after_in_child=lambda: _call_weak(reference))

    @property
    def hooks(self) -> tuple[LastResortHook, ...]:
        with self._lock:
            return tuple(self._hooks)

    @property
    def watcher_pid(self) -> int | None:
        """The watcher's PID while one is running for this process, else None."""
        watcher = self._watcher
        return watcher.proc.pid if watcher is not None else None

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the watcher has read the greeting (for tests and benchmarks).

        Not needed for safety: hooks sent before are read even if this
        process dies first. Ready, the watcher can also learn its exit status.
        """
        watcher = self._watcher
        return watcher is not None and watcher.ready.wait(timeout)

    def last_resort(
        self,
        target: str | Sequence[str],
        /,
        *args: object,
        timeout: float = DEFAULT_TIMEOUT,
        name: str | None = None,
        inherit: bool = False,
    ) -> None:
        """Run ``target`` if this process dies without a lastcall shutdown.

        ``target`` is ``"package.module:function"`` (called with ``args``, which
        must be JSON-serialisable: they reach the watcher process as JSON) or a
        command as a list of strings, run without a shell. The watcher imports
        the function only when it must run it, so a module importable only then
        is fine. Hooks run last-registered-first, each within ``timeout``
        seconds: an overrunning command is killed with its process group, an
        overrunning function is abandoned and ends with the watcher.
        ``inherit=True`` lets forked children keep the hook (each with its own
        watcher); a ``multiprocessing`` child ends with ``os._exit``, so its
        inherited hooks run when it ends.

        Raises ``TypeError`` or ``ValueError`` for what can be checked now (a
        non-JSON argument, an empty command, a bad timeout), ``RuntimeError``
        if the watcher cannot be started.
        """
        hook = make_last_resort_hook(target, args, timeout=timeout, name=name, inherit=inherit)
        if _in_watcher() or Integration(self._coordinator).stood_aside:
            # A hook module imported by the watcher registers its hooks: ignore,
            # or the watcher would start a watcher of its own. A process that
            # stood aside (the Werkzeug reloader's parent) leaves them to its child.
            return
        with self._lock:
            self._hooks.append(hook)
            if not self._subscribed:
                self._coordinator.when_done(self._stand_down)
                Integration(self._coordinator).when_standing_aside(self._stand_aside)
                self._subscribed = True
            if self._coordinator.state == "done":
                logger.warning(
                    "last_resort(%s) registered after the shutdown completed: it will not run",
                    hook.name,
                )
                return
            watcher = self._watcher
            if watcher is not None:
                try:
                    watcher.send(
                        {"hook": hook.message(), "report": self._report_template(), "path": _path()}
                    )
                except OSError:
                    pass  # it died; its monitor logs that and closes the channel
                else:
                    return
            try:
                self._start()
            except RuntimeError:
                self._hooks.remove(hook)  # refused, so not registered
                raise

    # ------------------------------------------------------------ the watcher

    def _report_template(self) -> str | None:
        return self._coordinator.settings.report

    def _start(self) -> None:
        """Start a watcher and send it every hook. Called with the lock held."""
        import socket  # noqa: PLC0415  # only once a last-resort hook exists
        import subprocess  # noqa: PLC0415

        if not sys.executable:
            raise RuntimeError("last_resort() needs sys.executable to start its watcher")
        # os.path, not pathlib: importing pathlib would add ~3 ms to the first call.
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), WATCHER_SCRIPT)  # noqa: PTH100, PTH118, PTH120
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        log = 2 if _fd_is_open(2) else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(  # noqa: S603  # our own interpreter and script
                [sys.executable, "-I", "-S", script, str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                close_fds=True,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            raise RuntimeError(f"could not start the last-resort watcher: {exc}") from exc
        finally:
            theirs.close()
        watcher = _Watcher(proc, ours)
        self._watcher = watcher
        greeting = {
            "hello": PROTOCOL,
            "pid": os.getpid(),
            "path": _path(),
            "sites": _site_directories(),
            "report": self._report_template(),
        }
        with contextlib.suppress(OSError):  # if it died already, its monitor says so
            watcher.send(greeting)
            for hook in self._hooks:
                watcher.send({"hook": hook.message()})
        start_daemon(self._monitor, "lastcall-watcher-monitor", watcher)

    def _monitor(self, watcher: _Watcher) -> None:
        """Wait for ``ready``, then for the watcher's end; reap it; warn if it was needed.

        Only this thread closes the channel: closing it under a blocked
        ``recv`` would let the descriptor number be reused beneath it.
        """
        received = b""
        while True:
            try:
                data = watcher.channel.recv(256)
            except OSError:
                data = b""
            if not data:
                break
            received = (received + data)[-16:]
            if b"ready\n" in received:
                watcher.ready.set()
        watcher.channel.close()
        status = watcher.proc.wait()
        if watcher.standing_down:
            return
        with self._lock:
            if self._watcher is watcher:
                self._watcher = None
        how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
        logger.warning(
            "the last-resort watcher (pid %d) ended unexpectedly (%s): last-resort hooks will "
            "not run if this process dies now; the next last_resort() call starts a new watcher",
            watcher.proc.pid,
            how,
        )

    def _stand_down(self, report: Report) -> None:
        """The lastcall shutdown completed: the watcher exits without running hooks."""
        if report.forced:
            logger.info("forced stop: the last-resort hooks run once this process has ended")
            return
        with self._lock:
            watcher, self._watcher = self._watcher, None
            if watcher is None:
                return
            watcher.standing_down = True
            with contextlib.suppress(OSError):
                watcher.send("done")  # it exits; the monitor closes the channel

    def _stand_aside(self, reason: str) -> None:
        """Now a supervisor: its hooks are its child's business."""
        with self._lock:
            self._hooks.clear()
            watcher, self._watcher = self._watcher, None
            if watcher is None:
                return
            watcher.standing_down = True
            with contextlib.suppress(OSError):
                watcher.send("done")
        logger.debug("last-resort watcher stood down: %s", reason)

    def _after_fork_in_child(self) -> None:
        """Close the parent's channel; keep and watch only ``inherit=True`` hooks."""
        self._lock = threading.Lock()  # another thread may have held it during the fork
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.standing_down = True
            watcher.channel.close()  # our copy only: the parent's stays open
            self._forgotten = [watcher]
        self._hooks = [h for h in self._hooks if h.inherit]
        if self._hooks and self._coordinator.state != "done":
            try:
                self._start()
            except RuntimeError as exc:
                logger.error("forked child %d: %s", os.getpid(), exc)


# ------------------------------------------------------------ validation


def make_last_resort_hook(
    target: object,
    args: tuple[object, ...],
    *,
    timeout: object,
    name: object,
    inherit: bool,
) -> LastResortHook:
    """Check everything that can be checked at registration; raise with one clear line."""
    resolved: str | tuple[str, ...]
    if isinstance(target, str):
        module, colon, attribute = target.partition(":")
        if not (colon and _dotted(module) and _dotted(attribute)):
            raise ValueError(
                f"last_resort() target {target!r} is not 'package.module:function'; "
                "give an import path, or a command as a list of strings"
            )
        for index, arg in enumerate(args, start=1):
            _check_json(arg, f"last_resort() argument {index}")
        resolved = target
    elif isinstance(target, (list, tuple)):
        resolved = _check_command(target, args)
    elif callable(target):
        raise TypeError(
            "last_resort() cannot send a function to the watcher process; give its import "
            f"path as a string, e.g. {_import_path_hint(target)!r}"
        )
    else:
        raise TypeError(
            "last_resort() needs 'package.module:function' or a command as a list of strings, "
            f"not {type(target).__name__}"
        )
    seconds = check_timeout(timeout, "last_resort() timeout")
    if seconds is None:
        raise TypeError("last_resort() timeout must be a number of seconds, not None")
    if math.isinf(seconds):
        raise ValueError("last_resort() timeout must be finite: the watcher must finish")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"last_resort() name must be a str, not {type(name).__name__}")
    default_name = resolved if isinstance(resolved, str) else " ".join(resolved)
    try:
        cwd: str | None = os.getcwd()  # noqa: PTH109  # pathlib costs the first call ~3 ms
    except OSError:  # removed from under us: the hook runs where the watcher is
        cwd = None
    return LastResortHook(name or default_name, resolved, tuple(args), seconds, bool(inherit), cwd)


def _check_command(
    command: list[object] | tuple[object, ...], args: tuple[object, ...]
) -> tuple[str, ...]:
    if not command or command[0] == "":
        raise ValueError(
            "last_resort() got an empty command; give the program and its arguments, "
            "e.g. ['rm', '-f', '/run/app.pid']"
        )
    for part in command:
        if not isinstance(part, str):
            raise TypeError(
                f"a last_resort() command is a list of strings; {part!r} is a {type(part).__name__}"
            )
    if args:
        raise TypeError("a last_resort() command takes no extra arguments: put them in its list")
    return tuple(str(part) for part in command)


def _dotted(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def _check_json(value: object, where: str) -> None:
    """Refuse what JSON cannot carry faithfully, naming where it is."""
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value!r}, which JSON cannot carry")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_json(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                kind = type(key).__name__
                raise TypeError(f"{where} has a {kind} key {key!r}; JSON keys are str")
            _check_json(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}, which cannot reach the watcher as JSON; "
        f"use {_JSON_TYPES}"
    )


def _import_path_hint(func: object) -> str:
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if module and module != "__main__" and qualname and "<" not in qualname:
        return f"{module}:{qualname}"
    return "mypackage.cleanup:release_lock"


def _path() -> list[str]:
    """``sys.path`` now, as the watcher will import hooks with it."""
    return [str(entry) for entry in sys.path]  # may hold Path objects


def _site_directories() -> list[str]:
    """The directories whose ``.pth`` files ``site`` processed at start-up (none under -S).

    The watcher runs ``-S`` and processes them only when a hook must be
    imported: an editable install's ``.pth`` may add an import finder, not a path.
    """
    site = sys.modules.get("site")
    if site is None or sys.flags.no_site:
        return []
    directories = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    if site.ENABLE_USER_SITE:
        directories.append(site.getusersitepackages())
    return [str(directory) for directory in directories]


def _in_watcher() -> bool:
    """True inside the watcher process, whose ``__main__`` is ``_watcher.py``."""
    return bool(getattr(sys.modules.get("__main__"), "LASTCALL_WATCHER", False))


def _fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _call_weak(reference: weakref.WeakMethod[Callable[[], None]]) -> None:
    """The fork callback; not in a child forked to run one job (``forked_for_one_job``).

    Such a child dies with its parent: its copy of the channel delays the
    watcher's EOF no further than the parent's death.
    """
    if forked_for_one_job():
        return
    method = reference()
    if method is not None:
        method()
