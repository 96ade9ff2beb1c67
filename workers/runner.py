"""``careloop worker``: RQ's worker with careloop's queues, its scheduler, and the relay."""

from __future__ import annotations

import logging
import os

from rq import Worker
from rq.job import Job
from sqlalchemy import text

from careloop.db import get_engine
from careloop.workers import build_runtime, jobs
from careloop.workers.relay import start_relay_process, stop_relay_process

log = logging.getLogger("careloop.workers")

LEGACY_JOB_NAMES = {
    "workers.jobs.route_event": "careloop.workers.jobs.route_event",
    "workers.jobs.deliver": "careloop.workers.jobs.deliver",
}
"""Job functions as releases before 0.2 named them in Redis (top-level ``workers``
package); jobs queued or scheduled by such a release still run after an upgrade."""


class CareloopJob(Job):
    """RQ's Job, reading the job function names of earlier releases as today's."""

    def _deserialize_data(self):
        super()._deserialize_data()
        self._func_name = LEGACY_JOB_NAMES.get(self._func_name, self._func_name)


class CareloopWorker(Worker):
    """An RQ worker that also runs the outbox relay (a child process) while it works.

    RQ's own behaviour is kept: a work horse is forked per job, SIGTERM is a warm shutdown
    that finishes the job in hand, a second SIGTERM (or SIGINT) is a cold one.
    """

    job_class = CareloopJob

    def work(self, *args, **kwargs):
        runtime = build_runtime()
        runtime.check()  # a bad rules file stops the worker here, with the checker's message
        # Build the channels (and import their clients) once, here: every forked work horse
        # inherits them instead of paying for the imports on each job.
        _ = runtime.channels
        with get_engine(runtime.database_url).connect() as connection:
            connection.execute(text("SELECT 1"))  # loads the driver and dialect once, here
        jobs.use_runtime(runtime)
        relay = start_relay_process(os.getpid())
        try:
            return super().work(*args, **kwargs)
        finally:
            stop_relay_process(relay)
