"""What each member is told: message text per event type and channel.

SMS carries no medication names, doses or concern text — only the child's first name, what
kind of update it is, and a link. Email and calendar carry the details.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parseaddr

from careloop.events import EVENT_DATA, EVENT_KINDS, EventType
from careloop.vocabulary import ChannelKind, DeliveryStatus


@dataclass(frozen=True)
class Attendee:
    name: str
    email: str


@dataclass(frozen=True)
class CalendarInvite:
    """One check-in as an iTIP object.

    ``method`` is ``REQUEST`` (new or updated) or ``CANCEL``. ``uid`` is stable per check-in,
    ``sequence`` is raised by every update and the cancel. ``start``/``end`` are aware
    datetimes; ``tzid`` is the IANA zone they are shown in (a VTIMEZONE for it is embedded).
    """

    method: str
    uid: str
    sequence: int
    title: str
    start: datetime
    end: datetime
    tzid: str
    organizer: Attendee
    attendees: tuple[Attendee, ...]
    location: str | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        if self.method not in ("REQUEST", "CANCEL"):
            raise ValueError(f"method must be REQUEST or CANCEL, not {self.method!r}")
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("start and end must be timezone-aware")


@dataclass(frozen=True)
class OutgoingMessage:
    """One message for one recipient over one channel, fully rendered.

    Args:
        delivery_id: careloop's delivery id; used in status-callback URLs and Message-IDs.
        attempt: 1 for the first try, raised on each retry.
        channel: ``sms``, ``email`` or ``calendar``.
        to: E.164 phone number (sms) or email address (email, calendar).
        to_name: recipient's display name.
        subject: email subject (ignored by sms).
        text: plain text body; for sms the whole message (kept free of PHI by the templates).
        html: optional HTML alternative for email/calendar.
        invite: the iTIP payload for ``calendar``.
        created_at: when the delivery was planned (lets an SMS lookup bound its search).
    """

    delivery_id: str
    attempt: int
    channel: str
    to: str
    to_name: str
    subject: str
    text: str
    html: str | None = None
    invite: CalendarInvite | None = None
    created_at: datetime | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderReceipt:
    """What the provider told us when it accepted a message.

    ``provider_id`` is Twilio's message SID or the SMTP Message-ID. ``status`` is careloop's
    delivery status it maps to: ``sent`` (accepted; Twilio's own "queued" counts) or
    ``delivered`` (the provider already confirmed delivery).
    """

    provider_id: str
    status: DeliveryStatus = DeliveryStatus.SENT


def field_label(event_type: str, field_name: str) -> str:
    """How a message labels a data field: its title in the event type's model."""
    info = EVENT_DATA[event_type].model_fields.get(field_name)
    return (info.title if info and info.title else None) or field_name.replace("_", " ").capitalize()


@dataclass(frozen=True)
class NotebookView:
    id: str
    child_name: str
    timezone: str


@dataclass(frozen=True)
class Recipient:
    id: str
    name: str
    email: str | None
    phone: str | None


def first_name(full_name: str) -> str:
    return full_name.strip().split()[0] if full_name.strip() else "your child"


def _label(event_type: str, data: dict) -> str:
    label = EVENT_KINDS[EventType(event_type)].label
    if event_type == "concern.raised" and data.get("severity") == "urgent":
        label = "an URGENT concern"
    return label


def _detail_lines(event_type: str, data: dict) -> list[tuple[str, str]]:
    lines = []
    for key, value in data.items():
        if key in ("attendees", "checkin_id") or value in (None, ""):
            continue
        text = (
            str(value).replace("_", " ") if key in ("change", "discipline", "voice", "area") else str(value)
        )
        lines.append((field_label(event_type, key), text))
    return lines


def event_link(public_url: str, event_id: str) -> str:
    return f"{public_url}/v1/events/{event_id}"


def render(
    *,
    delivery_id: str,
    attempt: int,
    channel: str,
    event_id: str,
    event_type: str,
    data: dict,
    context: dict,
    notebook: NotebookView,
    recipient: Recipient,
    attendees: list[Recipient],
    public_url: str,
    mail_from: str,
    created_at: datetime | None = None,
) -> OutgoingMessage:
    """Build the message for one delivery. Pure: no I/O."""
    child = first_name(notebook.child_name)
    label = _label(event_type, data)
    link = event_link(public_url, event_id)
    kind = ChannelKind(channel)
    if kind is ChannelKind.SMS:
        body = f"careloop: {label} in {child}'s care notebook. Details: {link}"
        return OutgoingMessage(
            delivery_id=delivery_id,
            attempt=attempt,
            channel=kind,
            to=kind.address(recipient) or "",
            to_name=recipient.name,
            subject="",
            text=body,
            created_at=created_at,
        )

    subject = f"{label[0].upper()}{label[1:]} for {child}"
    details = _detail_lines(event_type, data)
    text_lines = [f"Hello {recipient.name},", "", f"There is {label} in {child}'s care notebook.", ""]
    text_lines += [f"{name}: {value}" for name, value in details]
    text_lines += [
        "",
        f"See it in careloop: {link}",
        "",
        "You get this because of your role on the care team.",
    ]
    rows = "".join(
        f"<tr><th align='left'>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"
        for name, value in details
    )
    html_body = (
        f"<p>Hello {html.escape(recipient.name)},</p>"
        f"<p>There is {html.escape(label)} in {html.escape(child)}'s care notebook.</p>"
        f"<table>{rows}</table>"
        f"<p><a href='{html.escape(link)}'>See it in careloop</a></p>"
    )
    invite = None
    if kind is ChannelKind.CALENDAR:
        invite = build_checkin_invite(
            event_type=event_type,
            data=data,
            context=context,
            notebook=notebook,
            recipient=recipient,
            attendees=attendees,
            mail_from=mail_from,
        )
        subject = ("Cancelled: " if invite.method == "CANCEL" else "Invitation: ") + invite.title
    return OutgoingMessage(
        delivery_id=delivery_id,
        attempt=attempt,
        channel=kind,
        to=kind.address(recipient) or "",
        to_name=recipient.name,
        subject=subject,
        text="\n".join(text_lines),
        html=html_body,
        invite=invite,
        created_at=created_at,
    )


def build_checkin_invite(
    *,
    event_type: str,
    data: dict,
    context: dict,
    notebook: NotebookView,
    recipient: Recipient,
    attendees: list[Recipient],
    mail_from: str,
) -> CalendarInvite:
    """The iTIP object for one attendee: REQUEST while invited, CANCEL once not."""
    checkin = context["checkin"]
    current = set(checkin.get("attendees") or ())
    cancelled = event_type == "checkin.cancelled" or recipient.id not in current
    organizer_name, organizer_email = parseaddr(mail_from)
    return CalendarInvite(
        method="CANCEL" if cancelled else "REQUEST",
        uid=checkin["uid"],
        sequence=int(checkin["sequence"]),
        title=checkin["title"],
        start=datetime.fromisoformat(checkin["start"]),
        end=datetime.fromisoformat(checkin["end"]),
        tzid=notebook.timezone,
        organizer=Attendee(name=organizer_name or "careloop", email=organizer_email or mail_from),
        attendees=tuple(
            Attendee(name=a.name, email=a.email)
            for a in attendees
            if a.email and (a.id in current or a.id == recipient.id)
        ),
        location=checkin.get("location"),
        description=f"Care team check-in for {first_name(notebook.child_name)}.",
    )
