"""``careloop worker``: RQ's worker with careloop's queues, its scheduler, and the relay."""

from __future__ import annotations

import logging

from rq import Worker

from careloop.runtime import get_runtime
from workers.relay import RelayThread

log = logging.getLogger("careloop.workers")


class CareloopWorker(Worker):
    """An RQ worker that also runs the outbox relay in a thread while it works.

    RQ's own behaviour is kept: a work horse is forked per job, SIGTERM is a warm shutdown
    that finishes the job in hand, a second SIGTERM (or SIGINT) is a cold one.
    """

    def work(self, *args, **kwargs):
        runtime = get_runtime()
        runtime.check()  # a bad rules file stops the worker here, with the checker's message
        relay = RelayThread(runtime)
        relay.start()
        try:
            return super().work(*args, **kwargs)
        finally:
            relay.stop()
