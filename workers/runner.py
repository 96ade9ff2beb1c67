"""``careloop worker``: RQ's worker with careloop's queues, its scheduler, and the relay."""

from __future__ import annotations

import logging
import os

from careloop.workers.relay import start_relay_process, stop_relay_process
from rq import Worker
from sqlalchemy import text

from careloop.db import get_engine
from careloop.runtime import get_runtime

log = logging.getLogger("careloop.workers")


class CareloopWorker(Worker):
    """An RQ worker that also runs the outbox relay (a child process) while it works.

    RQ's own behaviour is kept: a work horse is forked per job, SIGTERM is a warm shutdown
    that finishes the job in hand, a second SIGTERM (or SIGINT) is a cold one.
    """

    def work(self, *args, **kwargs):
        runtime = get_runtime()
        runtime.check()  # a bad rules file stops the worker here, with the checker's message
        # Build the channels (and import their clients) once, here: every forked work horse
        # inherits them instead of paying for the imports on each job.
        _ = runtime.channels
        with get_engine(runtime.database_url).connect() as connection:
            connection.execute(text("SELECT 1"))  # loads the driver and dialect once, here
        relay = start_relay_process(os.getpid())
        try:
            return super().work(*args, **kwargs)
        finally:
            stop_relay_process(relay)
