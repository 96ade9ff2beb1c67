"""Reminders of check-ins: planned from the check-in's state, kept as rows, sent once.

Each attendee of a check-in is reminded ``CARELOOP_REMINDER_OFFSETS`` before each occurrence
(24 h and 1 h by default), by their preferred channel for check-ins: the first channel of their
``checkin`` preference that can reach them and is a messaging channel (SMS or email; the
calendar invite is the calendar's entry, not a reminder). A row in ``reminders`` is the promise:
one per (occurrence, start, attendee, offset, channel) — the unique constraint makes "exactly
once" hold under concurrent planning and several workers — and RQ only wakes a worker at its
due time. Redis losing its data loses no reminder: the relay hands due ones over again.

Planning is a reconciliation (:func:`sync_checkin`), run when a check-in event is routed, by
each reminder's own job before it claims, and by the relay's periodic sweep (which also
materializes the next occurrences of a series as time passes): the reminders the check-in's
state wants now are made (or revived, if dropped before), and pending ones it no longer wants
are cancelled with the reason — it moved (the new time has its own rows), it or that
occurrence was cancelled, the attendee was removed, or the check-in has begun. Only
occurrences starting within the longest offset plus :data:`HORIZON_MARGIN` are materialized,
a reminder whose time has already passed when it is planned is not made, and one that runs late
while a nearer one of the same occurrence is due too gives way to it (:func:`give_way_if_late`).

Quiet hours: a reminder :data:`QUIET_HOURS_MIN_OFFSET` minutes or more ahead (the 24 h one)
waits until the member's quiet hours end (if that is still before the check-in); a nearer one
(the 1 h one) is time-critical and goes at its time.

    pending ──claim──▶ sending ──provider accepted──▶ sent
       │ ▲                │──permanent / out of attempts / too late──▶ failed
       │ └──transient─────┘
       └──no longer wanted──▶ cancelled (revived as pending if wanted again)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from zoneinfo import ZoneInfo

from dateutil.rrule import rrulestr
from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from careloop import claims, recurrence
from careloop import preferences as prefs
from careloop.checkins import occurrence_key
from careloop.gsm import to_gsm7
from careloop.messages import MemberLink, OutgoingMessage, first_name
from careloop.models import Checkin, CheckinAnswer, Member, Notebook, Reminder, new_id, utcnow
from careloop.queues import ReminderJob, delivery_queue
from careloop.vocabulary import ChannelKind, Hold, ReminderStatus

log = logging.getLogger("careloop.reminders")

QUIET_HOURS_MIN_OFFSET = 12 * 60
"""Minutes ahead from which a reminder respects the member's quiet hours (nearer ones do not)."""

HORIZON_MARGIN = timedelta(days=2)
"""How far past the longest offset occurrences are materialized (the sweep's slack)."""

SWEEP_INTERVAL = timedelta(seconds=60)
"""How often the relay re-plans every check-in's reminders (routing re-plans a changed one at once)."""

CATEGORY = "checkin"
"""The preference category whose channels reminders use."""

REMINDER_CHANNELS: tuple[ChannelKind, ...] = (ChannelKind.SMS, ChannelKind.EMAIL)
"""Channels a reminder can go by."""

CHECKIN_EVENT_TYPES = ("checkin.scheduled", "checkin.updated", "checkin.cancelled")


# --- planning (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Occurrence:
    """One occurrence as it stands: ``key`` is its original start (RECURRENCE-ID, UTC ISO) in a
    series, "" for a single check-in."""

    key: str
    start: datetime
    end: datetime
    title: str
    location: str | None = None
    cancelled: bool = False


@dataclass(frozen=True)
class Attendee:
    id: str
    email: str | None
    phone: str | None
    sms_opted_out: bool
    timezone: str
    preferences: prefs.Preferences


@dataclass(frozen=True)
class Wanted:
    occurrence: str
    starts_at: datetime
    ends_at: datetime
    member_id: str
    channel: str
    offset_minutes: int
    due_at: datetime
    hold: str | None = None

    @property
    def key(self) -> tuple:
        return (self.occurrence, self.starts_at, self.member_id, self.offset_minutes, self.channel)


