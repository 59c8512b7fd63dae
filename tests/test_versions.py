"""Version gates: each adapter names the server versions it is tested with.

The version is faked, not the server: a ``.dist-info`` of our own ahead on
``PYTHONPATH`` makes the installed server report another version to
``importlib.metadata`` while the real server runs.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import pytest
from conftest import WAIT, free_port, wait_session_empty
from test_matrix import ASGI, ASGI_APP, FLASK_MAIN, LAUNCH, PACKAGE, WAITRESS_MAIN, WSGI_APP

from lastcall._servers import versions

GATES = {
    "werkzeug": versions.WERKZEUG,
    "gunicorn": versions.GUNICORN,
    "gunicorn-gthread": versions.GUNICORN,
    "waitress": versions.WAITRESS,
    "uvicorn": versions.UVICORN,
    "hypercorn": versions.HYPERCORN,
}


def _older(tested: versions.Tested) -> str:
    """A release just below the tested range: ``24.1`` -> ``24.0.0``, ``3.0`` -> ``2.99.0``."""
    major, minor = (int(n) for n in tested.oldest.split("."))
    return f"{major}.{minor - 1}.0" if minor else f"{major - 1}.99.0"


@pytest.mark.parametrize(
    "tested",
    [*dict.fromkeys(GATES.values()), versions.GUNICORN_GTHREAD, versions.GUNICORN_ASGI],
    ids=str,
)
def test_gate_warns_below_the_range_and_informs_above_it(tested: versions.Tested, caplog) -> None:
    """An older release may lack what the adapter uses: WARNING. A newer one is how every
    release begins its life: one INFO line saying what to do if a stop misbehaves."""
    caplog.set_level(logging.INFO, logger="lastcall")
    assert tested.check(tested.oldest) is None
    assert tested.check(f"{tested.newest}.9") is None
    assert caplog.records == []
    if tested.refuse_below == tested.oldest:  # known not to work below the range: refused
        with pytest.raises(RuntimeError, match=f"install {tested.distribution}>="):
            tested.check(_older(tested))
        newer = tested.check("99.0.0")
        assert newer is not None
        assert [r.levelno for r in caplog.records] == [logging.INFO]
        return
    older = tested.check(_older(tested))
    assert older is not None
    assert tested.range in older
    assert tested.at_risk in older
    newer = tested.check("99.0.0")
    assert newer is not None
    assert tested.range in newer
    assert f"'{tested.distribution}<99.0'" in newer
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert levels == [(logging.WARNING, older), (logging.INFO, newer)]


def test_gthread_below_24_is_refused() -> None:
    with pytest.raises(RuntimeError, match=r"gunicorn 23\.0\.0 is not supported.*gunicorn>=24\.0"):
        versions.GUNICORN_GTHREAD.check("23.0.0")


def _fake_version(directory: Path, distribution: str, version: str) -> Path:
    fake = directory / "fake-versions"
    info = fake / f"{distribution}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n"
    )
    return fake


@pytest.mark.parametrize("server", list(GATES))
def test_real_server_says_so_at_start_up(spawn, server: str) -> None:
    """Steps: start the real server with its version faked just below the tested range;
    one WARNING line names the range; the server still serves and stops by the signal."""
    pytest.importorskip(PACKAGE.get(server, server))
    directory = Path(spawn.script_dir)
    (directory / "webapp.py").write_text(f"SLOW = 0\n{ASGI_APP if server in ASGI else WSGI_APP}")
    (directory / "flask_main.py").write_text(FLASK_MAIN)
    (directory / "waitress_main.py").write_text(WAITRESS_MAIN)
    tested = GATES[server]
    older = _older(tested)
    fake = _fake_version(directory, tested.distribution, older)
    env = {"PYTHONPATH": f"{fake}:{directory}"}
    child = spawn("", argv=LAUNCH[server](free_port()), env=env, wait_ready=False)
    child.wait_for(
        f"{tested.distribution} {older} is older than the versions lastcall is tested with "
        f"({tested.range})",
        stream="stderr",
    )
    child.send(signal.SIGTERM)
    child.finish(WAIT)
    wait_session_empty(child.pid)  # hypercorn's multiprocessing helpers end after its master


def test_gunicorn_gthread_below_24_refuses_to_start(spawn) -> None:
    pytest.importorskip("gunicorn")
    directory = Path(spawn.script_dir)
    (directory / "webapp.py").write_text(f"SLOW = 0\n{WSGI_APP}")
    fake = _fake_version(directory, "gunicorn", "23.0.0")
    env = {"PYTHONPATH": f"{fake}:{directory}"}
    child = spawn("", argv=LAUNCH["gunicorn-gthread"](free_port()), env=env, wait_ready=False)
    assert child.finish(WAIT) != 0
    wait_session_empty(child.pid)
    assert "gunicorn>=24.0" in child.output()
