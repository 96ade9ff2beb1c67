"""iCalendar: check-ins as iTIP objects (RFC 5546), built with the ``icalendar`` package.

Only the calendar object lives here; :mod:`careloop.integrations.mime` wraps it in an iMIP
email (RFC 6047) and the SMTP channel or the file outbox carries it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from icalendar import Calendar, Event, vCalAddress

from careloop.messages import CalendarInvite

PRODID = "-//careloop//careloop calendar invites//EN"
"""Identifies careloop as the product that wrote the iCalendar object."""

TIMEZONE_MARGIN = timedelta(days=366)
"""How far before the start and after the end the embedded VTIMEZONE's transitions reach."""


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
    start = invite.start.astimezone(zone)
    end = invite.end.astimezone(zone)
    requesting = invite.method == "REQUEST"
    event = Event.new(
        uid=invite.uid,
        sequence=invite.sequence,
        stamp=(stamp or datetime.now(UTC)).astimezone(UTC),
        start=start,
        end=end,
        summary=invite.title,
        location=invite.location or None,
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
        status="CONFIRMED" if requesting else "CANCELLED",
    )
    calendar = Calendar.new(prodid=PRODID, method=invite.method, subcomponents=[event])
    # Calendar.new() adds an RFC 7986 UID to the VCALENDAR, a fresh uuid4 each time; the iTIP
    # object is identified by the VEVENT's UID, and a random second one only adds noise.
    calendar.pop("UID", None)
    # icalendar computes the VTIMEZONE from the zoneinfo data; bounding it around the event
    # keeps it small and still correct for check-ins after 2038 (the default end).
    calendar.add_missing_timezones(
        first_date=(start - TIMEZONE_MARGIN).date(), last_date=(end + TIMEZONE_MARGIN).date()
    )
    return calendar.to_ical()
