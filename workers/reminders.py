"""The reminder job: one check-in reminder for one attendee, sent once.

It takes a reminder id, first re-plans the reminder's check-in (a move or a cancellation not yet
routed must not be reminded at the old time), then claims the reminder (one conditional UPDATE:
of several workers running its job, one wins) and sends it. A transient provider error tries
again on the retry schedule while the check-in has not begun; a provider that may or may not
have the message is asked (Twilio), else the reminder fails as "outcome unknown" rather than
risk a second one.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from careloop import deliveries as dl
from careloop import reminders as rm
from careloop.db import session_scope
from careloop.integrations.base import DeliveryError, OutcomeUnknown
from careloop.messages import MemberLink
from careloop.models import Checkin, Delivery, Event, Member, Notebook, Reminder, utcnow
from careloop.runtime import Runtime
from careloop.vocabulary import ChannelKind, DeliveryStatus, ReminderStatus
from careloop.workers.jobs import DATABASE_ERRORS, _runtime, member_link

log = logging.getLogger("careloop.workers")


def send_reminder(reminder_id: str, runtime: Runtime | None = None) -> str:
    """Send one reminder if it is due, still wanted, and nobody else has it. Returns what became
    of it (``sent``, ``failed``, ``pending`` for a retry, ``rescheduled`` when run early,
    ``not-claimed``). Safe to run any number of times, by any number of workers."""
    runtime = _runtime(runtime)
    try:
        with session_scope(runtime.database_url) as session:
            checkin_pk = session.scalar(select(Reminder.checkin_pk).where(Reminder.id == reminder_id))
            if checkin_pk is None:
                return "not-claimed"
            rm.hand_over(session, runtime.dispatcher, rm.sync_checkin(session, checkin_pk, _offsets(runtime)))
        with session_scope(runtime.database_url, autocommit=True) as session:
            return _send(session, runtime, reminder_id)
    except DATABASE_ERRORS as exc:
        # Nothing is lost: a pending reminder is handed over again by the relay, and a claim
        # left 'sending' is settled by it after the claim timeout.
        log.warning("reminder %s: the database is unavailable (%s); left for the relay", reminder_id, exc)
        return "database-unavailable"


def _offsets(runtime: Runtime) -> tuple[int, ...]:
    return runtime.settings.reminder_offsets


def _send(session: Session, runtime: Runtime, reminder_id: str) -> str:
    if rm.give_way_if_late(session, reminder_id):
        log.info("reminder %s: late, a nearer one goes instead", reminder_id)
        return ReminderStatus.CANCELLED
    token = dl.new_claim_token()
    attempt = rm.claim(session, reminder_id, token)
    if attempt is None:
        row = session.get(Reminder, reminder_id)
        now = utcnow()
        if row is not None and row.status == ReminderStatus.PENDING and row.due_at > now < row.starts_at:
            rm.hand_over(session, runtime.dispatcher, [rm.Due(row.id, row.channel, row.due_at)])
            return "rescheduled"  # run before its time: wait for it
        return "not-claimed"
    row = session.get(Reminder, reminder_id)
    member = session.get(Member, row.member_id)
    notebook = session.get(Notebook, row.notebook_id)
    checkin = session.get(Checkin, row.checkin_pk)
    if member is None or notebook is None or checkin is None or not member.active:
        rm.mark_failed(session, reminder_id, token, "the member or the check-in no longer exists")
        return ReminderStatus.FAILED
    channel = runtime.channels[ChannelKind(row.channel)]
    missing = channel.unreachable_reason(member)
    if missing:
        rm.mark_failed(session, reminder_id, token, missing)
        return ReminderStatus.FAILED
    occurrence = next(
        (
            o
            for o in rm.occurrences(checkin.details or {}, notebook.timezone, row.starts_at)
            if o.key == row.occurrence
        ),
        None,
    )
    message = rm.render(
        rm.ReminderView(
            id=row.id,
            attempt=attempt,
            channel=row.channel,
            starts_at=row.starts_at,
            ends_at=row.ends_at,
            title=occurrence.title if occurrence else (checkin.details or {}).get("title") or "Check-in",
            location=occurrence.location if occurrence else None,
            created_at=row.created_at,
        ),
        notebook.child_name,
        member,
        member.timezone or notebook.timezone,
        utcnow(),
        _link(session, runtime, checkin, member),
    )
    if not rm.mark_provider_called(session, reminder_id, token):
        return "not-claimed"
    try:
        receipt = channel.send(message)
    except DeliveryError as exc:
        return _after_refusal(session, runtime, row, token, attempt, message, exc)
    rm.mark_sent(session, reminder_id, token, receipt.provider_id)
    log.info("reminder %s sent by %s (%s)", reminder_id, row.channel, receipt.provider_id)
    return ReminderStatus.SENT


def _link(session: Session, runtime: Runtime, checkin: Checkin, member: Member) -> MemberLink | None:
    """The member's own link to the check-in: the one their latest invite for it carries."""
    rows = session.execute(
        select(Delivery, Event.context)
        .join(Event, Event.id == Delivery.event_id)
        .where(
            Delivery.member_id == member.id,
            Delivery.notebook_id == checkin.notebook_id,
            Delivery.channel == ChannelKind.CALENDAR,
            Delivery.status != DeliveryStatus.SKIPPED,
            Event.type.in_(rm.CHECKIN_EVENT_TYPES),
        )
        .order_by(Delivery.created_at.desc())
        .limit(50)
    ).all()
    for delivery, context in rows:
        if ((context or {}).get("checkin") or {}).get("uid") == checkin.uid:
            return member_link(runtime, delivery, member)
    return None


