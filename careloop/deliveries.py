"""A delivery's life, as database transitions that are each one atomic UPDATE.

    queued ──claim──▶ sending ──provider accepted──▶ sent ──callback──▶ delivered
       ▲                 │                                   └────────▶ undelivered / failed
       └──transient──────┤
                         └──permanent / out of attempts──▶ failed ──manual retry──▶ queued

``skipped`` is final from the start (the member cannot be reached on that channel). The
statuses and the table of allowed moves are :mod:`careloop.vocabulary`'s.

The claim is the heart of "never twice": a worker may call the provider only after its own
UPDATE moved the row from ``queued`` to ``sending`` and stamped its ``claim_token``; every
later write is conditional on that token. A claim older than the claim timeout is not
resent blindly — see ``workers.jobs.recover_stale``.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from careloop import metrics
from careloop.models import Delivery, utcnow
from careloop.queues import DeliveryJob, delivery_queue
from careloop.vocabulary import RETRYABLE_STATUSES, STATUS_RANK, ChannelKind, DeliveryStatus

OUTCOME_UNKNOWN_PREFIX = "outcome unknown"
"""How every "the provider may or may not have it" reason starts (a provider's report overrules it)."""

OUTCOME_UNKNOWN = (
    f"{OUTCOME_UNKNOWN_PREFIX}: the worker stopped during the provider call and the provider cannot be "
    "asked whether it went through; check with the recipient before retrying"
)


@dataclass(frozen=True)
class Claim:
    delivery_id: str
    token: str
    attempt: int
    round_attempt: int
    provider_called: bool = False
    """Whether this attempt's provider call was (about to be) made: see :func:`mark_provider_called`."""


RETRY_JITTER = 0.1
"""Each retry waits its scheduled delay ±10 %, so a burst of failures does not retry in step."""


def retry_delay(round_attempt: int, schedule: tuple[float, ...], retry_after: float | None = None) -> float:
    """Seconds before the try after attempt ``round_attempt`` (1-based): the schedule's entry,
    jittered, never sooner than a provider's Retry-After (capped at the schedule's longest)."""
    delay = schedule[min(round_attempt, len(schedule)) - 1]
    delay *= 1 + RETRY_JITTER * (2 * random.random() - 1)
    if retry_after is not None:
        delay = max(delay, min(retry_after, max(schedule)))
    return delay


def new_claim_token() -> str:
    return secrets.token_hex(8)


def claim_many(
    session: Session,
    delivery_ids: list[str],
    token: str,
    now: datetime | None = None,
    fill_from: str | None = None,
    fill_to: int = 0,
) -> list[Claim]:
    """Atomically take the queued, due deliveries among ``delivery_ids`` for sending, all under
    one claim token (one UPDATE … RETURNING). Returns the claims in the order given.

    ``fill_from``/``fill_to``: also take other due deliveries of that queue, oldest due first,
    until ``fill_to`` are asked for (rows other workers are claiming are skipped).
    """
    now = now or utcnow()
    delivery_ids = list(dict.fromkeys(delivery_ids))
    if fill_from and len(delivery_ids) < fill_to:
        delivery_ids += session.scalars(
            select(Delivery.id)
            .where(
                Delivery.queue == fill_from,
                Delivery.status == DeliveryStatus.QUEUED,
                or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
                Delivery.digest_id.is_(None),
                Delivery.id.not_in(delivery_ids),
            )
            .order_by(Delivery.next_attempt_at)
            .limit(fill_to - len(delivery_ids))
            .with_for_update(skip_locked=True)
        ).all()
    if not delivery_ids:
        return []
    rows = session.execute(
        update(Delivery)
        .where(
            Delivery.id.in_(delivery_ids),
            Delivery.status == DeliveryStatus.QUEUED,
            or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
            Delivery.digest_id.is_(None),  # a digest's deliveries go only with their digest
        )
        .values(
            status=DeliveryStatus.SENDING,
            attempts=Delivery.attempts + 1,
            round_attempts=Delivery.round_attempts + 1,
            claimed_at=now,
            claim_token=token,
            provider_called_at=None,
            updated_at=now,
        )
        .returning(Delivery.id, Delivery.attempts, Delivery.round_attempts)
        .execution_options(synchronize_session=False)
    ).all()
    session.commit()
    claimed = {row.id: Claim(row.id, token, row.attempts, row.round_attempts) for row in rows}
    return [claimed[i] for i in delivery_ids if i in claimed]


def release(session: Session, claims: list[Claim], reason: str, delay: float) -> None:
    """Give claimed deliveries back untried (their provider was never called): due again in
    ``delay`` seconds, and the claim does not count as an attempt."""
    if not claims:
        return
    now = utcnow()
    session.execute(
        update(Delivery)
        .where(
            Delivery.id.in_([c.delivery_id for c in claims]),
            Delivery.claim_token == claims[0].token,
            Delivery.status == DeliveryStatus.SENDING,
            Delivery.provider_called_at.is_(None),
        )
        .values(
            status=DeliveryStatus.QUEUED,
            attempts=Delivery.attempts - 1,
            round_attempts=Delivery.round_attempts - 1,
            error=reason,
            next_attempt_at=now + timedelta(seconds=delay),
            claim_token=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()


def claim(
    session: Session, delivery_id: str, now: datetime | None = None, token: str | None = None
) -> Claim | None:
    """Atomically take a queued, due delivery for sending. None if someone else has it.

    ``token`` (made by :func:`new_claim_token`) lets a caller that loses the database mid-way
    find its claim again.
    """
    now = now or utcnow()
    token = token or new_claim_token()
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.id == delivery_id,
            Delivery.status == DeliveryStatus.QUEUED,
            or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
            Delivery.digest_id.is_(None),
        )
        .values(
            status=DeliveryStatus.SENDING,
            attempts=Delivery.attempts + 1,
            round_attempts=Delivery.round_attempts + 1,
            claimed_at=now,
            claim_token=token,
            provider_called_at=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if result.rowcount != 1:
        return None
    attempts, round_attempts = session.execute(
        select(Delivery.attempts, Delivery.round_attempts).where(Delivery.id == delivery_id)
    ).one()
    return Claim(delivery_id, token, attempts, round_attempts)


def mark_provider_called(session: Session, c: Claim, commit: bool = True) -> bool:
    """Record, before the provider is called, that this attempt is about to call it.

    A worker that vanishes before this line sent nothing (its claim is simply retried); one
    that vanishes after it may have reached the provider (who is asked, where it can be).
    Returns False when the claim is no longer this worker's (the relay took it over): then
    the provider must not be called. ``commit=False``: the caller commits (it must, before
    calling the provider), together with other writes.
    """
    now = utcnow()
    result = session.execute(
        update(Delivery)
        .where(_owned(c), Delivery.status == DeliveryStatus.SENDING)
        .values(provider_called_at=now)
        .execution_options(synchronize_session=False)
    )
    if commit:
        session.commit()
    return result.rowcount == 1


def seconds_until_due(session: Session, delivery_id: str, now: datetime | None = None) -> float | None:
    """For a queued delivery that is not due yet: how long until it is. None otherwise."""
    row = session.execute(
        select(Delivery.status, Delivery.next_attempt_at, Delivery.digest_id).where(
            Delivery.id == delivery_id
        )
    ).one_or_none()
    session.commit()
    if row is None or row.status != DeliveryStatus.QUEUED or row.next_attempt_at is None or row.digest_id:
        return None
    remaining = (row.next_attempt_at - (now or utcnow())).total_seconds()
    return remaining if remaining > 0 else None


def _owned(c: Claim):
    return and_(Delivery.id == c.delivery_id, Delivery.claim_token == c.token)


def mark_sent(
    session: Session,
    c: Claim,
    provider_id: str,
    status: DeliveryStatus = DeliveryStatus.SENT,
    commit: bool = True,
) -> bool:
    """Record the provider's acceptance. A status a callback already moved further is kept.
    ``commit=False``: the caller commits, together with other writes."""
    now = utcnow()
    result = session.execute(
        update(Delivery)
        .where(_owned(c), Delivery.status.in_((DeliveryStatus.SENDING, DeliveryStatus.FAILED)))
        .values(status=status, provider_id=provider_id, error=None, sent_at=now, updated_at=now)
        .returning(Delivery.channel)
        .execution_options(synchronize_session=False)
    )
    moved = result.first()
    if moved is None:
        # A status callback got here first: keep its status, fill in what it lacked.
        session.execute(
            update(Delivery)
            .where(_owned(c), Delivery.provider_id.is_(None))
            .values(provider_id=provider_id, sent_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        )
    if commit:
        session.commit()
    if moved is not None:
        metrics.delivery_outcome(moved.channel, status)
    return moved is not None


def mark_failed(session: Session, c: Claim, reason: str) -> None:
    now = utcnow()
    moved = session.execute(
        update(Delivery)
        .where(_owned(c), Delivery.status == DeliveryStatus.SENDING)
        .values(status=DeliveryStatus.FAILED, error=reason, updated_at=now)
        .returning(Delivery.channel)
        .execution_options(synchronize_session=False)
    ).first()
    session.commit()
    if moved is not None:
        metrics.delivery_outcome(moved.channel, DeliveryStatus.FAILED)


def requeue(session: Session, c: Claim, reason: str, delay: float) -> datetime:
    """Give the delivery back for a later try; returns when it is due. It counts as not handed
    to the queue until the caller's hand-over says so (else the relay does it when due)."""
    now = utcnow()
    due = now + timedelta(seconds=delay)
    moved = session.execute(
        update(Delivery)
        .where(_owned(c), Delivery.status == DeliveryStatus.SENDING)
        .values(
            status=DeliveryStatus.QUEUED, error=reason, next_attempt_at=due, enqueued_at=None, updated_at=now
        )
        .returning(Delivery.channel)
        .execution_options(synchronize_session=False)
    ).first()
    session.commit()
    if moved is not None:
        metrics.delivery_retried(moved.channel, "automatic")
    return due


def forget_enqueued(session: Session) -> None:
    """Every queued delivery counts as never handed to the queue (the queue lost its data)."""
    session.execute(
        update(Delivery)
        .where(Delivery.status == DeliveryStatus.QUEUED)
        .values(enqueued_at=None)
        .execution_options(synchronize_session=False)
    )


def mark_enqueued(session: Session, jobs: list[DeliveryJob]) -> None:
    """Record that these deliveries were handed to the queue now, each with its job's id."""
    if not jobs:
        return
    now = utcnow()
    by_job: dict[str | None, list[str]] = {}
    for job in jobs:
        by_job.setdefault(job.job_id, []).append(job.delivery_id)
    for job_id, ids in by_job.items():
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids))
            .values(enqueued_at=now, job_id=job_id)
            .execution_options(synchronize_session=False)
        )
    session.commit()


def retry_failed(session: Session, delivery_id: str) -> bool:
    """Move a dead letter back to the queue with a fresh attempt budget.

    The attempts before it are closed: their provider id is forgotten and a late report about
    them (see :func:`apply_provider_status`) no longer moves the delivery.
    A delivery that failed with its digest is sent again on its own, at once.
    Idempotent: a second call finds it no longer failed and changes nothing.
    """
    now = utcnow()
    moved = session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.status.in_(RETRYABLE_STATUSES))
        .values(
            status=DeliveryStatus.QUEUED,
            round_attempts=0,
            provider_id=None,
            next_attempt_at=now,
            enqueued_at=now,
            link_issued_at=now,  # a new round: a link with its whole lifetime ahead
            claim_token=None,
            digest_id=None,  # a failed digest's delivery, retried, goes on its own
            hold=None,
            updated_at=now,
        )
        .returning(Delivery.channel)
        .execution_options(synchronize_session=False)
    ).first()
    session.commit()
    if moved is not None:
        metrics.delivery_retried(moved.channel, "manual")
    return moved is not None


