"""Operator settings: explicit arguments, then ``LASTCALL_*`` variables, then defaults.

An argument passed to ``install()`` always wins, because the code that
passes it knows its own needs; an environment variable comes next, because
that is where an operator tunes a deployed service; the defaults suit
Kubernetes (30 s grace, so lastcall keeps 5 s back for itself).

=======================  =====================  ===========================
setting                  variable               default
=======================  =====================  ===========================
``grace``                LASTCALL_GRACE         25 (seconds)
``signals``              LASTCALL_SIGNALS       SIGTERM,SIGINT,SIGHUP
``exit_code``            LASTCALL_EXIT_CODE     unset: end as the signal did
``report``               LASTCALL_REPORT        unset: no JSON file
``prestop_delay``        LASTCALL_PRESTOP_DELAY 0 (seconds)
=======================  =====================  ===========================
"""

from __future__ import annotations

import math
import os
import signal

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see _hooks)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

DEFAULT_GRACE = 25.0
DEFAULT_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")
ALLOWED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")

SignalSpec = str | int | signal.Signals


class Settings:
    """The resolved settings one coordinator runs with; read-only once made."""

    __slots__ = ("exit_code", "grace", "prestop_delay", "report", "signals")

    def __init__(
        self,
        grace: float = DEFAULT_GRACE,
        signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP),
        exit_code: int | None = None,
        report: str | None = None,
        prestop_delay: float = 0.0,
    ) -> None:
        self.grace = grace
        self.signals = signals
        self.exit_code = exit_code
        self.report = report
        self.prestop_delay = prestop_delay

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
    report: str | None = None,
    prestop_delay: float | None = None,
    environ: Mapping[str, str] = os.environ,
) -> Settings:
    """Merge arguments over environment over defaults, checking each value."""
    env_signals = environ.get("LASTCALL_SIGNALS")
    if signals is None and env_signals:
        signals = [s for s in env_signals.split(",") if s.strip()]
    return Settings(
        grace=_seconds("grace", grace, environ.get("LASTCALL_GRACE"), DEFAULT_GRACE),
        signals=parse_signals(DEFAULT_SIGNALS if signals is None else signals),
        exit_code=_exit_code(exit_code, environ.get("LASTCALL_EXIT_CODE")),
        report=report if report is not None else (environ.get("LASTCALL_REPORT") or None),
        prestop_delay=_seconds(
            "prestop_delay",
            prestop_delay,
            environ.get("LASTCALL_PRESTOP_DELAY"),
            0.0,
            allow_zero=True,
        ),
    )


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
    seconds = float(value)
    too_small = seconds < 0 if allow_zero else seconds <= 0
    if math.isnan(seconds) or math.isinf(seconds) or too_small:
        least = "zero or more" if allow_zero else "more than zero"
        raise ValueError(f"{source} must be a finite number of seconds, {least}; got {value!r}")
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
