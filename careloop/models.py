"""Database tables. The schema itself is owned by alembic migrations in ``migrations/``."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from careloop.vocabulary import DeliveryStatus, DigestStatus, ReminderStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """A short random id with a prefix saying what it names (``evt_…``, ``dlv_…``)."""
    return f"{prefix}_{secrets.token_hex(10)}"


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes in, aware UTC datetimes out — on SQLite too, which keeps no zone."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Notebook(Base):
    __tablename__ = "notebooks"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("nb"))
    name: Mapped[str] = mapped_column(String(200))
    child_name: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64))
    # Whether emails carry the event's details (only those the recipient's role may see).
    email_detail: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Member(Base):
    __tablename__ = "members"
    __table_args__ = (UniqueConstraint("calendar_feed_hash", name="uq_members_calendar_feed_hash"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("mem"))
    notebook_id: Mapped[str] = mapped_column(ForeignKey("notebooks.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(40))
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(20))
    timezone: Mapped[str | None] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Raised to revoke every member link made before (careloop.links); signed into each token.
    link_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The member texted STOP (or another opt-out keyword): no SMS until they text START.
    sms_opted_out: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # How and when they hear about events (careloop.preferences.Preferences as JSON; None: defaults).
    preferences: Mapped[dict | None] = mapped_column(JSON)
    # Their calendar feed (careloop.calendar_feeds): raised to revoke the feed URL; the SHA-256 of
    # the current URL's token (None until the URL was first shown). The token itself is never kept.
    calendar_feed_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    calendar_feed_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class ApiKey(Base):
    """An API key with a role (careloop.access). Only a SHA-256 of the secret is stored.

    A notebook key (family, clinician, integration) names its notebook in ``notebook_id``; a
    clinic key has none there and reaches the notebooks listed in ``api_key_notebooks``.
    """

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key"))
    notebook_id: Mapped[str | None] = mapped_column(
        ForeignKey("notebooks.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16), default="family", server_default="family")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Written at most once a minute per key (careloop.access.LAST_USED_RESOLUTION).
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ApiKeyNotebook(Base):
    """A notebook a clinic key reaches (one row per notebook)."""

    __tablename__ = "api_key_notebooks"

    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True)
    notebook_id: Mapped[str] = mapped_column(
        ForeignKey("notebooks.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEntry(Base):
    """One line of the audit log: who did what to which notebook's data, from where, and how
    it ended. Append-only: no code updates or deletes a row, and on both databases a trigger
    refuses UPDATE and DELETE (migration 0004). Ids and action names only, never PHI.

    ``notebook_id`` is deliberately no foreign key: the log outlives what it describes.
    """

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_notebook_at", "notebook_id", "at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("aud"))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    notebook_id: Mapped[str | None] = mapped_column(String(40))
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str | None] = mapped_column(String(40))
    action: Mapped[str] = mapped_column(String(64))
    target_id: Mapped[str | None] = mapped_column(String(40))
    remote_addr: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(String(64))


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("notebook_id", "idempotency_key", name="uq_events_idempotency"),
        Index("ix_events_notebook_occurred", "notebook_id", "occurred_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("evt"))
    notebook_id: Mapped[str] = mapped_column(ForeignKey("notebooks.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(40))
    data: Mapped[dict] = mapped_column(JSON)
    # What routing and rendering need beyond `data`, fixed at intake (check-in UID/SEQUENCE).
    context: Mapped[dict] = mapped_column(JSON, default=dict)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    author_member_id: Mapped[str | None] = mapped_column(String(40))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    routed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Checkin(Base):
    """A team check-in as the calendar sees it: one UID, a SEQUENCE raised on every change."""

    __tablename__ = "checkins"
    __table_args__ = (UniqueConstraint("notebook_id", "checkin_id", name="uq_checkins_external"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    notebook_id: Mapped[str] = mapped_column(ForeignKey("notebooks.id", ondelete="CASCADE"))
    checkin_id: Mapped[str] = mapped_column(String(200))
    uid: Mapped[str] = mapped_column(String(200))
    sequence: Mapped[int] = mapped_column(Integer, default=0)
    # title, start, end, location, attendees as last scheduled or updated
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class OutboxEntry(Base):
    """Work promised in the same transaction as the data it is about (transactional outbox).

    ``dispatched_at`` is when the relay last handed it to the queue; ``done_at`` when the job
    finished. An entry dispatched long ago but not done is handed over again.
    """

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_pending", "done_at", "dispatched_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(40))
    ref_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Delivery(Base):
    """One notification: one event, one member, one channel — never two rows for the same."""

    __tablename__ = "deliveries"
    __table_args__ = (
        # One per (event, member, channel) and escalation step (0: the rules' own alerts).
        UniqueConstraint(
            "event_id",
            "member_id",
            "channel",
            "escalation_step",
            name="uq_deliveries_event_member_channel_step",
        ),
        Index("ix_deliveries_status_due", "status", "next_attempt_at"),
        Index("ix_deliveries_queue_due", "queue", "status", "next_attempt_at"),
        Index("ix_deliveries_notebook_status", "notebook_id", "status"),
        Index("ix_deliveries_provider_id", "provider_id"),
        # A webhook message's number among its endpoint's (``member_id`` is the endpoint's id).
        Index("uq_deliveries_endpoint_sequence", "member_id", "sequence", unique=True),
        Index("ix_deliveries_failover_due", "failover_due_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("dlv"))
    event_id: Mapped[str] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"), index=True)
    notebook_id: Mapped[str] = mapped_column(ForeignKey("notebooks.id", ondelete="CASCADE"))
    member_id: Mapped[str] = mapped_column(String(40))
    channel: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.QUEUED)
    rules: Mapped[list] = mapped_column(JSON, default=list)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Attempts since the last manual retry; the retry budget counts these.
    round_attempts: Mapped[int] = mapped_column(Integer, default=0)
    provider_id: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claim_token: Mapped[str | None] = mapped_column(String(40))
    # The queue its jobs go to (``sms``, ``email-urgent``, …: careloop.dispatch.delivery_queue).
    queue: Mapped[str | None] = mapped_column(String(32))
    # The RQ job that carries its next attempt (the relay asks Redis whether it still exists).
    job_id: Mapped[str | None] = mapped_column(String(64))
    # Written (committed) just before the provider is called: a claim whose worker vanished
    # with this older than ``claimed_at`` never reached the provider and is simply retried.
    provider_called_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When this round's member link was issued: set when planned and by a manual retry, so
    # every attempt of a round carries the same link (careloop.links) and a retried dead
    # letter gets a link with its whole lifetime ahead. None on rows older than the column.
    link_issued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Webhook messages only: the message's number among its endpoint's, from 1 without gaps.
    sequence: Mapped[int | None] = mapped_column(Integer)
    # Why a queued delivery waits (careloop.vocabulary.Hold): quiet hours, or a digest.
    hold: Mapped[str | None] = mapped_column(String(16))
    # The digest that carries it (then only the digest's job sends it, never its own).
    digest_id: Mapped[str | None] = mapped_column(String(40), index=True)
    # Escalation (careloop.escalation): the step that sent it (0: routing by the rules), why it
    # exists when not by a rule (an escalation step, a failover), the delivery it failed over
    # from, when an urgent alert not through by then fails over to the member's other channels.
    escalation_step: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    reason: Mapped[str | None] = mapped_column(Text)
    failover_of: Mapped[str | None] = mapped_column(String(40))
    failover_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Who acknowledged it ("I have seen this"): a member id, a key id or "admin"; and how.
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acknowledged_by: Mapped[str | None] = mapped_column(String(40))
    acknowledged_via: Mapped[str | None] = mapped_column(String(16))


class Escalation(Base):
    """An event that waits for someone to acknowledge it (careloop.escalation): until when, its
    escalation steps as planned at routing, the ones fired, and who acknowledged it. ``due_at``
    is when the next step fires — None once acknowledged or when no step is left; firing is
    one conditional UPDATE on ``next_step``, so each step fires once however many sweep."""

    __tablename__ = "escalations"
    __table_args__ = (Index("ix_escalations_due", "due_at"),)

    event_id: Mapped[str] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"), primary_key=True)
    notebook_id: Mapped[str] = mapped_column(ForeignKey("notebooks.id", ondelete="CASCADE"), index=True)
    rule: Mapped[str | None] = mapped_column(String(200))
    acknowledge_within: Mapped[int] = mapped_column(Integer)
    acknowledge_by: Mapped[datetime] = mapped_column(UTCDateTime)
    # [{"step": 1, "targets": [...], "due_at": ISO}], as planned
    steps: Mapped[list] = mapped_column(JSON, default=list)
    # [{"step": 1, "at": ISO, "member_ids": [...], "delivery_ids": [...]}], as fired
    fired: Mapped[list] = mapped_column(JSON, default=list)
    next_step: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acknowledged_by: Mapped[str | None] = mapped_column(String(40))
    acknowledged_via: Mapped[str | None] = mapped_column(String(16))
    acknowledged_delivery_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Digest(Base):
    """One member's daily digest on one channel: one message for a local day's low-priority
    events. At most one per (member, channel, window) — the unique constraint is what makes
    "exactly one digest" hold under concurrent routing and several workers."""

    __tablename__ = "digests"
    __table_args__ = (
        UniqueConstraint("member_id", "channel", "window", name="uq_digests_member_channel_window"),
        Index("ix_digests_status_due", "status", "due_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("dig"))
    notebook_id: Mapped[str] = mapped_column(ForeignKey("notebooks.id", ondelete="CASCADE"))
    member_id: Mapped[str] = mapped_column(String(40))
    channel: Mapped[str] = mapped_column(String(16))
    # The member's local date it goes out on, YYYY-MM-DD.
    window: Mapped[str] = mapped_column(String(10))
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), default=DigestStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claim_token: Mapped[str | None] = mapped_column(String(40))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    provider_called_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    provider_id: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class InstanceSecret(Base):
    """A secret this installation made for itself, shared by every process through the
    database (the member-link signing key, when CARELOOP_SECRET_KEY is not set)."""

    __tablename__ = "instance_secrets"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookEndpoint(Base):
    """A clinic system that is told about events (Standard Webhooks). Its messages are rows of
    ``deliveries`` with channel ``webhook`` and the endpoint's id as ``member_id``."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ep"))
    url: Mapped[str] = mapped_column(String(2000))
    # The signing secret (``whsec_`` + base64): kept as is, the signature needs it.
    secret: Mapped[str] = mapped_column(String(100))
    event_types: Mapped[list] = mapped_column(JSON, default=list)
    payload: Mapped[str] = mapped_column(String(8), default="full")
    # The key that made it (None: the admin key).
    created_by: Mapped[str | None] = mapped_column(String(40))
    # The sequence number of its newest message (0: none yet).
    last_sequence: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    # When its attempts started failing without a success since (None: not failing).
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the admin was emailed that it was disabled (None: not yet, or not disabled).
    admin_notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookEndpointNotebook(Base):
    """The notebooks whose events an endpoint is told about."""

    __tablename__ = "webhook_endpoint_notebooks"

    endpoint_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), primary_key=True
    )
    notebook_id: Mapped[str] = mapped_column(
        ForeignKey("notebooks.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class WebhookAttempt(Base):
    """One HTTP attempt at a webhook message: when, the answer's status, how long it took, what
    went wrong. Never the body (either way)."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_endpoint_time", "endpoint_id", "attempted_at", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(String(40))
    sequence: Mapped[int] = mapped_column(Integer)
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)


class SigninLink(Base):
    """A sign-in link emailed to a care-team member (``careloop.signin_links``): the hash of
    its nonce, whom it signs in, until when, and when it was used — each works once."""

    __tablename__ = "signin_links"

    nonce_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    member_id: Mapped[str] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Source(Base):
    """A system that posts events to careloop, signed per Standard Webhooks.

    The secret is kept as given out (``whsec_…``): Standard Webhooks signatures are HMACs, so
    verifying needs the secret itself, not a hash. After a rotation the previous secret still
    verifies until ``previous_secret_expires_at``.
    """

    __tablename__ = "sources"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("src"))
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(40))
    notebook_id: Mapped[str | None] = mapped_column(
        ForeignKey("notebooks.id", ondelete="CASCADE"), index=True
    )
    secret: Mapped[str] = mapped_column(String(100))
    config: Mapped[dict | None] = mapped_column(JSON)
    """Settings of the source's kind (a ``fhir`` source's ``patients`` map), as saved."""
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    secret_rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    mapping: Mapped[dict | None] = mapped_column(JSON)
    """A ``mapping`` source's field mapping (``careloop.mapping_inbound.MappingSpec``), as saved."""


class InboundRecord(Base):
    """One request posted to a source's webhook URL, whatever became of it.

    ``first_key`` is the webhook-id of a verified request that was decided (accepted or
    rejected after verification); unique per source, it makes a repeat — even a concurrent
    one — a ``duplicate`` that creates nothing. Requests that did not verify hold no
    ``first_key`` (anyone can send any webhook-id) and keep no body.
    """

    __tablename__ = "inbound_records"
    __table_args__ = (
        UniqueConstraint("source_id", "first_key", name="uq_inbound_records_first"),
        Index("ix_inbound_records_source_received", "source_id", "received_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("inb"))
    source_id: Mapped[str] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"))
    webhook_id: Mapped[str | None] = mapped_column(String(200))
    first_key: Mapped[str | None] = mapped_column(String(200))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    event_ids: Mapped[list] = mapped_column(JSON, default=list)
    duplicate_of: Mapped[str | None] = mapped_column(String(40))
    content_type: Mapped[str | None] = mapped_column(String(200))
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    details: Mapped[dict | None] = mapped_column(JSON)
    """What the kind read from the body beside its events (a FHIR subscription notification's
    type and event numbers, and a gap before them), kept whether it was accepted or rejected."""
    reruns: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """How many times the kept body was run again (``careloop.inbound.rerun``)."""
    reran_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Reminder(Base):
    """One reminder of a check-in occurrence for one attendee, ``offset_minutes`` before it, by one
    channel (``careloop.reminders``). The row is the promise (Redis only wakes a worker at
    ``due_at``); the unique constraint makes "exactly once" hold under several workers. A moved
    occurrence has a new ``starts_at``, hence new rows; the old ones are cancelled."""

    __tablename__ = "reminders"
    __table_args__ = (
        UniqueConstraint(
            "checkin_pk", "occurrence", "starts_at", "member_id", "offset_minutes", "channel",
            name="uq_reminders_occurrence_member_offset_channel",
        ),
        Index("ix_reminders_status_due", "status", "due_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("rem"))
    notebook_id: Mapped[str] = mapped_column(ForeignKey("notebooks.id", ondelete="CASCADE"))
    checkin_pk: Mapped[int] = mapped_column(ForeignKey("checkins.id", ondelete="CASCADE"), index=True)
    # The occurrence's original start (RECURRENCE-ID, UTC ISO) in a series; "" for a single check-in.
    occurrence: Mapped[str] = mapped_column(String(40))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    member_id: Mapped[str] = mapped_column(String(40))
    channel: Mapped[str] = mapped_column(String(16))
    offset_minutes: Mapped[int] = mapped_column(Integer)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # quiet_hours: due_at was moved to the end of the member's quiet hours
    hold: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=ReminderStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claim_token: Mapped[str | None] = mapped_column(String(40))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    provider_called_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    provider_id: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CaldavCalendar(Base):
    """The CalDAV calendar a notebook's check-ins are published to (careloop.caldav), if any.

    The password is kept as given: publishing needs it (like a webhook secret); the API never
    returns it and no log line carries it. ``last_error`` says why the last try failed (a
    status or an exception's kind, never a body).
    """

    __tablename__ = "caldav_calendars"

    notebook_id: Mapped[str] = mapped_column(ForeignKey("notebooks.id", ondelete="CASCADE"), primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    username: Mapped[str | None] = mapped_column(String(200))
    password: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    last_published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
