"""Celery's demo for the worker drill: ``celery -A lastcall.cli.demo_celery worker``.

The task is a ``shared_task``, so a user's own worker runs it too when it
imports this module (``--cmd 'celery -A tasks -b {broker} worker -I
lastcall.cli.demo_celery'``), acknowledged late with ``--acks-late`` there
too (the task's own ``acks_late``); the app below is made only where the
drill starts the demo worker itself, with ``LastCall(app)`` unless ``--plain``.
"""

from __future__ import annotations

import os

from celery import Celery, shared_task

from lastcall.cli import demo_jobs


@shared_task(  # type: ignore[untyped-decorator]
    name=demo_jobs.CELERY_TASK, acks_late=os.environ.get(demo_jobs.ACKS_LATE) == "1"
)
def work(n: int, seconds: float, again: float) -> int:
    """The demo job, as a Celery task."""
    return demo_jobs.work(n, seconds, again)


if os.environ.get(demo_jobs.DEMO) == "1":
    app = Celery("lastcall-drill", broker=os.environ[demo_jobs.BROKER])
    app.conf.task_default_queue = os.environ[demo_jobs.QUEUE]
    app.conf.broker_connection_retry_on_startup = True
    if os.environ.get(demo_jobs.PLAIN) != "1":
        from lastcall.celery import LastCall

        LastCall(app)
