"""Django middleware: ``/livez`` and ``/readyz`` before URL routing, requests in flight counted.

Put first in ``settings.MIDDLEWARE`` by the ``lastcall.django`` app, so a
health probe costs two string compares and never reaches the project's
middleware or URLconf. The answers are those of the WSGI and ASGI
middlewares (``lastcall._health``): ``/readyz`` turns 503 the moment the stop
begins, ``/livez`` stays 200 while the process can answer.

No ``Connection: close`` is added while stopping: runserver's wsgiref
handler refuses hop-by-hop headers from the app, and each server closes its
connections its own way during the drain. A request counts until the view
(and the middleware below this one) returned its response; a streamed
response's body is the server's to finish.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpResponse

import lastcall
from lastcall._health import ALIVE, HEADERS, READY, HealthPaths, stopping_body
from lastcall.django.apps import options

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from django.http import HttpRequest, HttpResponseBase

__all__ = ("LastCallMiddleware",)


class LastCallMiddleware(HealthPaths):
    """Answer the health paths, count the rest in flight; sync and async alike."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        checked = options()
        self._get_response = get_response
        self._livez_path = checked.livez_path
        self._readyz_path = checked.readyz_path
        self._stopping = lastcall.default.stopping
        self._live: set[HttpRequest] = set()  # set.add/discard are atomic: no lock
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        """Health first; then the project's middleware and views, counted."""
        if self._async:
            return self._acall(request)
        health = self._health(request)
        if health is not None:
            return health
        self._live.add(request)
        try:
            response: HttpResponseBase = self._get_response(request)
        finally:
            self._live.discard(request)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        health = self._health(request)
        if health is not None:
            return health
        self._live.add(request)
        try:
            response: HttpResponseBase = await self._get_response(request)
        finally:
            self._live.discard(request)
        return response

    def _health(self, request: HttpRequest) -> HttpResponse | None:
        path = request.path_info
        if path == self._readyz_path:
            if self._stopping.is_set():
                return _json(request, 503, stopping_body(self.in_flight))
            return _json(request, 200, READY)
        if path == self._livez_path:
            return _json(request, 200, ALIVE)
        return None


def _json(request: HttpRequest, status: int, body: bytes) -> HttpResponse:
    response = HttpResponse(b"" if request.method == "HEAD" else body, status=status)
    for name, value in HEADERS:
        response[name] = value
    response["Content-Length"] = str(len(body))
    return response
