"""``lastcall.wsgiref.make_server``: the stdlib's wsgiref server, real signals, real sockets."""

from __future__ import annotations

import signal

import pytest
from conftest import WAIT, refused, wait_session_empty
from test_matrix import WSGI_APP, _get, _Prober, _Request, _wait_in_flight

SERVE = """
import logging, socketserver
from wsgiref.simple_server import WSGIServer
import lastcall
from lastcall.wsgiref import make_server
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")

@lastcall.on_shutdown
def app_hook():
    out("hook:app", os.getpid())

def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        out("thread", threading.current_thread().name)
    return wsgi(environ, start_response)

class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True

server_class = ThreadingWSGIServer if os.environ.get("SERVER") == "threading" else WSGIServer
with make_server("127.0.0.1", 0, app, server_class=server_class) as httpd:
    out("ready", httpd.server_address[1])
    httpd.serve_forever()
"""


def start(spawn, *, slow: float, prestop: float, server: str = "single"):
    env = {"LASTCALL_GRACE": "5", "LASTCALL_PRESTOP_DELAY": str(prestop), "SERVER": server}
    child = spawn(f"SLOW = {slow}\n{WSGI_APP}{SERVE}", env=env, wait_ready=False)
    child.port = int(child.wait_for("ready").split()[1])
    return child


def test_single_threaded_server_answers_its_backlog_on_its_own_thread(spawn):
    """Steps: the stdlib's default, single-threaded WSGIServer; 3 requests of 0.4 s (one in
    the app, two in the listen backlog); SIGTERM; a new connection every 50 ms until the end.

    All 3 get 200, every one answered on the main thread (the one serving_forever: an app
    written for one thread is never called from another); every new connection is refused
    or answered in full, never reset; the hook runs once; the process ends by SIGTERM.
    """
    child = start(spawn, slow=0.4, prestop=0)
    in_flight = [_Request(child.port, "/slow") for _ in range(3)]
    _wait_in_flight(child, child.port, 3)
    child.send(signal.SIGTERM)
    prober = _Prober(child.port)
    prober.start()
    assert child.finish() == -signal.SIGTERM, child.output()
    prober.stop()
    wait_session_empty(child.pid)

    assert [request.result(WAIT) for request in in_flight] == [200] * 3, child.output()
    assert child.lines("thread") == ["thread MainThread"] * 3, child.output()
    assert prober.fates, "no probe was made"
    assert set(prober.fates) <= {"refused", "complete"}, f"{prober.fates}\n{child.output()}"
    assert child.lines("hook:app") == [f"hook:app {child.pid}"]
    assert any("taken from the backlog" in line for line in child.stderr), child.output()


def test_prestop_serves_200s_while_readiness_is_red_then_the_door_closes(spawn):
    """Steps: a ThreadingMixIn server, a 2 s pre-stop delay; 2 requests of 2.5 s; SIGTERM.

    During the delay /readyz is 503 while / is 200 (no hop-by-hop header reached wsgiref,
    which would answer 500) and /livez 200; then new connections are refused; the 2
    requests in flight get 200; the hook runs once; the process ends by SIGTERM.
    """
    child = start(spawn, slow=2.5, prestop=2, server="threading")
    port = child.port
    in_flight = [_Request(port, "/slow") for _ in range(2)]
    _wait_in_flight(child, port, 2)
    child.send(signal.SIGTERM)
    child.wait_for("pre-stop delay: ", stream="stderr")
    assert _get(port, "/readyz") == 503
    assert _get(port, "/") == 200
    assert _get(port, "/livez") == 200
    assert not any("stopped accepting" in line for line in child.stderr), child.output()
    child.wait_for("wsgiref stopped accepting", stream="stderr")
    assert refused(port)
    assert child.finish() == -signal.SIGTERM, child.output()
    wait_session_empty(child.pid)
    assert [request.result(WAIT) for request in in_flight] == [200] * 2, child.output()
    assert child.lines("hook:app") == [f"hook:app {child.pid}"]


def test_bad_input_fails_before_serving():
    from lastcall.wsgiref import make_server

    with pytest.raises(TypeError, match="server_class must be wsgiref"):
        make_server("127.0.0.1", 0, lambda environ, start_response: [], server_class=object)
    with pytest.raises(TypeError, match="WSGI callable"):
        make_server("127.0.0.1", 0, object())
