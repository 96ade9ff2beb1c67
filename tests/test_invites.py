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
from careloop.recurrence import occurrences
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


# --- Check-ins through the API: what each attendee's calendar receives ---------------------

CHICAGO = ZoneInfo("America/Chicago")
SERIES_START = datetime(2027, 1, 12, 17, 0, tzinfo=CHICAGO)  # the second Tuesday of January
SECOND_TUESDAYS = [
    datetime(2027, month, day, 17, 0, tzinfo=CHICAGO)
    for month, day in ((1, 12), (2, 9), (3, 9), (4, 13), (5, 11), (6, 8))
]
"""What ``FREQ=MONTHLY;BYDAY=2TU;COUNT=6`` from SERIES_START means, written out by hand: the
March one is before the change to daylight time (14 March), April's after it."""


def series_data(attendees, **extra) -> dict:
    return {
        "checkin_id": "monthly",
        "title": "Monthly team check-in",
        "start": SERIES_START.isoformat(),
        "end": (SERIES_START + timedelta(minutes=45)).isoformat(),
        "location": "Room 3",
        "attendees": attendees,
        "recurrence": "FREQ=MONTHLY;BYDAY=2TU;COUNT=6",
        **extra,
    }


def sent_calendar(api, event_id: str, outbox) -> dict[str, tuple]:
    """member id → (email, calendar bytes) of each calendar delivery of the event."""
    found = {}
    for row in api.get(f"/v1/events/{event_id}")["deliveries"]:
        if row["channel"] != "calendar":
            continue
        assert row["status"] == "sent", row
        msg = _parse_eml(outbox / row["provider_id"].removeprefix("outbox:"))
        (part,) = [p for p in msg.walk() if p.get_content_type() == "text/calendar"]
        found[row["member_id"]] = (msg, part.get_payload(decode=True))
    return found


def _parse_eml(path):
    import email
    import email.policy

    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)


def attendee_addresses(vevent) -> list[str]:
    value = vevent.get("ATTENDEE") or []
    return [str(a).lower() for a in (value if isinstance(value, list) else [value])]


def read_three_ways(text: bytes) -> dict:
    """What ical.js, vobject and icalendar read in one single-VEVENT object (they must agree)."""
    (js,) = ical_js.read([text])
    (event,) = js["events"]
    (vevent,) = vobject_events(text)
    (component,) = Calendar.from_ical(text).walk("VEVENT")
    status = vevent.status.value if hasattr(vevent, "status") else None
    assert (unix(vevent.dtstart.value), unix(component.start)) == (event["start"], event["start"])
    assert (status, component.get("STATUS")) == (event["status"], event["status"])
    assert [a.value.lower() for a in getattr(vevent, "attendee_list", [])] == event["attendees"]
    assert int(vevent.sequence.value) == component["SEQUENCE"] == event["sequence"]
    return {**event, "method": js["method"]}


def body_text(msg) -> str:
    return msg.get_body(("plain",)).get_content()


