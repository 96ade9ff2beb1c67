"""Outbound webhooks, the core: which endpoints hear about an event, their messages' sequence
numbers, what a message says, and an endpoint's health (attempts, failing, disabled).

A webhook message is a row of ``deliveries`` with channel ``webhook`` and the endpoint's id in
``member_id``: it is claimed, sent, retried, dead-lettered and found again after a crash by the
same machinery as texts and emails (careloop.deliveries, the workers, the relay). Its
``sequence`` numbers the endpoint's messages 1, 2, 3 … with no gap and no number twice: the
number is taken while the endpoint's row is locked, in the transaction that writes the message.
A message's body is made from the event (which never changes), so every attempt and the
``messages`` listing carry the same body; only the signature's timestamp is new each time.

Receivers de-duplicate by ``webhook-id`` (the message id): a message may arrive more than once
(an answer lost to a timeout, a replay), never with another id.
"""

from __future__ import annotations

import base64
import json
import secrets
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from careloop.models import (
    Delivery,
    Event,
    WebhookAttempt,
    WebhookEndpoint,
    WebhookEndpointNotebook,
    new_id,
    utcnow,
)
from careloop.queues import delivery_queue
from careloop.serialize import iso
from careloop.vocabulary import IN_FLIGHT_STATUSES, WEBHOOK_CHANNEL, DeliveryStatus

PayloadKind = Literal["full", "thin"]
"""``full``: the event as recorded (no contact details are ever part of one); ``thin``: ids only."""

SECRET_PREFIX = "whsec_"
"""Standard Webhooks' prefix of a signing secret (base64 of 32 random bytes follows)."""

MESSAGE_PREFIX = "msg"
"""Webhook message ids are ``msg_…`` (the ``webhook-id`` header)."""

WEBHOOK_QUEUE = delivery_queue(WEBHOOK_CHANNEL, urgent=False)
"""The queue every webhook message goes to: a slow clinic server never delays a text."""

REPLAY_LIMIT = 1000
"""Most messages one replay sends again or makes."""


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def endpoint_notebooks(session: Session, endpoint_id: str) -> list[str]:
    return list(
        session.scalars(
            select(WebhookEndpointNotebook.notebook_id)
            .where(WebhookEndpointNotebook.endpoint_id == endpoint_id)
            .order_by(WebhookEndpointNotebook.notebook_id)
        )
    )


def event_body(event: Event, payload: PayloadKind) -> dict:
    """The ``data`` of a message about ``event``: the event as recorded, or its ids only."""
    if payload == "thin":
        return {"id": event.id, "notebook_id": event.notebook_id, "type": event.type}
    return {
        "id": event.id,
        "notebook_id": event.notebook_id,
        "type": event.type,
        "data": event.data,
        "occurred_at": iso(event.occurred_at),
        "recorded_at": iso(event.recorded_at),
        "author_member_id": event.author_member_id,
    }


def message_document(message: Delivery, event: Event, payload: PayloadKind) -> dict:
    """A message as the endpoint receives it (Standard Webhooks' ``type``/``timestamp``/``data``,
    with careloop's ``id`` and ``sequence``)."""
    return {
        "id": message.id,
        "type": event.type,
        "timestamp": iso(event.recorded_at),
        "endpoint_id": message.member_id,
        "sequence": message.sequence,
        "data": event_body(event, payload),
    }


def message_body(message: Delivery, event: Event, payload: PayloadKind) -> str:
    """The exact bytes (as text) posted and signed: compact, ASCII, the same on every attempt."""
    return json.dumps(message_document(message, event, payload), separators=(",", ":"))


def _lock(session: Session, endpoint_id: str) -> int | None:
    """Lock the endpoint's row for this transaction (PostgreSQL: the row; SQLite: the database,
    whose single writer this takes) and return its last sequence number; None if it is gone or
    disabled. A no-op UPDATE is the one lock both databases take the same way."""
    return session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.enabled.is_(True))
        .values(last_sequence=WebhookEndpoint.last_sequence)
        .returning(WebhookEndpoint.last_sequence)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()


