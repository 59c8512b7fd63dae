"""``python -m lastcall.uvicorn``: uvicorn's ``Config``, whose app is always in lastcall's wrapper.

``lastcall.uvicorn`` has ``uvicorn.main.run`` build its configuration with
this class (the name ``Config`` in ``uvicorn/main.py``, as ``Multiprocess``
is replaced there). ``Config.load`` (``uvicorn/config.py``, public) runs
where the app is served: in the one process, or in each worker that
``--workers N`` or ``--reload`` spawns, which gets the configuration
pickled, and so this class. Once uvicorn has loaded the app (called its
factory, put its own middlewares around it), the whole is put in
``lastcall.asgi.LastCallMiddleware``, unless the app is one already: an app
nobody wrapped is drained as one the user wrapped, and nothing is wrapped twice.

Imported only where uvicorn is installed (``lastcall.asgi`` never imports it).
"""

from __future__ import annotations

from typing import Any

from uvicorn.config import Config as UvicornConfig

import lastcall
from lastcall.asgi import LastCallMiddleware

__all__ = ("Config", "wrapped")

_UVICORN_MIDDLEWARES = "uvicorn.middleware."  # ProxyHeaders, WSGI, ASGI2, MessageLogger


def wrapped(loaded: Any) -> Any:  # noqa: ANN401  # whatever uvicorn loaded
    """``loaded`` (the app in uvicorn's middlewares) in ``LastCallMiddleware``, unless already."""
    inner = loaded
    while type(inner).__module__.startswith(_UVICORN_MIDDLEWARES):
        inner = getattr(inner, "app", None)  # each keeps the app it wraps as .app
    if isinstance(inner, LastCallMiddleware):
        return loaded
    return LastCallMiddleware(loaded, coordinator=lastcall.default)


class Config(UvicornConfig):
    """uvicorn's configuration; the app it loads is drained by lastcall."""

    def load(self) -> None:
        super().load()
        self.loaded_app = wrapped(self.loaded_app)