def occurrences(details: dict, tzid: str, until: datetime | None = None) -> list[Occurrence]:
    """The occurrences of a check-in as it stands now (moved ones at their new time).

    ``until``: only those whose original start is not after it, and every occurrence changed on
    its own wherever it was or went (the series is expanded lazily, not to its end, each sweep).
    """
    if not details or not details.get("start"):
        return []
    start, end = _aware(details["start"]), _aware(details["end"])
    title, location = details.get("title") or "", details.get("location")
    rule = details.get("recurrence")
    if not rule:
        return [Occurrence("", start, end, title, location)]
    changes = details.get("occurrences") or {}
    originals: dict[str, datetime] = {}
    series = rrulestr(rule, dtstart=start.astimezone(ZoneInfo(tzid)), cache=False)
    for original in islice(series, recurrence.MAX_OCCURRENCES):
        if until is not None and original > until:
            break
        originals[occurrence_key(original)] = original
    for key in changes:  # changed alone: kept by intake only while it is an occurrence of the series
        originals.setdefault(key, datetime.fromisoformat(key))
    found = []
    for key, original in sorted(originals.items(), key=lambda kv: kv[1]):
        change = changes.get(key) or {}
        moved = _aware(change["start"]) if change.get("start") else original
        found.append(
            Occurrence(
                key,
                moved.astimezone(UTC),
                (_aware(change["end"]) if change.get("end") else original + (end - start)).astimezone(UTC),
                change.get("title") or title,
                change.get("location") or location,
                bool(change.get("cancelled")),
            )
        )
    return found


def reminder_channel(attendee: Attendee) -> ChannelKind | None:
    """The attendee's preferred channel for reminders: the first of their check-in channels (in
    their order) that is a messaging channel and can reach them; None: no reminder."""
    for name in attendee.preferences.channels.get(CATEGORY) or ():
        kind = ChannelKind(name)
        if kind in REMINDER_CHANNELS and kind.unreachable_reason(attendee) is None:
            return kind
    return None


def plan(
    found: list[Occurrence], attendees: list[Attendee], offsets: Iterable[int], now: datetime
) -> list[Wanted]:
    """The reminders a check-in wants now, past due ones included (they are not made anew, but a
    pending one is kept). Occurrences that have begun, are cancelled or start beyond the
    horizon want none."""
    offsets = tuple(offsets)
    if not offsets:
        return []
    horizon = now + timedelta(minutes=max(offsets)) + HORIZON_MARGIN
    wanted = []
    for occ in found:
        if occ.cancelled or occ.start <= now or occ.start > horizon:
            continue
        for attendee in attendees:
            channel = reminder_channel(attendee)
            if channel is None:
                continue
            for offset in offsets:
                due, hold = occ.start - timedelta(minutes=offset), None
                if offset >= QUIET_HOURS_MIN_OFFSET:
                    zone = ZoneInfo(attendee.timezone)
                    until = prefs.quiet_until(due, zone, attendee.preferences.quiet_hours)
                    if until is not None and until < occ.start:
                        due, hold = until, Hold.QUIET_HOURS.value
                wanted.append(
                    Wanted(
                        occ.key,
                        occ.start.astimezone(UTC),
                        occ.end.astimezone(UTC),
                        attendee.id,
                        channel.value,
                        offset,
                        due.astimezone(UTC),
                        hold,
                    )
                )
    return wanted


def _aware(value: str) -> datetime:
    return datetime.fromisoformat(value)


# --- the text -----------------------------------------------------------------------------------


def _clock(t: datetime, with_half: bool = True) -> str:
    text = f"{t.hour % 12 or 12}:{t:%M}"
    return f"{text} {'am' if t.hour < 12 else 'pm'}" if with_half else text


def when_text(start: datetime, end: datetime, zone: str, now: datetime, dash: str = "–") -> str:
    """ "tomorrow, Tue 12 Jan, 5:00–5:45 pm CST" in the recipient's zone, as of ``now`` ("today, …",
    or "on Fri 15 Jan, …" further ahead)."""
    tz = ZoneInfo(zone)
    a, b, today = start.astimezone(tz), end.astimezone(tz), now.astimezone(tz).date()
    days = (a.date() - today).days
    day = f"{a:%a} {a.day} {a:%b}"
    lead = "today, " if days == 0 else "tomorrow, " if days == 1 else "on "
    if a.date() != b.date():
        return f"{lead}{day}, {_clock(a)} {a.tzname()}{dash}{b:%a} {b.day} {b:%b}, {_clock(b)} {b.tzname()}"
    same_half = (a.hour < 12) == (b.hour < 12)
    zones = a.tzname() if a.tzname() == b.tzname() else f"{a.tzname()}{dash}{b.tzname()}"
    return f"{lead}{day}, {_clock(a, not same_half)}{dash}{_clock(b)} {zones}"


