"""Operator settings: explicit arguments, then ``LASTCALL_*`` variables, then defaults.

An argument passed to ``install()`` always wins, because the code that
passes it knows its own needs; an environment variable comes next, because
that is where an operator tunes a deployed service; the defaults suit
Kubernetes (30 s grace, so lastcall keeps 5 s back for itself).

========================  =============================  ===========================
setting                   variable                       default
========================  =============================  ===========================
``grace``                 LASTCALL_GRACE                 25 (seconds)
``signals``               LASTCALL_SIGNALS               SIGTERM,SIGINT,SIGHUP
``exit_code``             LASTCALL_EXIT_CODE             unset: end as the signal did
``report``                LASTCALL_REPORT                unset: no JSON file
``prestop_delay``         LASTCALL_PRESTOP_DELAY         0 (seconds)
``stop_on_thread_crash``  LASTCALL_STOP_ON_THREAD_CRASH  off
``health_port``           LASTCALL_HEALTH_PORT           unset: no health listener
``health_host``           LASTCALL_HEALTH_HOST           127.0.0.1
========================  =============================  ===========================
"""

from __future__ import annotations

import importlib
import math
import os
import signal
import stat
import sys
import threading

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see _hooks)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from types import ModuleType

DEFAULT_GRACE = 25.0
# The part of the grace a drain leaves to the phases after it: a tenth, at most 2 s.
DRAIN_RESERVE_SHARE = 0.1
DRAIN_RESERVE_MAX = 2.0
DEFAULT_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")
ALLOWED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")

SignalSpec = str | int | signal.Signals


class Settings:
    """The resolved settings one coordinator runs with; read-only once made."""

    __slots__ = (
        "exit_code",
        "grace",
        "health_host",
        "health_port",
        "prestop_delay",
        "report",
        "signals",
        "stop_on_thread_crash",
    )

    def __init__(  # noqa: PLR0917  # one argument per setting, as install() takes them
        self,
        grace: float = DEFAULT_GRACE,
        signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP),
        exit_code: int | None = None,
        report: str | None = None,
        prestop_delay: float = 0.0,
        stop_on_thread_crash: bool = False,
        health_port: int | None = None,
        health_host: str = "127.0.0.1",
    ) -> None:
        self.grace = grace
        self.signals = signals
        self.exit_code = exit_code
        self.report = report
        self.prestop_delay = prestop_delay
        self.stop_on_thread_crash = stop_on_thread_crash
        self.health_port = health_port
        self.health_host = health_host

    def replace(self, **changes: object) -> Settings:
        """A copy with some settings changed (as ``NamedTuple._replace``)."""
        fields = {name: getattr(self, name) for name in self.__slots__}
        return Settings(**{**fields, **changes})

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Settings({fields})"


def resolve(
    *,
    grace: float | None = None,
    signals: Iterable[SignalSpec] | None = None,
    exit_code: int | None = None,
    report: str | os.PathLike[str] | None = None,
    prestop_delay: float | None = None,
    stop_on_thread_crash: bool | None = None,
    health_port: int | None = None,
    health_host: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> Settings:
    """Merge arguments over environment over defaults, checking each value."""
    env_signals = environ.get("LASTCALL_SIGNALS")
    if signals is None and env_signals:
        signals = [_env_signal(s) for s in env_signals.split(",") if s.strip()]
    grace_value = _seconds("grace", grace, environ.get("LASTCALL_GRACE"), DEFAULT_GRACE)
    delay_value = _seconds(
        "prestop_delay", prestop_delay, environ.get("LASTCALL_PRESTOP_DELAY"), 0.0, allow_zero=True
    )
    check_drain_time(
        grace_value,
        delay_value,
        grace_name=_source("grace", grace, environ),
        delay_name=_source("prestop_delay", prestop_delay, environ),
    )
    return Settings(
        grace=grace_value,
        signals=parse_signals(DEFAULT_SIGNALS if signals is None else signals),
        exit_code=_exit_code(exit_code, environ.get("LASTCALL_EXIT_CODE")),
        report=_report_path(report, environ.get("LASTCALL_REPORT")),
        prestop_delay=delay_value,
        stop_on_thread_crash=_flag(
            "stop_on_thread_crash",
            stop_on_thread_crash,
            environ.get("LASTCALL_STOP_ON_THREAD_CRASH"),
        ),
        health_port=_port(health_port, environ.get("LASTCALL_HEALTH_PORT")),
        health_host=_host(health_host, environ.get("LASTCALL_HEALTH_HOST")),
    )


def _port(value: int | None, env_value: str | None) -> int | None:
    source = "health_port"
    if value is None and env_value is not None and env_value.strip():
        source = f"LASTCALL_HEALTH_PORT={env_value!r}"
        try:
            value = int(env_value)
        except ValueError:
            raise ValueError(f"{source} is not a port number; set it to e.g. 8081") from None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:  # noqa: PLR2004
        raise ValueError(f"{source} must be a port number from 0 to 65535, got {value!r}")
    return value


def _host(value: str | None, env_value: str | None) -> str:
    host = value if value is not None else (env_value or "").strip() or "127.0.0.1"
    if not isinstance(host, str) or not host:
        raise TypeError(f"health_host must be an address like '127.0.0.1', not {host!r}")
    return host


def _flag(name: str, value: bool | None, env_value: str | None) -> bool:
    if value is not None:
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, not {value!r}")
        return value
    text = (env_value or "").strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"LASTCALL_{name.upper()}={env_value!r} is not a switch; set it to 1 or 0")


