"""Recurring check-ins: RFC 5545 RRULEs checked, written one way, and expanded.

A check-in's ``recurrence`` is the value of an RRULE (``FREQ=MONTHLY;BYDAY=2TU;COUNT=6``).
Its occurrences fall at the first one's wall-clock time in the notebook's zone, across
daylight-saving changes, as every calendar reads an RRULE whose DTSTART has a TZID. A rule
careloop accepts always ends (COUNT or UNTIL), at most :data:`MAX_OCCURRENCES` times and
:data:`MAX_YEARS` years after the first, and its first occurrence is the check-in's own
start (RFC 5545 leaves a DTSTART outside its rule to each client, and they disagree).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from dateutil.rrule import rrulestr
from icalendar import vRecur

MAX_OCCURRENCES = 520
"""Most occurrences one series may have (weekly for ten years)."""

MAX_YEARS = 10
"""Latest a series' last occurrence may be, in years after its first."""

FREQUENCIES = ("DAILY", "WEEKLY", "MONTHLY", "YEARLY")
"""How often a check-in may repeat: at most daily (the start gives the time of day)."""

PARTS = ("FREQ", "INTERVAL", "COUNT", "UNTIL", "BYDAY", "BYMONTHDAY", "BYYEARDAY", "BYWEEKNO", "BYMONTH")
PARTS += ("BYSETPOS", "WKST")
"""The RRULE parts a check-in may use (BYHOUR, BYMINUTE and BYSECOND would move its time)."""

EXAMPLE = "FREQ=MONTHLY;BYDAY=2TU;COUNT=6"


def parse_rule(text: str) -> vRecur:
    """The parts of an RRULE value, checked for what needs no start or zone.

    Raises:
        ValueError: saying what is wrong, in words for the API's 422.
    """
    value = text.strip()
    if value.upper().startswith("RRULE:"):
        value = value[len("RRULE:") :]
    if not value or any(c in value for c in "\r\n"):
        raise ValueError(f"must be an RFC 5545 RRULE value such as {EXAMPLE!r}")
    try:
        parts = vRecur.from_ical(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"is not an RFC 5545 RRULE ({exc}); for example {EXAMPLE!r}") from None
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"may not use {', '.join(unknown)} (allowed: {', '.join(PARTS)})")
    if [f.upper() for f in parts.get("FREQ", ())] not in ([f] for f in FREQUENCIES):
        raise ValueError(f"must be an RRULE with FREQ {', '.join(FREQUENCIES)}, such as {EXAMPLE!r}")
    if "COUNT" in parts and "UNTIL" in parts:
        raise ValueError("may have COUNT or UNTIL, not both")
    if "COUNT" not in parts and "UNTIL" not in parts:
        raise ValueError(f"needs COUNT or UNTIL: a series ends (at most {MAX_OCCURRENCES} times)")
    if "COUNT" in parts and not 1 <= int(parts["COUNT"][0]) <= MAX_OCCURRENCES:
        raise ValueError(f"COUNT must be 1-{MAX_OCCURRENCES}")
    if "INTERVAL" in parts and not 1 <= int(parts["INTERVAL"][0]) <= 1000:
        raise ValueError("INTERVAL must be 1-1000")
    checked = vRecur({k: v for k, v in parts.items() if k != "UNTIL"})  # UNTIL's form waits for the zone
    try:
        rrulestr(checked.to_ical().decode(), dtstart=datetime(2000, 1, 1), cache=False)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"is not an RFC 5545 RRULE ({exc}); for example {EXAMPLE!r}") from None
    return parts


def normalize(text: str, start: datetime, tzid: str) -> str:
    """``text`` as careloop stores and sends it: UNTIL in UTC (RFC 5545 §3.3.10 for a
    DTSTART with a TZID). A date or a floating UNTIL means that day or time in ``tzid``.

    Raises:
        ValueError: for a bad rule, one whose first occurrence is not ``start``, or one that
            runs too long.
    """
    zone = ZoneInfo(tzid)
    parts = parse_rule(text)
    if "UNTIL" in parts:
        until = parts["UNTIL"][0]
        if not isinstance(until, datetime):  # a date: through the end of that day
            until = datetime.combine(until, time(23, 59, 59), zone)
        elif until.tzinfo is None:
            until = until.replace(tzinfo=zone)
        parts["UNTIL"] = [until.astimezone(UTC).replace(microsecond=0)]
        if parts["UNTIL"][0] < start:
            raise ValueError("UNTIL is before the check-in's start")
    rule = vRecur(parts).to_ical().decode()
    found = occurrences(start, rule, tzid, limit=MAX_OCCURRENCES + 1)
    if not found or found[0] != start:
        raise ValueError(
            "the check-in's start must be the rule's first occurrence (check BYDAY and the like)"
        )
    if len(found) > MAX_OCCURRENCES:
        raise ValueError(f"has more than {MAX_OCCURRENCES} occurrences")
    if found[-1] - start > timedelta(days=365 * MAX_YEARS + 3):
        raise ValueError(f"runs for more than {MAX_YEARS} years")
    return rule


def occurrences(start: datetime, rule: str, tzid: str, limit: int = MAX_OCCURRENCES) -> list[datetime]:
    """The starts of a series (aware, in ``tzid``), at most ``limit`` of them."""
    # An aware start: dateutil keeps each occurrence's wall-clock time in the zone and
    # compares UNTIL (UTC) with the instants, as RFC 5545 says.
    series = rrulestr(rule, dtstart=start.astimezone(ZoneInfo(tzid)), cache=False)
    found = []
    for occurrence in series:
        if len(found) >= limit:
            break
        found.append(occurrence)
    return found


def is_occurrence(start: datetime, rule: str, tzid: str, when: datetime) -> bool:
    """Whether ``when`` is one of the series' starts (its original time)."""
    return any(o == when for o in occurrences(start, rule, tzid))


def last_start(start: datetime, rule: str | None, tzid: str) -> datetime:
    """When the series' last occurrence starts (``start`` without a rule)."""
    if not rule:
        return start
    found = occurrences(start, rule, tzid)
    return found[-1] if found else start


def day_of(value: datetime, tzid: str) -> date:
    return value.astimezone(ZoneInfo(tzid)).date()
