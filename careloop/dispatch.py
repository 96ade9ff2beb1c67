"""Handing work to whatever runs jobs: RQ on Redis, or an in-process queue (embedded mode).

Both take job *ids*, never objects, and both may see the same id twice: every job is safe
to run again (routing inserts deliveries idempotently; a delivery must be claimed first).
The job functions themselves are passed in (:class:`Jobs`); nothing here imports them.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import utcparse

from careloop.metrics import QueueStats
from careloop.queues import (
    CALDAV_QUEUE,
    ROUTE_BATCH_SIZE,
    ROUTE_QUEUE,
    DeliveryJob,
    DigestJob,
    ReminderJob,
    batches,
    caldav_job_id,
    delivery_queue,
    digest_job_id,
    queue_roles,
    reminder_job_id,
    retry_due_time,
    route_batch_job_id,
    route_job_id,
)

log = logging.getLogger("careloop.dispatch")

JOB_RESULT_TTL = 3600
"""Seconds RQ keeps a finished job's record (for operators looking at RQ's registries)."""

JOB_FAILURE_TTL = 7 * 24 * 3600
"""Seconds RQ keeps a failed job (a bug, not a provider error: those are recorded on the row)."""

STATS_TIMEOUT = 1.0
"""Seconds a metrics scrape waits for Redis (connecting, and each answer) before reporting it down."""


@dataclass(frozen=True)
class Jobs:
    """The work a dispatcher hands out, as functions given by ``careloop.workers``.

    ``route(event_id, runtime=None)``, ``route_many(event_ids, runtime=None)``,
    ``deliver_many(delivery_ids, runtime=None)``, ``deliver(delivery_id, runtime=None,
    claim_token=None)`` and ``digest(digest_id, runtime=None)`` are RQ jobs (importable by
    name, ids in); the in-process queue calls them with its runtime. ``sweep(runtime)`` is one
    relay sweep, run by the in-process queue in its idle time. ``publish(ref, runtime=None)``
    writes one check-in to its notebook's CalDAV calendar.
    """

    route: Callable[..., Any]
    deliver: Callable[..., Any]
    deliver_many: Callable[..., Any]
    sweep: Callable[[Any], Any]
    route_many: Callable[..., Any] | None = None
    digest: Callable[..., Any] | None = None
    reminder: Callable[..., Any] | None = None
    """``reminder(reminder_id, runtime=None)``: send one check-in reminder (careloop.reminders)."""
    publish: Callable[..., Any] | None = None


class RQDispatcher:
    """Enqueues careloop's jobs on RQ (JSON serializer, explicit ids)."""

    mode = "rq"

    def __init__(self, redis_url: str, prefix: str, job_timeout: int, jobs: Jobs):
        self.connection = Redis.from_url(
            redis_url, socket_connect_timeout=2, socket_timeout=5, retry_on_timeout=False
        )
        self.redis_url = redis_url
        self._stats_connection: Redis | None = None
        self.prefix = prefix
        self.job_timeout = job_timeout
        self.jobs = jobs
        self._queues: dict[str, Queue] = {}
        self._epoch: int | None = None

    def queue(self, role: str) -> Queue:
        """The RQ queue for a role (``route``, ``sms``, ``email-urgent``, …)."""
        queue = self._queues.get(role)
        if queue is None:
            queue = Queue(f"{self.prefix}-{role}", connection=self.connection, serializer=JSONSerializer)
            self._queues[role] = queue
        return queue

    @property
    def route_queue(self) -> Queue:
        return self.queue(ROUTE_QUEUE)

    def _prepared(self, function: Callable[..., Any], ref: Any, job_id: str):
        return Queue.prepare_data(
            function,
            args=(ref,),
            job_id=job_id,
            timeout=self.job_timeout,
            result_ttl=JOB_RESULT_TTL,
            failure_ttl=JOB_FAILURE_TTL,
        )

    @property
    def route_jobs_key(self) -> str:
        """A Redis hash: event id → the id of the routing job that carries it, for events routed
        several to a job (the relay asks it before handing an event over again)."""
        return f"{self.prefix}:route-jobs"

    def route(self, event_ids: list[str]) -> None:
        """Enqueue the routing of these events: one job for one event, one job for up to
        :data:`ROUTE_BATCH_SIZE` events recorded together (one Redis round trip in all)."""
        if len(event_ids) == 1 or self.jobs.route_many is None:
            self.route_queue.enqueue_many(
                [self._prepared(self.jobs.route, event_id, route_job_id(event_id)) for event_id in event_ids]
            )
            return
        chunks = [event_ids[i : i + ROUTE_BATCH_SIZE] for i in range(0, len(event_ids), ROUTE_BATCH_SIZE)]
        with self.connection.pipeline() as pipe:
            carriers = {}
            datas = []
            for chunk in chunks:
                job_id = route_batch_job_id(chunk)
                carriers.update(dict.fromkeys(chunk, job_id))
                datas.append(self._prepared(self.jobs.route_many, chunk, job_id))
            pipe.hset(self.route_jobs_key, mapping=carriers)
            self.route_queue.enqueue_many(datas, pipeline=pipe)
            pipe.execute()

    def routed(self, event_ids: list[str]) -> None:
        """Forget which job carried these events (they are routed)."""
        self.connection.hdel(self.route_jobs_key, *event_ids)

    def deliver(self, jobs: list[DeliveryJob], delay: float | None = None) -> list[DeliveryJob]:
        """Enqueue these deliveries on their queues, several to a job (:func:`batches`), now or
        after ``delay`` seconds (RQ's scheduler; due times rounded up, never early). Returns
        them with the ids of the jobs that carry them (for the delivery rows)."""
        handed = []
        for batch in batches(jobs):
            queue, job_id, ids = self.queue(batch[0].queue), batch[0].job_id, [j.delivery_id for j in batch]
            options = dict(job_id=job_id, result_ttl=JOB_RESULT_TTL, failure_ttl=JOB_FAILURE_TTL)
            function, timeout, kwargs = self.jobs.deliver_many, self.job_timeout, {"queue": batch[0].queue}
            if delay:
                due = retry_due_time(delay)
                queue.enqueue_at(due, function, args=(ids,), kwargs=kwargs, job_timeout=timeout, **options)
            else:
                queue.enqueue_many(
                    [Queue.prepare_data(function, args=(ids,), kwargs=kwargs, timeout=timeout, **options)]
                )
            handed += batch
        return handed

    def digests(self, jobs: list[DigestJob]) -> list[DigestJob]:
        """Enqueue each digest's job for its due time (RQ's scheduler; rounded up, never early),
        on its channel's queue. Returns them."""
        now = datetime.now(UTC)
        for job in jobs:
            queue, job_id = self.queue(job.queue), digest_job_id(job)
            options = dict(
                job_id=job_id,
                job_timeout=self.job_timeout,
                result_ttl=JOB_RESULT_TTL,
                failure_ttl=JOB_FAILURE_TTL,
            )
            if job.due_at > now:
                due = retry_due_time(0, job.due_at)
                queue.enqueue_at(due, self.jobs.digest, job.digest_id, **options)
            else:
                queue.enqueue(self.jobs.digest, job.digest_id, **options)
        return jobs

    def missing_digests(self, jobs: list[DigestJob]) -> list[DigestJob]:
        """The digests whose job for their due time Redis no longer has waiting."""
        waiting = self._waiting([(self.queue(job.queue).name, digest_job_id(job)) for job in jobs])
        return [job for job in jobs if digest_job_id(job) not in waiting]

    def publish(self, refs: list[str]) -> None:
        """Enqueue the CalDAV publish job of these check-ins (row ids), one job each."""
        self.queue(CALDAV_QUEUE).enqueue_many(
            [self._prepared(self.jobs.publish, ref, caldav_job_id(ref)) for ref in refs]
        )

    def missing_publishes(self, refs: list[str]) -> list[str]:
        """The check-ins whose publish job Redis no longer has waiting (one round trip)."""
        waiting = self._waiting([(self.queue(CALDAV_QUEUE).name, caldav_job_id(ref)) for ref in refs])
        return [ref for ref in refs if caldav_job_id(ref) not in waiting]

    # --- reminders (issue 12) ---
    def reminders(self, jobs: list[ReminderJob]) -> list[ReminderJob]:
        """Enqueue each reminder's job for its due time (RQ's scheduler; rounded up, never
        early), on its channel's queue. Returns them."""
        now = datetime.now(UTC)
        for job in jobs:
            queue = self.queue(job.queue)
            options = dict(job_id=reminder_job_id(job), job_timeout=self.job_timeout,
                           result_ttl=JOB_RESULT_TTL, failure_ttl=JOB_FAILURE_TTL)  # fmt: skip
            if job.due_at > now:
                due = retry_due_time(0, job.due_at)
                queue.enqueue_at(due, self.jobs.reminder, job.reminder_id, **options)
            else:
                queue.enqueue(self.jobs.reminder, job.reminder_id, **options)
        return jobs

    def missing_reminders(self, jobs: list[ReminderJob]) -> list[ReminderJob]:
        """The reminders whose job for their due time Redis no longer has waiting."""
        waiting = self._waiting([(self.queue(job.queue).name, reminder_job_id(job)) for job in jobs])
        return [job for job in jobs if reminder_job_id(job) not in waiting]

    def resume(self, delivery_id: str, claim_token: str, delay: float) -> None:
        """Run a delivery job again after ``delay`` seconds, holding on to its claim (the job met
        a database error; its queue does not matter any more, the route queue is taken first)."""
        due = retry_due_time(delay)
        self.route_queue.enqueue_at(
            due,
            self.jobs.deliver,
            delivery_id,
            claim_token=claim_token,
            job_id=f"deliver-{delivery_id}-resume-{claim_token}-{int(due.timestamp())}",
            job_timeout=self.job_timeout,
            result_ttl=JOB_RESULT_TTL,
            failure_ttl=JOB_FAILURE_TTL,
        )

    def route_later(self, event_id: str, delay: float) -> None:
        """Route an event again after ``delay`` seconds (its job met a database error)."""
        due = retry_due_time(delay)
        self.route_queue.enqueue_at(
            due,
            self.jobs.route,
            event_id,
            job_id=f"{route_job_id(event_id)}-{int(due.timestamp())}",
            job_timeout=self.job_timeout,
            result_ttl=JOB_RESULT_TTL,
            failure_ttl=JOB_FAILURE_TTL,
        )

    def urgent_waiting(self, channel: str) -> bool:
        """Whether an urgent alert of ``channel`` waits in its queue (one round trip; False when
        Redis cannot be asked: the batch in hand simply goes on)."""
        try:
            return bool(self.queue(delivery_queue(channel, urgent=True)).count)
        except Exception:
            return False

    def missing_deliveries(self, jobs: list[DeliveryJob]) -> list[DeliveryJob]:
        """The deliveries whose job Redis no longer has waiting (one round trip)."""
        known = [(self.queue(job.queue).name, job.job_id) for job in jobs if job.job_id]
        waiting = self._waiting(known)
        return [job for job in jobs if job.job_id not in waiting]

    def missing_routes(self, event_ids: list[str]) -> list[str]:
        """The events whose routing job Redis no longer has waiting (two round trips)."""
        if not event_ids:
            return []
        carriers = self.connection.hmget(self.route_jobs_key, event_ids)
        job_ids = [
            (c.decode() if isinstance(c, bytes) else c) or route_job_id(e)
            for e, c in zip(event_ids, carriers, strict=True)
        ]
        waiting = self._waiting([(self.route_queue.name, j) for j in dict.fromkeys(job_ids)])
        return [e for e, j in zip(event_ids, job_ids, strict=True) if j not in waiting]

    def _waiting(self, jobs: list[tuple[str, str]]) -> set[str]:
        """Of these (queue name, job id) pairs, the ids of jobs still waiting to run: queued, or
        scheduled with their entry in the scheduler's registry. (A job "started" long ago whose
        delivery is still queued died with its worker: not waiting.)"""
        if not jobs:
            return set()
        with self.connection.pipeline(transaction=False) as pipe:
            for queue_name, job_id in jobs:
                pipe.hget(f"rq:job:{job_id}", "status")
                pipe.zscore(f"rq:scheduled:{queue_name}", job_id)
            answers = pipe.execute()
        waiting = set()
        for (_, job_id), status, score in zip(jobs, answers[0::2], answers[1::2], strict=True):
            status = status.decode() if isinstance(status, bytes) else status
            if status in ("queued", "deferred") or (status == "scheduled" and score is not None):
                waiting.add(job_id)
        return waiting

    def lost_data(self) -> bool:
        """Whether Redis lost its data since this dispatcher last asked (O(1): one INCR).

        Redis's answer to INCR only grows while it keeps its data, so an answer of 1 (a fresh
        data set) or one not above the last seen means a restart without persistence, a
        FLUSHALL, a failover to an empty replica or a restart from an older snapshot. One call
        per loss answers True. Raises when Redis is unreachable.
        """
        value = int(self.connection.incr(f"{self.prefix}:redis-epoch"))
        lost = value == 1 or (self._epoch is not None and value <= self._epoch)
        self._epoch = value
        return lost

    def ping(self) -> bool:
        return bool(self.connection.ping())

    def queue_stats(self) -> dict[str, QueueStats]:
        """Each of careloop's queues (by RQ name): jobs waiting, the oldest one's age, jobs
        scheduled for later and failed jobs, in two round trips that give up after
        :data:`STATS_TIMEOUT` seconds each (raises when Redis does not answer)."""
        if self._stats_connection is None:
            self._stats_connection = Redis.from_url(
                self.redis_url,
                socket_connect_timeout=STATS_TIMEOUT,
                socket_timeout=STATS_TIMEOUT,
                retry_on_timeout=False,
            )
        connection = self._stats_connection
        queues = [self.queue(role) for role in queue_roles()]
        with connection.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.llen(queue.key)
                pipe.lindex(queue.key, 0)  # RQ takes jobs from the head: the oldest waiting one
                pipe.zcard(queue.scheduled_job_registry.key)
                pipe.zcard(queue.failed_job_registry.key)
            answers = pipe.execute()
        heads = [answers[i + 1] for i in range(0, len(answers), 4)]
        with connection.pipeline(transaction=False) as pipe:
            for head in heads:
                pipe.hget(f"{Job.redis_job_namespace_prefix}{_text(head)}", "enqueued_at")
            enqueued = pipe.execute() if any(heads) else [None] * len(heads)
        now = datetime.now(UTC)
        stats = {}
        for index, queue in enumerate(queues):
            depth, head, scheduled, failed = answers[4 * index : 4 * index + 4]
            age = None
            if head is not None and enqueued[index]:
                age = max(0.0, (now - utcparse(_text(enqueued[index])).replace(tzinfo=UTC)).total_seconds())
            stats[queue.name] = QueueStats(int(depth), oldest_age=age, scheduled=scheduled, failed=failed)
        return stats

    def close(self) -> None:
        self.connection.close()
        if self._stats_connection is not None:
            self._stats_connection.close()


