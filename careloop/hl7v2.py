"""HL7 v2 scheduling messages read, and HL7 acknowledgements written, with the ``hl7`` package.

A clinic's scheduling engine posts one SIU message per request, as ER7 text (``MSH|^~\\&|…``,
segments separated by carriage returns; line feeds are accepted too). :func:`read` turns it
into an :class:`Appointment`; anything it cannot read raises :class:`Hl7Problem` with the
acknowledgement code the sender gets (``AR``: not a message careloop reads at all, ``AE``: a
message it reads, with a field it cannot use) and the segment and field it is about.
:func:`acknowledgement` writes the original-mode ``ACK`` (MSH, MSA, and ERR for a refusal).

Nothing here reads the database or knows about webhooks: ``careloop.hl7_inbound`` matches the
patient and the people to notebooks and members. Times are returned as written: without an
offset they are naive, and the caller decides their zone.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import hl7
import hl7.containers
import hl7.util

MEDIA_TYPES = ("x-application/hl7-v2+er7", "application/hl7-v2")
"""The Content-Types an ER7 body may be sent with (the first is HL7's own, for HTTP)."""

ACK_MEDIA_TYPE = "x-application/hl7-v2+er7; charset=utf-8"
"""The Content-Type of careloop's acknowledgements."""

TRIGGERS = {
    "S12": "checkin.scheduled",
    "S13": "checkin.updated",
    "S14": "checkin.updated",
    "S15": "checkin.cancelled",
}
"""SIU trigger events careloop reads (new, rescheduled, modified, cancelled) → event type."""

SENDING_APPLICATION = "CARELOOP"
"""MSH-3 of an acknowledgement when the message named no receiving application."""

DEFAULT_VERSION = "2.5"
"""MSH-12 of an acknowledgement to a body that is not a message at all."""

MAX_TEXT = 200
"""Characters kept of a title or a location (a check-in's limit)."""

ERROR_CODES = {
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "207": "Application internal error",
}
"""HL7 table 0357 (message error condition codes) as ERR-3 names them."""

UNIT_SECONDS = {
    "S": 1, "SEC": 1, "SECOND": 1, "SECONDS": 1,
    "M": 60, "MIN": 60, "MINS": 60, "MINUTE": 60, "MINUTES": 60,
    "H": 3600, "HR": 3600, "HRS": 3600, "HOUR": 3600, "HOURS": 3600,
    "D": 86400, "DAY": 86400, "DAYS": 86400,
}  # fmt: skip
"""Duration units as senders write them (SCH-10, AIS-8, TQ1-6; UCUM ``min``, ``h``, ``s``, ``d``)."""

DELIMITERS = r"[!-/:-@\[-`{-~]{5,6}"
"""MSH-1 and MSH-2: the field separator and four (v2.7+: five) encoding characters, all
punctuation (``|^~\\&``, most often)."""

LOCATION = re.compile(r"^(?P<segment>[A-Z][A-Z0-9]{2})(?:-(?P<field>[0-9]{1,3}))?(?= |$)")
"""A problem's location as a reason starts with it: ``PID-3``, ``SCH-11``, ``MSH``."""


def _silent(record: logging.LogRecord) -> bool:
    return False


# The hl7 package logs a field's text when an escape sequence in it is malformed: a message's
# content is health data, never a log line (its loggers are named by their files' paths).
for _module in (hl7.containers, hl7.util):
    logging.getLogger(_module.__file__).addFilter(_silent)


class AckCode(StrEnum):
    """HL7 table 0008, original mode: MSA-1."""

    ACCEPT = "AA"
    ERROR = "AE"
    REJECT = "AR"


class Hl7Problem(Exception):
    """A message careloop cannot use, and what its sender is told.

    Args:
        ack: ``AR`` for a body that is no SIU message careloop reads (unparseable, another
            message type or event, another version), ``AE`` for one it reads but cannot use.
        location: the segment and field (``PID-3``), or the segment alone, if known.
        message: what is wrong (never the field's content: it may be health data).
        error: the HL7 table 0357 code for ERR-3.
    """

    def __init__(self, ack: AckCode, location: str | None, message: str, error: str = "207"):
        self.ack, self.location, self.message, self.error = ack, location, message, error
        self.reason = f"{location} {message}" if location else message
        super().__init__(self.reason)


def _reject(location: str | None, message: str, error: str) -> Hl7Problem:
    return Hl7Problem(AckCode.REJECT, location, message, error)


def _error(location: str | None, message: str, error: str = "207") -> Hl7Problem:
    return Hl7Problem(AckCode.ERROR, location, message, error)


@dataclass(frozen=True)
class Appointment:
    """What an SIU message says about one appointment.

    ``start`` and ``end`` are None for a cancellation, naive when written without an offset.
    ``patient_keys`` are PID-3's identifiers as ``"<assigning authority>|<id>"`` (both the
    authority's namespace id and its universal id when given; one without an authority has none).
    ``phones`` (digits, ``+`` first when the country code is known) and ``emails`` are the
    contacts the message carries for its people (see :data:`CONTACT_FIELDS`).
    """

    trigger: str
    event_type: str
    control_id: str
    checkin_id: str
    title: str
    start: datetime | None
    end: datetime | None
    location: str | None
    patient_keys: tuple[str, ...]
    phones: tuple[str, ...]
    emails: tuple[str, ...]


CONTACT_FIELDS = (
    ("SCH", 13),  # placer contact phone number
    ("SCH", 17),  # filler contact phone number
    ("PID", 13),  # the patient's home phone (for a child: the family's)
    ("PID", 14),  # business phone
    ("NK1", 5),  # next of kin: phone
    ("NK1", 6),  # business phone
    ("NK1", 31),  # contact person's telephone number
    ("CTD", 5),  # contact data: communication information
)
"""XTN fields whose phones and emails are matched to the notebook's members."""


def parse(body: bytes) -> hl7.Message:
    """The one ER7 message in ``body``. Raises Hl7Problem (``AR``)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _reject(None, "the body is not UTF-8 text", "102") from None
    # MLLP's frame bytes, if a sender kept them; segments end with CR, and CR LF or LF are read alike.
    lines = text.strip("\x0b\x1c\r\n\t ").replace("\r\n", "\r").replace("\n", "\r").split("\r")
    text = "\r".join(line for line in lines if line.strip())  # an empty segment is no segment
    if not text.startswith("MSH") or len(text) < 8:
        raise _reject(None, "the body is not an HL7 v2 message: it must start with an MSH segment", "100")
    if text.count("\rMSH" + text[3]):
        raise _reject(None, "the body holds more than one message: send one per request", "100")
    delimiters = text[3] + text[4 : text.find(text[3], 4)]
    if not re.fullmatch(DELIMITERS, delimiters) or len(set(delimiters)) != len(delimiters):
        raise _reject(
            "MSH-2", "must hold the field separator and four or five distinct encoding characters", "102"
        )
    try:
        return hl7.parse(text)
    except (hl7.HL7Exception, ValueError, IndexError, KeyError, TypeError, AssertionError, RecursionError):
        raise _reject("MSH", "cannot be read: the body is not an HL7 v2 message in ER7", "100") from None


def _value(segment, field: int, repeat: int = 1, component: int = 1, sub: int = 1) -> str:
    """A field's text, unescaped; empty when absent (HL7's explicit null ``""`` too)."""
    try:
        value = str(segment.extract_field(1, field, repeat, component, sub)).strip()
    except (IndexError, TypeError, ValueError):
        return ""
    return "" if value == '""' else value


def _repeats(segment, field: int) -> int:
    try:
        return len(segment(field)) if field < len(segment) else 0
    except (IndexError, TypeError):
        return 0


def _segments(message: hl7.Message, name: str) -> list:
    return [segment for segment in message if str(segment[0]) == name]


def _first(message: hl7.Message, name: str):
    found = _segments(message, name)
    return found[0] if found else None


def _line(text: str) -> str:
    return " ".join(text.split())[:MAX_TEXT]


def read(body: bytes) -> Appointment:
    """The appointment an SIU^S12, S13, S14 or S15 message in ``body`` is about.

    Raises:
        Hl7Problem: ``AR`` for a body that is not such a message; ``AE`` for a message whose
            SCH (or timing) careloop cannot use.
    """
    message = parse(body)
    msh = message.segment("MSH")
    kind, trigger = _value(msh, 9, 1, 1).upper(), _value(msh, 9, 1, 2).upper()
    if kind != "SIU":
        raise _reject("MSH-9", "is not a scheduling message: careloop reads SIU (S12, S13, S14, S15)", "200")
    if trigger not in TRIGGERS:
        raise _reject("MSH-9", "is an SIU event careloop does not read: S12, S13, S14 or S15", "201")
    version = _value(msh, 12)
    if version and not re.fullmatch(r"2\.[0-9](\.[0-9])?", version):
        raise _reject("MSH-12", "is not an HL7 version 2 careloop reads (2.1 to 2.9)", "203")
    control_id = _value(msh, 10)
    sch = _first(message, "SCH")
    if sch is None:
        raise _error("SCH", "is missing: an SIU message needs its schedule activity segment", "101")
    checkin_id = _appointment_id(sch)
    pid = _first(message, "PID")
    patient_keys = _patient_keys(pid) if pid is not None else ()
    phones, emails = _contacts(message)
    if TRIGGERS[trigger] == "checkin.cancelled":
        start = end = None
    else:
        start, end = _timing(message, sch)
    return Appointment(
        trigger=trigger,
        event_type=TRIGGERS[trigger],
        control_id=control_id,
        checkin_id=checkin_id,
        title=_title(message, sch),
        start=start,
        end=end,
        location=_location(message),
        patient_keys=patient_keys,
        phones=phones,
        emails=emails,
    )


def _appointment_id(sch) -> str:
    """SCH-2, the filler's appointment id (``id^namespace``): the check-in's stable identity."""
    value, namespace = _value(sch, 2, 1, 1), _value(sch, 2, 1, 2)
    if not value:
        raise _error("SCH-2", "is missing: the filler appointment id names the check-in", "101")
    return _line(f"hl7:{value}@{namespace}" if namespace else f"hl7:{value}")


def _patient_keys(pid) -> tuple[str, ...]:
    keys: list[str] = []
    for n in range(1, _repeats(pid, 3) + 1):
        value = _value(pid, 3, n, 1)
        if not value:
            continue
        authorities = [a for a in (_value(pid, 3, n, 4, 1), _value(pid, 3, n, 4, 2)) if a]
        keys.extend(f"{authority}|{value}" for authority in authorities)
    return tuple(dict.fromkeys(keys))


def _contacts(message: hl7.Message) -> tuple[tuple[str, ...], tuple[str, ...]]:
    phones: list[str] = []
    emails: list[str] = []
    for name, field in CONTACT_FIELDS:
        for segment in _segments(message, name):
            for n in range(1, _repeats(segment, field) + 1):
                email = _value(segment, field, n, 4)
                if "@" in email:
                    emails.append(email.lower())
                phone = _phone(segment, field, n)
                if phone:
                    phones.append(phone)
    return tuple(dict.fromkeys(phones)), tuple(dict.fromkeys(emails))


def _phone(segment, field: int, n: int) -> str | None:
    """An XTN's number as digits: XTN-12 (unformatted), else country, area and local number
    (XTN-5, 6, 7), else the formatted XTN-1; ``+`` first when the country code is known."""
    unformatted = _value(segment, field, n, 12) or _value(segment, field, n, 1)
    if "@" in unformatted:
        return None
    country, area, local = (_value(segment, field, n, c) for c in (5, 6, 7))
    if local:
        digits = "".join(ch for ch in area + local if ch.isascii() and ch.isdigit())
        country = "".join(ch for ch in country if ch.isascii() and ch.isdigit())
        return f"+{country}{digits}" if country else digits or None
    digits = "".join(ch for ch in unformatted if ch.isascii() and ch.isdigit())
    if not digits:
        return None
    return f"+{digits}" if unformatted.lstrip().startswith("+") else digits


def _coded(segment, field: int) -> str:
    """A coded element's text (CE/CWE: ``code^text^system``), else its code."""
    return _value(segment, field, 1, 2) or _value(segment, field, 1, 1)


