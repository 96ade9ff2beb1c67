"""Claims on rows a worker sends once: a daily digest (``careloop.digests``) or a reminder
(``careloop.reminders``).

Such a row is the promise, Redis only wakes a worker for it. It is ``pending`` until a worker
takes it with one conditional UPDATE (``pending`` → ``sending``, a claim token, an attempt
counted); the worker records ``provider_called_at`` before it calls the provider, so a claim
that outlives the claim timeout is either released (never called: sent again) or settled
without a second send. The relay hands over what is due and was not handed to the queue
lately (``enqueued_at``), and forgets every hand-over when the queue lost its data.

The models share these columns: ``id``, ``status``, ``attempts``, ``claim_token``,
``claimed_at``, ``provider_called_at``, ``due_at``, ``channel``, ``enqueued_at`` and
``updated_at``. Deliveries have more states than these and keep their own
(``careloop.deliveries``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from careloop.models import utcnow

PENDING, SENDING = "pending", "sending"
"""The two states every claimable row shares (``DigestStatus``, ``ReminderStatus``)."""


def claim(session: Session, model, row_id: str, token: str, now: datetime, *also) -> int | None:
    """Atomically take a due, pending row (and ``also`` holds) for sending; commit. Returns its
    attempt number, or None when someone else has it (or it is not due, or is done)."""
    row = session.execute(
        update(model)
        .where(model.id == row_id, model.status == PENDING, model.due_at <= now, *also)
        .values(
            status=SENDING,
            attempts=model.attempts + 1,
            claim_token=token,
            claimed_at=now,
            provider_called_at=None,
            updated_at=now,
        )
        .returning(model.attempts)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    session.commit()
    return None if row is None else row.attempts


def stale_claims(
    session: Session, model, claim_timeout: float, limit: int = 100
) -> list[tuple[str, str, bool]]:
    """(id, claim token, provider called) of rows sending for longer than the claim timeout."""
    cutoff = utcnow() - timedelta(seconds=claim_timeout)
    rows = session.execute(
        select(model.id, model.claim_token, model.provider_called_at)
        .where(model.status == SENDING, model.claimed_at < cutoff)
        .limit(limit)
    ).all()
    return [(r.id, r.claim_token, r.provider_called_at is not None) for r in rows]


def due_for_enqueue(session: Session, model, stale_after: float, limit: int, lock: bool = False) -> list[Row]:
    """(id, channel, due_at) of pending rows that are due and were not handed to the queue in
    the last ``stale_after`` seconds, soonest first; ``lock``: rows another sweep holds are
    passed over (PostgreSQL)."""
    now = utcnow()
    cutoff = now - timedelta(seconds=stale_after)
    query = (
        select(model.id, model.channel, model.due_at)
        .where(
            model.status == PENDING,
            model.due_at <= now,
            or_(model.enqueued_at.is_(None), model.enqueued_at <= cutoff),
        )
        .order_by(model.due_at)
        .limit(limit)
    )
    if lock:
        query = query.with_for_update(skip_locked=True)
    return list(session.execute(query).all())


def mark_enqueued(session: Session, model, row_ids: list[str], pending_only: bool = False) -> None:
    """These rows were handed to the queue just now; commit."""
    if row_ids:
        where = [model.id.in_(row_ids)] + ([model.status == PENDING] if pending_only else [])
        session.execute(
            update(model)
            .where(*where)
            .values(enqueued_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        session.commit()


def forget_enqueued(session: Session, model) -> None:
    """Every pending row counts as never handed to the queue (the queue lost its data)."""
    session.execute(
        update(model)
        .where(model.status == PENDING)
        .values(enqueued_at=None)
        .execution_options(synchronize_session=False)
    )
