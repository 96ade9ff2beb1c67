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
from datetime import UTC, datetime, timedelta
from typing import Any

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

log = logging.getLogger("careloop.dispatch")

JOB_RESULT_TTL = 3600
"""Seconds RQ keeps a finished job's record (for operators looking at RQ's registries)."""

JOB_FAILURE_TTL = 7 * 24 * 3600
"""Seconds RQ keeps a failed job (a bug, not a provider error: those are recorded on the row)."""


@dataclass(frozen=True)
class Jobs:
    """The work a dispatcher hands out, as functions given by ``careloop.workers``.

    ``route(event_id, runtime=None)`` and ``deliver(delivery_id, runtime=None)`` are RQ jobs
    (importable by name, ids in); the in-process queue calls them with its runtime.
    ``sweep(runtime)`` is one relay sweep, run by the in-process queue in its idle time.
    """

    route: Callable[..., Any]
    deliver: Callable[..., Any]
    sweep: Callable[[Any], Any]


def queue_names(prefix: str) -> list[str]:
    """careloop's queues, highest priority first: deliveries in hand before new routing."""
    return [f"{prefix}-deliver", f"{prefix}-route"]


def retry_due_time(delay: float, now: datetime | None = None) -> datetime:
    """When a job delayed by ``delay`` seconds is due, rounded up to RQ's whole seconds.

    RQ's scheduler keeps whole seconds (it truncates); rounding up means a retry is never
    tried early, so a provider's Retry-After is always honoured.
    """
    due = (now or datetime.now(UTC)) + timedelta(seconds=delay)
    if due.microsecond:
        due = due.replace(microsecond=0) + timedelta(seconds=1)
    return due


class RQDispatcher:
    """Enqueues careloop's jobs on RQ (JSON serializer, explicit ids)."""

    mode = "rq"

    def __init__(self, redis_url: str, prefix: str, job_timeout: int, jobs: Jobs):
        self.connection = Redis.from_url(
            redis_url, socket_connect_timeout=2, socket_timeout=5, retry_on_timeout=False
        )
        deliver_name, route_name = queue_names(prefix)
        self.deliver_queue = Queue(deliver_name, connection=self.connection, serializer=JSONSerializer)
        self.route_queue = Queue(route_name, connection=self.connection, serializer=JSONSerializer)
        self.job_timeout = job_timeout
        self.jobs = jobs

    def _prepared(self, function: Callable[..., Any], ref: str, job_id: str | None = None):
        return Queue.prepare_data(
            function,
            args=(ref,),
            job_id=job_id,
            timeout=self.job_timeout,
            result_ttl=JOB_RESULT_TTL,
            failure_ttl=JOB_FAILURE_TTL,
        )

    def route(self, event_ids: list[str]) -> None:
        self.route_queue.enqueue_many(
            [self._prepared(self.jobs.route, event_id, f"route-{event_id}") for event_id in event_ids]
        )

    def deliver(self, delivery_ids: list[str], delay: float | None = None) -> None:
        if delay:
            due = retry_due_time(delay)
            for delivery_id in delivery_ids:
                self.deliver_queue.enqueue_at(
                    due,
                    self.jobs.deliver,
                    delivery_id,
                    job_timeout=self.job_timeout,
                    result_ttl=JOB_RESULT_TTL,
                    failure_ttl=JOB_FAILURE_TTL,
                )
            return
        self.deliver_queue.enqueue_many([self._prepared(self.jobs.deliver, d) for d in delivery_ids])

    def ping(self) -> bool:
        return bool(self.connection.ping())

    def close(self) -> None:
        self.connection.close()


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
        self._heap: list[tuple[float, int, Callable[..., Any], str]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._busy = 0
        self._jobs = jobs
        self._context = context
        self._sweep_interval = sweep_interval
        self._stopping = False
        self._thread: threading.Thread | None = None

    def _push(self, function: Callable[..., Any], ref: str, delay: float | None) -> None:
        with self._cond:
            if self._stopping:
                return  # the database keeps the promise; the next start's relay hands it over
            heapq.heappush(self._heap, (time.monotonic() + (delay or 0), next(self._counter), function, ref))
            self._cond.notify()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="careloop-inprocess", daemon=True)
                self._thread.start()

    def route(self, event_ids: list[str]) -> None:
        for event_id in event_ids:
            self._push(self._jobs.route, event_id, None)

    def deliver(self, delivery_ids: list[str], delay: float | None = None) -> None:
        for delivery_id in delivery_ids:
            self._push(self._jobs.deliver, delivery_id, delay)

    def ping(self) -> bool:
        return True

    def _next(self, last_sweep: float) -> tuple[Callable[..., Any], str] | None | bool:
        """The next due job; None when it is time to sweep; False when stopping."""
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                if self._heap and self._heap[0][0] <= now:
                    _, _, function, ref = heapq.heappop(self._heap)
                    self._busy += 1
                    return function, ref
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
                    function, ref = item
                    function(ref, runtime=self._context)
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