def test_a_recurring_check_in_moved_and_cancelled_one_occurrence_at_a_time(app, api, team, settings):
    from tests.conftest import drain

    nb, m = team
    attendees = [m["mom"]["id"], m["dad"]["id"], m["slp"]["id"]]
    outbox = settings.outbox_dir
    events = []

    def send(event_type, data):
        events.append(api.event(nb["id"], event_type, data)["id"])
        drain(app)
        got = sent_calendar(api, events[-1], outbox)
        assert set(got) == set(attendees)
        return got

    scheduled = send("checkin.scheduled", series_data(attendees))
    march, may = SECOND_TUESDAYS[2], SECOND_TUESDAYS[4]
    moved_to = datetime(2027, 3, 16, 18, 0, tzinfo=CHICAGO)  # a week later, after the change to CDT
    moved = send(
        "checkin.updated",
        series_data(
            attendees,
            recurrence=None,
            occurrence=march.isoformat(),
            start=moved_to.isoformat(),
            end=(moved_to + timedelta(minutes=45)).isoformat(),
        )
        | {"recurrence": None},
    )
    one_cancelled = send("checkin.cancelled", {"checkin_id": "monthly", "occurrence": may.isoformat()})
    renamed = send("checkin.updated", series_data(attendees, title="Monthly team check-in (IEP)"))
    all_cancelled = send("checkin.cancelled", {"checkin_id": "monthly"})

    stages = [scheduled, moved, one_cancelled, renamed, all_cancelled]
    texts = [got[member][1] for got in stages for member in attendees]
    read = ical_js.read(texts)
    by_stage = [read[i * len(attendees) : (i + 1) * len(attendees)] for i in range(len(stages))]
    for stage in by_stage:  # every attendee's calendar object says the same
        assert all({**r, "events": None} == {**stage[0], "events": None} for r in stage)
        assert all(
            [e | {"attendees": None} for e in r["events"]]
            == [e | {"attendees": None} for e in stage[0]["events"]]
            for r in stage
        )
    first, second, third, fourth, fifth = (stage[0] for stage in by_stage)
    span = 45 * 60

    # 1. the series: six second Tuesdays at 17:00 Chicago time, across the change to CDT
    assert first["method"] == "REQUEST"
    (series,) = first["events"]
    assert series["rrule"] == "FREQ=MONTHLY;COUNT=6;BYDAY=2TU" and series["start_tzid"] == "America/Chicago"
    assert series["sequence"] == 0 and series["status"] == "CONFIRMED"
    assert first["occurrences"] == [[unix(s), unix(s), unix(s) + span] for s in SECOND_TUESDAYS]

    # 2. March's alone, moved: its RECURRENCE-ID and its own SEQUENCE, nothing else
    assert second["method"] == "REQUEST"
    (only,) = second["events"]
    assert (only["recurrence_id"], only["start"], only["end"]) == (
        unix(march),
        unix(moved_to),
        unix(moved_to) + span,
    )
    assert only["sequence"] == 1 and only["rrule"] is None

    # 3. May's alone, cancelled: the event goes on
    assert third["method"] == "CANCEL"
    (only,) = third["events"]
    assert (only["recurrence_id"], only["status"], only["sequence"]) == (unix(may), "CANCELLED", 2)

    # 4. the whole series renamed: the series (SEQUENCE 3, May excluded) and March as moved
    assert fourth["method"] == "REQUEST"
    series, march_moved = fourth["events"]
    assert series["sequence"] == 3 and series["summary"] == "Monthly team check-in (IEP)"
    assert series["exdates"] == [unix(may)]
    assert (march_moved["recurrence_id"], march_moved["sequence"]) == (unix(march), 1)
    expected = [
        [
            unix(s),
            unix(moved_to) if s == march else unix(s),
            (unix(moved_to) if s == march else unix(s)) + span,
        ]
        for s in SECOND_TUESDAYS
        if s != may
    ]
    assert fourth["occurrences"] == expected

    # 5. the whole check-in cancelled
    assert fifth["method"] == "CANCEL"
    (series,) = fifth["events"]
    assert (series["status"], series["sequence"], series["recurrence_id"]) == ("CANCELLED", 4, None)

    # vobject and icalendar read the same series and the same exceptions
    renamed_text = renamed[attendees[0]][1]
    master, override = vobject_events(renamed_text)
    starts = list(master.getrruleset(addRDate=True))
    assert starts == [s for s in SECOND_TUESDAYS if s != may]
    assert override.recurrence_id.value == march and override.dtstart.value == moved_to
    assert int(override.sequence.value) == 1
    (vevent,) = vobject_events(moved[attendees[0]][1])
    assert vevent.recurrence_id.value == march and vevent.dtstart.value == moved_to
    cal = Calendar.from_ical(one_cancelled[attendees[0]][1])
    (vevent,) = cal.walk("VEVENT")
    assert vevent["RECURRENCE-ID"].dt == may and vevent["STATUS"] == "CANCELLED"

    # the emails say what happened, in words and in the recipient's own time
    subject = scheduled[m["mom"]["id"]][0]["Subject"]
    assert subject == "Invitation: Maya's team check-in on Tue 12 Jan 2027"
    text = body_text(scheduled[m["mom"]["id"]][0])
    assert "When: Tue 12 Jan 2027, 5:00–5:45 pm CST" in text
    assert "Repeats: every month on the second Tuesday, 6 times" in text
    text = body_text(moved[m["mom"]["id"]][0])
    assert moved[m["mom"]["id"]][0]["Subject"] == "Updated: Maya's team check-in on Tue 16 Mar 2027"
    assert "When: Tue 16 Mar 2027, 6:00–6:45 pm CDT" in text
    assert "Instead of: Tue 9 Mar 2027, 5:00–5:45 pm CST" in text
    msg = one_cancelled[m["mom"]["id"]][0]
    assert msg["Subject"] == "Cancelled: Maya's team check-in on Tue 11 May 2027"
    assert "Check-in: Monthly team check-in" in body_text(msg)
    msg = all_cancelled[m["mom"]["id"]][0]
    assert msg["Subject"].startswith("Cancelled: ") and "Check-in: Monthly team check-in (IEP)" in body_text(
        msg
    )


