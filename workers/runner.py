"""``careloop worker``: RQ's worker with careloop's queues, its scheduler, and the relay.

careloop's worker runs each job in its own process (RQ's ``SimpleWorker``: no work horse is
forked), because careloop's jobs are idempotent and claim their work in the database:

- a SIGTERM sent to every process of the unit (systemd, Heroku, Kubernetes) is a warm
  shutdown that finishes the job in hand — there is no horse for the signal to kill;
- RQ's job timeout still holds (SIGALRM in this process);
- it outlives Redis: its connection (:class:`ResilientRedis`) retries forever while Redis is
  unreachable, logging once when Redis goes and once when it is back; it registers again
  when Redis comes back empty. A worker started while Redis is down waits for it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from redis import Redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from rq import SimpleWorker, worker_registration
from rq.job import Job
from sqlalchemy import text

from careloop.db import get_engine
from careloop.workers import build_runtime, jobs
from careloop.workers.relay import start_relay_process, stop_relay_process

log = logging.getLogger("careloop.workers")

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)

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


class ResilientRetry(Retry):
    """redis-py's retry policy for the worker: connection errors are retried forever (with
    jittered backoff up to 2 s), logged once when Redis goes away and once when it is back;
    once the process is stopping, a dead Redis is given up on quickly.

    Overrides ``Retry.call_with_retry`` (redis-py 8: hence the pin in pyproject.toml).
    """

    stopping = False
    """Set on SIGTERM and in teardown: from then on a dead Redis must not hold the exit."""
    _down_since: float | None = None
    _lock = threading.Lock()

    def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):
        failures = 0
        while True:
            try:
                result = do()
            except self._supported_errors as error:
                if is_retryable and not is_retryable(error):
                    raise
                failures += 1
                fail(error, failures) if with_failure_count else fail(error)
                with ResilientRetry._lock:
                    if ResilientRetry._down_since is None:
                        ResilientRetry._down_since = time.monotonic()
                        log.warning("Redis unreachable (%s); waiting for it", type(error).__name__)
                if ResilientRetry.stopping and failures >= 2:
                    raise
                time.sleep(self._backoff.compute(failures))
                continue
            if failures:  # only a call that failed and then succeeded proves Redis is back
                with ResilientRetry._lock:
                    if ResilientRetry._down_since is not None:
                        down = time.monotonic() - ResilientRetry._down_since
                        log.warning("Redis reachable again after %.1fs", down)
                        ResilientRetry._down_since = None
            return result


class ResilientRedis(Redis):
    """The worker's Redis connection (``--connection-class``; RQ's CLI calls ``from_url``)."""

    @classmethod
    def from_url(cls, url, **kwargs):
        backoff = ExponentialWithJitterBackoff(base=0.1, cap=2.0)
        kwargs.setdefault("retry", ResilientRetry(backoff, retries=-1))
        kwargs.setdefault("socket_connect_timeout", 3)  # else RQ's ~415 s socket timeout applies
        kwargs.setdefault("health_check_interval", 15)
        return super().from_url(url, **kwargs)


class CareloopWorker(SimpleWorker):
    """RQ's worker without a work horse, with careloop's relay beside it (a child process).

    SIGTERM is a warm shutdown (the job in hand finishes), a second one a cold shutdown.
    Overrides only named hooks of RQ 3's ``BaseWorker``: the signal handler, the shutdown
    bookkeeping, the scheduler's stop, heartbeats, job bookkeeping and teardown, so that
    none of them ends the worker when Redis is away.
    """

    job_class = CareloopJob

    def work(self, *args, **kwargs):
        runtime = build_runtime()
        runtime.check()  # a bad rules file stops the worker here, with the checker's message
        _ = runtime.channels  # build the channels (and import their clients) once
        with get_engine(runtime.database_url).connect() as connection:
            connection.execute(text("SELECT 1"))  # loads the driver and dialect once, here
        jobs.use_runtime(runtime)
        relay = start_relay_process(os.getpid())
        try:
            return super().work(*args, **kwargs)
        finally:
            stop_relay_process(relay)

    def request_stop(self, signum, frame):
        ResilientRetry.stopping = True
        super().request_stop(signum, frame)

    def set_shutdown_requested_date(self):  # runs inside the SIGTERM handler: must never raise
        try:
            super().set_shutdown_requested_date()
        except REDIS_DOWN:
            pass

    def stop_scheduler(self):
        """RQ joins its scheduler process here (also from the signal handler, forever); one
        blocked on a dead Redis never exits. Only signal it here; teardown reaps it."""
        process = self.scheduler._process if self.scheduler else None
        if process and process.pid and process.is_alive():
            os.kill(process.pid, signal.SIGTERM)

    def heartbeat(self, timeout=None, pipeline=None):
        if ResilientRetry.stopping and pipeline is None:
            try:
                return super().heartbeat(timeout, pipeline)
            except REDIS_DOWN:
                return None
        super().heartbeat(timeout, pipeline)
        registered = pipeline is not None or self.connection.sismember(self.redis_workers_keys, self.key)
        if self.birth_date and not registered:
            # Redis came back empty: register again, so RQ's tools (and `careloop queues`) see us
            with self.connection.pipeline() as pipe:
                pipe.hset(self.key, mapping={**self.serialize(), "state": self.get_state()})
                worker_registration.register(self, pipe)
                pipe.expire(self.key, (timeout or self.worker_ttl) + 60)
                pipe.execute()
            log.warning("worker %s registered again: Redis had lost it", self.name)

    def execute_job(self, job, queue):
        try:
            super().execute_job(job, queue)
        except REDIS_DOWN as exc:  # only while stopping: the job ran; its bookkeeping is lost
            log.warning("job %s ran; its end could not be recorded in Redis (%s)", job.id, type(exc).__name__)

    def teardown(self):
        ResilientRetry.stopping = True
        try:
            super().teardown()
        except REDIS_DOWN as exc:
            log.warning("worker stopped without Redis (%s)", type(exc).__name__)
        finally:
            process = self.scheduler._process if self.scheduler else None
            if process and process.pid:
                process.join(2)
                if process.is_alive():  # else multiprocessing's exit handler waits for it forever
                    process.kill()
                    process.join(5)
