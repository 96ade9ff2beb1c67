"""careloop's RQ queues and job ids: which queue a delivery goes to, which queues a worker
takes and in what order, and the deterministic job ids that let the relay ask Redis whether a
job is still there. Pure names; the dispatcher (careloop.dispatch) does the enqueueing.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from careloop.vocabulary import WEBHOOK_CHANNEL, ChannelKind

ROUTE_QUEUE = "route"
"""Routing jobs: fast, database only; every worker takes them before ordinary deliveries."""

CALDAV_QUEUE = "caldav"
"""Check-ins written to notebooks' CalDAV calendars: taken last by every worker."""

LEGACY_DELIVER_QUEUE = "deliver"
"""The one delivery queue of releases before 0.2; drained last by workers that take SMS."""


class DeliveryJob(NamedTuple):
    """One delivery as the dispatcher hands it over: its id, its queue (the delivery's
    ``queue`` column) and the id of the RQ job that carries its next attempt (None until the
    dispatcher assigns one; several deliveries share one job)."""

    delivery_id: str
    queue: str
    job_id: str | None = None


DELIVERY_CHANNELS: tuple[str, ...] = (*ChannelKind, WEBHOOK_CHANNEL)
"""Every channel deliveries go out on: the members' channels and clinics' webhooks."""


class DigestJob(NamedTuple):
    """One digest as the dispatcher hands it over: its id, its queue (its channel's ordinary
    queue) and when it is due (its job runs then, never earlier)."""

    digest_id: str
    queue: str
    due_at: datetime


def digest_job_id(job: DigestJob) -> str:
    """The RQ job id of a digest's job for its due time (one per digest and due time, so the
    relay can ask Redis whether it is still waiting)."""
    return f"digest-{job.digest_id}-{int(job.due_at.timestamp())}"


# --- reminders (issue 12) ---
class ReminderJob(NamedTuple):
    """One check-in reminder as the dispatcher hands it over: its id, its queue (its channel's
    ordinary queue) and when it is due (its job runs then, never earlier)."""

    reminder_id: str
    queue: str
    due_at: datetime


def reminder_job_id(job: ReminderJob) -> str:
    """The RQ job id of a reminder's job for its due time (the relay asks Redis about it)."""
    return f"reminder-{job.reminder_id}-{int(job.due_at.timestamp())}"


BATCH_SIZE = 50
"""Deliveries one job sends, claimed together: fewer Redis and database round trips each."""


def new_delivery_job_id() -> str:
    """A fresh RQ job id for a batch of deliveries (kept on each delivery's row, so the relay can
    ask Redis whether the job is still there before handing a delivery over again)."""
    return f"deliver-{secrets.token_hex(10)}"


def batches(jobs: Iterable[DeliveryJob]) -> list[list[DeliveryJob]]:
    """Group deliveries into jobs: one per given job id, and the rest by queue, at most
    :data:`BATCH_SIZE` each, with fresh ids."""
    grouped: dict[tuple[str, str | None], list[DeliveryJob]] = {}
    for job in jobs:
        grouped.setdefault((job.queue, job.job_id), []).append(job)
    result = []
    for (_, job_id), members in grouped.items():
        if job_id is not None:
            result.append(members)
            continue
        for start in range(0, len(members), BATCH_SIZE):
            chunk_id = new_delivery_job_id()
            result.append([job._replace(job_id=chunk_id) for job in members[start : start + BATCH_SIZE]])
    return result


def delivery_queue(channel: str, urgent: bool) -> str:
    """The queue of a delivery: one per channel, and one per channel for urgent alerts, so a hung
    SMTP server never delays a text and an urgent alert never waits behind a backlog."""
    return f"{channel}-urgent" if urgent else str(channel)


def is_urgent_queue(queue: str) -> bool:
    """Whether ``queue`` (a role: ``sms-urgent``, ``email``, …) holds urgent alerts."""
    return queue.endswith("-urgent")


def queue_roles(channels: Iterable[str] | None = None) -> list[str]:
    """The queues a worker taking ``channels`` (all by default) listens to, highest priority
    first: urgent deliveries, then routing, then ordinary deliveries, then CalDAV publishing
    (RQ takes queues in order)."""
    channels = [str(c) for c in (channels or DELIVERY_CHANNELS)]
    roles = [delivery_queue(c, urgent=True) for c in channels] + [ROUTE_QUEUE]
    roles += [delivery_queue(c, urgent=False) for c in channels]
    if ChannelKind.SMS in channels:
        roles.append(LEGACY_DELIVER_QUEUE)
    return [*roles, CALDAV_QUEUE]


def queue_names(prefix: str, channels: Iterable[str] | None = None) -> list[str]:
    """RQ queue names for :func:`queue_roles` (``careloop-sms-urgent``, ``careloop-route``, …)."""
    return [f"{prefix}-{role}" for role in queue_roles(channels)]


ROUTE_BATCH_SIZE = 25
"""Events one routing job routes when they were recorded together (a batch, the relay): one RQ
job instead of 25, and their ordinary deliveries handed over together, in full jobs."""


def route_job_id(event_id: str) -> str:
    """The RQ job id of an event's routing job (one per event)."""
    return f"route-{event_id}"


def caldav_job_id(ref: str) -> str:
    """The RQ job id of a check-in's CalDAV publish job (one at a time per check-in)."""
    return f"caldav-{ref}"


def route_batch_job_id(event_ids: list[str]) -> str:
    """The RQ job id of a routing job for several events (named after the first)."""
    return f"route-{event_ids[0]}-and-{len(event_ids) - 1}"


def retry_due_time(delay: float, now: datetime | None = None) -> datetime:
    """When a job delayed by ``delay`` seconds is due, rounded up to RQ's whole seconds.

    RQ's scheduler keeps whole seconds (it truncates); rounding up means a retry is never
    tried early, so a provider's Retry-After is always honoured.
    """
    due = (now or datetime.now(UTC)) + timedelta(seconds=delay)
    if due.microsecond:
        due = due.replace(microsecond=0) + timedelta(seconds=1)
    return due