def test_a_removed_attendee_gets_a_cancel_that_lists_only_them(app, api, team, settings):
    from tests.conftest import drain

    nb, m = team
    outbox = settings.outbox_dir
    start = datetime(2027, 1, 12, 17, 0, tzinfo=CHICAGO)
    data = {
        "checkin_id": "one",
        "title": "IEP meeting",
        "start": start.isoformat(),
        "end": (start + timedelta(minutes=45)).isoformat(),
        "attendees": [m["mom"]["id"], m["dad"]["id"], m["slp"]["id"]],
    }
    api.event(nb["id"], "checkin.scheduled", data)
    later = start + timedelta(days=2)
    moved = api.event(
        nb["id"],
        "checkin.updated",
        data
        | {
            "attendees": [m["mom"]["id"], m["dad"]["id"]],
            "start": later.isoformat(),
            "end": (later + timedelta(minutes=45)).isoformat(),
        },
    )
    drain(app)
    got = sent_calendar(api, moved["id"], outbox)
    assert set(got) == {m["mom"]["id"], m["dad"]["id"], m["slp"]["id"]}

    msg, text = got[m["slp"]["id"]]
    cal = Calendar.from_ical(text)
    (vevent,) = cal.walk("VEVENT")
    assert cal["METHOD"] == "CANCEL"
    assert attendee_addresses(vevent) == ["mailto:jordan@example.org"]
    assert "STATUS" not in vevent  # the check-in goes on (RFC 5546 §3.2.5)
    assert vevent["SEQUENCE"] == 1
    assert msg["Subject"] == "Removed: Maya's team check-in on Tue 12 Jan 2027"
    body = body_text(msg)
    assert "You are no longer invited" in body and "Was: Tue 12 Jan 2027, 5:00–5:45 pm CST" in body
    assert "14 Jan" not in body  # never the new time

    read = read_three_ways(text)
    assert (read["method"], read["status"], read["sequence"]) == ("CANCEL", None, 1)
    assert read["attendees"] == ["mailto:jordan@example.org"]

    for who in ("mom", "dad"):
        msg, text = got[m[who]["id"]]
        cal = Calendar.from_ical(text)
        (vevent,) = cal.walk("VEVENT")
        assert cal["METHOD"] == "REQUEST" and vevent["STATUS"] == "CONFIRMED"
        assert sorted(attendee_addresses(vevent)) == [
            "mailto:dana@example.org",
            "mailto:sam@example.org",
        ]
        assert vevent.start == later
        assert "When: Thu 14 Jan 2027, 5:00–5:45 pm CST" in body_text(msg)
    # the outbox keeps all three calendar objects: the REQUEST and the removed attendee's own CANCEL
    names = sorted(p.name for p in (outbox / "calendar").glob("*.1*.ics"))
    assert len(names) == 2 and any(n.endswith(".1.ics") for n in names)


