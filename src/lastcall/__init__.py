"""Graceful shutdown for Python services.

One coordinator per process turns every way the process can end into one
ordered, time-boxed, exactly-once shutdown, and reports what it did::

    import lastcall

    lastcall.install()              # SIGTERM, SIGINT, SIGHUP and normal exit

    @lastcall.on_shutdown
    def close_pool() -> None: ...

Each public name is imported on first use: ``import lastcall`` alone loads
nothing else (a library may import it for ``busy`` or ``stopping`` in an
app that never installs it), and ``install()`` loads what a stop needs.
"""

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see _hooks)
if TYPE_CHECKING:
    from lastcall._config import Settings
    from lastcall._coordinator import Coordinator
    from lastcall._default import (
        busy,
        default,
        install,
        last_resort,
        on_shutdown,
        set_not_ready,
        set_ready,
        shutdown,
        stopping,
        trigger,
        uninstall,
        unregister,
        use_loop,
    )
    from lastcall._hooks import PHASES, Hook, Phase
    from lastcall._report import HookResult, Report
    from lastcall._stoptoken import StopToken
del TYPE_CHECKING

__all__ = (
    "PHASES",
    "Coordinator",
    "Hook",
    "HookResult",
    "Phase",
    "Report",
    "Settings",
    "StopToken",
    "busy",
    "default",
    "install",
    "last_resort",
    "on_shutdown",
    "set_not_ready",
    "set_ready",
    "shutdown",
    "stopping",
    "trigger",
    "uninstall",
    "unregister",
    "use_loop",
)

_MODULE_OF = {
    "PHASES": "_hooks",
    "Coordinator": "_coordinator",
    "Hook": "_hooks",
    "HookResult": "_report",
    "Phase": "_hooks",
    "Report": "_report",
    "Settings": "_config",
    "StopToken": "_stoptoken",
}


def __getattr__(name: str) -> object:
    """Import a public name's module on first use, then keep the name here."""
    if name not in __all__:
        raise AttributeError(f"module 'lastcall' has no attribute {name!r}")
    module = __import__(f"lastcall.{_MODULE_OF.get(name, '_default')}", fromlist=[name])
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
