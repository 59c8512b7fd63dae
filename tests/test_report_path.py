"""Where the report may be written: refused at install() if it cannot be, never a stuck stop.

The report is written to a temporary file and renamed over its path, so
whatever is at the path is replaced: only a regular file (or nothing yet) may
be there. What cannot be written is refused in one line where it is given;
what goes wrong at stop time anyway is logged and kept, and the stop ends.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import sys
import time
from typing import TYPE_CHECKING

import pytest
from conftest import WAIT, free_port

from lastcall import Coordinator

if TYPE_CHECKING:
    from pathlib import Path

PRELUDE = """
import logging, os, signal, sys, time
import lastcall
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")

def out(*words):
    sys.stdout.write(" ".join(map(str, words)) + "\\n")
    sys.stdout.flush()
"""

BLOCK = """
out("ready")
while True:
    time.sleep(0.05)
"""


def _character_device(tmp_path: Path) -> Path:
    """A node like /dev/null, made in tmp_path: what a report must never replace."""
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs root (CAP_MKNOD)")
    return node


def _fifo(tmp_path: Path) -> Path:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    return fifo


def _socket(tmp_path: Path) -> Path:
    path = tmp_path / "sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()  # the socket file stays
    return path


def _directory(tmp_path: Path) -> Path:
    directory = tmp_path / "reports"
    directory.mkdir()
    return directory


def _link_to_device(tmp_path: Path) -> Path:
    link = tmp_path / "report.json"
    link.symlink_to(_character_device(tmp_path))
    return link


NOT_FILES = {
    "character device": (_character_device, "is a character device, not a regular file"),
    "FIFO": (_fifo, "is a FIFO, not a regular file"),
    "socket": (_socket, "is a socket, not a regular file"),
    "directory": (_directory, "is a directory, not a regular file"),
    "link to a device": (_link_to_device, "is a character device"),
}


@pytest.mark.parametrize("kind", NOT_FILES)
def test_a_path_that_is_not_a_regular_file_is_refused_at_install(tmp_path, kind):
    """LASTCALL_REPORT=/dev/null (as root) replaced the device node with a 0600 file."""
    make, words = NOT_FILES[kind]
    path = make(tmp_path)
    before = os.lstat(path)
    with pytest.raises(ValueError, match=r"^report=") as refused:
        Coordinator(run_at_exit=False).install(report=str(path))
    message = str(refused.value)
    assert words in message
    assert "\n" not in message
    assert "choose a file path" in message
    after = os.lstat(path)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/proc/self/status", "cannot be written: /proc has no room for files"),
        ("/proc/{pid}/report.json", "cannot be written: /proc has"),
        ("/sys/kernel/report.json", "cannot be written: /sys has"),
        ("{tmp}/report\0.json", "cannot contain a NUL byte"),
        ("{tmp}/report-\ud800.json", "cannot be used: 'utf-8' codec can't encode"),
        ("{tmp}/reports/", "names a directory, not a file"),
        ("{tmp}/" + "r" * 250 + ".json", "file name too long"),
        ("{tmp}/plain.txt/report.json", "is inside something that is not a directory"),
    ],
    ids=[
        "proc file",
        "proc dir",
        "sys",
        "NUL",
        "surrogate",
        "trailing slash",
        "long",
        "under file",
    ],
)
def test_paths_no_report_can_be_written_to_are_refused_at_install(tmp_path, path, words):
    (tmp_path / "plain.txt").write_text("not a directory")
    path = path.replace("{tmp}", str(tmp_path))
    with pytest.raises(ValueError, match=r"^report=") as refused:
        Coordinator(run_at_exit=False).install(report=path)
    assert words in str(refused.value)
    assert "\n" not in str(refused.value)


def test_the_environment_variable_is_named_and_pid_expanded(tmp_path, monkeypatch):
    (tmp_path / f"report-{os.getpid()}.json").mkdir()
    monkeypatch.setenv("LASTCALL_REPORT", str(tmp_path / "report-{pid}.json"))
    with pytest.raises(ValueError, match=r"^LASTCALL_REPORT=") as refused:
        Coordinator(run_at_exit=False).install()
    assert f"report-{os.getpid()}.json) is a directory" in str(refused.value)


def test_regular_files_links_to_them_and_new_paths_are_accepted(tmp_path):
    existing = tmp_path / "old.json"
    existing.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(existing)
    for path in (existing, link, tmp_path / "new" / "deeper" / "report-{pid}.json"):
        Coordinator(run_at_exit=False).install(report=str(path)).uninstall()


def test_a_command_line_refuses_a_fifo_in_one_line(spawn, tmp_path):
    """``python -m lastcall.waitress`` with LASTCALL_REPORT at a FIFO: status 1, one
    line, no traceback, never serving (it served, and replaced the FIFO at its stop)."""
    pytest.importorskip("waitress")
    fifo = _fifo(tmp_path)
    (tmp_path / "webapp.py").write_text(
        "def wsgi(environ, start_response):\n    start_response('200 OK', [])\n    return [b'ok']\n"
    )
    argv = [sys.executable, "-m", "lastcall.waitress", f"--listen=127.0.0.1:{free_port()}"]
    child = spawn(
        "", argv=[*argv, "webapp:wsgi"], env={"LASTCALL_REPORT": str(fifo)}, wait_ready=False
    )
    assert child.finish() == 1, child.output()
    errors = [line for line in child.stderr if line.startswith("Error: lastcall:")]
    assert len(errors) == 1, child.output()
    assert f"LASTCALL_REPORT={str(fifo)!r} is a FIFO" in errors[0]
    assert "Traceback" not in child.output()
    assert "Serving on" not in child.output()
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


# ---------------------------------------------------------------- at stop time


def test_a_fifo_that_took_the_path_after_install_is_left_alone(spawn, tmp_path):
    """Steps: install with a free path; a FIFO takes it; SIGTERM. The stop logs that it
    could not write the report, the FIFO stays, and the process dies by the signal."""
    report = tmp_path / "report.json"
    child = spawn(
        PRELUDE + f"lastcall.install(report={str(report)!r})\nos.mkfifo({str(report)!r})\n" + BLOCK
    )
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert stat.S_ISFIFO(os.lstat(report).st_mode)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report")] == []
    child.wait_for("could not write the report", stream="stderr")
    assert "is a FIFO, not a regular file" in child.output()


FAILING_WRITE = """
def broken(self):
    raise RuntimeError("the report cannot be made")

