"""iCalendar: check-ins as iTIP objects (RFC 5546), built with the ``icalendar`` package.

Only the calendar object lives here; :mod:`careloop.integrations.mime` wraps it in an iMIP
email (RFC 6047) and the SMTP channel or the file outbox carries it. The VTIMEZONE comes
from :mod:`careloop.integrations.vtimezone` (rules, as published zone files have them).

What each message holds:

- a new or changed check-in (REQUEST): the series' VEVENT (with its RRULE and an EXDATE per
  occurrence cancelled alone) and one VEVENT per occurrence moved alone (RECURRENCE-ID and
  its own SEQUENCE), as Google Calendar sends them;
- one occurrence moved (REQUEST) or cancelled (CANCEL, STATUS:CANCELLED): that occurrence's
  VEVENT only;
- the whole check-in cancelled: the series' VEVENT with STATUS:CANCELLED;
- an attendee removed (CANCEL): the series' VEVENT listing only them and no STATUS, since
  the check-in goes on (RFC 5546 §3.2.5).

A calendar's own copy (:func:`build_calendar`: a CalDAV resource, a member's feed) is no
message: no METHOD, no ORGANIZER or ATTENDEE (a CalDAV server that schedules, RFC 6638,
would otherwise invite everyone a second time), the same UIDs and SEQUENCEs as the invites,
and each occurrence cancelled alone kept as its own VEVENT with STATUS:CANCELLED.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from icalendar import Calendar, Event, vCalAddress, vRecur

from careloop.integrations.vtimezone import vtimezone
from careloop.messages import CalendarEntry, CalendarInvite, Occurrence
from careloop.recurrence import last_start

PRODID = "-//careloop//careloop calendar invites//EN"
"""Identifies careloop as the product that wrote the iCalendar object."""

TIMEZONE_MARGIN = timedelta(days=2)
"""How far before the first and after the last time of the check-in the VTIMEZONE must be
right (its rules start a year earlier still, and the current one never ends)."""


def build_invite(invite: CalendarInvite, *, stamp: datetime | None = None) -> bytes:
    """Render ``invite`` as an iTIP VCALENDAR (METHOD REQUEST or CANCEL).

    Args:
        invite: the check-in; ``start``/``end`` are shown in ``invite.tzid``.
        stamp: DTSTAMP (when this iTIP message was created); now (UTC) by default.

    Returns:
        The iCalendar bytes (CRLF line endings, folded lines), with a VTIMEZONE for ``tzid``.

    Raises:
        ValueError: when ``invite.tzid`` is not a known IANA time zone.
    """
    try:
        zone = ZoneInfo(invite.tzid)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {invite.tzid!r}") from exc
    stamp = (stamp or datetime.now(UTC)).astimezone(UTC)
    requesting = invite.method == "REQUEST"
    if invite.occurrence is not None:
        occurrence = invite.occurrence
        events = [_occurrence_event(invite, occurrence, zone, stamp, cancelled=not requesting)]
    else:
        series = _event(
            invite,
            zone,
            stamp,
            sequence=invite.sequence,
            start=invite.start,
            end=invite.end,
            status=None if invite.uninvite else ("CONFIRMED" if requesting else "CANCELLED"),
        )
        if invite.recurrence:
            series.add("RRULE", vRecur.from_ical(invite.recurrence))
            # One EXDATE property per date: ical.js reads the first value of a list only.
            for exdate in invite.exdates:
                series.add("EXDATE", exdate.astimezone(zone))
        events = [series]
        if requesting:
            events += [_occurrence_event(invite, o, zone, stamp, cancelled=False) for o in invite.overrides]
    calendar = Calendar.new(prodid=PRODID, method=invite.method, subcomponents=events)
    # Calendar.new() adds an RFC 7986 UID to the VCALENDAR, a fresh uuid4 each time; the iTIP
    # object is identified by the VEVENT's UID, and a random second one only adds noise.
    calendar.pop("UID", None)
    first, last = _span(invite)
    calendar.subcomponents.insert(
        0, vtimezone(invite.tzid, (first - TIMEZONE_MARGIN).date(), (last + TIMEZONE_MARGIN).date())
    )
    return calendar.to_ical()


def _occurrence_event(
    invite: CalendarInvite, occurrence: Occurrence, zone: ZoneInfo, stamp: datetime, *, cancelled: bool
) -> Event:
    event = _event(
        invite,
        zone,
        stamp,
        sequence=occurrence.sequence,
        start=occurrence.start,
        end=occurrence.end,
        status="CANCELLED" if cancelled or occurrence.cancelled else "CONFIRMED",
        title=occurrence.title,
        location=occurrence.location,
    )
    event.add("RECURRENCE-ID", occurrence.recurrence_id.astimezone(zone))
    return event


def _event(
    invite: CalendarInvite,
    zone: ZoneInfo,
    stamp: datetime,
    *,
    sequence: int,
    start: datetime,
    end: datetime,
    status: str | None,
    title: str | None = None,
    location: str | None = None,
) -> Event:
    requesting = invite.method == "REQUEST"
    return Event.new(
        uid=invite.uid,
        sequence=sequence,
        stamp=stamp,
        start=start.astimezone(zone),
        end=end.astimezone(zone),
        summary=title or invite.title,
        location=location or invite.location or None,
        description=invite.description or None,
        organizer=vCalAddress.new(invite.organizer.email, cn=invite.organizer.name),
        attendees=[
            vCalAddress.new(
                attendee.email,
                cn=attendee.name,
                cutype="INDIVIDUAL",
                role="REQ-PARTICIPANT",
                partstat="NEEDS-ACTION",
                # A cancellation asks for no reply.
                rsvp=True if requesting else None,
            )
            for attendee in invite.attendees
        ],
        status=status,
    )


def _span(invite: CalendarInvite) -> tuple[datetime, datetime]:
    """The first and last time the message mentions (the VTIMEZONE must be right for both)."""
    times = [invite.start, invite.end]
    duration = invite.end - invite.start
    if invite.recurrence:
        times.append(last_start(invite.start, invite.recurrence, invite.tzid) + duration)
    for occurrence in (*invite.overrides, *((invite.occurrence,) if invite.occurrence else ())):
        times += [occurrence.recurrence_id, occurrence.start, occurrence.end]
    times += list(invite.exdates)
    return min(times), max(times)


def build_calendar(
    entries: list[CalendarEntry] | tuple[CalendarEntry, ...],
    *,
    name: str | None = None,
    stamp: datetime | None = None,
) -> bytes:
    """Render check-ins as one VCALENDAR without METHOD (a calendar's copy, not an iTIP message).

    Args:
        entries: the check-ins; each one's times are shown in its ``tzid``.
        name: the calendar's display name (X-WR-CALNAME), for a feed.
        stamp: DTSTAMP; now (UTC) by default.

    Returns:
        The iCalendar bytes, with one VTIMEZONE per zone used, right over every time shown.

    Raises:
        ValueError: when a ``tzid`` is not a known IANA time zone.
    """
    stamp = (stamp or datetime.now(UTC)).astimezone(UTC)
    events: list[Event] = []
    spans: dict[str, tuple[datetime, datetime]] = {}
    for entry in entries:
        try:
            zone = ZoneInfo(entry.tzid)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {entry.tzid!r}") from exc
        series = _entry_event(entry, zone, stamp, entry.sequence, entry.start, entry.end)
        series.add("STATUS", "CANCELLED" if entry.cancelled else "CONFIRMED")
        times = [entry.start, entry.end]
        if entry.recurrence:
            series.add("RRULE", vRecur.from_ical(entry.recurrence))
            times.append(last_start(entry.start, entry.recurrence, entry.tzid) + (entry.end - entry.start))
        events.append(series)
        for occurrence in entry.occurrences if entry.recurrence else ():
            event = _entry_event(
                entry, zone, stamp, occurrence.sequence, occurrence.start, occurrence.end,
                title=occurrence.title, location=occurrence.location,
            )  # fmt: skip
            event.add("RECURRENCE-ID", occurrence.recurrence_id.astimezone(zone))
            event.add("STATUS", "CANCELLED" if entry.cancelled or occurrence.cancelled else "CONFIRMED")
            events.append(event)
            times += [occurrence.recurrence_id, occurrence.start, occurrence.end]
        first, last = spans.get(entry.tzid, (min(times), max(times)))
        spans[entry.tzid] = (min(first, *times), max(last, *times))
    calendar = Calendar.new(prodid=PRODID, subcomponents=events)
    calendar.pop("UID", None)  # as for invites: a fresh random UID on the VCALENDAR is noise
    if name:
        calendar.add("X-WR-CALNAME", name)
    for index, (tzid, (first, last)) in enumerate(sorted(spans.items())):
        calendar.subcomponents.insert(
            index, vtimezone(tzid, (first - TIMEZONE_MARGIN).date(), (last + TIMEZONE_MARGIN).date())
        )
    return calendar.to_ical()


def _entry_event(
    entry: CalendarEntry,
    zone: ZoneInfo,
    stamp: datetime,
    sequence: int,
    start: datetime,
    end: datetime,
    *,
    title: str | None = None,
    location: str | None = None,
) -> Event:
    return Event.new(
        uid=entry.uid,
        sequence=sequence,
        stamp=stamp,
        start=start.astimezone(zone),
        end=end.astimezone(zone),
        summary=title or entry.title,
        location=location or entry.location or None,
        description=entry.description or None,
    )
