"""VTIMEZONE blocks that every calendar client reads the same way.

A VTIMEZONE says when a zone's offset changes. icalendar's own
(``Timezone.from_tzinfo``) lists the changes as one ``RDATE`` property holding many dates;
Mozilla's ical.js (Thunderbird) reads only the first date of an ``RDATE`` property, so for
it most changes vanish and times near them shift by an hour. Published zone files (IANA's
data as tzurl.org and libical ship it, and Google's invites) describe a zone by its rules:
one ``STANDARD`` and one ``DAYLIGHT`` with a yearly ``RRULE`` ("second Sunday of March at
02:00"). This module writes them so, from the zoneinfo data itself: it finds every change
in the years asked for, then the yearly rule each run of changes follows. The rule still in
force at the end is written without an end (the zone's current rule); an older one ends
with ``UNTIL``; a change that follows no rule is a component of its own (one ``DTSTART``,
never a list).
"""

from __future__ import annotations

import calendar as _calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from icalendar import Timezone, TimezoneDaylight, TimezoneStandard, vRecur

DAY = 86400
"""Seconds between the samples that look for changes (no zone changes twice in a day)."""

RULE_YEARS = 15
"""Fewest years of changes a rule is read from (the weekdays of a date repeat in cycles of
up to eleven years)."""

WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")

ZERO = timedelta(0)

NO_CHANGE_START = datetime(1970, 1, 1)
"""DTSTART of the single observance of a zone that never changes."""


@dataclass(frozen=True)
class _Change:
    """One change of offset: ``wall`` is the local time it happens at, before it."""

    utc: datetime
    wall: datetime
    offset_from: timedelta
    offset_to: timedelta
    name: str
    daylight: bool


@dataclass(frozen=True)
class _Observance:
    """One STANDARD or DAYLIGHT component: a first change and, for a run, its yearly rule."""

    daylight: bool
    start: datetime
    offset_from: timedelta
    offset_to: timedelta
    name: str
    rule: dict | None = None


def vtimezone(tzid: str, first: date, last: date) -> Timezone:
    """The VTIMEZONE of ``tzid``, right for every time from ``first`` to ``last``.

    Its rules start at least a year before ``first`` (a client reads a time before a zone's
    first change as UTC) and the rule in force at ``last`` goes on without end.

    Raises:
        ValueError: when ``tzid`` is not a known IANA time zone.
    """
    component = Timezone()
    component.add("TZID", tzid)
    # At least RULE_YEARS scanned, so a rule is told apart from its look-alikes ("the last
    # Friday" and "the Friday on or after the 23rd" agree for years at a time).
    last_year = max(last.year + 1, first.year - 1 + RULE_YEARS)
    for observance in _observances(tzid, first.year - 1, last_year):
        sub = TimezoneDaylight() if observance.daylight else TimezoneStandard()
        sub.add("DTSTART", observance.start)
        sub.add("TZOFFSETFROM", observance.offset_from)
        sub.add("TZOFFSETTO", observance.offset_to)
        sub.add("TZNAME", observance.name)
        if observance.rule:
            sub.add("RRULE", vRecur(observance.rule))
        component.add_component(sub)
    return component


@lru_cache(maxsize=256)
def _observances(tzid: str, first_year: int, last_year: int) -> tuple[_Observance, ...]:
    try:
        zone = ZoneInfo(tzid)
    except (KeyError, ValueError) as exc:  # ZoneInfoNotFoundError is a KeyError
        raise ValueError(f"unknown time zone {tzid!r}") from exc
    changes = _changes(zone, first_year, last_year)
    if not changes:
        state = datetime(first_year, 7, 1, tzinfo=UTC).astimezone(zone)
        offset = state.utcoffset()
        return (_Observance(state.dst() > ZERO, NO_CHANGE_START, offset, offset, state.tzname() or ""),)
    groups: dict[tuple, list[_Change]] = {}
    for change in changes:
        key = (change.offset_from, change.offset_to, change.name, change.daylight, change.wall.time())
        groups.setdefault(key, []).append(change)
    observances = []
    for group in groups.values():
        for run in _runs(group):
            observances.append(_observance(run, open_ended=run[-1].wall.year == last_year))
    return tuple(sorted(observances, key=lambda o: o.start))