lastcall.Report.to_dict = broken  # any exception, not only an OSError
lastcall.install(report={report!r})
lastcall.on_shutdown(lambda: out("hook:ran"), name="hook")
"""


@pytest.mark.parametrize("ending", ["normal exit", "shutdown()"])
def test_any_error_writing_the_report_is_logged_kept_and_the_stop_ends(spawn, tmp_path, ending):
    """An exception other than OSError escaped the write: a normal exit then hung for
    the grace and a second more, and ``shutdown()`` raised it. Now it is logged, kept
    in ``report.write_error``, and the stop ends as it would have."""
    body = FAILING_WRITE.format(report=str(tmp_path / "report.json"))
    if ending == "shutdown()":
        body += 'out("write_error", lastcall.shutdown().write_error)\n'
    body += 'out("ready")\n'
    child = spawn(PRELUDE + body)
    started = time.monotonic()
    assert child.finish(timeout=WAIT) == 0, child.output()
    assert time.monotonic() - started < WAIT
    child.wait_for("hook:ran")
    child.wait_for("could not write the report", stream="stderr")
    assert "the report cannot be made" in child.output()
    if ending == "shutdown()":
        line = child.wait_for("write_error")
        assert line == "write_error RuntimeError: the report cannot be made"
    assert not (tmp_path / "report.json").exists()


def test_the_stop_writes_the_report_while_another_thread_holds_the_import_lock(spawn, tmp_path):
    """Writing the report imported json, tempfile and pathlib at stop time; a thread
    holding the import lock then held the stop. Now they are imported at install()."""
    report = tmp_path / "report.json"
    child = spawn(
        PRELUDE
        + f"""
import _imp, threading
assert "json" not in sys.modules, "the app imported json: this test would prove nothing"
lastcall.install(report={str(report)!r})
held = threading.Event()

def hold_the_import_lock():
    _imp.acquire_lock()
    held.set()
    time.sleep(3600)

threading.Thread(target=hold_the_import_lock, daemon=True).start()
held.wait()
"""
        + BLOCK
    )
    child.send(signal.SIGTERM)
    assert child.finish() == -signal.SIGTERM, child.output()
    assert json.loads(report.read_text())["trigger"] == "SIGTERM"


def test_import_lastcall_imports_nothing_for_the_report_and_install_imports_it_all(spawn, tmp_path):
    """``import lastcall`` stays cheap with LASTCALL_REPORT set; ``install()`` imports what
    writing the report needs, so the stop imports nothing."""
    child = spawn(
        """
import sys
import lastcall
out = lambda *words: print(*words, flush=True)
out("imported", *sorted({"json", "pathlib", "tempfile"} & set(sys.modules)))
lastcall.install()
out("installed", *sorted({"json", "pathlib", "tempfile"} & set(sys.modules)))
lastcall.uninstall()
out("ready")
""",
        env={"LASTCALL_REPORT": str(tmp_path / "report-{pid}.json")},
    )
    assert child.finish() == 0, child.output()
    assert child.lines("imported") == ["imported"]
    assert child.lines("installed") == ["installed json pathlib"]
