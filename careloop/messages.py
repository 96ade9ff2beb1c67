"""What each member is told: message text per event type and channel.

A text and an email subject say only what kind of update it is and the child's first name —
never a medication, a dose, a concern's words or a diagnosis — and every message carries the
recipient's own member link, where the details live (as their role may see them). An email
body lists details only where the notebook turns ``email_detail`` on, and then only the
fields the recipient's role may see; a check-in invite shows its title, time and place,
which are what an invite is. Texts are GSM-7 and fit one segment wherever the link allows.
"""

from __future__ import annotations

import html
import typing
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parseaddr
from zoneinfo import ZoneInfo

from pydantic import AwareDatetime

from careloop.events import EVENT_DATA, EVENT_KINDS, EventType
from careloop.gsm import SEGMENT, gsm7_length, to_gsm7
from careloop.vocabulary import ChannelKind, DeliveryStatus


@dataclass(frozen=True)
class Attendee:
    name: str
    email: str


@dataclass(frozen=True)
class Occurrence:
    """One occurrence of a recurring check-in, changed on its own.

    ``recurrence_id`` is its original start (RECURRENCE-ID); ``sequence`` its own SEQUENCE;
    ``start``/``end`` where it is now. ``title``/``location`` None: the series' own.
    """

    recurrence_id: datetime
    sequence: int
    start: datetime
    end: datetime
    title: str | None = None
    location: str | None = None
    cancelled: bool = False


@dataclass(frozen=True)
class CalendarEntry:
    """One check-in as a calendar keeps it (a CalDAV resource, an entry of a member's feed), not
    as a message: no METHOD, no attendees.

    ``uid`` and ``sequence`` are the invites' own. A recurring check-in has ``recurrence`` and
    ``occurrences``: each occurrence moved or cancelled alone (a cancelled one is kept, marked
    cancelled). ``cancelled``: the whole check-in is.
    """

    uid: str
    sequence: int
    title: str
    start: datetime
    end: datetime
    tzid: str
    location: str | None = None
    description: str | None = None
    recurrence: str | None = None
    occurrences: tuple[Occurrence, ...] = ()
    cancelled: bool = False

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("start and end must be timezone-aware")


@dataclass(frozen=True)
class CalendarInvite:
    """One check-in as an iTIP object.

    ``method`` is ``REQUEST`` (new or updated) or ``CANCEL``. ``uid`` is stable per check-in,
    ``sequence`` is raised by every update and the cancel. ``start``/``end`` are aware
    datetimes; ``tzid`` is the IANA zone they are shown in (a VTIMEZONE for it is embedded).

    A recurring check-in has ``recurrence`` (an RRULE value), ``exdates`` (original starts of
    occurrences cancelled alone) and ``overrides`` (occurrences moved alone, sent with the
    series). ``occurrence`` makes the message about that one occurrence only (RECURRENCE-ID).
    ``uninvite``: a CANCEL that removes its attendees from a check-in that goes on (RFC 5546
    §3.2.5: it lists only them and has no STATUS:CANCELLED).
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
    recurrence: str | None = None
    exdates: tuple[datetime, ...] = ()
    overrides: tuple[Occurrence, ...] = ()
    occurrence: Occurrence | None = None
    uninvite: bool = False
    # Shown in an uninvite's email: when the check-in was, as the removed attendee had it.
    previous_start: datetime | None = None
    previous_end: datetime | None = None

    def __post_init__(self) -> None:
        if self.method not in ("REQUEST", "CANCEL"):
            raise ValueError(f"method must be REQUEST or CANCEL, not {self.method!r}")
        if self.uninvite and self.method != "CANCEL":
            raise ValueError("an uninvite is a CANCEL")
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
    timezone: str | None = None
    active: bool = True


@dataclass(frozen=True)
class MemberLink:
    """The recipient's own link to the event's page, and when it stops working."""

    url: str
    expires_at: datetime


HIDDEN_FIELDS = ("checkin_id", "attendees")
"""Data fields messages never list: the sender's own id for a check-in, and member ids
(the member page names the attendees)."""

_WORDS_WITH_UNDERSCORES = ("change", "discipline", "voice", "area")

SMS_FORMS = (
    "careloop: {label} in {child}'s care notebook. Details: {link}",
    "careloop: {label} for {child}: {link}",
    "careloop: {label}: {link}",
)
"""The text of every SMS, longest first: the first that fits one segment is sent. They name
the kind of update and the child's first name, never what the update says."""