def _after_refusal(
    session, runtime, row: Reminder, token: str, attempt: int, message, exc: DeliveryError
) -> str:
    if exc.maybe_sent and not exc.permanent:
        try:
            receipt = runtime.channels[ChannelKind(row.channel)].lookup(message)
        except (OutcomeUnknown, DeliveryError):
            rm.mark_failed(session, row.id, token, dl.OUTCOME_UNKNOWN)
            return ReminderStatus.FAILED
        if receipt is not None:
            rm.mark_sent(session, row.id, token, receipt.provider_id)
            return ReminderStatus.SENT
    schedule = runtime.settings.retry_schedule
    delay = dl.retry_delay(attempt, schedule, exc.retry_after)
    too_late = (utcnow() - row.starts_at).total_seconds() + delay >= 0
    if exc.permanent or attempt > len(schedule) or too_late:
        reason = exc.reason if exc.permanent else f"gave up after {attempt} attempts: {exc.reason}"
        rm.mark_failed(session, row.id, token, reason)
        log.warning("reminder %s failed: %s", row.id, reason)
        return ReminderStatus.FAILED
    due = rm.requeue(session, row.id, token, exc.reason, delay)
    rm.hand_over(session, runtime.dispatcher, [rm.Due(row.id, row.channel, due)])
    log.info("reminder %s: %s; trying again in %.1fs", row.id, exc.reason, delay)
    return ReminderStatus.PENDING


def recover_stale_reminder(runtime: Runtime, reminder_id: str, token: str, provider_called: bool) -> str:
    """A reminder whose worker vanished mid-send: never sent → pending again, due now; maybe
    sent → failed as "outcome unknown" (a second reminder is worse than none)."""
    with session_scope(runtime.database_url, autocommit=True) as session:
        if not provider_called:
            if rm.release(session, reminder_id, token, "the worker stopped before calling the provider"):
                row = session.get(Reminder, reminder_id)
                rm.hand_over(session, runtime.dispatcher, [rm.Due(row.id, row.channel, row.due_at)])
                return ReminderStatus.PENDING
            return "not-claimed"
        rm.mark_failed(session, reminder_id, token, dl.OUTCOME_UNKNOWN)
        return ReminderStatus.FAILED
