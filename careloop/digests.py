"""Daily digests as database transitions, each one atomic statement.

A digest is one member's one message for a local day's low-priority events on one channel.
Routing attaches each such delivery to the digest of its window (the row is made on first
need with ``ON CONFLICT DO NOTHING`` on (member, channel, window), so concurrent routing
makes exactly one); when it falls due, one worker claims the digest (``pending → sending``,
one conditional UPDATE), then the deliveries attached to it, sends one message and records
the outcome on the digest and on every delivery it carried.

    pending ──claim──▶ sending ──provider accepted──▶ sent
       ▲                  │──nothing left in it──▶ empty (no message)
       └──transient───────┤
                          └──permanent / out of attempts──▶ failed

A delivery attached to a digest is never claimed on its own (``careloop.deliveries`` leaves
rows with a ``digest_id`` alone) until a person retries it after a failure, which detaches it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from careloop import claims
from careloop.models import Delivery, Digest, new_id, utcnow
from careloop.vocabulary import DeliveryStatus, DigestStatus


@dataclass(frozen=True)
class Slot:
    """A digest routing wants a delivery in."""

    notebook_id: str
    member_id: str
    channel: str
    window: str
    due_at: datetime


def ensure(session: Session, slots: list[Slot]) -> dict[tuple[str, str, str], tuple[str, str]]:
    """Make the digests of these slots where none exists (one per member, channel and window,
    whoever else is making it at the same moment). Returns (member, channel, window) → (digest
    id, status)."""
    if not slots:
        return {}
    now = utcnow()
    unique = {(s.member_id, s.channel, s.window): s for s in slots}
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(
        insert(Digest)
        .values(
            [
                {
                    "id": new_id("dig"),
                    "notebook_id": s.notebook_id,
                    "member_id": s.member_id,
                    "channel": s.channel,
                    "window": s.window,
                    "due_at": s.due_at,
                    "status": DigestStatus.PENDING,
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                }
                for s in unique.values()
            ]
        )
        .on_conflict_do_nothing(index_elements=["member_id", "channel", "window"])
    )
    rows = session.execute(
        select(Digest.id, Digest.member_id, Digest.channel, Digest.window, Digest.status).where(
            or_(*(and_(Digest.member_id == m, Digest.channel == c, Digest.window == w) for m, c, w in unique))
        )
    ).all()
    return {(r.member_id, r.channel, r.window): (r.id, r.status) for r in rows}


def closed_attachments(session: Session, delivery_ids: list[str]) -> list[tuple[str, str]]:
    """(delivery id, digest id) of these deliveries still waiting in a digest that is no longer
    collecting (it went out, or is going out, as they were attached): they need a later one."""
    if not delivery_ids:
        return []
    rows = session.execute(
        select(Delivery.id, Delivery.digest_id)
        .join(Digest, Digest.id == Delivery.digest_id)
        .where(
            Delivery.id.in_(delivery_ids),
            Delivery.status == DeliveryStatus.QUEUED,
            Digest.status != DigestStatus.PENDING,
        )
    ).all()
    return [(r.id, r.digest_id) for r in rows]


def move(session: Session, delivery_id: str, from_digest: str, to_digest: str, due_at: datetime) -> bool:
    """Move a waiting delivery to another digest, unless the first one's worker took it meanwhile."""
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.id == delivery_id,
            Delivery.digest_id == from_digest,
            Delivery.status == DeliveryStatus.QUEUED,
        )
        .values(digest_id=to_digest, next_attempt_at=due_at, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def claim(session: Session, digest_id: str, token: str, now: datetime | None = None) -> int | None:
    """Atomically take a due, pending digest for sending. Returns its attempt number, or None
    when someone else has it (or it is not due, or is done)."""
    return claims.claim(session, Digest, digest_id, token, now or utcnow())


def claim_deliveries(session: Session, digest_id: str, token: str) -> list[str]:
    """Take every delivery waiting in a digest this worker has claimed (same token). Returns
    their ids, oldest first."""
    now = utcnow()
    ids = session.scalars(
        update(Delivery)
        .where(Delivery.digest_id == digest_id, Delivery.status == DeliveryStatus.QUEUED)
        .values(
            status=DeliveryStatus.SENDING,
            attempts=Delivery.attempts + 1,
            round_attempts=Delivery.round_attempts + 1,
            claim_token=token,
            claimed_at=now,
            updated_at=now,
        )
        .returning(Delivery.id)
        .execution_options(synchronize_session=False)
    ).all()
    session.commit()
    if not ids:
        return []
    return list(
        session.scalars(
            select(Delivery.id).where(Delivery.id.in_(ids)).order_by(Delivery.created_at, Delivery.id)
        ).all()
    )


def _owned(digest_id: str, token: str):
    return and_(Digest.id == digest_id, Digest.claim_token == token)


def _carried(digest_id: str, token: str):
    return and_(
        Delivery.digest_id == digest_id,
        Delivery.claim_token == token,
        Delivery.status == DeliveryStatus.SENDING,
    )


def mark_provider_called(session: Session, digest_id: str, token: str) -> bool:
    """Record, before the provider is called, that this attempt is about to call it. False:
    the claim is no longer this worker's, and the provider must not be called."""
    now = utcnow()
    result = session.execute(
        update(Digest)
        .where(_owned(digest_id, token), Digest.status == DigestStatus.SENDING)
        .values(provider_called_at=now)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Delivery)
        .where(_carried(digest_id, token))
        .values(provider_called_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def mark_sent(session: Session, digest_id: str, token: str, provider_id: str, status: DeliveryStatus) -> None:
    """The provider accepted the digest: it and every delivery it carried are sent."""
    now = utcnow()
    session.execute(
        update(Digest)
        .where(_owned(digest_id, token), Digest.status == DigestStatus.SENDING)
        .values(status=DigestStatus.SENT, provider_id=provider_id, error=None, sent_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Delivery)
        .where(_carried(digest_id, token))
        .values(status=status, provider_id=provider_id, error=None, sent_at=now, hold=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def mark_empty(session: Session, digest_id: str, token: str) -> None:
    """Nothing was left in the digest when it fell due: no message is sent."""
    session.execute(
        update(Digest)
        .where(_owned(digest_id, token), Digest.status == DigestStatus.SENDING)
        .values(status=DigestStatus.EMPTY, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()


def mark_failed(session: Session, digest_id: str, token: str, reason: str) -> None:
    """careloop gave up on the digest: it and its deliveries are failed with ``reason`` (each
    delivery may be retried by a person, and then goes on its own)."""
    now = utcnow()
    session.execute(
        update(Digest)
        .where(_owned(digest_id, token), Digest.status == DigestStatus.SENDING)
        .values(status=DigestStatus.FAILED, error=reason, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Delivery)
        .where(_carried(digest_id, token))
        .values(status=DeliveryStatus.FAILED, error=reason, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def requeue(session: Session, digest_id: str, token: str, reason: str, delay: float) -> datetime:
    """Give the digest (and what it carried) back for a later try; returns when it is due."""
    now = utcnow()
    due = now + timedelta(seconds=delay)
    session.execute(
        update(Digest)
        .where(_owned(digest_id, token), Digest.status == DigestStatus.SENDING)
        .values(status=DigestStatus.PENDING, error=reason, due_at=due, enqueued_at=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Delivery)
        .where(_carried(digest_id, token))
        .values(status=DeliveryStatus.QUEUED, error=reason, next_attempt_at=due, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return due


def forget_enqueued(session: Session) -> None:
    """Every pending digest counts as never handed to the queue (the queue lost its data)."""
    claims.forget_enqueued(session, Digest)


def mark_enqueued(session: Session, digest_ids: list[str]) -> None:
    claims.mark_enqueued(session, Digest, digest_ids)


def due_for_enqueue(
    session: Session, stale_after: float, limit: int = 500
) -> list[tuple[str, str, datetime]]:
    """(digest id, channel, due time) of pending digests that are due and were not handed to
    the queue in the last ``stale_after`` seconds."""
    rows = claims.due_for_enqueue(session, Digest, stale_after, limit, lock=True)
    return [(r.id, r.channel, r.due_at) for r in rows]


def stale_claims(session: Session, claim_timeout: float, limit: int = 100) -> list[tuple[str, str, bool]]:
    """(digest id, claim token, provider called) of digests sending for longer than the claim timeout."""
    return claims.stale_claims(session, Digest, claim_timeout, limit)


def release(session: Session, digest_id: str, token: str, reason: str) -> bool:
    """A claimed digest whose provider was never called: back to pending, due now, and the
    claim does not count as an attempt."""
    now = utcnow()
    result = session.execute(
        update(Digest)
        .where(
            _owned(digest_id, token),
            Digest.status == DigestStatus.SENDING,
            Digest.provider_called_at.is_(None),
        )
        .values(
            status=DigestStatus.PENDING,
            attempts=Digest.attempts - 1,
            error=reason,
            due_at=now,
            enqueued_at=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:
        session.execute(
            update(Delivery)
            .where(_carried(digest_id, token))
            .values(
                status=DeliveryStatus.QUEUED,
                attempts=Delivery.attempts - 1,
                round_attempts=Delivery.round_attempts - 1,
                next_attempt_at=now,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
    session.commit()
    return result.rowcount == 1
