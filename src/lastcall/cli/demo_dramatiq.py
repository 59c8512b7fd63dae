"""Dramatiq's demo for the worker drill: ``python -m lastcall.dramatiq lastcall.cli.demo_dramatiq``.

The actor is declared on the broker set when this module is imported: the
demo's own (Redis, or RabbitMQ for an AMQP URL) where the drill starts the demo worker itself (with
``lastcall.dramatiq.LastCall()`` unless ``--plain``), or a user's, set by
their module named before this one (``--cmd '{python} -m lastcall.dramatiq
tasks lastcall.cli.demo_dramatiq'``).
"""

from __future__ import annotations

import os

import dramatiq

from lastcall.cli import demo_jobs

if os.environ.get(demo_jobs.DEMO) == "1":
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
    from dramatiq.brokers.redis import RedisBroker

    from lastcall.cli.broker import AMQP_SCHEMES

    url = os.environ[demo_jobs.BROKER]
    broker: dramatiq.Broker = (
        RabbitmqBroker(url=url) if url.startswith(AMQP_SCHEMES) else RedisBroker(url=url)  # type: ignore[no-untyped-call]
    )
    if os.environ.get(demo_jobs.PLAIN) != "1":
        import lastcall.dramatiq

        broker.add_middleware(lastcall.dramatiq.LastCall())
    dramatiq.set_broker(broker)


@dramatiq.actor(
    actor_name=demo_jobs.DRAMATIQ_ACTOR,
    queue_name=os.environ.get(demo_jobs.QUEUE, "default"),
    max_retries=0,
)
def work(n: int, seconds: float, again: float) -> None:
    """The demo job, as a Dramatiq actor."""
    demo_jobs.work(n, seconds, again)