@dataclass(frozen=True)
class ReminderView:
    id: str
    attempt: int
    channel: str
    starts_at: datetime
    ends_at: datetime
    title: str
    location: str | None
    created_at: datetime | None = None


def render(
    reminder: ReminderView, child_name: str, member: Member, zone: str, now: datetime, link: MemberLink | None
) -> OutgoingMessage:
    """The reminder's message. An email names the check-in (as its invite does) and says where; a
    text names neither (texts never say what an update is about): the child's first name, the
    time, and the member's link."""
    child = first_name(child_name)
    if reminder.channel == ChannelKind.SMS:
        when = when_text(reminder.starts_at, reminder.ends_at, zone, now, dash="-")
        text = f"careloop reminder: {child}'s check-in {when}."
        if link is not None:
            text += f" Details: {link.url}"
        return OutgoingMessage(
            delivery_id=reminder.id,
            attempt=reminder.attempt,
            channel=reminder.channel,
            to=member.phone or "",
            to_name=member.name,
            subject="",
            text=to_gsm7(text),
            created_at=reminder.created_at,
        )
    when = when_text(reminder.starts_at, reminder.ends_at, zone, now)
    subject = f"Reminder: {reminder.title} {when}"
    lines = [f"{subject}.", ""]
    if reminder.location:
        lines += [f"Where: {reminder.location}", ""]
    if link is not None:
        lines += [f"Details and RSVP: {link.url}", ""]
    lines += [f"careloop reminds you of {child}'s care-team check-ins you attend."]
    return OutgoingMessage(
        delivery_id=reminder.id,
        attempt=reminder.attempt,
        channel=reminder.channel,
        to=member.email or "",
        to_name=member.name,
        subject=subject,
        text="\n".join(lines),
        created_at=reminder.created_at,
    )


# --- the rows -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Due:
    """A reminder to hand to the queue: id, channel, when."""

    reminder_id: str
    channel: str
    due_at: datetime


def _insert(session: Session):
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _attendees(session: Session, checkin: Checkin, notebook: Notebook) -> list[Attendee]:
    ids = list((checkin.details or {}).get("attendees") or ())
    if not ids:
        return []
    members = {
        m.id: m
        for m in session.scalars(
            select(Member).where(Member.notebook_id == checkin.notebook_id, Member.id.in_(ids))
        ).all()
    }
    return [
        Attendee(
            m.id,
            m.email,
            m.phone,
            bool(m.sms_opted_out),
            m.timezone or notebook.timezone,
            prefs.from_stored(m.preferences),
        )
        for m in (members.get(i) for i in ids)
        if m is not None and m.active
    ]


