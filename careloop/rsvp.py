"""RSVPs read back: each attendee's answer to a check-in invite, kept per member.

Invites ask for an answer (``RSVP=TRUE``), so a mail client sends an iTIP REPLY (RFC 5546
§3.2.3) to the ORGANIZER address. careloop reads it from the API (``POST …/replies``) or from
the organizer's mailbox (``careloop.integrations.imap_replies``); a member may also answer on
their member page. Each answer is a :class:`Reply`, recorded here:

- its UID must be the check-in's, and its RECURRENCE-ID (if any) one of its occurrences;
- its ATTENDEE must be an invited member of the notebook, matched by email address;
- its PARTSTAT is ACCEPTED, DECLINED or TENTATIVE;
- an answer older than the one kept (a lower SEQUENCE, or the same SEQUENCE and an earlier
  DTSTAMP) is ignored: mail arrives out of order.

The answer for the whole series has an empty ``recurrence_id``; one for a single occurrence
has that occurrence's original start (UTC, ISO 8601) and wins over the series' for it.
Later invites (updates of the check-in) carry each attendee's last answer as their PARTSTAT,
time changes included (``careloop.checkins`` puts the answers in each event's snapshot).

Core: no Flask, no RQ.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from careloop import recurrence
from careloop.checkins import occurrence_key
from careloop.models import Checkin, CheckinAnswer, Member, Notebook, utcnow

PARTSTATS = ("ACCEPTED", "DECLINED", "TENTATIVE")
"""The answers careloop keeps (RFC 5545 PARTSTAT values for a VEVENT)."""

NOT_ANSWERED = "NEEDS-ACTION"
"""An attendee's PARTSTAT until they answer."""


class Via(StrEnum):
    """Where an answer came from."""

    API = "api"
    """A REPLY posted to ``POST /v1/notebooks/{id}/checkins/{checkin_id}/replies``."""
    MAILBOX = "mailbox"
    """A REPLY read from the organizer's mailbox (IMAP)."""
    MEMBER_PAGE = "member_page"
    """The Accept / Decline buttons of the member's own page."""


class ReplyError(ValueError):
    """A reply careloop cannot take, naming the part (``UID``, ``ATTENDEE``, …) that is wrong.

    ``status`` is the HTTP status the API answers with (422 unless said otherwise).
    """

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Reply:
    """One attendee's answer about one check-in (one VEVENT of an iTIP REPLY).

    ``recurrence_id`` None: about the whole series. A naive ``recurrence_id`` (a floating
    time) is read in the notebook's zone.
    """

    uid: str
    attendee: str
    partstat: str
    sequence: int
    dtstamp: datetime
    recurrence_id: datetime | None = None

    def __post_init__(self) -> None:
        if self.partstat not in PARTSTATS:
            raise ReplyError("PARTSTAT", f"must be one of {', '.join(PARTSTATS)}, not {self.partstat!r}")
        if self.dtstamp.tzinfo is None:
            raise ReplyError("DTSTAMP", "must be a UTC time")


@dataclass(frozen=True)
class Outcome:
    """What became of one reply: ``applied`` False when a newer answer was already kept."""

    checkin_id: str
    member_id: str
    recurrence_id: str | None
    partstat: str
    applied: bool


def checkin_by_uid(session: Session, uid: str) -> Checkin | None:
    """The check-in an invite's UID names (replies read from the mailbox carry only that)."""
    return session.scalars(select(Checkin).where(Checkin.uid == uid)).first()


def record(
    session: Session, checkin: Checkin, reply: Reply, via: Via, member: Member | None = None
) -> Outcome:
    """Keep ``reply`` as the member's answer, unless a newer answer is kept. ``member``: who
    answered, when known otherwise than by the reply's ATTENDEE address (the member page).

    The check-in row is locked (PostgreSQL) so concurrent answers are taken one at a time.

    Raises:
        ReplyError: naming what does not fit the check-in.
    """
    session.execute(select(Checkin.id).where(Checkin.id == checkin.id).with_for_update())
    if reply.uid != checkin.uid:
        raise ReplyError("UID", "is not this check-in's (each invite's UID names its check-in)")
    if checkin.cancelled:
        raise ReplyError("UID", "this check-in is cancelled", status=409)
    notebook = session.get(Notebook, checkin.notebook_id)
    details = checkin.details or {}
    key = ""
    if reply.recurrence_id is not None:
        key = _occurrence(details, notebook.timezone, reply.recurrence_id)
    if member is None:
        member = _attendee(session, checkin, reply.attendee)
    elif member.id not in (details.get("attendees") or ()):
        raise ReplyError("ATTENDEE", "is not invited to this check-in")
    kept = session.scalars(
        select(CheckinAnswer).where(
            CheckinAnswer.checkin_pk == checkin.id,
            CheckinAnswer.member_id == member.id,
            CheckinAnswer.recurrence_id == key,
        )
    ).first()
    if kept is not None and (reply.sequence, reply.dtstamp) < (kept.sequence, kept.dtstamp):
        return Outcome(checkin.checkin_id, member.id, key or None, kept.partstat, applied=False)
    if kept is None:
        kept = CheckinAnswer(
            checkin_pk=checkin.id, notebook_id=checkin.notebook_id, member_id=member.id, recurrence_id=key
        )
        session.add(kept)
    kept.partstat = reply.partstat
    kept.sequence = reply.sequence
    kept.dtstamp = reply.dtstamp
    kept.via = via
    session.flush()
    return Outcome(checkin.checkin_id, member.id, key or None, reply.partstat, applied=True)


