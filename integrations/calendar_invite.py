"""Calendar invites as iTIP (RFC 5546) over iMIP (RFC 6047) email.

The invite travels the way Google Calendar sends its own: a ``multipart/alternative`` with
the text, the HTML and a ``text/calendar; method=...`` part (the one Gmail, Outlook and Apple
Mail act on), wrapped in ``multipart/mixed`` with the same object as an ``invite.ics``
attachment for clients that only offer attachments. Sending goes through
:meth:`SmtpEmail.deliver_mime`, so error mapping and the Message-ID rule are the email
channel's.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.headerregistry import Address
from email.message import EmailMessage
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from icalendar import Calendar, Event, vCalAddress

from careloop.integrations.base import (
    CalendarInvite,
    Channel,
    DeliveryError,
    OutgoingMessage,
    ProviderReceipt,
)
from careloop.integrations.email_smtp import SmtpEmail, build_email

PRODID = "-//careloop//careloop calendar invites//EN"
"""Identifies careloop as the product that wrote the iCalendar object."""

TIMEZONE_MARGIN = timedelta(days=366)
"""How far before the start and after the end the embedded VTIMEZONE's transitions reach."""

ICS_FILENAME = "invite.ics"
"""Name of the attached copy of the invite."""


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


def build_invite_email(message: OutgoingMessage, sender: Address) -> EmailMessage:
    """The email for a calendar message: :func:`build_email` plus the iMIP parts.

    Raises:
        DeliveryError: (permanent) when the message has no invite or a bad time zone.
    """
    invite = message.invite
    if invite is None:
        raise DeliveryError("calendar message without an invite", permanent=True)
    try:
        ics = build_invite(invite)
    except ValueError as exc:
        raise DeliveryError(str(exc), permanent=True) from exc
    msg = build_email(message, sender)
    # base64 keeps the iCalendar bytes (CRLF, folded lines, UTF-8 names) exactly as written.
    msg.add_alternative(
        ics,
        maintype="text",
        subtype="calendar",
        cte="base64",
        params={"method": invite.method, "charset": "UTF-8"},
    )
    msg.add_attachment(
        ics, maintype="application", subtype="ics", filename=ICS_FILENAME, params={"name": ICS_FILENAME}
    )
    return msg


class CalendarEmail(Channel):
    """Sends check-in invites, updates and cancellations to attendees by email (iMIP)."""

    kind = "calendar"

    def __init__(self, smtp: SmtpEmail):
        self.smtp = smtp

    @classmethod
    def from_settings(cls, settings) -> CalendarEmail:
        return cls(SmtpEmail.from_settings(settings))

    def build_email(self, message: OutgoingMessage) -> EmailMessage:
        return build_invite_email(message, self.smtp.sender)

    def send(self, message: OutgoingMessage) -> ProviderReceipt:
        msg = self.build_email(message)
        self.smtp.deliver_mime(msg, message.to)
        return ProviderReceipt(provider_id=msg["Message-ID"], status="sent")