def sync_checkin(
    session: Session,
    checkin_pk: int,
    offsets: Iterable[int],
    now: datetime | None = None,
    skip_locked: bool = False,
) -> list[Due]:
    """Reconcile one check-in's reminders with its state (see the module's docstring) and commit.
    The check-in's row is locked meanwhile (PostgreSQL), so planners never undo each other.
    Returns the reminders made, revived or re-timed, for the queue."""
    now = now or utcnow()
    query = select(Checkin).where(Checkin.id == checkin_pk).with_for_update(skip_locked=skip_locked)
    checkin = session.execute(query).scalar_one_or_none()
    if checkin is None:
        session.commit()
        return []
    notebook = session.get(Notebook, checkin.notebook_id)
    offsets = tuple(offsets)
    until = now + timedelta(minutes=max(offsets, default=0)) + HORIZON_MARGIN
    found = [] if checkin.cancelled else occurrences(checkin.details or {}, notebook.timezone, until)
    attendees = [] if checkin.cancelled else _attendees(session, checkin, notebook)
    declined = _declined(session, checkin)
    wanted = [w for w in plan(found, attendees, offsets, now) if (w.occurrence, w.member_id) not in declined]
    due: list[Due] = []
    new = [w for w in wanted if w.due_at > now]
    if new:
        insert = _insert(session)(Reminder)
        stmt = insert.values(
            [
                {
                    "id": new_id("rem"),
                    "notebook_id": checkin.notebook_id,
                    "checkin_pk": checkin.id,
                    "occurrence": w.occurrence,
                    "starts_at": w.starts_at,
                    "ends_at": w.ends_at,
                    "member_id": w.member_id,
                    "channel": w.channel,
                    "offset_minutes": w.offset_minutes,
                    "due_at": w.due_at,
                    "hold": w.hold,
                    "status": ReminderStatus.PENDING,
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                }
                for w in new
            ]
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[
                "checkin_pk",
                "occurrence",
                "starts_at",
                "member_id",
                "offset_minutes",
                "channel",
            ],
            set_={
                "status": ReminderStatus.PENDING,
                "due_at": stmt.excluded.due_at,
                "hold": stmt.excluded.hold,
                "error": None,
                "enqueued_at": None,
                "updated_at": now,
            },
            where=or_(
                Reminder.status == ReminderStatus.CANCELLED,
                (Reminder.status == ReminderStatus.PENDING) & (Reminder.due_at != stmt.excluded.due_at),
            ),
        ).returning(Reminder.id, Reminder.channel, Reminder.due_at)
        due = [Due(r.id, r.channel, r.due_at) for r in session.execute(stmt).all()]
    keys = {w.key for w in wanted}
    pending = session.execute(
        select(
            Reminder.id,
            Reminder.occurrence,
            Reminder.starts_at,
            Reminder.member_id,
            Reminder.offset_minutes,
            Reminder.channel,
        ).where(Reminder.checkin_pk == checkin.id, Reminder.status == ReminderStatus.PENDING)
    ).all()
    by_key = {o.key: o for o in found}
    attending = {a.id for a in attendees}
    listed = set((checkin.details or {}).get("attendees") or ())
    for row in pending:
        key = (row.occurrence, row.starts_at.astimezone(UTC), row.member_id, row.offset_minutes, row.channel)
        if key in keys:
            continue
        if (row.occurrence, row.member_id) in declined:
            reason = "the member declined"
        else:
            reason = _why_dropped(checkin, by_key.get(row.occurrence), row, attending, listed, now)
        session.execute(
            update(Reminder)
            .where(Reminder.id == row.id, Reminder.status == ReminderStatus.PENDING)
            .values(status=ReminderStatus.CANCELLED, error=reason, updated_at=now)
            .execution_options(synchronize_session=False)
        )
    session.commit()
    return due


def _declined(session: Session, checkin: Checkin) -> _Declined:
    """Who declined what (their RSVP, ``careloop.rsvp``): nobody is reminded of a meeting they
    said they will not attend. An answer for one occurrence wins over the series' answer."""
    answers = session.execute(
        select(CheckinAnswer.recurrence_id, CheckinAnswer.member_id, CheckinAnswer.partstat).where(
            CheckinAnswer.checkin_pk == checkin.id
        )
    ).all()
    return _Declined({(a.recurrence_id, a.member_id): a.partstat for a in answers})


@dataclass(frozen=True)
class _Declined:
    partstats: dict[tuple[str, str], str]

    def __contains__(self, key: tuple[str, str]) -> bool:
        occurrence, member_id = key
        answer = self.partstats.get((occurrence, member_id)) or self.partstats.get(("", member_id))
        return answer == "DECLINED"


def _why_dropped(checkin: Checkin, occ: Occurrence | None, row, attending: set, listed: set, now) -> str:
    if checkin.cancelled:
        return "the check-in was cancelled"
    if row.member_id not in listed:
        return "the member is no longer an attendee"
    if row.member_id not in attending:
        return "the member is no longer active"
    if occ is None:
        return "the check-in moved"
    if occ.cancelled:
        return "this occurrence was cancelled"
    if occ.start != row.starts_at.astimezone(UTC):
        return "the check-in moved"
    if occ.start <= now:
        return "the check-in has begun"
    return "no longer planned (reminder times or the member's channels changed)"


