"""The app from the write-up lastcall started from, rewritten the lastcall way.

The original (a Flask app testing ``atexit``) registered three exit handlers
and had a route that calls ``os._exit``. Run it, then stop it any way you
like, with or without the reloader:

    python examples/seed_app.py            # app.run(debug=True): the reloader
    NO_RELOAD=1 python examples/seed_app.py
    kill -TERM <pid>   /   Ctrl-C   /   curl localhost:5000/user/Amy

The hooks print in reverse order of registration, once, in the process that
serves requests; /slow shows a request in flight finishing during the stop.
"""

import os
import time

from flask import Flask

import lastcall
from lastcall.flask import LastCall

app = Flask(__name__)
LastCall(app)


@lastcall.on_shutdown
def shutdown() -> None:
    print("----------------------------------", flush=True)
    print(f"Ready to close... (pid {os.getpid()})", flush=True)
    time.sleep(1)
    print("You can doing some action in here.", flush=True)
    print("----------------------------------", flush=True)


@lastcall.on_shutdown
def shutdown2() -> None:
    print("--------------Second start-------------", flush=True)
    time.sleep(1)
    print("--------------Second end---------------", flush=True)


@lastcall.on_shutdown
def shutdown3() -> None:
    print("-----------Third Start-----------------", flush=True)
    time.sleep(1)
    print("-----------Third end-------------------", flush=True)


@app.route("/")
def hello() -> str:
    return "Hi"


@app.route("/slow")
def slow() -> str:
    time.sleep(float(os.environ.get("SLOW_SECONDS", "2")))
    return "done"


@app.route("/user/<username>")
def user(username: str) -> str:
    if username == "Tom":
        return f"Hello {username}"
    print("I will use OS EXIT!! Hahahaha", flush=True)
    os._exit(0)  # no hook can run after this: lastcall.last_resort() is for that


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "5000"))
    app.run(host="127.0.0.1", port=port, debug=not os.environ.get("NO_RELOAD"))
