"""Queue-worker adapters: one module per framework, each reached only from its public face.

And what more than one of them uses: the kernel's signal at a parent's death.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see _hooks)
if TYPE_CHECKING:
    from typing import Any

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# libc's prctl, looked up once in the process that forks (load_prctl), not in each child:
# ctypes makes the function object on first use, which would cost every child page faults.
_prctl: Any = None


def load_prctl() -> bool:
    """Look up libc's ``prctl`` (Linux), ahead of the forks that use it; whether there is one."""
    global _prctl  # noqa: PLW0603  # loaded once per process
    if _prctl is None and sys.platform == "linux":
        import ctypes  # noqa: PLC0415  # only where prctl exists

        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    return _prctl is not None


def signal_when_parent_dies(signum: int) -> bool:
    """``PR_SET_PDEATHSIG``: the kernel sends ``signum`` here as the parent ends.

    Strictly, as the parent's thread that forked this process ends, and again for each
    thread of the parent it is then handed to. False where ``load_prctl`` found none.
    """
    if _prctl is None:
        return False
    _prctl(_PR_SET_PDEATHSIG, signum)
    return True