def drain_reserve(grace: float) -> float:
    """What a drain leaves of ``grace`` to the phases after it, so cleanup keeps its turn."""
    return min(DRAIN_RESERVE_MAX, grace * DRAIN_RESERVE_SHARE)


def check_drain_time(
    grace: float,
    prestop_delay: float,
    *,
    grace_name: str = "grace",
    delay_name: str = "prestop_delay",
) -> None:
    """Refuse a pre-stop delay that leaves no time to drain; one line names both settings.

    The one place this is decided, for the core and every server integration
    (which pass their own names, e.g. gunicorn's ``graceful_timeout``).
    """
    room = grace - drain_reserve(grace)
    if prestop_delay and prestop_delay >= room:
        raise ValueError(
            f"{delay_name}={prestop_delay:g} leaves no time to drain within "
            f"{grace_name}={grace:g}: lower {delay_name} below {room:g} s or raise {grace_name}"
        )


def check_report_per_process(report: str | None, processes: str) -> None:
    """Refuse a report path that several processes would write over one another.

    Each process writes its own report when its stop ends; at one path the
    last one out (often a master that ran no hook) leaves the only file.
    """
    if report and "{pid}" not in report:
        from pathlib import Path  # noqa: PLC0415  # only for the message: import time

        path = Path(report)
        example = path.with_name(f"{path.stem}-{{pid}}{path.suffix or '.json'}")
        raise ValueError(
            f"LASTCALL_REPORT={report} would be written by {processes}, each over the last: "
            f"put {{pid}} in it, e.g. LASTCALL_REPORT={example}"
        )


def settings_or_exit(*, report_shared_by: str | None = None) -> Settings:
    """For lastcall's command lines: the settings, or an exit in one line naming what is wrong.

    ``report_shared_by`` names the processes that would each write the
    report (``check_report_per_process``).
    """
    try:
        settings = resolve()
        if report_shared_by is not None:
            check_report_per_process(settings.report, report_shared_by)
    except (TypeError, ValueError) as exc:
        sys.exit(f"Error: lastcall: {exc}")
    return settings


def module_or_exit(name: str) -> ModuleType:
    """For ``python -m lastcall.<server>``: the server's module, or one line on how to get it."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        exit_if_missing(exc, name.partition(".")[0])
        raise


def exit_if_missing(exc: ModuleNotFoundError, package: str) -> None:
    """Exit in one line if ``exc`` says ``package`` is not installed (a broken one still raises)."""
    if exc.name is not None and exc.name.partition(".")[0] == package:
        sys.exit(f"Error: lastcall: {package} is not installed: pip install 'lastcall[{package}]'")


def _source(name: str, value: object, environ: Mapping[str, str]) -> str:
    """How the user named a setting: the argument, or the environment variable."""
    variable = f"LASTCALL_{name.upper()}"
    return variable if value is None and environ.get(variable, "").strip() else name


def _env_signal(text: str) -> SignalSpec:
    """``LASTCALL_SIGNALS`` items: names, or numbers as ``signals=15`` accepts them."""
    text = text.strip()
    return int(text) if text.isdigit() else text


def _report_path(value: object, env_value: str | None) -> str | None:
    """A report path that can be written: checked now, not found out at stop time.

    Checked for this process's PID (``{pid}`` expanded): nothing but a regular
    file may be at the path (see ``unfit_target``), and the nearest
    directory that exists must be writable.
    """
    source = "report"
    if value is None:
        if not (env_value and env_value.strip()):
            return None
        source, value = "LASTCALL_REPORT", env_value
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{source} must be a file path (str or os.PathLike), not {value!r}")
    template = os.fspath(value)
    example = "/tmp/lastcall-{pid}.json"  # noqa: S108  # only words in a message
    if not isinstance(template, str) or not template.strip():
        raise ValueError(f"{source} must be a file path like {example}")
    path = report_file(template, os.getpid())
    try:
        problem = unfit_target(path) or _unwritable_directory(path)
    except (OSError, ValueError) as exc:  # NUL, name too long, not encodable, a loop ...
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        problem = f"cannot be used: {reason}"
    if problem is not None:
        shown = repr(template) if path == template else f"{template!r} ({path})"
        raise ValueError(f"{source}={shown} {problem}; choose a file path like {example}")
    return template


def _unwritable_directory(path: str) -> str | None:
    """Why the report's directory cannot be written or made, or None."""
    name = os.path.basename(path)  # noqa: PTH119
    # The temporary file's name is the longest: ".NAME.12345678.tmp".
    if len(os.fsencode(name)) + len(".12345678.tmp") + 1 > _NAME_MAX:
        return "has a file name too long to write a temporary file beside it"
    ancestor = os.path.dirname(os.path.abspath(path))  # noqa: PTH100, PTH120
    while not os.path.lexists(ancestor):  # the directories to make, as mkdir -p would
        ancestor = os.path.dirname(ancestor)  # noqa: PTH120
    if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK | os.X_OK):  # noqa: PTH112
        return f"cannot be written: {ancestor} is not a writable directory"
    return None


