"""Every input a drill takes, checked before anything starts: one line naming the fix.

What each request carries (``--method``, ``--path``, ``--header``, ``--data``,
``--data-file``) and where the results go (``--json``, ``--html``). A
request the drill could not send, or that would go somewhere other than
the app, is refused here rather than found out by a client's traceback,
a hang, or a misleading "did not answer" after the start-up timeout; an
output that cannot be written is refused before the drill runs, not after.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from lastcall.cli.clients import Ask

MOST_BODY = 16 * 1024 * 1024  # bytes: a request body the drill sends many times over
# RFC 9110's token: a method and a header name.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A header value the drill sends: visible ASCII, spaces and tabs (httpx sends ASCII only).
_VALUE = re.compile(r"[\t\x20-\x7e]*")
_WORD_CHARS = "letters, digits and !#$%&'*+-.^_`|~"


class InputError(Exception):
    """One input the drill cannot use: what is wrong and how to fix it, in one line."""


def check_ask(ask: Ask) -> None:
    """The method, path, headers and body each request carries."""
    check_method(ask.method)
    check_path(ask.path)
    check_headers(ask.headers, ask.body)
    if ask.body is not None and len(ask.body) > MOST_BODY:
        raise InputError(
            f"--data is {len(ask.body)} bytes; the drill sends at most {MOST_BODY} bytes a "
            "request: give a smaller body"
        )


def check_method(method: str) -> None:
    """An HTTP method is a token: ``GET``, ``POST``, ``PURGE``; no spaces."""
    if not _TOKEN.fullmatch(method):
        raise InputError(
            f"--method {method!r} is not an HTTP method (one word of {_WORD_CHARS}); "
            "write e.g. --method POST"
        )


def check_path(path: str) -> None:
    """A path on the app's own host: it starts with one ``/``, no scheme, no host."""
    if not path.startswith("/") or path.startswith("//"):
        raise InputError(
            f"--path {path!r} is not a path on the app's host: write it from its first '/', "
            "as in --path /hello?x=1 (the drill sends every request to the app it started)"
        )
    if any(char <= " " or char == "\x7f" for char in path):
        raise InputError(
            f"--path {path!r} holds a space or a control character: percent-encode it "
            "(a space is %20)"
        )


def check_headers(headers: tuple[tuple[str, str], ...], body: bytes | None) -> None:
    """Valid names and values, and no framing header that contradicts the body."""
    for name, value in headers:
        if not _TOKEN.fullmatch(name):
            raise InputError(
                f"--header name {name!r} is not a header name (one word of {_WORD_CHARS}); "
                "write it as 'Name: value'"
            )
        if not _VALUE.fullmatch(value):
            raise InputError(
                f"--header {name}'s value {value!r} holds a line break, a control character or "
                "a non-ASCII character: give printable ASCII (percent-encode the rest)"
            )
        lowered = name.lower()
        if lowered == "transfer-encoding":
            raise InputError(
                "--header Transfer-Encoding: the drill frames each body itself (with "
                "Content-Length); leave that header out"
            )
        if lowered == "content-length":
            length = len(body or b"")
            if value.strip() != str(length):
                raise InputError(
                    f"--header 'Content-Length: {value}' does not match the body, which is "
                    f"{length} bytes (--data or --data-file): leave Content-Length out, the "
                    "drill sets it"
                )


def data_bytes(data: str) -> bytes:
    """``--data`` as the bytes given on the command line, whatever their encoding."""
    return os.fsencode(data)  # the inverse of how Python decoded argv: bytes kept as given


def read_data_file(path: Path) -> bytes:
    """``--data-file``: a readable regular file of at most :data:`MOST_BODY` bytes."""
    try:
        # Non-blocking: a FIFO swapped in after a check would otherwise hang the open.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise InputError(
            f"--data-file {path} cannot be read ({exc.strerror}); give a file you can read"
        ) from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InputError(
                f"--data-file {path} is not a regular file (a pipe or a device never ends or "
                "changes between requests): save the body to a file and give that"
            )
        if info.st_size > MOST_BODY:
            raise InputError(
                f"--data-file {path} is {info.st_size} bytes; the drill sends at most "
                f"{MOST_BODY} bytes a request: give a smaller body"
            )
        try:
            return file.read(MOST_BODY + 1)
        except OSError as exc:
            raise InputError(f"--data-file {path} cannot be read ({exc.strerror})") from None


def check_output(option: str, path: Path) -> None:
    """Refuse a ``--json``/``--html`` path that cannot be written, leaving no file behind."""
    directory = path.parent
    if path.is_dir():
        raise InputError(f"{option} {path} is a directory; give a file path, e.g. {path}/drill")
    if not directory.is_dir():
        raise InputError(
            f"{option} {path}: there is no directory {directory}; create it or give another path"
        )
    if path.exists() and not path.is_file():
        raise InputError(f"{option} {path} is not a regular file; give a file path")
    try:
        if path.exists():  # opened for appending, nothing written: its content stays
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        # The file is written beside itself, then renamed: a file must be creatable there.
        with tempfile.NamedTemporaryFile(dir=directory, prefix=f".{path.name}.", suffix=".tmp"):
            pass
    except OSError as exc:
        raise InputError(
            f"{option} {path} cannot be written ({exc.strerror}); give a path you can write"
        ) from None


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all: a file beside it, then renamed."""
    with tempfile.NamedTemporaryFile(
        "w",
        encoding="utf-8",
        dir=path.parent,
        prefix=f".{path.name}.",
        suffix=".tmp",
        delete=False,
    ) as out:
        out.write(text)
    try:
        os.chmod(out.name, 0o644 & ~_umask())  # noqa: PTH101  # as open() would have made it
        os.replace(out.name, path)  # noqa: PTH105
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(out.name)  # noqa: PTH108
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