def _title(message: hl7.Message, sch) -> str:
    """SCH-7's appointment reason, else AIS-3's service, else SCH-8's appointment type."""
    ais = _first(message, "AIS")
    for text in (_coded(sch, 7), _coded(ais, 3) if ais is not None else "", _coded(sch, 8)):
        if text:
            return _line(text)
    return "Appointment"


def _location(message: hl7.Message) -> str | None:
    """AIL-3 (else PV1-3), a PL: its description (PL-9), else facility, point of care and room."""
    for name, field in (("AIL", 3), ("PV1", 3)):
        segment = _first(message, name)
        if segment is None:
            continue
        description = _value(segment, field, 1, 9)
        parts = [_value(segment, field, 1, 4, 1), _value(segment, field, 1, 1), _value(segment, field, 1, 2)]
        text = description or ", ".join(p for p in parts if p)
        if text:
            return _line(text)
    return None


def _timing(message: hl7.Message, sch) -> tuple[datetime, datetime]:
    """Start and end: TQ1-7/8, else SCH-11's TQ start and end (components 4 and 5), else the
    first resource's start (AIS-4, AIL-6, AIP-6); the end, when not written, from a duration
    (SCH-9/10, TQ1-6, SCH-11.3, the resource's duration)."""
    tq1 = _first(message, "TQ1")
    resources = [
        (segment, name, start_field)
        for name, start_field in (("AIS", 4), ("AIG", 8), ("AIL", 6), ("AIP", 6))
        for segment in _segments(message, name)[:1]
    ]
    starts = []
    if tq1 is not None:
        starts.append(("TQ1-7", _value(tq1, 7)))
    starts.append(("SCH-11", _value(sch, 11, 1, 4)))
    starts.extend((f"{name}-{field}", _value(segment, field)) for segment, name, field in resources)
    where, written = next(((w, v) for w, v in starts if v), (None, ""))
    if not written:
        raise _error("SCH-11", "has no start time (nor TQ1-7, AIS-4, AIL-6 or AIP-6)", "101")
    start = _time(where, written)
    ends = [("SCH-11", _value(sch, 11, 1, 5))]
    if tq1 is not None:
        ends.insert(0, ("TQ1-8", _value(tq1, 8)))
    for where_end, value in ends:
        if value:
            return start, _time(where_end, value)
    return start, start + _duration(message, sch, tq1, resources)