def test_a_member_deactivated_after_being_invited_still_gets_the_cancel(
    app, api, team, settings, client, admin
):
    from tests.conftest import drain

    nb, m = team
    outbox = settings.outbox_dir
    start = datetime(2027, 1, 12, 17, 0, tzinfo=CHICAGO)

    def data(checkin_id, attendees):
        return {
            "checkin_id": checkin_id,
            "title": "IEP meeting",
            "start": start.isoformat(),
            "end": (start + timedelta(minutes=45)).isoformat(),
            "attendees": attendees,
        }

    everyone = [m["mom"]["id"], m["slp"]["id"]]
    api.event(nb["id"], "checkin.scheduled", data("a", everyone))
    api.event(nb["id"], "checkin.scheduled", data("b", everyone))
    drain(app)
    response = client.patch(f"/v1/members/{m['slp']['id']}", json={"active": False}, headers=admin)
    assert response.status_code == 200

    # cancelled: the deactivated member's calendar is told too
    cancelled = api.event(nb["id"], "checkin.cancelled", {"checkin_id": "a"})
    # updated with them still listed: they are no longer on the team, so they are taken off
    updated = api.event(nb["id"], "checkin.updated", data("b", everyone) | {"title": "IEP meeting (2)"})
    drain(app)

    got = sent_calendar(api, cancelled["id"], outbox)
    assert set(got) == set(everyone)
    msg, text = got[m["slp"]["id"]]
    cal = Calendar.from_ical(text)
    assert cal["METHOD"] == "CANCEL" and cal.walk("VEVENT")[0]["STATUS"] == "CANCELLED"
    read = read_three_ways(text)
    assert (read["method"], read["status"], read["start"]) == ("CANCEL", "CANCELLED", unix(start))
    assert "/m/" not in body_text(msg)  # no member link: it would not open for them any more

    got = sent_calendar(api, updated["id"], outbox)
    assert set(got) == set(everyone)
    cal = Calendar.from_ical(got[m["slp"]["id"]][1])
    (vevent,) = cal.walk("VEVENT")
    assert cal["METHOD"] == "CANCEL" and "STATUS" not in vevent
    read = read_three_ways(got[m["slp"]["id"]][1])
    assert (read["method"], read["status"], read["attendees"]) == (
        "CANCEL",
        None,
        ["mailto:jordan@example.org"],
    )
    assert attendee_addresses(vevent) == ["mailto:jordan@example.org"]
    cal = Calendar.from_ical(got[m["mom"]["id"]][1])
    (vevent,) = cal.walk("VEVENT")
    assert cal["METHOD"] == "REQUEST"
    assert attendee_addresses(vevent) == ["mailto:dana@example.org"]

    # taken off once: a later change sends them nothing more (no other channel either)
    again = api.event(nb["id"], "checkin.cancelled", {"checkin_id": "b"})
    drain(app)
    rows = api.get(f"/v1/events/{again['id']}")["deliveries"]
    assert {r["member_id"] for r in rows} == {m["mom"]["id"]}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"recurrence": "FREQ=WEEKLY"}, "data.recurrence", "COUNT or UNTIL"),
        ({"recurrence": "FREQ=HOURLY;COUNT=3"}, "data.recurrence", "FREQ"),
        ({"recurrence": "FREQ=WEEKLY;COUNT=9999"}, "data.recurrence", "COUNT"),
        ({"recurrence": "FREQ=WEEKLY;BYHOUR=9;COUNT=3"}, "data.recurrence", "BYHOUR"),
        ({"recurrence": "FREQ=MONTHLY;BYDAY=3TU;COUNT=3"}, "data.recurrence", "first occurrence"),
        ({"recurrence": "FREQ=YEARLY;UNTIL=20420101"}, "data.recurrence", "10 years"),
        ({"recurrence": "FREQ=DAILY;UNTIL=20300101"}, "data.recurrence", "520"),
        ({"recurrence": "not a rule"}, "data.recurrence", "RRULE"),
    ],
)
def test_a_bad_recurrence_is_a_422_naming_it(api, team, change, field, words):
    nb, m = team
    body = api.event(nb["id"], "checkin.scheduled", series_data([m["mom"]["id"]], **change), status=422)
    assert list(body["fields"]) == [field]
    assert words in " ".join(body["fields"][field])


