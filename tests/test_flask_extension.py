"""The Flask extension's shape: config, registration, bad input."""

from __future__ import annotations

import pytest
from flask import Flask

from lastcall import Coordinator
from lastcall.flask import LastCall
from lastcall.wsgi import LastCallMiddleware


@pytest.fixture
def coordinator() -> Coordinator:
    return Coordinator(run_at_exit=False)


def test_init_app_registers_wraps_and_shows_its_defaults(coordinator: Coordinator) -> None:
    app = Flask(__name__)
    extension = LastCall(coordinator=coordinator)
    extension.init_app(app)
    assert app.extensions["lastcall"] is extension
    assert isinstance(app.wsgi_app, LastCallMiddleware)
    assert extension.middleware(app) is app.wsgi_app
    assert {k: v for k, v in app.config.items() if k.startswith("LASTCALL_")} == {
        "LASTCALL_GRACE": None,
        "LASTCALL_PRESTOP_DELAY": None,
        "LASTCALL_REPORT": None,
        "LASTCALL_LIVEZ_PATH": "/livez",
        "LASTCALL_READYZ_PATH": "/readyz",
    }
    assert "app" not in vars(extension)  # the extension never keeps the app


def test_config_wins_over_constructor_defaults(coordinator: Coordinator) -> None:
    app = Flask(__name__)
    app.config["LASTCALL_READYZ_PATH"] = "/ready"
    LastCall(app, coordinator=coordinator, readyz_path="/health/ready", livez_path=None)
    client = app.test_client()
    assert client.get("/ready").json == {"status": "ready"}
    assert client.get("/livez").status_code == 404  # switched off: the app answers
    coordinator.shutdown()
    assert client.get("/ready").status_code == 503


def test_registering_twice_names_the_fix(coordinator: Coordinator) -> None:
    app = Flask(__name__)
    LastCall(app, coordinator=coordinator)
    with pytest.raises(RuntimeError, match="already registered on this Flask app; import and use"):
        LastCall(app, coordinator=coordinator)


@pytest.mark.parametrize(
    ("key", "value", "error", "message"),
    [
        ("LASTCALL_PRESTOP_DELAY", -1, ValueError, "app.config['LASTCALL_PRESTOP_DELAY']: "),
        ("LASTCALL_PRESTOP_DELAY", "soon", TypeError, "must be a number of seconds"),
        ("LASTCALL_GRACE", 0, ValueError, "app.config['LASTCALL_GRACE']: grace must be"),
        ("LASTCALL_READYZ_PATH", "readyz", ValueError, "must be a path starting with '/'"),
    ],
)
def test_bad_config_fails_at_init_app(coordinator, key, value, error, message) -> None:
    app = Flask(__name__)
    app.config[key] = value
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        LastCall(app, coordinator=coordinator)
    assert "lastcall" not in app.extensions


def test_health_path_colliding_with_a_route_fails_at_init_app(coordinator) -> None:
    app = Flask(__name__)

    @app.route("/readyz")
    def mine() -> str:
        return "mine"

    with pytest.raises(
        ValueError, match=r"route '/readyz' \(mine\) collides .*LASTCALL_READYZ_PATH"
    ):
        LastCall(app, coordinator=coordinator)


def test_middleware_of_an_app_without_init_app(coordinator) -> None:
    with pytest.raises(RuntimeError, match="did you forget to call init_app"):
        LastCall(coordinator=coordinator).middleware(Flask(__name__))
