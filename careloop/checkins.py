"""A check-in's calendar state, moved on by each check-in event at intake.

:class:`~careloop.models.Checkin` keeps one UID per check-in and a counter of SEQUENCE
numbers: every event takes the next one. A change to the whole series gives the series
that SEQUENCE; a change to one occurrence of a recurring check-in gives it to that
occurrence only (its own SEQUENCE, beside its RECURRENCE-ID), and the series keeps its own.
``details`` holds the series as last scheduled or updated, and:

- ``recurrence``: the normalized RRULE, or None;
- ``series_sequence``: the SEQUENCE of the series' last change;
- ``occurrences``: original start (UTC, ISO) → that occurrence's own change: ``sequence``,
  ``start``, ``end``, ``title``, ``location``, ``cancelled``;
- ``holders``: members whose calendars hold the check-in (invited while active, and not
  sent a CANCEL since): they get the CANCEL when it is cancelled or they are removed, even
  if deactivated meanwhile.

A change to the whole series keeps the changes of single occurrences that are still
occurrences of the new series, and drops the others.

The event's ``context`` is a snapshot for routing and rendering, fixed at intake:
``checkin`` (the series as messages show it, plus ``occurrence`` for an event about one),
``previous`` (the series before, for a removed attendee's email), ``previous_attendees`` (as
routing has always read it) and ``invite_holders`` (the holders before this event).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from careloop import recurrence
from careloop.messages import CalendarEntry, Occurrence, first_name
from careloop.models import Checkin, Member, Notebook


class CheckinError(ValueError):
    """A check-in event that does not fit the check-in's state (→ 422 naming ``field``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def occurrence_key(value: datetime | str) -> str:
    """How an occurrence is named in ``details``: its original start in UTC, ISO 8601."""
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return when.astimezone(UTC).isoformat()


def checkin_uid(notebook_id: str, checkin_id: str) -> str:
    return f"{notebook_id}.{hashlib.sha256(checkin_id.encode()).hexdigest()[:16]}@careloop"


def apply_event(session: Session, notebook: Notebook, event_type: str, data: dict) -> dict:
    """Move the check-in ``data`` names on by this event; return the event's context.

    The row is locked (PostgreSQL) so concurrent updates get distinct SEQUENCE numbers.

    Raises:
        CheckinError: naming the data field that does not fit.
    """
    checkin = session.execute(
        select(Checkin)
        .where(Checkin.notebook_id == notebook.id, Checkin.checkin_id == data["checkin_id"])
        .with_for_update()
    ).scalar_one_or_none()
    if event_type == "checkin.scheduled" and checkin is not None and not checkin.cancelled:
        raise CheckinError(
            "data.checkin_id", "a check-in with this id is already scheduled; send checkin.updated"
        )
    if event_type != "checkin.scheduled" and (checkin is None or checkin.cancelled):
        raise CheckinError("data.checkin_id", "no scheduled check-in has this id")

    before = dict(checkin.details or {}) if checkin is not None else {}
    occurrence_at = data.get("occurrence")
    if occurrence_at is not None:
        _check_occurrence(before, notebook.timezone, occurrence_at, event_type, data)
    rule = None
    if event_type != "checkin.cancelled" and data.get("recurrence") and occurrence_at is None:
        start = datetime.fromisoformat(str(data["start"]))
        try:
            rule = recurrence.normalize(data["recurrence"], start, notebook.timezone)
        except ValueError as exc:
            raise CheckinError("data.recurrence", str(exc)) from None

    if checkin is None:
        checkin = Checkin(
            notebook_id=notebook.id,
            checkin_id=data["checkin_id"],
            uid=checkin_uid(notebook.id, data["checkin_id"]),
            sequence=0,
            details={},
        )
        session.add(checkin)
        session.flush()
    else:
        # In SQL, not Python: concurrent updates each get their own SEQUENCE on SQLite too,
        # where the row lock above does nothing.
        checkin.sequence = Checkin.sequence + 1
        session.flush()
        session.refresh(checkin, ["sequence"])
    sequence = checkin.sequence

    # A check-in scheduled before careloop kept holders: everyone it listed holds it.
    holders_before = list(before.get("holders", before.get("attendees")) or ())
    previous_list = list(before.get("attendees") or ())
    details = dict(before)
    occurrence = None
    if event_type == "checkin.scheduled":
        details = _series(data, rule, sequence)
        details["holders"] = _active(session, notebook.id, details["attendees"])
        checkin.cancelled = False
    elif occurrence_at is not None:
        key = occurrence_key(occurrence_at)
        changes = dict(details.get("occurrences") or {})
        moved = changes.get(key) or {}
        original = datetime.fromisoformat(key)
        duration = datetime.fromisoformat(details["end"]) - datetime.fromisoformat(details["start"])
        if event_type == "checkin.cancelled":
            occurrence = {
                "sequence": sequence,
                "start": moved.get("start") or original.isoformat(),
                "end": moved.get("end") or (original + duration).isoformat(),
                "title": moved.get("title"),
                "location": moved.get("location"),
                "cancelled": True,
            }
        else:
            occurrence = {
                "sequence": sequence,
                "start": _iso(data["start"]),
                "end": _iso(data["end"]),
                "title": data["title"] if data["title"] != details.get("title") else None,
                "location": data.get("location") if data.get("location") != details.get("location") else None,
                "cancelled": False,
            }
        changes[key] = occurrence
        details["occurrences"] = changes
        occurrence = {"recurrence_id": key, **occurrence}
    elif event_type == "checkin.cancelled":
        details["holders"] = []
        details["series_sequence"] = sequence
        checkin.cancelled = True
    else:  # the whole series changes
        new = _series(data, rule, sequence)
        new["occurrences"] = _still_occurring(before.get("occurrences") or {}, new, notebook.timezone)
        new["holders"] = _active(session, notebook.id, new["attendees"])
        details = new
    checkin.details = details
    session.flush()

    snapshot = {
        "uid": checkin.uid,
        "sequence": int(details.get("series_sequence", sequence)),
        **{k: details.get(k) for k in ("title", "start", "end", "location", "attendees", "recurrence")},
        "exdates": sorted(k for k, o in (details.get("occurrences") or {}).items() if o.get("cancelled")),
        "overrides": [
            {"recurrence_id": k, **o}
            for k, o in sorted((details.get("occurrences") or {}).items())
            if not o.get("cancelled")
        ],
    }
    if occurrence is not None:
        snapshot["occurrence"] = occurrence
    cancelling = event_type == "checkin.cancelled"
    return {
        "checkin": snapshot,
        "previous": {k: before.get(k) for k in ("title", "start", "end")} if before else None,
        "previous_attendees": []
        if event_type == "checkin.scheduled"  # a new start: a cancelled check-in's list is over
        else previous_list
        if cancelling
        else [m for m in previous_list if m not in (details.get("attendees") or [])],
        "invite_holders": holders_before,
    }


