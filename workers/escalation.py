"""Escalation steps and urgent failovers that are due, fired by the relay's sweep.

The database is the clock (``escalations.due_at``, ``deliveries.failover_due_at``); every
relay sweep (beside every ``careloop worker``, in ``careloop relay``, and in the embedded
queue's idle time) fires what is due. Each step and each failover is taken by one conditional
UPDATE committed with its deliveries, so several workers sweeping at once fire it once; the
deliveries are then handed to the queue (or, if Redis is away, by the relay when it is back).
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from careloop import escalation as esc
from careloop import preferences as prefs
from careloop.db import session_scope
from careloop.handover import hand_over_deliveries
from careloop.models import Delivery, Escalation, Event, Member, Notebook, utcnow
from careloop.routing import EventView, MemberView, plan_failover, plan_step
from careloop.runtime import Runtime
from careloop.vocabulary import DeliveryStatus

log = logging.getLogger("careloop.escalation")

BATCH = 100
"""Most steps (and failovers) fired per sweep."""


def _event_view(event: Event) -> EventView:
    return EventView(id=event.id, type=event.type, data=event.data, author_member_id=event.author_member_id)


def _member_view(member: Member, notebook_zone: str | None) -> MemberView:
    return MemberView(
        id=member.id,
        role=member.role,
        email=member.email,
        phone=member.phone,
        active=member.active,
        sms_opted_out=member.sms_opted_out,
        timezone=member.timezone or notebook_zone,
        preferences=prefs.from_stored(member.preferences),
    )


def _team(session: Session, notebook_id: str) -> list[MemberView]:
    zone = session.scalar(select(Notebook.timezone).where(Notebook.id == notebook_id))
    members = session.scalars(
        select(Member).where(Member.notebook_id == notebook_id).order_by(Member.created_at, Member.id)
    ).all()
    return [_member_view(m, zone) for m in members]


def _minutes(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}" if seconds >= 60 else f"{seconds:g} seconds"


def run_due(runtime: Runtime, now: datetime | None = None) -> dict[str, int]:
    """Fire the escalation steps and failovers that are due. Returns how many of each fired."""
    now = now or utcnow()
    fired = {"steps": 0, "failovers": 0}
    with session_scope(runtime.database_url) as session:
        for event_id in esc.due(session, now, BATCH):
            session.commit()
            fired["steps"] += fire_step(session, runtime, event_id, now)
        for delivery_id in esc.failovers_due(session, now, BATCH):
            fired["failovers"] += fail_over(session, runtime, delivery_id, now)
    return fired


def fire_step(session: Session, runtime: Runtime, event_id: str, now: datetime) -> int:
    """Fire the event's due step, if this caller wins it: its alerts are recorded with it, in one
    transaction, then handed to the queue. Returns 1 when it fired here, else 0."""
    pending = esc.pending_step(session, event_id, now)
    event = session.get(Event, event_id)
    if pending is None or event is None:
        session.rollback()
        return 0
    index, step = pending
    number = int(step["step"])
    rule, within = session.execute(
        select(Escalation.rule, Escalation.acknowledge_within).where(Escalation.event_id == event_id)
    ).one()
    team = _team(session, event.notebook_id)
    planned = plan_step(_event_view(event), team, tuple(step["targets"]), rule)
    reason = f"escalation step {number}: nobody acknowledged the alert within {_minutes(within)}"
    rows = esc.alert_rows(
        event.id,
        event.notebook_id,
        planned,
        now,
        step=number,
        reason=reason,
    )
    member_ids = list(dict.fromkeys(p.member_id for p in planned))
    if not esc.claim_step(session, event_id, index, now, member_ids, [r["id"] for r in rows]):
        session.rollback()  # another worker fired it, or someone acknowledged it just now
        return 0
    inserted = esc.insert_deliveries(session, rows)
    session.commit()
    log.info(
        "event %s: escalation step %d fired, %d alerts to %d members", event_id, number, len(inserted),
        len(member_ids),
    )  # fmt: skip
    queued = session.scalars(
        select(Delivery.id).where(Delivery.id.in_(inserted), Delivery.status == DeliveryStatus.QUEUED)
    ).all()
    hand_over_deliveries(session, runtime.dispatcher, list(queued))
    return 1


def fail_over(session: Session, runtime: Runtime, delivery_id: str, now: datetime) -> int:
    """Try the member's other channels for an urgent alert that is not getting through, if this
    caller wins it. Returns 1 when it failed over here (even to nothing: no other channel)."""
    delivery = esc.claim_failover(session, delivery_id)
    if delivery is None:
        session.rollback()
        return 0
    event = session.get(Event, delivery.event_id)
    member = session.get(Member, delivery.member_id)
    if event is None or member is None or esc.acknowledged(session, delivery.event_id):
        session.commit()  # someone has it in hand: nothing more to try
        return 1
    zone = session.scalar(select(Notebook.timezone).where(Notebook.id == event.notebook_id))
    tried = esc.tried_channels(session, event.id, member.id, delivery.escalation_step)
    planned = plan_failover(_event_view(event), _member_view(member, zone), tried)
    if delivery.status in esc.FAILED_NOW:
        why = f"the {delivery.channel} alert could not get through ({delivery.status})"
    else:
        after = _minutes(runtime.settings.urgent_failover_after)
        why = f"the {delivery.channel} alert had not got through after {after}"
    rows = esc.alert_rows(
        event.id,
        event.notebook_id,
        planned,
        now,
        step=delivery.escalation_step,
        reason=f"failover from {delivery.id}: {why}",
        failover_of=delivery.id,
    )
    inserted = esc.insert_deliveries(session, rows)
    session.commit()
    log.info(
        "delivery %s (%s, urgent) failed over to %d other channels",
        delivery_id,
        delivery.channel,
        len(inserted),
    )
    hand_over_deliveries(session, runtime.dispatcher, inserted)
    return 1
