"""``stop_on_thread_crash``: every way a thread can die of an exception begins the stop.

A thread ends with an uncaught exception in one of two places, and both are
watched:

* ``threading.Thread`` calls ``threading.excepthook``, read from the
  ``threading`` module's globals at that moment (``threading.py``,
  ``_make_invoke_excepthook``, 3.10 to 3.13). An app, pytest or an error
  reporter often sets its own after ``install()``, which would put ours out
  of the way. So ours stays in those globals, and ``threading``'s module
  class gets a property for the name: setting ``threading.excepthook`` sets
  the hook ours calls first, and reading it gives what was set, so a
  wrapper that chains "the previous hook" chains theirs, never ours. A hook
  of theirs that raises still begins the stop.
* ``_thread.start_new_thread`` reports a crash through
  ``sys.unraisablehook`` ("Exception ignored in thread started by ...").
  Ours wraps the one in place at ``install()``; an app that replaces
  ``sys.unraisablehook`` later takes those crashes back (documented).

``SystemExit`` in a thread is a thread ending, not a crash.
"""

from __future__ import annotations

import sys
import threading
import types

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see _hooks)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    OnCrash = Callable[[str], None]

_THREAD_CRASH = "Exception ignored in thread started by"  # _threadmodule.c, 3.10 to 3.13

_on_crash: OnCrash | None = None
_app_thread_hook: Callable[[threading.ExceptHookArgs], object] | None = None
_app_unraisable_hook: Callable[[Any], object] | None = None


class _ThreadingModule(types.ModuleType):
    """``threading``, with ``excepthook`` the app's while ours stays in its globals."""

    @property
    def excepthook(self) -> Callable[[threading.ExceptHookArgs], object] | None:
        return _app_thread_hook

    @excepthook.setter
    def excepthook(self, hook: Callable[[threading.ExceptHookArgs], object] | None) -> None:
        global _app_thread_hook  # noqa: PLW0603  # one threading module per process
        _app_thread_hook = hook


def watch(on_crash: OnCrash) -> None:
    """Call ``on_crash(reason)`` when any thread dies of an exception; idempotent."""
    global _on_crash, _app_thread_hook, _app_unraisable_hook  # noqa: PLW0603
    _on_crash = on_crash
    if _app_unraisable_hook is None:
        _app_unraisable_hook = sys.unraisablehook
        sys.unraisablehook = _unraisable_hook
    if type(threading) is not _ThreadingModule:
        _app_thread_hook = threading.excepthook
        threading.__dict__["excepthook"] = _thread_hook
        threading.__class__ = _ThreadingModule


def unwatch() -> None:
    """Give back the hooks that were there (or set since), as plain attributes."""
    global _on_crash, _app_unraisable_hook  # noqa: PLW0603
    _on_crash = None
    if type(threading) is _ThreadingModule:
        threading.__class__ = types.ModuleType  # type: ignore[assignment]  # narrowed above
        threading.__dict__["excepthook"] = _app_thread_hook or threading.__excepthook__
    if _app_unraisable_hook is not None:
        if sys.unraisablehook is _unraisable_hook:
            sys.unraisablehook = _app_unraisable_hook
        _app_unraisable_hook = None


def _thread_hook(args: threading.ExceptHookArgs) -> None:
    try:
        (_app_thread_hook or threading.__excepthook__)(args)  # the traceback, as without us
    finally:  # even when the app's hook raises
        if args.exc_type is not SystemExit:
            name = args.thread.name if args.thread is not None else "?"
            _crashed(f"thread {name} crashed: {args.exc_type.__name__}: {args.exc_value}")


def _unraisable_hook(unraisable: Any) -> None:  # noqa: ANN401  # sys.UnraisableHookArgs
    try:
        (_app_unraisable_hook or sys.__unraisablehook__)(unraisable)
    finally:
        message = unraisable.err_msg or ""
        if message.startswith(_THREAD_CRASH) and unraisable.exc_type is not SystemExit:
            exc_type = unraisable.exc_type
            name = getattr(unraisable.object, "__qualname__", None) or repr(unraisable.object)
            if message != _THREAD_CRASH:  # 3.13: the function's repr is in the message
                name = message.removeprefix(_THREAD_CRASH).strip()
            reason = f"thread {name} crashed: {exc_type.__name__}: {unraisable.exc_value}"
            _crashed(reason)


def _crashed(reason: str) -> None:
    on_crash = _on_crash
    if on_crash is not None:
        on_crash(reason)