ESCALATION_SMS_FORMS = (
    "careloop: not yet acknowledged: {label} in {child}'s care notebook. Reply OK if you have it: {link}",
    "careloop: not yet acknowledged: {label} for {child}. Reply OK: {link}",
    "careloop: not yet acknowledged: {label}: {link}",
)
"""The text of an escalation step's SMS (nobody acknowledged the alert in time), longest first."""


def field_label(event_type: str, field_name: str) -> str:
    """How a message labels a data field: its title in the event type's model."""
    info = EVENT_DATA[event_type].model_fields.get(field_name)
    return (info.title if info and info.title else None) or field_name.replace("_", " ").capitalize()


def _is_time_field(event_type: str, field_name: str) -> bool:
    info = EVENT_DATA[event_type].model_fields.get(field_name)
    if info is None:
        return False
    # a time, or a time or None (an Optional of an Annotated time)
    kinds = [info.annotation]
    for arg in typing.get_args(info.annotation):
        kinds += [arg, *typing.get_args(arg)[:1]]
    return any(kind in (AwareDatetime, datetime) for kind in kinds)


def first_name(full_name: str) -> str:
    return full_name.strip().split()[0] if full_name.strip() else "your child"


def event_label(event_type: str, data: dict) -> str:
    """What kind of update this is, as messages say it ("a medication update")."""
    label = EVENT_KINDS[EventType(event_type)].label
    if event_type == EventType.CONCERN_RAISED and data.get("severity") == "urgent":
        label = "an URGENT concern"
    return label


def headline(event_type: str, data: dict, child_name: str) -> str:
    """"A medication update in Maya's care notebook": a page title, with no details."""
    label = event_label(event_type, data)
    return f"{label[0].upper()}{label[1:]} in {first_name(child_name)}'s care notebook"


def local_time(value: datetime, zone: str) -> str:
    """``value`` as people read it in ``zone``: "Tue 12 Jan 2027, 3:30 pm CST"."""
    t = value.astimezone(ZoneInfo(zone))
    return f"{t:%a} {t.day} {t:%b %Y}, {_clock(t)} {t.tzname()}"


def local_date(value: datetime, zone: str) -> str:
    """``value``'s date in ``zone``: "12 Jan 2027"."""
    t = value.astimezone(ZoneInfo(zone))
    return f"{t.day} {t:%b %Y}"


def local_span(start: datetime, end: datetime, zone: str) -> str:
    """A check-in's time: "Tue 12 Jan 2027, 3:30 pm – 4:30 pm CST" (both ends when the days differ)."""
    a, b = start.astimezone(ZoneInfo(zone)), end.astimezone(ZoneInfo(zone))
    if a.date() != b.date():
        return f"{local_time(a, zone)} – {local_time(b, zone)}"
    suffix = f" {b.tzname()}" if a.tzname() == b.tzname() else f" {a.tzname()} – {b.tzname()}"
    return f"{a:%a} {a.day} {a:%b %Y}, {_clock(a)} – {_clock(b)}" + suffix


def _clock(t: datetime) -> str:
    return f"{t.hour % 12 or 12}:{t:%M} {'am' if t.hour < 12 else 'pm'}"


def detail_lines(event_type: str, data: dict, fields: tuple[str, ...], zone: str) -> list[tuple[str, str]]:
    """(label, text) for each of ``fields`` the event has, in order; times shown in ``zone``.

    ``fields`` is what the recipient may see (``careloop.policy``); nothing else is read.
    """
    lines = []
    for key in fields:
        value = data.get(key)
        if key in HIDDEN_FIELDS or value in (None, ""):
            continue
        if _is_time_field(event_type, key):
            text = local_time(datetime.fromisoformat(str(value)), zone)
        elif key == "recurrence":
            text = describe_rule(str(value))
        elif key in _WORDS_WITH_UNDERSCORES:
            text = str(value).replace("_", " ")
        else:
            text = str(value)
        lines.append((field_label(event_type, key), text))
    return lines


