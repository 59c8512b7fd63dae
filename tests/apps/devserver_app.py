"""A Flask app on Werkzeug's development server, for the dev-server tests.

Environment: PORT, RELOAD ("1" for the reloader), RELOADER_TYPE (Werkzeug's, "auto" if unset),
SLOW (seconds for /slow).
Every line it prints names its pid, so the tests can tell parent from child.
"""

import os
import sys
import time

from flask import Flask

import lastcall
from lastcall.flask import LastCall


def out(*words: object) -> None:
    sys.stdout.write(" ".join(map(str, words)) + f" pid={os.getpid()}\n")
    sys.stdout.flush()


app = Flask(__name__)
LastCall(app)
out("imported")

if os.environ.get("FORK_HELPER") == "1" and os.environ.get("WERKZEUG_RUN_MAIN") == "true":
    helper = os.fork()
    if helper == 0:  # holds every descriptor the serving child had, the way a worker would
        time.sleep(60)
        os._exit(0)
    out("helper forked", helper)


@lastcall.on_shutdown
def close_db() -> None:
    out("hook:close_db")


@lastcall.on_shutdown
def flush_cache() -> None:
    out("hook:flush_cache")


@app.route("/")
def index() -> str:
    return "hi"


@app.route("/slow")
def slow() -> str:
    out("slow started")
    time.sleep(float(os.environ.get("SLOW", "2")))
    return "slow done"


@app.route("/exit")
def hard_exit() -> str:
    out("calling os._exit")
    os._exit(0)


@app.route("/pid")
def pid() -> str:
    return str(os.getpid())


if __name__ == "__main__":
    reload = os.environ.get("RELOAD") == "1"
    app.run(
        host="127.0.0.1",
        port=int(os.environ["PORT"]),
        use_reloader=reload,
        reloader_type=os.environ.get("RELOADER_TYPE", "auto"),
    )
