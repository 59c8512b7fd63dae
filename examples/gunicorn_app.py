"""A WSGI app for examples/gunicorn.conf.py; its hooks run in each worker."""

import os
import time
from collections.abc import Callable
from typing import Any

import lastcall


@lastcall.on_shutdown
def close_pool() -> None:
    print(f"worker {os.getpid()}: pool closed")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    if environ["PATH_INFO"] == "/slow":
        time.sleep(1)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"served by {os.getpid()}\n".encode()]
