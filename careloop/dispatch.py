"""Handing work to whatever runs jobs: RQ on Redis, or an in-process queue (embedded mode).

Both take job *ids*, never objects, and both may see the same id twice: every job is safe
to run again (routing inserts deliveries idempotently; a delivery must be claimed first).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

log = logging.getLogger("careloop.dispatch")

ROUTE_JOB = "careloop.workers.jobs.route_event"
DELIVER_JOB = "careloop.workers.jobs.deliver"

JOB_RESULT_TTL = 3600
"""Seconds RQ keeps a finished job's record (for operators looking at RQ's registries)."""

JOB_FAILURE_TTL = 7 * 24 * 3600
"""Seconds RQ keeps a failed job (a bug, not a provider error: those are recorded on the row)."""


def queue_names(prefix: str) -> list[str]:
    """careloop's queues, highest priority first: deliveries in hand before new routing."""
    return [f"{prefix}-deliver", f"{prefix}-route"]


class RQDispatcher:
    """Enqueues careloop's jobs on RQ (JSON serializer, explicit ids)."""

    mode = "rq"

    def __init__(self, redis_url: str, prefix: str, job_timeout: int):
        from redis import Redis
        from rq import Queue
        from rq.serializers import JSONSerializer

        self.connection = Redis.from_url(
            redis_url, socket_connect_timeout=2, socket_timeout=5, retry_on_timeout=False
        )
        deliver_name, route_name = queue_names(prefix)
        self.deliver_queue = Queue(deliver_name, connection=self.connection, serializer=JSONSerializer)
        self.route_queue = Queue(route_name, connection=self.connection, serializer=JSONSerializer)
        self.job_timeout = job_timeout

    def route(self, event_ids: list[str]) -> None:
        from rq import Queue

        self.route_queue.enqueue_many(
            [
                Queue.prepare_data(
                    ROUTE_JOB,
                    args=(event_id,),
                    job_id=f"route-{event_id}",
                    timeout=self.job_timeout,
                    result_ttl=JOB_RESULT_TTL,
                    failure_ttl=JOB_FAILURE_TTL,
                )
                for event_id in event_ids
            ]
        )

    def deliver(self, delivery_ids: list[str], delay: float | None = None) -> None:
        from rq import Queue

        if delay:
            # RQ's scheduler keeps whole seconds (it truncates); rounding the due time up means a
            # retry is never tried early, so a provider's Retry-After is always honoured.
            due = datetime.now(UTC) + timedelta(seconds=delay)
            if due.microsecond:
                due = due.replace(microsecond=0) + timedelta(seconds=1)
            for delivery_id in delivery_ids:
                self.deliver_queue.enqueue_at(
                    due,
                    DELIVER_JOB,
                    delivery_id,
                    job_timeout=self.job_timeout,
                    result_ttl=JOB_RESULT_TTL,
                    failure_ttl=JOB_FAILURE_TTL,
                )
            return
        self.deliver_queue.enqueue_many(
            [
                Queue.prepare_data(
                    DELIVER_JOB,
                    args=(delivery_id,),
                    timeout=self.job_timeout,
                    result_ttl=JOB_RESULT_TTL,
                    failure_ttl=JOB_FAILURE_TTL,
                )
                for delivery_id in delivery_ids
            ]
        )

    def ping(self) -> bool:
        return bool(self.connection.ping())


class InProcessDispatcher:
    """The embedded default's queue: one background thread running jobs in this process.

    Delayed jobs (retries) wait in a heap until due. Nothing here survives the process; the
    database does, and the relay (``careloop relay``, or this dispatcher's idle sweep)
    hands pending work over again after a restart.
    """

    mode = "inprocess"

    def __init__(self, idle_sweep: Callable[[], None] | None = None, sweep_interval: float = 5.0):
        self._heap: list[tuple[float, int, str, str]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._busy = 0
        self._idle_sweep = idle_sweep
        self._sweep_interval = sweep_interval
        self._stopping = False
        self._thread: threading.Thread | None = None

    def _push(self, job: str, ref: str, delay: float | None) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + (delay or 0), next(self._counter), job, ref))
            self._cond.notify()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="careloop-inprocess", daemon=True)
                self._thread.start()

    def route(self, event_ids: list[str]) -> None:
        for event_id in event_ids:
            self._push(ROUTE_JOB, event_id, None)

    def deliver(self, delivery_ids: list[str], delay: float | None = None) -> None:
        for delivery_id in delivery_ids:
            self._push(DELIVER_JOB, delivery_id, delay)

    def ping(self) -> bool:
        return True

    def _run(self) -> None:
        from careloop.workers import jobs

        functions = {ROUTE_JOB: jobs.route_event, DELIVER_JOB: jobs.deliver}
        last_sweep = time.monotonic()
        while True:
            with self._cond:
                while not self._stopping:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    wait = self._heap[0][0] - now if self._heap else self._sweep_interval
                    self._cond.wait(timeout=min(wait, self._sweep_interval))
                    if self._idle_sweep and time.monotonic() - last_sweep >= self._sweep_interval:
                        break
                if self._stopping:
                    return
                item = (
                    heapq.heappop(self._heap) if self._heap and self._heap[0][0] <= time.monotonic() else None
                )
                self._busy += 1
            try:
                if item is not None:
                    functions[item[2]](item[3])
                elif self._idle_sweep:
                    last_sweep = time.monotonic()
                    self._idle_sweep()
            except Exception:
                log.exception("in-process job %s failed", item[2] if item else "relay sweep")
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
