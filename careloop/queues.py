"""careloop's RQ queues and job ids: which queue a delivery goes to, which queues a worker
takes and in what order, and the deterministic job ids that let the relay ask Redis whether a
job is still there. Pure names; the dispatcher (careloop.dispatch) does the enqueueing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from careloop.vocabulary import ChannelKind

ROUTE_QUEUE = "route"
"""Routing jobs: fast, database only; every worker takes them before ordinary deliveries."""

LEGACY_DELIVER_QUEUE = "deliver"
"""The one delivery queue of releases before 0.2; drained last by workers that take SMS."""


class DeliveryJob(NamedTuple):
    """What the dispatcher needs to hand one delivery over: its id, its queue (a delivery's
    ``queue`` column) and how many attempts it has had (part of the job id, see :func:`job_id`)."""

    delivery_id: str
    queue: str | None
    attempts: int


def delivery_queue(channel: str, urgent: bool) -> str:
    """The queue of a delivery: one per channel, and one per channel for urgent alerts, so a hung
    SMTP server never delays a text and an urgent alert never waits behind a backlog."""
    return f"{channel}-urgent" if urgent else str(channel)


def queue_roles(channels: Iterable[str] | None = None) -> list[str]:
    """The queues a worker taking ``channels`` (all by default) listens to, highest priority
    first: urgent deliveries, then routing, then ordinary deliveries (RQ takes queues in order)."""
    channels = [str(c) for c in (channels or ChannelKind)]
    roles = [delivery_queue(c, urgent=True) for c in channels] + [ROUTE_QUEUE]
    roles += [delivery_queue(c, urgent=False) for c in channels]
    if ChannelKind.SMS in channels:
        roles.append(LEGACY_DELIVER_QUEUE)
    return roles


def queue_names(prefix: str, channels: Iterable[str] | None = None) -> list[str]:
    """RQ queue names for :func:`queue_roles` (``careloop-sms-urgent``, ``careloop-route``, …)."""
    return [f"{prefix}-{role}" for role in queue_roles(channels)]


def delivery_job_id(job: DeliveryJob, again: bool = False) -> str:
    """The RQ job id of a delivery's next attempt: ``deliver-<id>-<attempts so far>``.

    Deterministic, so the relay can ask Redis whether the job is still there before it hands a
    delivery over again; and different from the job that is running now (which had one
    attempt fewer), so a retry scheduled from inside a job never overwrites that job. A job
    that ran before its due time and puts itself back (``again``) gets a suffix for the same
    reason.
    """
    return f"deliver-{job.delivery_id}-{job.attempts}" + ("-again" if again else "")


def route_job_id(event_id: str) -> str:
    """The RQ job id of an event's routing job (one per event)."""
    return f"route-{event_id}"


def retry_due_time(delay: float, now: datetime | None = None) -> datetime:
    """When a job delayed by ``delay`` seconds is due, rounded up to RQ's whole seconds.

    RQ's scheduler keeps whole seconds (it truncates); rounding up means a retry is never
    tried early, so a provider's Retry-After is always honoured.
    """
    due = (now or datetime.now(UTC)) + timedelta(seconds=delay)
    if due.microsecond:
        due = due.replace(microsecond=0) + timedelta(seconds=1)
    return due