def apply_provider_status(
    session: Session,
    delivery_id: str,
    provider_id: str,
    status: DeliveryStatus,
    reason: str | None = None,
    channel: ChannelKind = ChannelKind.SMS,
    attempt: int | None = None,
) -> bool:
    """Apply a provider's status report (a Twilio callback, already mapped to careloop's
    status). Never moves a status backwards.

    A report moves only the attempts it belongs to: ``attempt`` (the number careloop put in
    the callback URL) must be one of the current round's, so a late report about a message
    sent before a person's retry never marks the retry sent. A report without an attempt
    number (a callback URL of an earlier release) counts only for the provider id on record.
    A careloop-side "outcome unknown" failure is overruled by the provider, who knows.
    Only deliveries of ``channel`` take the report (an email's id in an SMS callback URL is
    ignored). ``reason`` is kept as the error of an undelivered or failed report.
    Returns True when the delivery changed.
    """
    delivery = session.get(Delivery, delivery_id, with_for_update=True)
    if delivery is None or delivery.channel != channel or delivery.status == DeliveryStatus.SKIPPED:
        session.rollback()
        return False
    if delivery.provider_id and delivery.provider_id != provider_id:
        session.rollback()
        return False
    if attempt is None:
        current = delivery.provider_id == provider_id
    else:
        current = delivery.attempts - delivery.round_attempts < attempt <= delivery.attempts
    if not current:
        session.rollback()
        return False
    failed = delivery.status == DeliveryStatus.FAILED
    unknown = failed and (delivery.error or "").startswith(OUTCOME_UNKNOWN_PREFIX)
    if not unknown and STATUS_RANK[status] <= STATUS_RANK[DeliveryStatus(delivery.status)]:
        session.rollback()
        return False
    now = utcnow()
    delivery.status = status
    delivery.provider_id = provider_id
    delivery.updated_at = now
    if status == DeliveryStatus.DELIVERED:
        delivery.delivered_at = now
        delivery.error = None
    elif status in (DeliveryStatus.FAILED, DeliveryStatus.UNDELIVERED):
        delivery.error = reason
    else:  # sent: whatever went wrong before (an earlier attempt, "outcome unknown") is over
        delivery.error = None
    if delivery.sent_at is None:
        delivery.sent_at = now
    channel = delivery.channel
    session.commit()
    metrics.delivery_outcome(channel, status)
    return True