def test_occurrences_that_do_not_fit_are_422s_naming_the_field(api, team):
    nb, m = team
    mom = [m["mom"]["id"]]
    api.event(nb["id"], "checkin.scheduled", series_data(mom))
    api.event(
        nb["id"],
        "checkin.scheduled",
        series_data(mom, checkin_id="once", recurrence=None) | {"recurrence": None},
    )
    march = SECOND_TUESDAYS[2].isoformat()
    cases = [
        (
            "checkin.cancelled",
            {"checkin_id": "monthly", "occurrence": "2027-03-10T17:00:00-06:00"},
            "data.occurrence",
        ),
        (
            "checkin.cancelled",
            {"checkin_id": "once", "occurrence": SERIES_START.isoformat()},
            "data.occurrence",
        ),
        ("checkin.updated", series_data(mom, occurrence=march), "data.occurrence"),
        (
            "checkin.updated",
            series_data([m["dad"]["id"]], occurrence=march, recurrence=None),
            "data.attendees",
        ),
    ]
    for event_type, data, field in cases:
        data = {k: v for k, v in data.items() if v is not None}
        body = api.event(nb["id"], event_type, data, status=422)
        assert list(body["fields"]) == [field], (data, body)
    api.event(nb["id"], "checkin.cancelled", {"checkin_id": "monthly", "occurrence": march})
    body = api.event(
        nb["id"], "checkin.cancelled", {"checkin_id": "monthly", "occurrence": march}, status=422
    )
    assert body["fields"] == {"data.occurrence": ["that occurrence is cancelled"]}


def test_times_are_written_for_people_in_their_own_zone():
    from careloop.messages import describe_rule, people_span

    start = datetime(2027, 1, 12, 23, 0, tzinfo=ZoneInfo("UTC"))
    now = datetime(2027, 1, 5, tzinfo=ZoneInfo("UTC"))
    end = start + timedelta(minutes=45)
    assert people_span(start, end, "America/Chicago", now) == "Tue 12 Jan, 5:00–5:45 pm CST"
    assert people_span(start, end, "America/New_York", now) == "Tue 12 Jan, 6:00–6:45 pm EST"
    assert people_span(start, end, "Europe/London", now) == "Tue 12 Jan, 11:00–11:45 pm GMT"
    assert people_span(start, end, "Australia/Sydney", now) == "Wed 13 Jan, 10:00–10:45 am AEDT"
    noon = datetime(2027, 1, 12, 17, 30, tzinfo=ZoneInfo("UTC"))
    assert people_span(noon, noon + timedelta(hours=1), "America/Chicago", now) == (
        "Tue 12 Jan, 11:30 am – 12:30 pm CST"
    )
    assert people_span(start, end, "America/Chicago") == "Tue 12 Jan 2027, 5:00–5:45 pm CST"
    assert people_span(start, start + timedelta(hours=3), "Europe/London", now) == (
        "Tue 12 Jan, 11:00 pm GMT – Wed 13 Jan, 2:00 am GMT"
    )
    assert describe_rule("FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,TH;UNTIL=20270601T045959Z") == (
        "every 2 weeks on Monday and Thursday, until 1 Jun 2027"
    )
    assert describe_rule("FREQ=MONTHLY;BYMONTHDAY=1,15;COUNT=4") == "FREQ=MONTHLY;BYMONTHDAY=1,15;COUNT=4"