def sms_text(label: str, child: str, link: str, forms: tuple[str, ...] = SMS_FORMS) -> str:
    """The text of an SMS, in GSM-7 (names transliterated), in one segment wherever the
    link leaves room for it."""
    text = ""
    for form in forms:
        text = to_gsm7(form.format(label=label, child=child, link=link))
        if gsm7_length(text) <= SEGMENT:
            return text
    return text  # a link too long for any form to fit: the shortest form, in two segments


def render(
    *,
    delivery_id: str,
    attempt: int,
    channel: str,
    event_type: str,
    data: dict,
    context: dict,
    notebook: NotebookView,
    recipient: Recipient,
    attendees: list[Recipient],
    link: MemberLink,
    detail_fields: tuple[str, ...],
    mail_from: str,
    created_at: datetime | None = None,
    escalated: bool = False,
) -> OutgoingMessage:
    """Build the message for one delivery. Pure: no I/O.

    Args:
        link: the recipient's own member link for this event.
        detail_fields: the data fields an email body may list — what the recipient's role
            may see, and only where the notebook turned ``email_detail`` on (else empty).
            Texts and subjects never carry details, whatever this says.
        escalated: an escalation step's alert: it says nobody has acknowledged it yet and
            how to (reply OK; the page's button).
    """
    child = first_name(notebook.child_name)
    label = event_label(event_type, data)
    zone = recipient.timezone or notebook.timezone
    kind = ChannelKind(channel)
    if kind is ChannelKind.SMS:
        return OutgoingMessage(
            delivery_id=delivery_id,
            attempt=attempt,
            channel=kind,
            to=kind.address(recipient) or "",
            to_name=recipient.name,
            subject="",
            text=sms_text(label, child, link.url, ESCALATION_SMS_FORMS if escalated else SMS_FORMS),
            created_at=created_at,
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
        subject, intro, details = _invite_wording(event_type, invite, child, zone, created_at)
    else:
        subject = f"{label[0].upper()}{label[1:]} for {child}"
        intro = f"There is {label} in {child}'s care notebook."
        if escalated:
            subject = f"Not yet acknowledged: {label} for {child}"
            intro = (
                f"No one on the care team has acknowledged {label} in {child}'s care notebook yet. "
                'Open your link and press "I have seen this", or reply OK to the text.'
            )
        details = detail_lines(event_type, data, detail_fields, zone)
    until = local_date(link.expires_at, zone)
    text_lines = [f"Hello {recipient.name},", "", intro]
    if details:
        text_lines += ["", *(f"{name}: {value}" for name, value in details)]
    if recipient.active:
        text_lines += [
            "",
            f"See it in careloop: {link.url}",
            f"(This link is yours alone and works until {until}.)",
            "",
            "You get this because of your role on the care team.",
        ]
    else:  # no longer on the team: no link (it would not open), only the calendar's CANCEL
        text_lines += ["", "You get this because you had this check-in in your calendar."]
    rows = "".join(
        f"<tr><th align='left'>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"
        for name, value in details
    )
    html_body = (
        f"<p>Hello {html.escape(recipient.name)},</p>"
        f"<p>{html.escape(intro)}</p>"
        + (f"<table>{rows}</table>" if rows else "")
        + (
            f"<p><a href='{html.escape(link.url)}'>See it in careloop</a> "
            f"(this link is yours alone and works until {html.escape(until)}).</p>"
            "<p>You get this because of your role on the care team.</p>"
            if recipient.active
            else "<p>You get this because you had this check-in in your calendar.</p>"
        )
    )
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


def _invite_wording(
    event_type: str, invite: CalendarInvite, child: str, zone: str, now: datetime | None
) -> tuple[str, str, list[tuple[str, str]]]:
    """Subject, opening line and lines of an invite's email, times in the recipient's zone.

    The subject names no title (a check-in's title is free text and may say more than a
    subject should); the body names the meeting and shows what the attached invite shows.
    A removed attendee is told they were removed and when the check-in was, not its new time.
    """
    occurrence = invite.occurrence
    if invite.uninvite:
        start, end = invite.previous_start or invite.start, invite.previous_end or invite.end
    elif occurrence is not None:
        start, end = occurrence.start, occurrence.end
    else:
        start, end = invite.start, invite.end
    title = (occurrence.title if occurrence is not None else None) or invite.title
    location = (occurrence.location if occurrence is not None else None) or invite.location
    what = f"{child}'s team check-in on {people_date(start, zone, now)}"
    details = [("Check-in", title)]
    if invite.uninvite:
        subject, intro = f"Removed: {what}", f"You are no longer invited to this team check-in for {child}:"
        details.append(("Was", people_span(start, end, zone, now)))
        if invite.recurrence:
            details.append(("Repeats", describe_rule(invite.recurrence)))
        return subject, intro, details
    if occurrence is not None and invite.method == "CANCEL":
        subject = f"Cancelled: {what}"
        intro = f"One meeting of a repeating team check-in for {child} is cancelled (the others go on):"
        details.append(("When", people_span(start, end, zone, now)))
        return subject, intro, details
    if occurrence is not None:
        original = occurrence.recurrence_id
        subject = f"Updated: {what}"
        intro = f"One meeting of a repeating team check-in for {child} has moved (the others stay):"
        details += [
            ("When", people_span(start, end, zone, now)),
            ("Instead of", people_span(original, original + (invite.end - invite.start), zone, now)),
        ]
    elif invite.method == "CANCEL":
        subject, intro = f"Cancelled: {what}", f"This team check-in for {child} is cancelled:"
        details.append(("When", people_span(start, end, zone, now)))
        if invite.recurrence:
            details.append(("Repeats", describe_rule(invite.recurrence) + " (every meeting is cancelled)"))
        return subject, intro, details
    elif event_type == EventType.CHECKIN_UPDATED:
        subject, intro = f"Updated: {what}", f"This team check-in for {child} has changed:"
        details.append(("When", people_span(start, end, zone, now)))
    else:
        subject, intro = f"Invitation: {what}", f"You are invited to a team check-in for {child}:"
        details.append(("When", people_span(start, end, zone, now)))
    if invite.recurrence and occurrence is None:
        details.append(("Repeats", describe_rule(invite.recurrence)))
        if invite.exdates:
            details.append(
                ("Not on", ", ".join(people_date(d, zone, now) for d in sorted(invite.exdates)))
            )
    if location:
        details.append(("Where", location))
    return subject, intro, details


def people_date(value: datetime, zone: str, now: datetime | None = None) -> str:
    """A day as people write it in ``zone``: "Tue 12 Jan", with the year when it is not
    the year of ``now`` there."""
    t = value.astimezone(ZoneInfo(zone))
    text = f"{t:%a} {t.day} {t:%b}"
    if now is None or now.astimezone(ZoneInfo(zone)).year != t.year:
        text += f" {t.year}"
    return text


def people_span(start: datetime, end: datetime, zone: str, now: datetime | None = None) -> str:
    """A meeting's time in ``zone`` as people write it: "Tue 12 Jan, 5:00–5:45 pm CST";
    "11:30 am – 12:15 pm" across noon; both days when it ends on another day."""
    tz = ZoneInfo(zone)
    a, b = start.astimezone(tz), end.astimezone(tz)
    if a.date() != b.date():
        return (
            f"{people_date(a, zone, now)}, {_clock(a)} {a.tzname()} – "
            f"{people_date(b, zone, now)}, {_clock(b)} {b.tzname()}"
        )
    if (a.hour < 12) == (b.hour < 12):
        clock = f"{_clock(a).rsplit(' ', 1)[0]}–{_clock(b)}"
    else:
        clock = f"{_clock(a)} – {_clock(b)}"
    names = a.tzname() if a.tzname() == b.tzname() else f"{a.tzname()}–{b.tzname()}"
    return f"{people_date(a, zone, now)}, {clock} {names}"


_FREQ_WORDS = {"DAILY": ("day", "days"), "WEEKLY": ("week", "weeks"), "MONTHLY": ("month", "months")}
_FREQ_WORDS["YEARLY"] = ("year", "years")
_DAY_WORDS = {"MO": "Monday", "TU": "Tuesday", "WE": "Wednesday", "TH": "Thursday", "FR": "Friday"}
_DAY_WORDS.update({"SA": "Saturday", "SU": "Sunday"})
_NTH_WORDS = {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth", -1: "last", -2: "second-last"}


def describe_rule(rule: str) -> str:
    """An RRULE in words where it is a common one ("every month on the second Tuesday, 6
    times"); the rule itself otherwise."""
    parts = dict(p.split("=", 1) for p in rule.split(";") if "=" in p)
    freq = parts.get("FREQ", "")
    plain = set(parts) <= {"FREQ", "INTERVAL", "COUNT", "UNTIL", "BYDAY", "WKST"}
    if freq not in _FREQ_WORDS or not plain:
        return rule
    one, many = _FREQ_WORDS[freq]
    interval = int(parts.get("INTERVAL", "1") or 1)
    text = f"every {one}" if interval == 1 else f"every {interval} {many}"
    if "BYDAY" in parts:
        days = []
        for day in parts["BYDAY"].split(","):
            nth, name = day[:-2], day[-2:]
            if name not in _DAY_WORDS or (nth and int(nth) not in _NTH_WORDS):
                return rule
            days.append(f"the {_NTH_WORDS[int(nth)]} {_DAY_WORDS[name]}" if nth else _DAY_WORDS[name])
        text += " on " + " and ".join(days)
    if "COUNT" in parts:
        text += f", {parts['COUNT']} times"
    elif "UNTIL" in parts:
        until = datetime.strptime(parts["UNTIL"][:8], "%Y%m%d")
        text += f", until {until.day} {until:%b %Y}"
    return text


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
    """The iTIP object for one attendee: REQUEST while invited; the CANCEL of the check-in,
    or of one occurrence, when cancelled; an uninvite (a CANCEL listing only them) once they
    are no longer invited or no longer on the team."""
    checkin = context["checkin"]
    current = set(checkin.get("attendees") or ())
    active = {a.id for a in attendees if a.active}
    cancelled = event_type == EventType.CHECKIN_CANCELLED
    uninvite = not cancelled and (recipient.id not in current or not recipient.active)
    organizer_name, organizer_email = parseaddr(mail_from)
    if uninvite:
        listed = (recipient,)
    elif cancelled:
        listed = tuple(a for a in attendees if a.id in current or a.id == recipient.id)
    else:
        listed = tuple(a for a in attendees if a.id in current and a.id in active)
    previous = context.get("previous") or {}
    return CalendarInvite(
        method="CANCEL" if cancelled or uninvite else "REQUEST",
        uid=checkin["uid"],
        sequence=int(checkin["sequence"]),
        title=checkin["title"],
        start=datetime.fromisoformat(checkin["start"]),
        end=datetime.fromisoformat(checkin["end"]),
        tzid=notebook.timezone,
        organizer=Attendee(name=organizer_name or "careloop", email=organizer_email or mail_from),
        attendees=tuple(Attendee(name=a.name, email=a.email) for a in listed if a.email),
        location=checkin.get("location"),
        description=f"Care team check-in for {first_name(notebook.child_name)}.",
        recurrence=checkin.get("recurrence"),
        exdates=tuple(datetime.fromisoformat(d) for d in checkin.get("exdates") or ()),
        overrides=tuple(_occurrence(o) for o in checkin.get("overrides") or ()),
        # An uninvite takes the check-in out whole: never about one occurrence.
        occurrence=_occurrence(checkin["occurrence"]) if checkin.get("occurrence") and not uninvite else None,
        uninvite=uninvite,
        previous_start=datetime.fromisoformat(previous["start"]) if previous.get("start") else None,
        previous_end=datetime.fromisoformat(previous["end"]) if previous.get("end") else None,
    )


def _occurrence(value: dict) -> Occurrence:
    return Occurrence(
        recurrence_id=datetime.fromisoformat(value["recurrence_id"]),
        sequence=int(value["sequence"]),
        start=datetime.fromisoformat(value["start"]),
        end=datetime.fromisoformat(value["end"]),
        title=value.get("title"),
        location=value.get("location"),
        cancelled=bool(value.get("cancelled")),
    )


@dataclass(frozen=True)
class DigestItem:
    """One event in a digest: what kind it is, when it happened, the member's link to it."""

    event_type: str
    data: dict
    occurred_at: datetime
    link: MemberLink


DIGEST_SMS_LINKS = 3
"""Links a digest text carries (the newest events'); an email digest carries every one."""


def _count(n: int) -> str:
    return "1 update" if n == 1 else f"{n} updates"


def render_digest(
    *,
    digest_id: str,
    attempt: int,
    channel: str,
    notebook: NotebookView,
    recipient: Recipient,
    items: list[DigestItem],
    window: str,
    created_at: datetime | None = None,
) -> OutgoingMessage:
    """The one message of a member's daily digest. Pure: no I/O.

    As careful as any other message: each event is named by its kind ("a goal update") and
    time only, never by what it says, with the member's own link to its page. A text carries
    the newest :data:`DIGEST_SMS_LINKS` links; an email lists every event.
    """
    if not items:
        raise ValueError("an empty digest is not sent")
    child = first_name(notebook.child_name)
    zone = recipient.timezone or notebook.timezone
    kind = ChannelKind(channel)
    day = datetime.fromisoformat(window)
    day_text = f"{day:%a} {day.day} {day:%b}"
    if kind is ChannelKind.SMS:
        newest = sorted(items, key=lambda i: i.occurred_at)[-DIGEST_SMS_LINKS:]
        links = " ".join(i.link.url for i in reversed(newest))
        text = f"careloop: {child}'s daily digest, {_count(len(items))}: {links}"
        if len(items) > len(newest):
            count = f"{_count(len(items))}; the newest {len(newest)}"
            text = f"careloop: {child}'s daily digest, {count}: {links}"
        return OutgoingMessage(
            delivery_id=digest_id,
            attempt=attempt,
            channel=kind,
            to=kind.address(recipient) or "",
            to_name=recipient.name,
            subject="",
            text=to_gsm7(text),
            created_at=created_at,
        )
    lines = []
    for item in sorted(items, key=lambda i: i.occurred_at):
        label = event_label(item.event_type, item.data)
        lines.append((local_time(item.occurred_at, zone), label[0].upper() + label[1:], item.link))
    until = local_date(min(i.link.expires_at for i in items), zone)
    intro = f"{_count(len(items))} in {child}'s care notebook since your last digest."
    text_lines = [f"Hello {recipient.name},", "", intro, ""]
    text_lines += [f"- {when}: {label}\n  {link.url}" for when, label, link in lines]
    text_lines += [
        "",
        f"(These links are yours alone and work until at least {until}.)",
        "",
        "You get this daily digest because you chose it in your careloop preferences.",
    ]
    rows = "".join(
        f"<li>{html.escape(when)}: <a href='{html.escape(link.url)}'>{html.escape(label)}</a></li>"
        for when, label, link in lines
    )
    html_body = (
        f"<p>Hello {html.escape(recipient.name)},</p><p>{html.escape(intro)}</p><ul>{rows}</ul>"
        f"<p>(These links are yours alone and work until at least {html.escape(until)}.)</p>"
        "<p>You get this daily digest because you chose it in your careloop preferences.</p>"
    )
    return OutgoingMessage(
        delivery_id=digest_id,
        attempt=attempt,
        channel=kind,
        to=kind.address(recipient) or "",
        to_name=recipient.name,
        subject=f"Daily digest for {child}, {day_text}: {_count(len(items))}",
        text="\n".join(text_lines),
        html=html_body,
        created_at=created_at,
    )