def sync_event_checkin(
    session: Session, notebook_id: str, context: dict | None, offsets, now=None
) -> list[Due]:
    """Reconcile the reminders of the check-in a routed check-in event is about."""
    uid = ((context or {}).get("checkin") or {}).get("uid")
    if not uid:
        return []
    pk = session.scalar(select(Checkin.id).where(Checkin.notebook_id == notebook_id, Checkin.uid == uid))
    return [] if pk is None else sync_checkin(session, pk, offsets, now)


def sync_all(session: Session, offsets, now: datetime | None = None) -> list[Due]:
    """Reconcile every check-in that is on, or still has pending reminders (the relay's sweep):
    the next occurrences of a series are materialized as they come within the horizon."""
    now = now or utcnow()
    pks = set(session.scalars(select(Checkin.id).where(Checkin.cancelled.is_(False))).all())
    pks |= set(
        session.scalars(select(Reminder.checkin_pk).where(Reminder.status == ReminderStatus.PENDING)).all()
    )
    session.commit()
    due: list[Due] = []
    for pk in sorted(pks):
        try:
            due += sync_checkin(session, pk, offsets, now, skip_locked=True)
        except (OperationalError, InterfaceError):
            raise  # the database is away: the whole sweep waits for it
        except Exception:  # one check-in's bad data must not hold back every other's reminders
            session.rollback()
            log.exception("reminders of check-in %s could not be planned", pk)
    return due


def give_way_if_late(session: Session, reminder_id: str, now: datetime | None = None) -> bool:
    """Cancel a pending reminder whose nearer one (a smaller offset, same occurrence, member and
    channel) is due too — it ran late (workers were down): one message, not two at once. Returns
    whether it was cancelled."""
    now = now or utcnow()
    row = session.get(Reminder, reminder_id)
    if row is None or row.status != ReminderStatus.PENDING:
        return False
    nearer = session.scalar(
        select(Reminder.id)
        .where(
            Reminder.checkin_pk == row.checkin_pk,
            Reminder.occurrence == row.occurrence,
            Reminder.starts_at == row.starts_at,
            Reminder.member_id == row.member_id,
            Reminder.channel == row.channel,
            Reminder.offset_minutes < row.offset_minutes,
            Reminder.due_at <= now,
            Reminder.status.in_((ReminderStatus.PENDING, ReminderStatus.SENDING, ReminderStatus.SENT)),
        )
        .limit(1)
    )
    if nearer is None:
        return False
    return _set(
        session,
        (Reminder.id == reminder_id) & (Reminder.status == ReminderStatus.PENDING),
        status=ReminderStatus.CANCELLED,
        error="late: a nearer reminder of the same check-in goes instead",
        updated_at=now,
    )


def claim(session: Session, reminder_id: str, token: str, now: datetime | None = None) -> int | None:
    """Atomically take a due, pending reminder whose check-in has not begun. Returns its attempt
    number, or None (someone else has it, it is not due, or it is done)."""
    now = now or utcnow()
    return claims.claim(session, Reminder, reminder_id, token, now, Reminder.starts_at > now)


def _owned(reminder_id: str, token: str):
    return (
        (Reminder.id == reminder_id)
        & (Reminder.claim_token == token)
        & (Reminder.status == ReminderStatus.SENDING)
    )