def _time(where: str, value: str) -> datetime:
    """An HL7 TS/DTM to the minute at least: ``YYYYMMDDHHMM[SS[.S…]][+/-ZZZZ]``."""
    digits = re.match(r"[0-9]*", value).group(0)
    if len(digits) < 12:
        raise _error(where, "is not a date and time to the minute (YYYYMMDDHHMM[SS][+/-ZZZZ])", "102")
    try:
        return hl7.parse_datetime(value)
    except (ValueError, OverflowError, TypeError):
        raise _error(where, "is not a valid date and time (YYYYMMDDHHMM[SS][+/-ZZZZ])", "102") from None


def _duration(message: hl7.Message, sch, tq1, resources) -> timedelta:
    candidates = [("SCH-9", _value(sch, 9), "SCH-10", _value(sch, 10, 1, 1))]
    if tq1 is not None:
        candidates.append(("TQ1-6", _value(tq1, 6, 1, 1), "TQ1-6", _value(tq1, 6, 1, 2, 1)))
    timing = _value(sch, 11, 1, 3)  # TQ-3 duration: S10, M30, H1, D1
    found = re.fullmatch(r"([SMHD])([0-9]+)", timing.upper())
    if found:
        candidates.append(("SCH-11", found.group(2), "SCH-11", found.group(1)))
    offsets = {"AIS": (7, 8), "AIG": (11, 12), "AIL": (9, 10), "AIP": (9, 10)}
    for segment, name, _ in resources:
        amount, units = offsets[name]
        candidates.append(
            (f"{name}-{amount}", _value(segment, amount), f"{name}-{units}", _value(segment, units, 1, 1))
        )
    for where, amount, units_at, units in candidates:
        if not amount:
            continue
        try:
            number = float(amount)
        except ValueError:
            raise _error(where, "is not a number", "102") from None
        seconds = UNIT_SECONDS.get(units.upper() or "MIN")
        if seconds is None:
            raise _error(units_at, "is not a duration unit careloop reads (s, min, h, d)", "103")
        if not 0 < number * seconds <= 7 * 86400:
            raise _error(where, "must be a duration from more than nothing to 7 days", "102")
        return timedelta(seconds=number * seconds)
    raise _error("SCH-9", "has no duration, and no end time is given (SCH-11.5, TQ1-8)", "101")


