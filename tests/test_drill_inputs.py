"""Every input is checked before anything starts: one line naming the fix, exit status 2.

No server starts in these tests but the one that sends a body of raw bytes:
each checks that the drill never said "starting", and that the refusal
came at once rather than after a drill, a hang or a start-up timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest
from conftest import live_processes_in_session
from test_drill import started_pids

from lastcall.testing import drill as drill_function

if TYPE_CHECKING:
    from pathlib import Path

QUICK = 20.0  # seconds: an interpreter's start-up on a busy machine; no drill runs


def refused(tmp_path: Path, *args: str | bytes) -> str:
    """Run the command; it must refuse at once, in one line, before starting anything."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LASTCALL_")}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "lastcall", "drill", *args],
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=QUICK,
        check=False,
    )
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 2, stderr
    assert time.monotonic() - started < QUICK
    assert "Traceback" not in stderr
    assert "starting" not in stderr  # nothing started
    errors = [line for line in stderr.splitlines() if line.startswith("lastcall: error:")]
    assert len(errors) == 1, stderr
    assert stderr.strip() == errors[0]
    return errors[0]


# ---------------------------------------------------------------- outputs


@pytest.mark.parametrize("option", ["--json", "--html"])
def test_an_output_in_a_directory_that_does_not_exist(tmp_path, option):
    line = refused(tmp_path, option, str(tmp_path / "nowhere" / "out"))
    assert f"there is no directory {tmp_path / 'nowhere'}" in line


def test_an_output_that_is_a_directory(tmp_path):
    line = refused(tmp_path, "--json", str(tmp_path))
    assert "is a directory" in line


def test_an_output_where_no_file_can_be_made(tmp_path):
    line = refused(tmp_path, "--html", "/proc/drill.html")  # not even root makes files there
    assert "--html /proc/drill.html cannot be written" in line


def test_checking_an_output_leaves_nothing_behind(tmp_path):
    """The output's directory is tried with a file of its own, removed at once."""
    (tmp_path / "kept.json").write_text("as it was")
    line = refused(
        tmp_path, "--json", "kept.json", "--html", "new.html", "--method", "GE T"
    )  # refused for the method, after the outputs were checked
    assert "--method" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.json"]
    assert (tmp_path / "kept.json").read_text() == "as it was"


# ---------------------------------------------------------------- the body


def test_data_file_a_fifo_does_not_hang(tmp_path):
    os.mkfifo(tmp_path / "body")
    line = refused(tmp_path, "--data-file", str(tmp_path / "body"))
    assert "is not a regular file" in line


def test_data_file_a_device_is_not_read(tmp_path):
    line = refused(tmp_path, "--data-file", "/dev/zero")
    assert "--data-file /dev/zero is not a regular file" in line


def test_data_file_too_large(tmp_path):
    big = tmp_path / "big"
    with big.open("wb") as out:
        out.truncate(17 * 1024 * 1024)  # sparse: nothing written
    line = refused(tmp_path, "--data-file", str(big))
    assert f"is {17 * 1024 * 1024} bytes; the drill sends at most" in line


WRITES_BODY = """
import os

def app(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    with open(os.path.join(os.path.dirname(__file__), "bodies"), "ab") as out:
        out.write(body.hex().encode() + b"\\n")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


def test_data_that_is_not_utf8_is_sent_as_given(tmp_path):
    """Bytes on the command line that are not UTF-8 reach the app as they were given."""
    (tmp_path / "bodyapp.py").write_text(WRITES_BODY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LASTCALL_")}
    args = ["bodyapp:app", "--method", "POST", "--requests", "2", "--request-seconds", "0.2"]
    result = subprocess.run(
        [sys.executable, "-m", "lastcall", "drill", *args, "--data", b"\xff\xfeok"],
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=90,
        check=False,
    )
    stderr = result.stderr.decode(errors="replace")
    for pid in started_pids(stderr):
        assert live_processes_in_session(pid) == []
    assert "Traceback" not in stderr
    assert result.returncode == 0, stderr + result.stdout.decode(errors="replace")
    assert set((tmp_path / "bodies").read_text().split()) == {"fffe6f6b"}


# ---------------------------------------------------------------- method, headers, path


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--method", "GE T"], "--method 'GE T' is not an HTTP method"),
        (["--header", "X-A: b\r\nX-B: c"], "holds a line break"),
        (["--header", "X A: b"], "--header name 'X A' is not a header name"),
        (["--header", "X-A: caf\u00e9"], "non-ASCII"),
        (["--header", "Content-Length: 5"], "does not match the body, which is 0 bytes"),
        (
            ["--header", "Content-Length: 5", "--data", "abc"],
            "does not match the body, which is 3 bytes",
        ),
        (["--header", "Transfer-Encoding: chunked", "--data", "x"], "Transfer-Encoding"),
        (["--path", "http://other-host:9/x"], "is not a path on the app's host"),
        (["--path", "//other-host/x"], "is not a path on the app's host"),
        (["--path", "hello"], "is not a path on the app's host"),
        (["--path", "/a b"], "percent-encode it"),
    ],
    ids=[
        "method with a space",
        "crlf in a header",
        "header name with a space",
        "non-ascii header value",
        "content-length without a body",
        "content-length not the body's",
        "transfer-encoding",
        "path to another host",
        "network-path reference",
        "path without a slash",
        "path with a space",
    ],
)
def test_each_request_input_is_refused_before_anything_starts(tmp_path, args, expected):
    assert expected in refused(tmp_path, *args)


def test_a_content_length_that_matches_the_body_is_allowed(tmp_path):
    """Not refused for the header: refused later, for the method, still before anything."""
    args = ["--header", "Content-Length: 3", "--data", "abc", "--method", "GE T"]
    assert "--method" in refused(tmp_path, *args)


def test_the_function_raises_value_error_with_the_same_line(tmp_path):
    with pytest.raises(ValueError, match="is not a path on the app's host"):
        drill_function(path="http://other-host/", directory=tmp_path)
    with pytest.raises(ValueError, match="is not an HTTP method"):
        drill_function(method="GE T", directory=tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written
