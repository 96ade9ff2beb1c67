"""Invites every client reads right: each iCalendar object careloop writes is read back by
independent parsers — Mozilla's ical.js (Thunderbird's, run in node), vobject and icalendar —
and the instants they find must be the ones careloop meant."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import vobject
from icalendar import Calendar

from careloop.integrations.calendar_invite import build_invite
from careloop.integrations.vtimezone import vtimezone
from careloop.messages import Attendee, CalendarInvite
from tests.peers import ical_js

ZONES = ("America/Chicago", "Europe/London", "Australia/Sydney", "Asia/Jerusalem")
"""Two northern rules, a southern one, and one whose spring change is "Friday on or after
the 23rd" (neither an nth nor a last weekday)."""

ORGANIZER = Attendee("careloop", "careloop@example.org")
ZOE = Attendee("Dr. Zoë Ruiz", "zoe@example.net")
SAM = Attendee("Sam Lee", "sam@example.net")


def invite(**changes) -> CalendarInvite:
    start = datetime(2027, 1, 12, 17, 0, tzinfo=ZoneInfo("America/Chicago"))
    base = CalendarInvite(
        method="REQUEST",
        uid="checkin-7@careloop",
        sequence=0,
        title="Team check-in",
        start=start,
        end=start + timedelta(minutes=45),
        tzid="America/Chicago",
        organizer=ORGANIZER,
        attendees=(ZOE, SAM),
    )
    return replace(base, **changes)


def unix(value: datetime) -> int:
    return int(value.timestamp())


def vobject_events(text: bytes) -> list:
    return list(vobject.readOne(text.decode()).vevent_list)


def _days(zone: str, every_day: bool) -> list[date]:
    """Ten years of days from 2026: every one, or every one within ten days of a change of
    offset and every fifth day otherwise."""
    tz = ZoneInfo(zone)
    days = [date(2026, 1, 1) + timedelta(days=n) for n in range((date(2036, 1, 1) - date(2026, 1, 1)).days)]
    if every_day:
        return days
    noon = [datetime(d.year, d.month, d.day, 12, tzinfo=tz).utcoffset() for d in days]
    changes = [i for i in range(1, len(days)) if noon[i] != noon[i - 1]]
    assert len(changes) == 20  # two a year
    return [d for i, d in enumerate(days) if i % 5 == 0 or any(abs(i - c) <= 10 for c in changes)]


@pytest.mark.parametrize("zone", ZONES)
def test_every_day_at_half_past_three_for_ten_years_reads_the_same_in_ical_js(zone):
    """The defect: icalendar's VTIMEZONE lists its changes as one RDATE property, of which
    ical.js reads only the first date — 16 days in ten years read an hour early in Chicago
    (e.g. 2027-03-12). Every day of ten years at 15:30 local time in Chicago; in the other
    zones every day near a change and every fifth day otherwise."""
    tz = ZoneInfo(zone)
    days = _days(zone, every_day=zone == "America/Chicago")
    meant = [datetime(d.year, d.month, d.day, 15, 30, tzinfo=tz) for d in days]
    texts = [build_invite(invite(tzid=zone, start=s, end=s + timedelta(minutes=45))) for s in meant]

    read = ical_js.read(texts)

    wrong = [
        (s.date().isoformat(), got["events"][0]["start"] - unix(s))
        for s, got in zip(meant, read, strict=True)
        if (got["events"][0]["start"], got["events"][0]["end"]) != (unix(s), unix(s) + 45 * 60)
    ]
    assert wrong == []
    assert len(read) == len(days) >= 1000
    # icalendar and vobject read a sample the same way (every 7th day, every change included)
    for s, text in list(zip(meant, texts, strict=True))[::7]:
        (event,) = Calendar.from_ical(text).walk("VEVENT")
        assert event.start == s
        (vevent,) = vobject_events(text)
        assert vevent.dtstart.value == s and vevent.dtend.value == s + timedelta(minutes=45)


@pytest.mark.parametrize("zone", ZONES)
def test_the_vtimezone_is_rules_as_published_zone_files_have_them(zone):
    component = vtimezone(zone, date(2027, 1, 1), date(2027, 12, 31))
    rules = [(sub.name, sub.get("RRULE")) for sub in component.subcomponents]
    # one STANDARD and one DAYLIGHT, each a yearly rule without end; no RDATE anywhere
    assert sorted(name for name, _ in rules) == ["DAYLIGHT", "STANDARD"]
    assert all(rule is not None and "UNTIL" not in rule for _, rule in rules)
    assert b"RDATE" not in component.to_ical()


def test_a_zone_without_changes_has_one_observance():
    component = vtimezone("Asia/Kolkata", date(2027, 1, 1), date(2027, 12, 31))
    (standard,) = component.subcomponents
    assert standard.name == "STANDARD" and "RRULE" not in standard
    assert standard["TZOFFSETTO"].td == standard["TZOFFSETFROM"].td == timedelta(hours=5, minutes=30)


def test_a_rule_that_changed_ends_with_until_and_the_new_one_goes_on():
    """The US moved its dates in 2007: the old rule ends, the current one has no end."""
    component = vtimezone("America/Chicago", date(2005, 6, 1), date(2009, 6, 1))
    daylight = sorted(
        (str(sub["DTSTART"].dt), sub["RRULE"].to_ical().decode()) for sub in component.walk("DAYLIGHT")
    )
    assert daylight == [
        ("2004-04-04 02:00:00", "FREQ=YEARLY;UNTIL=20060402T080000Z;BYDAY=1SU;BYMONTH=4"),
        ("2007-03-11 02:00:00", "FREQ=YEARLY;BYDAY=2SU;BYMONTH=3"),
    ]
    tz = ZoneInfo("America/Chicago")
    meant = [datetime(2006, 3, 20, 12, tzinfo=tz), datetime(2007, 3, 20, 12, tzinfo=tz)]
    read = ical_js.read([build_invite(invite(start=s, end=s + timedelta(hours=1))) for s in meant])
    assert [r["events"][0]["start"] for r in read] == [unix(s) for s in meant]


def test_dublins_negative_summer_time_is_daylight_in_summer():
    component = vtimezone("Europe/Dublin", date(2027, 1, 1), date(2027, 12, 31))
    (daylight,) = component.walk("DAYLIGHT")
    assert str(daylight["TZNAME"]) == "IST" and daylight["TZOFFSETTO"].td == timedelta(hours=1)