def _add_message(session: Session, endpoint_id: str, event: Event, now: datetime) -> str | None:
    """The endpoint's message about ``event``, numbered next, unless it has one. Call with the
    transaction open; the caller commits."""
    last = _lock(session, endpoint_id)
    if last is None:
        return None
    exists = session.scalar(
        select(Delivery.id).where(
            Delivery.event_id == event.id,
            Delivery.member_id == endpoint_id,
            Delivery.channel == WEBHOOK_CHANNEL,
        )
    )
    if exists:
        return None
    message_id = new_id(MESSAGE_PREFIX)
    session.add(
        Delivery(
            id=message_id,
            event_id=event.id,
            notebook_id=event.notebook_id,
            member_id=endpoint_id,
            channel=WEBHOOK_CHANNEL,
            queue=WEBHOOK_QUEUE,
            status=DeliveryStatus.QUEUED,
            rules=[],
            attempts=0,
            round_attempts=0,
            sequence=last + 1,
            created_at=now,
            updated_at=now,
            next_attempt_at=now,
        )
    )
    session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id)
        .values(last_sequence=last + 1)
        .execution_options(synchronize_session=False)
    )
    session.flush()
    return message_id


def wanted_by(session: Session, event: Event) -> list[str]:
    """The ids of the enabled endpoints that want ``event`` (its notebook, its type), in order."""
    rows = session.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.event_types)
        .join(WebhookEndpointNotebook, WebhookEndpointNotebook.endpoint_id == WebhookEndpoint.id)
        .where(WebhookEndpointNotebook.notebook_id == event.notebook_id, WebhookEndpoint.enabled.is_(True))
    ).all()
    return sorted(row.id for row in rows if event.type in (row.event_types or ()))


def plan_messages(session: Session, event_id: str, endpoint_ids: list[str]) -> list[str]:
    """Make the messages of these endpoints (:func:`wanted_by`) about the event, where they have
    none yet; commit. Returns the new messages' ids. Safe to run twice and at the same time as
    itself: the endpoints are locked in id order before anything is read, so two routings never
    wait on each other in a circle and the second sees what the first made."""
    if not endpoint_ids:
        return []
    now = utcnow()
    made = []
    try:
        event = None
        for endpoint_id in sorted(endpoint_ids):
            if _lock(session, endpoint_id) is None:
                continue
            event = event or session.get(Event, event_id)
            message_id = _add_message(session, endpoint_id, event, now)
            if message_id:
                made.append(message_id)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return made


def replay(
    session: Session,
    endpoint: WebhookEndpoint,
    event_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[str], list[str]]:
    """Send an endpoint's messages again: the one about ``event_id``, or those about events
    recorded in [since, until). Events it wanted but has no message about (they came before
    the endpoint, or while it was disabled) get one, numbered next. Messages in flight are
    left alone. Re-enables a disabled endpoint (a person asked for its messages). Commits.

    Returns (ids sent again, ids made).
    """
    now = utcnow()
    endpoint.enabled = True
    endpoint.disabled_at = None
    endpoint.disabled_reason = None
    endpoint.failing_since = None
    endpoint.admin_notified_at = None
    session.commit()
    notebooks = endpoint_notebooks(session, endpoint.id)
    events = select(Event).where(Event.notebook_id.in_(notebooks), Event.type.in_(endpoint.event_types or []))
    if event_id is not None:
        events = events.where(Event.id == event_id)
    if since is not None:
        events = events.where(Event.recorded_at >= since)
    if until is not None:
        events = events.where(Event.recorded_at < until)
    chosen = session.scalars(events.order_by(Event.recorded_at, Event.id).limit(REPLAY_LIMIT)).all()
    ids = [e.id for e in chosen]
    existing = dict(
        session.execute(
            select(Delivery.event_id, Delivery.id).where(
                Delivery.member_id == endpoint.id,
                Delivery.channel == WEBHOOK_CHANNEL,
                Delivery.event_id.in_(ids),
            )
        ).all()
    )
    resent: list[str] = []
    if existing:
        resent = session.scalars(
            update(Delivery)
            .where(Delivery.status.not_in(IN_FLIGHT_STATUSES))
            .values(
                status=DeliveryStatus.QUEUED,
                round_attempts=0,
                provider_id=None,
                error=None,
                next_attempt_at=now,
                enqueued_at=None,
                claim_token=None,
                updated_at=now,
            )
            .where(Delivery.id.in_(list(existing.values())))
            .returning(Delivery.id)
            .execution_options(synchronize_session=False)
        ).all()
    session.commit()
    made = []
    try:
        for event in chosen:
            if event.id not in existing:
                message_id = _add_message(session, endpoint.id, event, now)
                if message_id:
                    made.append(message_id)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return list(resent), made