def stale_claims(session: Session, claim_timeout: float, limit: int = 100) -> list[tuple[str, str]]:
    """(delivery id, claim token) of sends in flight for longer than the claim timeout."""
    cutoff = utcnow() - timedelta(seconds=claim_timeout)
    rows = session.execute(
        select(Delivery.id, Delivery.claim_token)
        .where(Delivery.status == DeliveryStatus.SENDING, Delivery.claimed_at < cutoff)
        .limit(limit)
    ).all()
    return [(r[0], r[1]) for r in rows]


def untried_claims(session: Session, token: str, exclude: str) -> list[Claim]:
    """Deliveries still claimed by ``token`` whose provider was never called, ``exclude`` aside:
    a batch whose claim committed while its answer was lost with the connection holds these
    without knowing it (the ones it filled the batch with)."""
    rows = session.execute(
        select(Delivery.id, Delivery.attempts, Delivery.round_attempts).where(
            Delivery.claim_token == token,
            Delivery.status == DeliveryStatus.SENDING,
            Delivery.provider_called_at.is_(None),
            Delivery.id != exclude,
        )
    ).all()
    return [Claim(row.id, token, row.attempts, row.round_attempts) for row in rows]


def take_over(session: Session, delivery_id: str, old_token: str) -> Claim | None:
    """Take a stale claim over (atomically), so only one recoverer acts on it."""
    token = secrets.token_hex(8)
    now = utcnow()
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.id == delivery_id,
            Delivery.status == DeliveryStatus.SENDING,
            Delivery.claim_token == old_token,
        )
        .values(claim_token=token, claimed_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if result.rowcount != 1:
        return None
    attempts, round_attempts, called = session.execute(
        select(Delivery.attempts, Delivery.round_attempts, Delivery.provider_called_at).where(
            Delivery.id == delivery_id
        )
    ).one()
    return Claim(delivery_id, token, attempts, round_attempts, provider_called=called is not None)


_JOB_COLUMNS = (Delivery.id, Delivery.queue, Delivery.job_id, Delivery.channel)


def _job(row, keep_job_id: bool = True) -> DeliveryJob:
    # rows from before queues were recorded go to their channel's ordinary queue
    queue = row.queue or delivery_queue(row.channel, urgent=False)
    return DeliveryJob(row.id, queue, row.job_id if keep_job_id else None)


def delivery_jobs(session: Session, delivery_ids: list[str]) -> list[DeliveryJob]:
    """What the dispatcher needs to hand these deliveries over anew (their queues)."""
    if not delivery_ids:
        return []
    rows = session.execute(select(*_JOB_COLUMNS).where(Delivery.id.in_(delivery_ids))).all()
    return [_job(row, keep_job_id=False) for row in rows]


def due_for_enqueue(session: Session, stale_after: float, limit: int = 500) -> list[DeliveryJob]:
    """Queued deliveries that are due and were not handed to the queue in the last
    ``stale_after`` seconds (0: every due one, after Redis lost its data)."""
    now = utcnow()
    cutoff = now - timedelta(seconds=stale_after)
    rows = session.execute(
        select(*_JOB_COLUMNS)
        .where(
            Delivery.status == DeliveryStatus.QUEUED,
            or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
            or_(Delivery.enqueued_at.is_(None), Delivery.enqueued_at <= cutoff),
            Delivery.digest_id.is_(None),  # handed over by their digest
        )
        .order_by(Delivery.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)  # locked until the caller marks them enqueued
    ).all()
    return [_job(row) for row in rows]