def _set(session: Session, where, **values) -> bool:
    result = session.execute(
        update(Reminder).where(where).values(**values).execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def mark_provider_called(session: Session, reminder_id: str, token: str) -> bool:
    """Recorded before the provider is called; False: the claim is gone, do not call it."""
    return _set(session, _owned(reminder_id, token), provider_called_at=utcnow())


def mark_sent(session: Session, reminder_id: str, token: str, provider_id: str) -> None:
    now = utcnow()
    _set(
        session,
        _owned(reminder_id, token),
        status=ReminderStatus.SENT,
        provider_id=provider_id,
        error=None,
        sent_at=now,
        updated_at=now,
    )


def mark_failed(session: Session, reminder_id: str, token: str, reason: str) -> None:
    _set(session, _owned(reminder_id, token), status=ReminderStatus.FAILED, error=reason, updated_at=utcnow())


def requeue(session: Session, reminder_id: str, token: str, reason: str, delay: float) -> datetime:
    now = utcnow()
    due = now + timedelta(seconds=delay)
    _set(
        session,
        _owned(reminder_id, token),
        status=ReminderStatus.PENDING,
        error=reason,
        due_at=due,
        enqueued_at=None,
        updated_at=now,
    )
    return due


def release(session: Session, reminder_id: str, token: str, reason: str) -> bool:
    """A claim whose provider was never called: back to pending, due now; not an attempt."""
    now = utcnow()
    return _set(
        session,
        _owned(reminder_id, token) & Reminder.provider_called_at.is_(None),
        status=ReminderStatus.PENDING,
        attempts=Reminder.attempts - 1,
        error=reason,
        due_at=now,
        enqueued_at=None,
        updated_at=now,
    )


def stale_claims(session: Session, claim_timeout: float, limit: int = 100) -> list[tuple[str, str, bool]]:
    """(id, claim token, provider called) of reminders sending for longer than the claim timeout."""
    return claims.stale_claims(session, Reminder, claim_timeout, limit)


def due_for_enqueue(session: Session, stale_after: float, limit: int = 500) -> list[Due]:
    """Pending reminders that are due and were not handed to the queue in the last ``stale_after`` s."""
    rows = claims.due_for_enqueue(session, Reminder, stale_after, limit)
    return [Due(r.id, r.channel, r.due_at) for r in rows]


def mark_enqueued(session: Session, reminder_ids: list[str]) -> None:
    claims.mark_enqueued(session, Reminder, reminder_ids, pending_only=True)


def forget_enqueued(session: Session) -> None:
    """Every pending reminder counts as never handed to the queue (the queue lost its data)."""
    claims.forget_enqueued(session, Reminder)


def of_checkin(session: Session, notebook_id: str, context: dict | None) -> list[Reminder]:
    """The reminders of the check-in an event is about, by due time (for ``GET /v1/events/{id}``)."""
    uid = ((context or {}).get("checkin") or {}).get("uid")
    if not uid:
        return []
    pk = session.scalar(select(Checkin.id).where(Checkin.notebook_id == notebook_id, Checkin.uid == uid))
    return [] if pk is None else for_checkin(session, pk)


def for_checkin(session: Session, checkin_pk: int) -> list[Reminder]:
    """Every reminder of one check-in (``checkins.id``), by due time: moved and dropped ones too."""
    return list(
        session.scalars(
            select(Reminder).where(Reminder.checkin_pk == checkin_pk).order_by(Reminder.due_at, Reminder.id)
        ).all()
    )


def hand_over(session: Session, dispatcher, due: list[Due]) -> bool:
    """Give these reminders to the queue for their due times and record it; if the queue is
    down, only log: the rows say when they are due, and the relay hands them over."""
    if not due:
        return True
    jobs = [ReminderJob(d.reminder_id, delivery_queue(d.channel, urgent=False), d.due_at) for d in due]
    try:
        dispatcher.reminders(jobs)
    except Exception as exc:
        log.warning("queue unavailable, %d reminders left for the relay: %s", len(jobs), type(exc).__name__)
        return False
    mark_enqueued(session, [d.reminder_id for d in due])
    return True


def relay_sweep(session: Session, runtime, now: datetime | None = None) -> int:
    """The relay's part: re-plan every check-in at most every :data:`SWEEP_INTERVAL`, hand over
    due reminders whose job Redis no longer has. Returns how many were handed over."""
    now = now or utcnow()
    dispatcher, settings = runtime.dispatcher, runtime.settings
    last = _last_sweep.get(settings.database_url)
    if last is None or not last <= now < last + SWEEP_INTERVAL:
        _last_sweep[settings.database_url] = now
        hand_over(session, dispatcher, sync_all(session, settings.reminder_offsets, now))
    due = due_for_enqueue(session, settings.claim_timeout)
    if not due:
        return 0
    jobs = {d.reminder_id: d for d in due}
    lost = dispatcher.missing_reminders(
        [ReminderJob(d.reminder_id, delivery_queue(d.channel, urgent=False), d.due_at) for d in due]
    )
    lost_ids = {j.reminder_id for j in lost}
    dispatcher.reminders(lost)
    mark_enqueued(session, list(jobs))
    return len(lost_ids)


_last_sweep: dict[str, datetime] = {}
"""When this process last re-planned every check-in, per database (the relay's own clock)."""