def answer_on_page(
    session: Session, checkin: Checkin, member: Member, partstat: str, occurrence: str | None = None
) -> Outcome:
    """The member's answer from their own page: as new as it gets (the check-in's current
    SEQUENCE, now as DTSTAMP), about the whole series or one occurrence (its original start)."""
    details = checkin.details or {}
    sequence = int(details.get("series_sequence", checkin.sequence))
    if occurrence:
        sequence = int((details.get("occurrences") or {}).get(occurrence, {}).get("sequence", sequence))
    reply = Reply(
        uid=checkin.uid,
        attendee=member.email or member.id,
        partstat=partstat,
        sequence=sequence,
        dtstamp=utcnow(),
        recurrence_id=datetime.fromisoformat(occurrence) if occurrence else None,
    )
    return record(session, checkin, reply, Via.MEMBER_PAGE, member)


def answers(session: Session, checkin: Checkin) -> dict[str, dict[str, CheckinAnswer]]:
    """The kept answers: recurrence id ('' for the series) → member id → answer."""
    found: dict[str, dict[str, CheckinAnswer]] = {}
    for row in session.scalars(select(CheckinAnswer).where(CheckinAnswer.checkin_pk == checkin.id)):
        found.setdefault(row.recurrence_id, {})[row.member_id] = row
    return found


def view(session: Session, checkin: Checkin) -> dict:
    """The check-in as ``GET /v1/notebooks/{id}/checkins/{checkin_id}`` shows it: schedule,
    recurrence, attendees with their answer, and the occurrences changed or answered alone."""
    details = dict(checkin.details or {})
    kept = answers(session, checkin)
    attendee_ids = list(details.get("attendees") or ())
    members = {m.id: m for m in session.scalars(select(Member).where(Member.id.in_(attendee_ids)))}
    series = kept.get("", {})

    def attendee(member_id: str, answers_here: dict[str, CheckinAnswer]) -> dict:
        answer = answers_here.get(member_id)
        member = members.get(member_id)
        return {
            "member_id": member_id,
            "name": member.name if member is not None else None,
            "partstat": answer.partstat if answer else NOT_ANSWERED,
            "answered_at": answer.dtstamp.isoformat() if answer else None,
            "via": answer.via if answer else None,
        }

    changed = details.get("occurrences") or {}
    start = datetime.fromisoformat(details["start"]) if details.get("start") else None
    end = datetime.fromisoformat(details["end"]) if details.get("end") else None
    keys = set(changed)
    if details.get("recurrence") and start is not None:
        keys |= {k for k in kept if k}
    occurrences = []
    for key in sorted(keys):
        change = changed.get(key) or {}
        original = datetime.fromisoformat(key)
        own = kept.get(key, {})
        occurrences.append(
            {
                "recurrence_id": key,
                "start": change.get("start") or original.isoformat(),
                "end": change.get("end") or (original + (end - start)).isoformat(),
                "title": change.get("title") or details.get("title"),
                "location": change.get("location") or details.get("location"),
                "sequence": int(change.get("sequence", details.get("series_sequence", 0))),
                "cancelled": bool(change.get("cancelled")),
                "attendees": [attendee(m, {**series, **own}) for m in attendee_ids],
            }
        )
    return {
        "checkin_id": checkin.checkin_id,
        "notebook_id": checkin.notebook_id,
        "uid": checkin.uid,
        "sequence": int(details.get("series_sequence", checkin.sequence)),
        "title": details.get("title"),
        "start": details.get("start"),
        "end": details.get("end"),
        "location": details.get("location"),
        "recurrence": details.get("recurrence"),
        "cancelled": bool(checkin.cancelled),
        "attendees": [attendee(m, series) for m in attendee_ids],
        "occurrences": occurrences,
    }


def _occurrence(details: dict, tzid: str, when: datetime) -> str:
    rule = details.get("recurrence")
    if not rule:
        raise ReplyError("RECURRENCE-ID", "this check-in does not repeat")
    if when.tzinfo is None:
        when = when.replace(tzinfo=ZoneInfo(tzid))
    start = datetime.fromisoformat(details["start"])
    if not recurrence.is_occurrence(start, rule, tzid, when):
        raise ReplyError("RECURRENCE-ID", "is not the original start of one of the check-in's occurrences")
    key = occurrence_key(when)
    if ((details.get("occurrences") or {}).get(key) or {}).get("cancelled"):
        raise ReplyError("RECURRENCE-ID", "that occurrence is cancelled", status=409)
    return key


def _attendee(session: Session, checkin: Checkin, address: str) -> Member:
    """The invited member whose email is ``address`` (``mailto:`` or not, any case)."""
    email = address.strip()
    if email[:7].lower() == "mailto:":
        email = email[7:]
    email = email.strip().casefold()
    invited = list((checkin.details or {}).get("attendees") or ())
    if email and invited:
        for member in session.scalars(
            select(Member).where(Member.notebook_id == checkin.notebook_id, Member.id.in_(invited))
        ):
            if member.email and member.email.casefold() == email:
                return member
    raise ReplyError("ATTENDEE", "is not the email address of a member invited to this check-in")