def _changes(zone: ZoneInfo, first_year: int, last_year: int) -> list[_Change]:
    """Every change of offset, name or daylight saving from ``first_year`` to ``last_year``."""
    begin = int(datetime(first_year, 1, 1, tzinfo=UTC).timestamp())
    end = int(datetime(last_year + 1, 1, 1, tzinfo=UTC).timestamp())

    def state(ts: int) -> tuple:
        t = datetime.fromtimestamp(ts, zone)
        return t.utcoffset(), t.dst(), t.tzname()

    changes = []
    previous = state(begin)
    for ts in range(begin + DAY, end + DAY, DAY):
        current = state(ts)
        if current == previous:
            continue
        lo, hi = ts - DAY, ts  # state(lo) is the old one, state(hi) the new one
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if state(mid) == previous:
                lo = mid
            else:
                hi = mid
        at = datetime.fromtimestamp(hi, UTC)
        offset_to, dst, name = state(hi)
        # Summer time, also where the zone calls its winter the exception (Europe/Dublin's
        # "negative DST"): clients expect DAYLIGHT to be the one with the larger offset.
        daylight = dst > ZERO or (dst == ZERO and previous[1] < ZERO)
        changes.append(
            _Change(
                utc=at,
                wall=(at + previous[0]).replace(tzinfo=None),
                offset_from=previous[0],
                offset_to=offset_to,
                name=name or "",
                daylight=daylight,
            )
        )
        previous = current
    return changes


def _rules_for(day: date) -> set[tuple]:
    """The yearly rules that put a change on ``day``: the nth or last weekday of its month,
    the first weekday on or after a date, or the date itself."""
    weekday = day.weekday()
    length = _calendar.monthrange(day.year, day.month)[1]
    rules = {("fixed", day.month, day.day)}
    nth = (day.day - 1) // 7 + 1
    if nth <= 4:
        rules.add(("nth", day.month, nth, weekday))
    if day.day + 7 > length:
        rules.add(("last", day.month, weekday))
    shortest = _calendar.monthrange(2001, day.month)[1]  # February without its leap day
    for first in range(max(1, day.day - 6), day.day + 1):
        if first + 6 <= shortest:  # the seven days exist in every year's month
            rules.add(("on_or_after", day.month, first, weekday))
    return rules


_PREFERENCE = {"nth": 0, "last": 1, "on_or_after": 2, "fixed": 3}


def _runs(group: list[_Change]) -> list[list[_Change]]:
    """Split one kind of change into runs of consecutive years that share a yearly rule."""
    runs: list[list[_Change]] = []
    current: list[_Change] = []
    rules: set[tuple] = set()
    for change in group:
        candidates = _rules_for(change.wall.date())
        if current and change.wall.year == current[-1].wall.year + 1 and rules & candidates:
            current.append(change)
            rules &= candidates
            continue
        if current:
            runs.append(current)
        current, rules = [change], candidates
    if current:
        runs.append(current)
    return runs


def _observance(run: list[_Change], *, open_ended: bool) -> _Observance:
    first = run[0]
    base = dict(
        daylight=first.daylight,
        start=first.wall,
        offset_from=first.offset_from,
        offset_to=first.offset_to,
        name=first.name,
    )
    if len(run) == 1:
        return _Observance(**base)
    shared = set.intersection(*(_rules_for(c.wall.date()) for c in run))
    kind, month, *rest = min(shared, key=lambda r: (_PREFERENCE[r[0]], r))
    rule: dict = {"FREQ": "YEARLY", "BYMONTH": [month]}
    if kind == "nth":
        rule["BYDAY"] = [f"{rest[0]}{WEEKDAYS[rest[1]]}"]
    elif kind == "last":
        rule["BYDAY"] = [f"-1{WEEKDAYS[rest[0]]}"]
    elif kind == "on_or_after":
        rule["BYMONTHDAY"] = list(range(rest[0], rest[0] + 7))
        rule["BYDAY"] = [WEEKDAYS[rest[1]]]
    else:
        rule["BYMONTHDAY"] = [rest[0]]
    if not open_ended:
        # UNTIL in UTC (RFC 5545 §3.3.10 for VTIMEZONE rules): the run's last change itself.
        rule["UNTIL"] = [run[-1].utc]
    return _Observance(**base, rule=rule)