def test_an_email_shows_the_time_in_the_recipients_own_zone(app, api, team, settings, client, admin):
    from tests.conftest import drain

    nb, m = team
    response = client.patch(
        f"/v1/members/{m['slp']['id']}", json={"timezone": "America/New_York"}, headers=admin
    )
    assert response.status_code == 200
    event = api.event(nb["id"], "checkin.scheduled", series_data([m["mom"]["id"], m["slp"]["id"]]))
    drain(app)
    got = sent_calendar(api, event["id"], settings.outbox_dir)
    assert "When: Tue 12 Jan 2027, 5:00–5:45 pm CST" in body_text(got[m["mom"]["id"]][0])
    assert "When: Tue 12 Jan 2027, 6:00–6:45 pm EST" in body_text(got[m["slp"]["id"]][0])
    # the invite itself is in the notebook's zone, the same for both
    assert Calendar.from_ical(got[m["slp"]["id"]][1]).walk("VEVENT")[0]["DTSTART"].params["TZID"] == (
        "America/Chicago"
    )


def test_the_member_page_of_a_moved_occurrence_shows_its_new_time(app, api, team, settings, client):
    import re

    from tests.conftest import drain

    nb, m = team
    mom = [m["mom"]["id"]]
    api.event(nb["id"], "checkin.scheduled", series_data(mom))
    march, moved_to = SECOND_TUESDAYS[2], datetime(2027, 3, 16, 18, 0, tzinfo=CHICAGO)
    data = series_data(
        mom,
        occurrence=march.isoformat(),
        start=moved_to.isoformat(),
        end=(moved_to + timedelta(minutes=45)).isoformat(),
    )
    data.pop("recurrence")
    moved = api.event(nb["id"], "checkin.updated", data)
    drain(app)
    msg, _ = sent_calendar(api, moved["id"], settings.outbox_dir)[m["mom"]["id"]]
    (path,) = re.findall(r"https?://[^/\s]+(/m/\S+)", body_text(msg))
    page = client.get(path)
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "Tue 16 Mar 2027, 6:00 pm – 6:45 pm CDT" in text
    assert "9 Mar" not in text


@pytest.mark.parametrize("zone", ZONES)
def test_a_weekly_series_keeps_its_local_time_across_every_change_in_every_reader(zone):
    """Two years of Tuesdays at 15:30 local time, written out by hand: ical.js and vobject
    expand the RRULE against the VTIMEZONE to the same instants."""
    tz = ZoneInfo(zone)
    first = date(2027, 1, 5)
    meant = [
        datetime.combine(first + timedelta(weeks=n), datetime.min.time().replace(hour=15, minute=30), tz)
        for n in range(104)
    ]
    text = build_invite(
        invite(
            tzid=zone, start=meant[0], end=meant[0] + timedelta(hours=1), recurrence="FREQ=WEEKLY;COUNT=104"
        )
    )
    assert occurrences(meant[0], "FREQ=WEEKLY;COUNT=104", zone) == meant
    (read,) = ical_js.read([text])
    assert read["occurrences"] == [[unix(s), unix(s), unix(s) + 3600] for s in meant]
    (vevent,) = vobject_events(text)
    expanded = list(vevent.getrruleset(addRDate=True))
    assert [d.replace(tzinfo=None) for d in expanded] == [s.replace(tzinfo=None) for s in meant]
    if not hasattr(expanded[0].tzinfo, "zone"):
        assert expanded == meant  # read with the invite's own VTIMEZONE: the same instants
    # else vobject took pytz's zone for this TZID (it does for some) and dateutil keeps the
    # first occurrence's offset on every one (pytz is never normalized there): its wall-clock
    # times in the TZID, checked above, are what it means.
