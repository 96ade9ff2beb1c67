"""careloop's Prometheus metrics, each defined once, for every process that counts something.

The web process, the workers and the relay all increment these; ``GET /metrics`` serves them.
Under gunicorn, ``prometheus-client`` runs in *multiprocess mode*: each process writes its
values into files in ``PROMETHEUS_MULTIPROC_DIR`` and a scrape adds them up, so every web
worker counts, and so does every ``careloop worker`` on the same machine that is given the
same directory. The variable must be set before this module is first imported (the client
picks its storage then): ``config/gunicorn.conf.py`` makes a directory when it is unset.

Values are counts, labelled only by careloop's own vocabularies (event types, channels,
statuses, queue names): never an id, a name, a number or an address.

Queue depths are not counted here but read from Redis when Prometheus scrapes
(:class:`QueueCollector`), with a short timeout: a scrape never waits long on a Redis that is
down, it reports ``careloop_queue_up 0``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("careloop.metrics")

disable_created_metrics()  # no `_created` series beside every counter: Prometheus needs none

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
"""The environment variable naming the folder where processes write their values (the client's own)."""

if os.environ.get(MULTIPROC_DIR_VARIABLE):  # a folder named but not made yet: made, never a failed count
    os.makedirs(os.environ[MULTIPROC_DIR_VARIABLE], mode=0o700, exist_ok=True)

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The media type of the text exposition format."""

EVENTS_ACCEPTED = Counter(
    "careloop_events_accepted",
    "Notebook events recorded (answered 202, or imported), by event type and source (api, import).",
    ["type", "source"],
)

DELIVERIES = Counter(
    "careloop_deliveries",
    "Deliveries reaching an outcome, by channel and status: sent, delivered, undelivered, failed, "
    "skipped. A text sent and later confirmed counts under sent and under delivered.",
    ["channel", "status"],
)

PROVIDER_LATENCY = Histogram(
    "careloop_provider_latency_seconds",
    "Seconds one send to a provider (Twilio, SMTP, the outbox) took, by channel and outcome (ok, error).",
    ["channel", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

RETRIES = Counter(
    "careloop_delivery_retries",
    "Deliveries put back in the queue for another attempt, by channel and kind: automatic (a "
    "transient provider error) or manual (a person retried a dead letter).",
    ["channel", "kind"],
)

DEAD_LETTERS = Counter(
    "careloop_dead_letters",
    "Deliveries that became dead letters (failed or undelivered: a person may retry them), by channel.",
    ["channel"],
)

WEBHOOK_VERIFICATION_FAILURES = Counter(
    "careloop_webhook_verification_failures",
    "Inbound webhook requests refused because their signature did not verify, by webhook (twilio, …).",
    ["webhook"],
)

HTTP_REQUESTS = Counter(
    "careloop_http_requests",
    "HTTP requests answered by the web process, by method and status code.",
    ["method", "status"],
)

DEAD_LETTER_STATUSES = frozenset({"failed", "undelivered"})
"""Outcome statuses that make a delivery a dead letter (careloop.vocabulary's retryable ones)."""


def event_accepted(event_type: str, source: str) -> None:
    """Count one recorded event (``source``: ``api`` or ``import``)."""
    EVENTS_ACCEPTED.labels(type=str(event_type), source=source).inc()


def delivery_outcome(channel: str, status: str, count: int = 1) -> None:
    """Count deliveries that reached ``status`` (and the dead letters among them)."""
    if count <= 0:
        return
    DELIVERIES.labels(channel=str(channel), status=str(status)).inc(count)
    if str(status) in DEAD_LETTER_STATUSES:
        DEAD_LETTERS.labels(channel=str(channel)).inc(count)


def delivery_retried(channel: str, kind: str) -> None:
    """Count a delivery queued again (``kind``: ``automatic`` or ``manual``)."""
    RETRIES.labels(channel=str(channel), kind=kind).inc()


def webhook_verification_failed(webhook: str) -> None:
    """Count an inbound webhook request whose signature did not verify."""
    WEBHOOK_VERIFICATION_FAILURES.labels(webhook=webhook).inc()


def multiprocess_mode() -> bool:
    """Whether values are written to ``PROMETHEUS_MULTIPROC_DIR`` (set before the first import)."""
    return bool(os.environ.get(MULTIPROC_DIR_VARIABLE))


def mark_process_dead(pid: int) -> None:
    """Forget the live values of a process that exited (gunicorn's ``child_exit`` hook);
    its counts stay in the sums."""
    if multiprocess_mode():
        multiprocess.mark_process_dead(pid)


@dataclass(frozen=True)
class QueueStats:
    """One queue as a scrape sees it: jobs waiting, the age of the oldest (None when empty or
    unknown), jobs scheduled for later (retries) and failed jobs RQ keeps."""

    depth: int
    oldest_age: float | None = None
    scheduled: int = 0
    failed: int = 0


class QueueCollector(Collector):
    """Queue depths, read when Prometheus scrapes.

    Args:
        stats: returns each queue's :class:`QueueStats` by queue name; it must time out by
            itself (the dispatcher's uses a short Redis timeout). An exception means the queue
            could not be read: ``careloop_queue_up`` is 0 and the queue gauges are left out.
    """

    def __init__(self, stats: Callable[[], Mapping[str, QueueStats]]):
        self._stats = stats

    def collect(self) -> Iterable:
        up = GaugeMetricFamily("careloop_queue_up", "1 when the queue (Redis) answered this scrape, else 0.")
        try:
            stats = self._stats()
        except Exception as exc:  # a scrape reports the queue down; the reason goes to the log
            log.warning("metrics: the queue could not be read (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily("careloop_queue_depth", "Jobs waiting in each queue.", labels=["queue"])
        age = GaugeMetricFamily(
            "careloop_queue_oldest_job_age_seconds",
            "Seconds the oldest waiting job of each queue has waited (0 when the queue is empty).",
            labels=["queue"],
        )
        scheduled = GaugeMetricFamily(
            "careloop_queue_scheduled_jobs",
            "Jobs scheduled for later (retries) in each queue.",
            labels=["queue"],
        )
        failed = GaugeMetricFamily(
            "careloop_queue_failed_jobs",
            "Failed jobs kept by the queue (a bug, not a provider error).",
            labels=["queue"],
        )
        for name, queue in sorted(stats.items()):
            depth.add_metric([name], queue.depth)
            age.add_metric([name], queue.oldest_age or 0.0)
            scheduled.add_metric([name], queue.scheduled)
            failed.add_metric([name], queue.failed)
        yield from (depth, age, scheduled, failed)


def _registry() -> CollectorRegistry:
    if not multiprocess_mode():
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def serve(address: str, port: int) -> None:
    """Serve the metrics on ``address:port`` from a thread of this process (``careloop worker
    --metrics-listen``): this machine's folder in multiprocess mode, else this process's own.
    No token: bind it to an address only the scraper reaches."""
    start_http_server(port, addr=address, registry=_registry())
    log.info("serving metrics on %s:%d", address, port)


def exposition(extra: Iterable[Collector] = ()) -> bytes:
    """Every metric as Prometheus text: this machine's processes' sums in multiprocess mode
    (else this process's own), then the ``extra`` collectors (read now)."""
    body = generate_latest(_registry())
    scrape = CollectorRegistry()
    for collector in extra:
        scrape.register(collector)
    return body + generate_latest(scrape)
