"""Acknowledgement, escalation and urgent failover, as database transitions.

An event that waits for an acknowledgement (``careloop.routing.plan_acknowledgement``) has a
row in ``escalations``, written with its deliveries when it is routed. The row is the only
clock: ``due_at`` says when the next step fires, and the relay's sweep (every
``CARELOOP_RELAY_INTERVAL`` seconds, beside every worker) fires what is due — nothing about
it lives in Redis, so a Redis restart loses nothing. Firing a step is one conditional UPDATE
(``next_step`` from k to k + 1, only while nobody has acknowledged), committed with the step's
deliveries: of several workers sweeping at once, one fires it, once.

Acknowledging any delivery of the event (the API, the member page, an "OK" text) stamps the
delivery and, the first time, the event's row: ``due_at`` goes, and no further step fires.

An urgent concern's alert carries ``failover_due_at``:
not through by then (still queued or retrying, failed, undelivered, skipped), it fails over
— new deliveries for the same member and event on their other channels, with the reason —
once: the sweep's conditional UPDATE clears ``failover_due_at`` before it plans them.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from careloop.models import Delivery, Escalation, new_id, utcnow
from careloop.queues import delivery_queue
from careloop.routing import PlannedAcknowledgement, PlannedDelivery
from careloop.vocabulary import WEBHOOK_CHANNEL, DeliveryStatus

REPLY_WINDOW = timedelta(hours=24)
"""How old an alert an "OK" text may still acknowledge."""

THROUGH = (DeliveryStatus.SENT, DeliveryStatus.DELIVERED)
"""An urgent alert in one of these got through: it does not fail over."""

FAILED_NOW = (DeliveryStatus.FAILED, DeliveryStatus.UNDELIVERED, DeliveryStatus.SKIPPED)
"""An urgent alert in one of these will not get through: it fails over without waiting."""


class AckVia(StrEnum):
    """How a delivery was acknowledged."""

    API = "api"
    """``POST /v1/deliveries/{id}/ack`` with a key (``acknowledged_by``: the key's id or ``admin``)."""
    MEMBER_PAGE = "member_page"
    """The "I have seen this" button on the member's own page."""
    SMS = "sms"
    """A text back: "OK" or "1"."""


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def open_escalation(session: Session, event_id: str, notebook_id: str, plan: PlannedAcknowledgement) -> None:
    """Record that an event waits for an acknowledgement (in the caller's transaction). Routing
    the event again changes nothing: the first row stands."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    steps = [{"step": s.number, "targets": list(s.targets), "due_at": _iso(s.due_at)} for s in plan.steps]
    session.execute(
        insert(Escalation)
        .values(
            event_id=event_id,
            notebook_id=notebook_id,
            rule=plan.rule,
            acknowledge_within=int(plan.within),
            acknowledge_by=plan.acknowledge_by,
            steps=steps,
            fired=[],
            next_step=0,
            due_at=plan.steps[0].due_at if plan.steps else None,
            created_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["event_id"])
    )


def due(session: Session, now: datetime, limit: int = 100) -> list[str]:
    """Events whose next escalation step is due (nobody acknowledged them)."""
    return list(
        session.scalars(
            select(Escalation.event_id)
            .where(Escalation.due_at <= now, Escalation.acknowledged_at.is_(None))
            .order_by(Escalation.due_at)
            .limit(limit)
        ).all()
    )


def pending_step(session: Session, event_id: str, now: datetime) -> tuple[int, dict] | None:
    """(index, step) of the event's step due now, if nobody acknowledged it; read fresh."""
    row = session.execute(
        select(Escalation.next_step, Escalation.steps, Escalation.due_at, Escalation.acknowledged_at).where(
            Escalation.event_id == event_id
        )
    ).one_or_none()
    if row is None or row.acknowledged_at is not None or row.due_at is None or row.due_at > now:
        return None
    if row.next_step >= len(row.steps):
        return None
    return row.next_step, row.steps[row.next_step]


def claim_step(
    session: Session, event_id: str, index: int, now: datetime, member_ids: list[str], delivery_ids: list[str]
) -> bool:
    """Fire step ``index`` (in the caller's transaction, to commit with its deliveries): True for
    the one caller whose UPDATE moved ``next_step`` on, False for every other (or when it was
    acknowledged meanwhile)."""
    steps, fired = session.execute(
        select(Escalation.steps, Escalation.fired).where(Escalation.event_id == event_id)
    ).one()
    following = steps[index + 1]["due_at"] if index + 1 < len(steps) else None
    record = {
        "step": steps[index]["step"],
        "at": _iso(now),
        "member_ids": member_ids,
        "delivery_ids": delivery_ids,
    }
    result = session.execute(
        update(Escalation)
        .where(
            Escalation.event_id == event_id,
            Escalation.next_step == index,
            Escalation.acknowledged_at.is_(None),
        )
        .values(
            next_step=index + 1,
            due_at=_parse(following) if following else None,
            fired=[*(fired or []), record],
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def alert_rows(
    event_id: str,
    notebook_id: str,
    planned: list[PlannedDelivery],
    now: datetime,
    *,
    step: int,
    reason: str,
    failover_of: str | None = None,
) -> list[dict]:
    """Delivery rows for urgent alerts (an escalation step's, or a failover's): due now, on the
    urgent queues. They do not fail over in turn: a step plans every channel already, and a
    failover is the other channel."""
    return [
        {
            "id": new_id("dlv"),
            "event_id": event_id,
            "notebook_id": notebook_id,
            "member_id": p.member_id,
            "channel": p.channel,
            "queue": delivery_queue(p.channel, urgent=True),
            "status": DeliveryStatus.SKIPPED if p.skip_reason else DeliveryStatus.QUEUED,
            "error": p.skip_reason,
            "rules": list(p.rules),
            "attempts": 0,
            "round_attempts": 0,
            "created_at": now,
            "updated_at": now,
            "next_attempt_at": now,
            "link_issued_at": now,
            "escalation_step": step,
            "reason": reason,
            "failover_of": failover_of,
        }
        for p in planned
    ]


def insert_deliveries(session: Session, rows: list[dict]) -> list[str]:
    """Insert delivery rows, ignoring any that exist already; returns the ids inserted."""
    if not rows:
        return []
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return list(
        session.scalars(
            insert(Delivery)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["event_id", "member_id", "channel", "escalation_step"])
            .returning(Delivery.id)
        ).all()
    )


def acknowledge(
    session: Session, delivery: Delivery, by: str, via: AckVia, now: datetime | None = None
) -> bool:
    """Acknowledge a delivery, and its event if nobody has yet (its escalation stops; its urgent
    alerts no longer fail over). Idempotent: the first acknowledgement stands. Commits; True
    when this call acknowledged the delivery."""
    now = now or utcnow()
    moved = session.execute(
        update(Delivery)
        .where(
            Delivery.id == delivery.id,
            Delivery.acknowledged_at.is_(None),
            Delivery.channel != WEBHOOK_CHANNEL,
        )
        .values(acknowledged_at=now, acknowledged_by=by, acknowledged_via=via)
        .execution_options(synchronize_session=False)
    ).rowcount
    first = session.execute(
        update(Escalation)
        .where(Escalation.event_id == delivery.event_id, Escalation.acknowledged_at.is_(None))
        .values(
            acknowledged_at=now,
            acknowledged_by=by,
            acknowledged_via=via,
            acknowledged_delivery_id=delivery.id,
            due_at=None,
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    if first:
        session.execute(
            update(Delivery)
            .where(Delivery.event_id == delivery.event_id, Delivery.failover_due_at.is_not(None))
            .values(failover_due_at=None)
            .execution_options(synchronize_session=False)
        )
    session.commit()
    session.refresh(delivery)
    return moved == 1


def latest_unacknowledged_alert(
    session: Session, member_id: str, now: datetime | None = None
) -> Delivery | None:
    """The member's most recent alert that is not acknowledged, of an event that waits (or
    waited) for an acknowledgement, sent within :data:`REPLY_WINDOW`: what an "OK" text means."""
    since = (now or utcnow()) - REPLY_WINDOW
    return session.scalars(
        select(Delivery)
        .join(Escalation, Escalation.event_id == Delivery.event_id)
        .where(
            Delivery.member_id == member_id,
            Delivery.acknowledged_at.is_(None),
            Delivery.status.in_(THROUGH),
            Delivery.created_at >= since,
        )
        .order_by(Delivery.created_at.desc(), Delivery.id.desc())
        .limit(1)
    ).first()


def failovers_due(session: Session, now: datetime, limit: int = 100) -> list[str]:
    """Urgent alerts that should fail over now: not through at their failover time, or already
    beyond hope (failed, undelivered, skipped). Those that got through stop being watched."""
    session.execute(
        update(Delivery)
        .where(Delivery.failover_due_at <= now, Delivery.status.in_(THROUGH))
        .values(failover_due_at=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return list(
        session.scalars(
            select(Delivery.id)
            .where(
                Delivery.failover_due_at.is_not(None),
                Delivery.status.not_in(THROUGH),
                or_(Delivery.failover_due_at <= now, Delivery.status.in_(FAILED_NOW)),
            )
            .order_by(Delivery.failover_due_at)
            .limit(limit)
        ).all()
    )


def claim_failover(session: Session, delivery_id: str) -> Delivery | None:
    """Take an urgent alert's failover (in the caller's transaction): the delivery for the one
    caller whose UPDATE cleared its ``failover_due_at``, None for every other."""
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.id == delivery_id,
            Delivery.failover_due_at.is_not(None),
            Delivery.status.not_in(THROUGH),
        )
        .values(failover_due_at=None)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    return session.get(Delivery, delivery_id, populate_existing=True)


def acknowledged(session: Session, event_id: str) -> bool:
    return (
        session.scalar(
            select(Escalation.event_id).where(
                and_(Escalation.event_id == event_id, Escalation.acknowledged_at.is_not(None))
            )
        )
        is not None
    )


def tried_channels(session: Session, event_id: str, member_id: str, step: int) -> set[str]:
    """The channels the member already has a delivery on for this event and step."""
    return set(
        session.scalars(
            select(Delivery.channel).where(
                Delivery.event_id == event_id,
                Delivery.member_id == member_id,
                Delivery.escalation_step == step,
            )
        ).all()
    )
