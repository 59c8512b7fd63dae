# gunicorn -c examples/gunicorn.conf.py examples.gunicorn_app:app
#
# An existing gunicorn configuration that adds lastcall: one import line.
# With no configuration of your own, `gunicorn -c python:lastcall.gunicorn app:app`
# does the same. If you define one of lastcall's hooks here (post_worker_init,
# when_ready, on_exit ...), call ours from yours, e.g. lastcall.gunicorn.on_exit(server).
#
# The grace period is gunicorn's graceful_timeout: lastcall's hooks in each worker
# get graceful_timeout minus 1 s. LASTCALL_PRESTOP_DELAY keeps the workers serving
# (with /readyz answering 503) for that long after SIGTERM, so a load balancer
# polling /readyz stops sending traffic before the port closes.

import lastcall
from lastcall.gunicorn import *  # noqa: F403

bind = "127.0.0.1:8000"
workers = 2
worker_class = "gthread"
threads = 4
graceful_timeout = 30  # Kubernetes: terminationGracePeriodSeconds a little above this


@lastcall.on_shutdown
def say_goodbye() -> None:
    # Registered in the master (this file is read there): runs once, when the master exits.
    print("master: all workers stopped")