class InProcessDispatcher:
    """The embedded default's queue: one background thread running jobs in this process.

    Delayed jobs (retries) wait in a heap until due. Nothing here survives the process; the
    database does, and the relay (``careloop relay``, or this dispatcher's idle sweep)
    hands pending work over again after a restart.

    Args:
        jobs: the job functions; each is called with ``runtime=context``.
        context: the runtime the jobs run with (the app's own, never a process global).
        sweep_interval: seconds between relay sweeps while idle.
    """

    mode = "inprocess"

    def __init__(self, jobs: Jobs, context: Any, sweep_interval: float = 5.0):
        self._heap: list[tuple[float, int, Callable[..., Any], Any, dict]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._busy = 0
        self._jobs = jobs
        self._context = context
        self._sweep_interval = sweep_interval
        self._stopping = False
        self._thread: threading.Thread | None = None

    def _push(self, function: Callable[..., Any], ref: Any, delay: float | None, **kwargs: Any) -> None:
        with self._cond:
            if self._stopping:
                return  # the database keeps the promise; the next start's relay hands it over
            due = time.monotonic() + (delay or 0)
            heapq.heappush(self._heap, (due, next(self._counter), function, ref, kwargs))
            self._cond.notify()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="careloop-inprocess", daemon=True)
                self._thread.start()

    def route(self, event_ids: list[str]) -> None:
        if len(event_ids) > 1 and self._jobs.route_many is not None:
            for start in range(0, len(event_ids), ROUTE_BATCH_SIZE):
                self._push(self._jobs.route_many, event_ids[start : start + ROUTE_BATCH_SIZE], None)
            return
        for event_id in event_ids:
            self._push(self._jobs.route, event_id, None)

    def routed(self, event_ids: list[str]) -> None:
        pass

    def deliver(self, jobs: list[DeliveryJob], delay: float | None = None) -> list[DeliveryJob]:
        handed = []
        for batch in batches(jobs):
            self._push(self._jobs.deliver_many, [j.delivery_id for j in batch], delay, queue=batch[0].queue)
            handed += batch
        return handed

    def digests(self, jobs: list[DigestJob]) -> list[DigestJob]:
        now = datetime.now(UTC)
        for job in jobs:
            self._push(self._jobs.digest, job.digest_id, max(0.0, (job.due_at - now).total_seconds()))
        return jobs

    def missing_digests(self, jobs: list[DigestJob]) -> list[DigestJob]:
        return jobs  # the in-process queue cannot be asked; a digest job is safe to run twice

    def publish(self, refs: list[str]) -> None:
        for ref in refs:
            self._push(self._jobs.publish, ref, None)

    def missing_publishes(self, refs: list[str]) -> list[str]:
        return refs  # the in-process queue cannot be asked; a publish job is safe to run twice

    # --- reminders (issue 12) ---
    def reminders(self, jobs: list[ReminderJob]) -> list[ReminderJob]:
        now = datetime.now(UTC)
        for job in jobs:
            self._push(self._jobs.reminder, job.reminder_id, max(0.0, (job.due_at - now).total_seconds()))
        return jobs

    def missing_reminders(self, jobs: list[ReminderJob]) -> list[ReminderJob]:
        return jobs  # the in-process queue cannot be asked; a reminder job is safe to run twice

    def resume(self, delivery_id: str, claim_token: str, delay: float) -> None:
        self._push(self._jobs.deliver, delivery_id, delay, claim_token=claim_token)

    def route_later(self, event_id: str, delay: float) -> None:
        self._push(self._jobs.route, event_id, delay)

    def ping(self) -> bool:
        return True

    def urgent_waiting(self, channel: str) -> bool:
        return False  # one thread runs every job here, urgent ones included, in order of due time

    def queue_stats(self) -> dict[str, QueueStats]:
        """The in-process queue as one queue: jobs due now or waiting for their time."""
        with self._cond:
            now = time.monotonic()
            due = sum(1 for entry in self._heap if entry[0] <= now)
            return {"inprocess": QueueStats(depth=due, scheduled=len(self._heap) - due)}

    def lost_data(self) -> bool:
        return False  # nothing here outlives the process; the relay's first sweep hands it over

    def missing_deliveries(self, jobs: list[DeliveryJob]) -> list[DeliveryJob]:
        return jobs  # the in-process queue cannot be asked; its jobs are safe to run twice

    def missing_routes(self, event_ids: list[str]) -> list[str]:
        return event_ids

    def _next(self, last_sweep: float) -> tuple[Callable[..., Any], Any, dict] | None | bool:
        """The next due job; None when it is time to sweep; False when stopping."""
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                if self._heap and self._heap[0][0] <= now:
                    _, _, function, ref, kwargs = heapq.heappop(self._heap)
                    self._busy += 1
                    return function, ref, kwargs
                if now - last_sweep >= self._sweep_interval:
                    self._busy += 1
                    return None
                wait = self._heap[0][0] - now if self._heap else self._sweep_interval
                self._cond.wait(timeout=min(wait, self._sweep_interval))
            return False

    def _run(self) -> None:
        last_sweep = time.monotonic()
        while True:
            item = self._next(last_sweep)
            if item is False:
                return
            try:
                if item is None:
                    last_sweep = time.monotonic()
                    self._jobs.sweep(self._context)
                else:
                    function, ref, kwargs = item
                    function(ref, runtime=self._context, **kwargs)
            except Exception:
                log.exception("in-process %s failed", "relay sweep" if item is None else "job")
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until no job is due or running (delayed retries still waiting are not counted
        unless due within ``timeout``). Returns False if time ran out."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._busy or (self._heap and self._heap[0][0] <= deadline):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(timeout=min(remaining, 0.1))
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; wait for the one in hand (if any) to finish."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def close(self) -> None:
        self.stop()


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