_NAME_MAX = 255  # bytes in one file name on Linux's file systems


def parse_signal(spec: SignalSpec) -> signal.Signals:
    """``"TERM"``, ``"SIGTERM"``, ``15`` or ``signal.SIGTERM`` -> ``signal.SIGTERM``."""
    allowed = ", ".join(ALLOWED_SIGNALS)
    if isinstance(spec, str):
        name = spec.strip().upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        if name not in ALLOWED_SIGNALS:
            raise ValueError(f"unknown or unsupported signal {spec!r}; choose from {allowed}")
        return signal.Signals[name]
    if isinstance(spec, int) and not isinstance(spec, bool):
        try:
            sig = signal.Signals(spec)
        except ValueError:
            raise ValueError(f"unknown signal number {spec}; choose from {allowed}") from None
        if sig.name not in ALLOWED_SIGNALS:
            raise ValueError(f"lastcall cannot handle {sig.name}; choose from {allowed}")
        return sig
    raise TypeError(f"a signal is a name like 'SIGTERM' or a number, not {spec!r}")


def parse_signals(specs: Iterable[SignalSpec]) -> tuple[signal.Signals, ...]:
    if isinstance(specs, (str, int)):
        specs = [specs]
    parsed = tuple(dict.fromkeys(parse_signal(s) for s in specs))
    if not parsed:
        raise ValueError("signals must name at least one signal, e.g. ('SIGTERM',)")
    return parsed


def _seconds(
    name: str,
    value: float | None,
    env_value: str | None,
    default: float,
    *,
    allow_zero: bool = False,
) -> float:
    source = name
    if value is None and env_value is not None and env_value.strip():
        source = f"LASTCALL_{name.upper()}={env_value!r}"
        try:
            value = float(env_value)
        except ValueError:
            raise ValueError(f"{source} is not a number of seconds; set it to e.g. 25") from None
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{source} must be a number of seconds, not {type(value).__name__}")
    return check_seconds(float(value), source, allow_zero=allow_zero)


def check_seconds(seconds: float, source: str, *, allow_zero: bool = False) -> float:
    """A time limit the threading module can wait for: finite, not negative, not past its max.

    ``threading.TIMEOUT_MAX`` (about 49 days on Linux) is the longest wait
    a lock accepts; a longer one raises ``OverflowError`` deep in the stop.
    """
    too_small = seconds < 0 if allow_zero else seconds <= 0
    if math.isnan(seconds) or too_small or seconds > threading.TIMEOUT_MAX:
        least = "zero or more" if allow_zero else "more than zero"
        raise ValueError(
            f"{source} must be a finite number of seconds, {least}, at most "
            f"threading.TIMEOUT_MAX ({threading.TIMEOUT_MAX:.0f}); got {seconds!r}"
        )
    return seconds


def _exit_code(value: int | None, env_value: str | None) -> int | None:
    source = "exit_code"
    if value is None and env_value is not None and env_value.strip():
        source = f"LASTCALL_EXIT_CODE={env_value!r}"
        try:
            value = int(env_value)
        except ValueError:
            raise ValueError(f"{source} is not a whole number; set it to e.g. 0") from None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:  # noqa: PLR2004
        raise ValueError(f"{source} must be a whole number from 0 to 255, got {value!r}")
    return value


def report_file(path_template: str, pid: int) -> str:
    """The report path of process ``pid``: ``{pid}`` expanded."""
    return path_template.replace("{pid}", str(pid))


# Where no report can go: the kernel's views, whose "files" are not files.
_PSEUDO_FILE_SYSTEMS = ("/proc", "/sys")
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def unfit_target(path: str) -> str | None:
    """Why no report may be written at ``path`` (words after the path), or None.

    The file is replaced by a rename, so whatever is at the path would be
    replaced too: only a regular file (or nothing yet) may be there. A
    symbolic link is replaced, not followed, but what it points to counts.
    Raises ``OSError`` or ``ValueError`` for a path the system refuses to look at.
    """
    if "\0" in path:
        raise ValueError("a path cannot contain a NUL byte")
    if path.endswith("/"):
        return "names a directory, not a file"
    where = os.path.realpath(os.path.abspath(path))  # noqa: PTH100
    for pseudo in _PSEUDO_FILE_SYSTEMS:
        if where == pseudo or where.startswith(pseudo + "/"):
            return f"cannot be written: {pseudo} has no room for files"
    try:
        mode = os.stat(path).st_mode  # noqa: PTH116
    except FileNotFoundError:
        return None  # nothing there yet (or a dangling link, which the rename replaces)
    except NotADirectoryError:
        return "is inside something that is not a directory"
    for kind, words in _FILE_KINDS:
        if kind(mode):
            return f"is {words}, not a regular file, and writing the report would replace it"
    return None