def record_attempt(
    session: Session,
    message: Delivery,
    status_code: int | None,
    latency_ms: int,
    error: str | None,
    now: datetime,
) -> None:
    session.add(
        WebhookAttempt(
            endpoint_id=message.member_id,
            message_id=message.id,
            sequence=message.sequence or 0,
            attempted_at=now,
            status_code=status_code,
            latency_ms=latency_ms,
            error=error,
        )
    )
    session.commit()


def note_success(session: Session, endpoint_id: str) -> None:
    session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.failing_since.is_not(None))
        .values(failing_since=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def note_failure(session: Session, endpoint_id: str, now: datetime, disable_after: float) -> bool:
    """Record a failed attempt; disable the endpoint once it has failed, with no success, for
    ``disable_after`` seconds. Returns True when this call disabled it."""
    session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.failing_since.is_(None))
        .values(failing_since=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    cutoff = now - timedelta(seconds=disable_after)
    reason = f"failing for more than {_days(disable_after)} without one success"
    return disable(session, endpoint_id, reason, WebhookEndpoint.failing_since <= cutoff)


def _days(seconds: float) -> str:
    days = seconds / 86400
    return f"{days:g} days" if days >= 1 else f"{seconds:g} seconds"


def disable(session: Session, endpoint_id: str, reason: str, *conditions) -> bool:
    """Disable an enabled endpoint (no new messages; its queued ones fail when tried).
    Returns True when this call disabled it."""
    now = utcnow()
    result = session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.enabled.is_(True), *conditions)
        .values(enabled=False, disabled_at=now, disabled_reason=reason, admin_notified_at=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def unnotified_disabled(session: Session, limit: int = 50) -> list[WebhookEndpoint]:
    """Disabled endpoints the admin has not been told about yet."""
    return list(
        session.scalars(
            select(WebhookEndpoint)
            .where(
                WebhookEndpoint.enabled.is_(False),
                WebhookEndpoint.disabled_at.is_not(None),
                WebhookEndpoint.admin_notified_at.is_(None),
            )
            .order_by(WebhookEndpoint.disabled_at)
            .limit(limit)
        )
    )


def mark_notified(session: Session, endpoint_id: str, disabled_at: datetime) -> None:
    session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.disabled_at == disabled_at)
        .values(admin_notified_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()


def delete_endpoint(session: Session, endpoint_id: str) -> None:
    """The endpoint, its notebook list, its attempts and its messages; commits."""
    session.execute(
        delete(Delivery).where(Delivery.member_id == endpoint_id, Delivery.channel == WEBHOOK_CHANNEL)
    )
    session.execute(delete(WebhookAttempt).where(WebhookAttempt.endpoint_id == endpoint_id))
    session.execute(delete(WebhookEndpointNotebook).where(WebhookEndpointNotebook.endpoint_id == endpoint_id))
    session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id))
    session.commit()


def messages_after(
    session: Session, endpoint_id: str, after: int, limit: int
) -> list[tuple[Delivery, Event]]:
    """The endpoint's messages numbered above ``after``, in order (for a receiver's gap)."""
    return [
        (row.Delivery, row.Event)
        for row in session.execute(
            select(Delivery, Event)
            .join(Event, Event.id == Delivery.event_id)
            .where(
                Delivery.member_id == endpoint_id,
                Delivery.channel == WEBHOOK_CHANNEL,
                Delivery.sequence > after,
            )
            .order_by(Delivery.sequence)
            .limit(limit)
        )
    ]
