"""The ``hl7v2`` source kind: a clinic's scheduling engine posts HL7 v2 SIU messages, which
become check-in events, and is answered with an HL7 acknowledgement.

``careloop.hl7v2`` reads the message; here it is matched to careloop's records:

- the notebook: the source's ``notebook_id``, or its ``patients`` map from PID-3's identifiers
  (``"<assigning authority>|<id>"``, as a FHIR source's ``"system|value"``) to notebooks;
- the attendees: the notebook's active members whose phone or email the message carries
  (``careloop.hl7v2.CONTACT_FIELDS``); when it carries none of theirs, every active member, and
  the rules decide who hears how;
- times written without an offset: the source's ``timezone``, else the notebook's.

The acknowledgement (:func:`answer`) is decided from the inbound record alone — its status,
reason, body and Content-Type — so a repeated webhook-id gets the same ACK as the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from careloop import hl7v2
from careloop.models import InboundRecord, Member, Notebook, Source
from careloop.vocabulary import InboundStatus

DATA_LOCATIONS = {
    "data.checkin_id": ("SCH-2", "204"),
    "data.start": ("SCH-11", "102"),
    "data.end": ("SCH-11", "102"),
    "data.title": ("SCH-7", "102"),
    "data.location": ("AIL-3", "102"),
}
"""Where a check-in field that intake refused comes from in the message, and its 0357 code
(``data.checkin_id``: an update or cancellation of an appointment careloop never scheduled,
or a new one it already has)."""

MIN_NATIONAL_DIGITS = 10
"""Digits a number without a country code must have to be matched by its ending."""


@dataclass(frozen=True)
class Hl7Event:
    """One event an SIU message means (``careloop.inbound`` records it)."""

    notebook_id: str
    event_type: str
    data: dict


@dataclass(frozen=True)
class Hl7Answer:
    status: int
    body: bytes
    content_type: str = hl7v2.ACK_MEDIA_TYPE


def events(session: Session, source: Source, body: bytes) -> list[Hl7Event]:
    """The check-in event the SIU message in ``body`` means for ``source``.

    Raises:
        careloop.hl7v2.Hl7Problem: the message cannot be read, or names no patient, notebook or
            time careloop can use.
    """
    appointment = hl7v2.read(body)
    notebook = _notebook(session, source, appointment)
    if appointment.event_type == "checkin.cancelled":
        return [Hl7Event(notebook.id, appointment.event_type, {"checkin_id": appointment.checkin_id})]
    zone = ZoneInfo((source.config or {}).get("timezone") or notebook.timezone)
    data = {
        "checkin_id": appointment.checkin_id,
        "title": appointment.title,
        "start": _aware(appointment.start, zone),
        "end": _aware(appointment.end, zone),
        "attendees": _attendees(session, notebook, appointment),
    }
    if appointment.location:
        data["location"] = appointment.location
    return [Hl7Event(notebook.id, appointment.event_type, data)]


def _notebook(session: Session, source: Source, appointment: hl7v2.Appointment) -> Notebook:
    patients = (source.config or {}).get("patients") or {}
    if patients:
        if not appointment.patient_keys:
            raise hl7v2.Hl7Problem(
                hl7v2.AckCode.ERROR, "PID-3", "is missing: this source maps patients by identifier", "101"
            )
        notebook_id = next((patients[k] for k in appointment.patient_keys if k in patients), None)
        if notebook_id is None:
            raise hl7v2.Hl7Problem(
                hl7v2.AckCode.ERROR,
                "PID-3",
                "names no patient this source maps (add '<assigning authority>|<id>' to its patients)",
                "204",
            )
    else:
        notebook_id = source.notebook_id
    notebook = session.get(Notebook, notebook_id) if notebook_id else None
    if notebook is None:
        raise hl7v2.Hl7Problem(hl7v2.AckCode.ERROR, None, "the source's notebook no longer exists", "207")
    return notebook


def _aware(value: datetime | None, zone: ZoneInfo) -> str:
    assert value is not None  # read() gives a scheduled or changed appointment both times
    return (value if value.tzinfo is not None else value.replace(tzinfo=zone)).isoformat()


def _attendees(session: Session, notebook: Notebook, appointment: hl7v2.Appointment) -> list[str]:
    members = session.scalars(
        select(Member)
        .where(Member.notebook_id == notebook.id, Member.active.is_(True))
        .order_by(Member.created_at, Member.id)
    ).all()
    emails = set(appointment.emails)
    matched = [
        m.id
        for m in members
        if (m.email and m.email.lower() in emails) or (m.phone and _same_phone(m.phone, appointment.phones))
    ]
    return (matched or [m.id for m in members])[:100]


def _same_phone(e164: str, phones: tuple[str, ...]) -> bool:
    """Whether a member's E.164 number is one of the message's: the same digits when the
    message gives a country code, else the same last digits (at least ten)."""
    digits = e164.lstrip("+")
    for phone in phones:
        if phone.startswith("+"):
            if phone[1:] == digits:
                return True
        elif len(phone) >= MIN_NATIONAL_DIGITS and digits.endswith(phone):
            return True
    return False


def answer(record: InboundRecord, replayed: bool, fresh_status: int | None) -> Hl7Answer:
    """The HL7 ACK and HTTP status for a verified request's record.

    ``AA`` for an accepted record (202, or 200 for a repeated webhook-id); a rejected one is
    ``AR`` when its body is no SIU message careloop reads or was sent as another Content-Type,
    else ``AE``, answered with ``fresh_status`` (422; 415 for the wrong Content-Type), or 200
    for a repeat. ERR says where and why.
    """
    control_id = record.id.split("_", 1)[-1][:20]
    if record.status == InboundStatus.ACCEPTED:
        ack = hl7v2.acknowledgement(record.body, hl7v2.AckCode.ACCEPT, control_id=control_id)
        return Hl7Answer(200 if replayed else 202, ack)
    code, location, error = _refusal(record)
    ack = hl7v2.acknowledgement(
        record.body, code, record.reason, control_id=control_id, location=location, error=error
    )
    return Hl7Answer(200 if replayed else (fresh_status or 422), ack)


def _refusal(record: InboundRecord) -> tuple[hl7v2.AckCode, str | None, str]:
    media_type = (record.content_type or "").split(";", 1)[0].strip().lower()
    if media_type not in hl7v2.MEDIA_TYPES:
        return hl7v2.AckCode.REJECT, None, "200"
    try:
        hl7v2.read(record.body or b"")
    except hl7v2.Hl7Problem as problem:
        return problem.ack, problem.location, problem.error
    reason = record.reason or ""
    for field, (location, error) in DATA_LOCATIONS.items():
        if reason.startswith(field + " "):
            return hl7v2.AckCode.ERROR, location, error
    where = hl7v2.LOCATION.match(reason)
    location = where.group(0) if where else None
    return hl7v2.AckCode.ERROR, location, "204" if location in ("PID-3", "SCH-2") else "207"