def acknowledgement(
    body: bytes | None,
    code: AckCode,
    text: str | None = None,
    *,
    control_id: str,
    location: str | None = None,
    error: str = "207",
    now: datetime | None = None,
) -> bytes:
    """An original-mode ``ACK`` to the message in ``body`` (or to a body that is none).

    MSH swaps the message's sending and receiving application and facility, echoes its trigger
    event, processing id and version, and carries ``control_id``; MSA-2 is the message's own
    control id (empty when it had none). A refusal adds MSA-3 and an ERR with the location
    (ERR-2), the table 0357 code (ERR-3), severity E and the text (ERR-8).
    """
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")
    try:
        msh = parse(body).segment("MSH") if body is not None else None
    except Hl7Problem:
        msh = None

    def echo(field: int, component: int = 1, parts: int = 1) -> str:
        if msh is None:
            return ""
        values = [_escape(_value(msh, field, 1, c)) for c in range(component, component + parts)]
        return "^".join(values).rstrip("^")

    header = [
        echo(5, parts=3) or SENDING_APPLICATION,  # MSH-3: the application the message was sent to
        echo(6, parts=3),
        echo(3, parts=3),
        echo(4, parts=3),
        stamp,
        "",
        f"ACK^{echo(9, 2)}^ACK",
        _escape(control_id),
        echo(11) or "P",
        echo(12) or DEFAULT_VERSION,
    ]
    segments = ["MSH|^~\\&|" + "|".join(header), f"MSA|{code}|{echo(10)}"]
    if code != AckCode.ACCEPT:
        said = _escape(text or "the message was not accepted")
        segments[1] += f"|{said}"
        where = LOCATION.match(location or "")
        place = ""  # ERR-2 (ERL): segment id ^ sequence ^ field position
        if where:
            place = "^".join(p for p in (where.group("segment"), "1", where.group("field")) if p)
        name = ERROR_CODES.get(error, ERROR_CODES["207"])
        segments.append(f"ERR||{place}|{error}^{name}^HL70357|E||||{said}")
    return ("\r".join(segments) + "\r").encode("ascii")


_ESCAPER = hl7.parse("MSH|^~\\&|")


def _escape(text: str) -> str:
    """``text`` in ER7 with the standard delimiters escaped, and in ASCII (``\\Xhh\\`` beyond)."""
    return _ESCAPER.escape(" ".join(text.split())) if text else ""