def _series(data: dict, rule: str | None, sequence: int) -> dict:
    return {
        "title": data["title"],
        "start": _iso(data["start"]),
        "end": _iso(data["end"]),
        "location": data.get("location"),
        "attendees": list(data["attendees"]),
        "recurrence": rule,
        "series_sequence": sequence,
        "occurrences": {},
    }


def _iso(value) -> str:
    return (
        value.isoformat() if isinstance(value, datetime) else datetime.fromisoformat(str(value)).isoformat()
    )


def _active(session: Session, notebook_id: str, member_ids: list[str]) -> list[str]:
    active = set(
        session.scalars(
            select(Member.id).where(
                Member.notebook_id == notebook_id, Member.id.in_(member_ids), Member.active.is_(True)
            )
        )
    )
    return [m for m in member_ids if m in active]


def _check_occurrence(before: dict, tzid: str, occurrence_at, event_type: str, data: dict) -> None:
    rule = before.get("recurrence")
    if not rule:
        raise CheckinError("data.occurrence", "this check-in does not repeat; change or cancel it whole")
    when = (
        datetime.fromisoformat(str(occurrence_at))
        if not isinstance(occurrence_at, datetime)
        else occurrence_at
    )
    start = datetime.fromisoformat(before["start"])
    if not recurrence.is_occurrence(start, rule, tzid, when):
        raise CheckinError(
            "data.occurrence", "is not the original start of one of the check-in's occurrences"
        )
    changed = (before.get("occurrences") or {}).get(occurrence_key(when)) or {}
    if changed.get("cancelled"):
        raise CheckinError("data.occurrence", "that occurrence is cancelled")
    if event_type == "checkin.updated" and sorted(data["attendees"]) != sorted(before.get("attendees") or ()):
        raise CheckinError(
            "data.attendees", "an occurrence has the series' attendees; change them for the whole series"
        )


def _still_occurring(changes: dict, series: dict, tzid: str) -> dict:
    """The single-occurrence changes that still name an occurrence of the new series."""
    if not series["recurrence"] or not changes:
        return {}
    starts = recurrence.occurrences(
        datetime.fromisoformat(series["start"]), series["recurrence"], tzid, limit=recurrence.MAX_OCCURRENCES
    )
    keys = {occurrence_key(s) for s in starts}
    return {k: v for k, v in changes.items() if k in keys}


def calendar_entry(checkin: Checkin, notebook: Notebook) -> CalendarEntry:
    """The check-in as a calendar keeps it now: the series as last scheduled or updated, each
    occurrence moved or cancelled alone, and whether it is cancelled whole."""
    details = checkin.details or {}
    occurrences = tuple(
        Occurrence(
            recurrence_id=datetime.fromisoformat(key),
            sequence=int(change["sequence"]),
            start=datetime.fromisoformat(change["start"]),
            end=datetime.fromisoformat(change["end"]),
            title=change.get("title"),
            location=change.get("location"),
            cancelled=bool(change.get("cancelled")),
        )
        for key, change in sorted((details.get("occurrences") or {}).items())
    )
    return CalendarEntry(
        uid=checkin.uid,
        sequence=int(details.get("series_sequence", checkin.sequence)),
        title=details["title"],
        start=datetime.fromisoformat(details["start"]),
        end=datetime.fromisoformat(details["end"]),
        tzid=notebook.timezone,
        location=details.get("location"),
        description=f"Care team check-in for {first_name(notebook.child_name)}.",
        recurrence=details.get("recurrence"),
        occurrences=occurrences if details.get("recurrence") else (),
        cancelled=bool(checkin.cancelled),
    )
