"""Members' calendar feeds: a private URL per member serving their check-ins as iCalendar, read
by Mozilla's ical.js and by vobject with the times careloop meant, the invites' UIDs, cancelled
occurrences and check-ins marked CANCELLED; rotated → the old URL is a 404; reads audited."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import vobject
from icalendar import Calendar

from careloop.checkins import checkin_uid
from careloop.service.redaction import redact
from tests.conftest import drain
from tests.log_leaks import every_log_line, leaks
from tests.peers import ical_js
from tests.test_invites import SECOND_TUESDAYS, sent_calendar, series_data, unix

ONE_OFF = datetime(2027, 2, 3, 15, 30, tzinfo=UTC)


def one_off(checkin_id: str, attendees: list[str], start: datetime = ONE_OFF) -> dict:
    return {
        "checkin_id": checkin_id,
        "title": f"Visit {checkin_id}",
        "start": start.isoformat(),
        "end": (start + timedelta(hours=1)).isoformat(),
        "attendees": attendees,
    }


def feed_path(api, member_id: str, settings) -> str:
    url = api.get(f"/v1/members/{member_id}")["calendar_feed_url"]
    assert url.startswith(f"{settings.public_url}/calendar/") and url.endswith(".ics")
    assert len(url.rsplit("/", 1)[1].removesuffix(".ics")) >= 43  # 256 bits
    return url.removeprefix(settings.public_url)


def test_a_members_feed_holds_their_check_ins_as_every_reader_sees_them(app, api, team, settings):
    nb, m = team
    mom, slp, dad = m["mom"]["id"], m["slp"]["id"], m["dad"]["id"]
    scheduled = api.event(nb["id"], "checkin.scheduled", series_data([mom, slp]))
    march, may = SECOND_TUESDAYS[2], SECOND_TUESDAYS[4]
    moved_to = march + timedelta(days=7, hours=1)
    moved = series_data([mom, slp], occurrence=march.isoformat(), start=moved_to.isoformat())
    moved.update(end=(moved_to + timedelta(minutes=45)).isoformat(), recurrence=None)
    api.event(nb["id"], "checkin.updated", moved)
    api.event(nb["id"], "checkin.cancelled", {"checkin_id": "monthly", "occurrence": may.isoformat()})
    api.event(nb["id"], "checkin.scheduled", one_off("dads", [dad]))
    later = ONE_OFF + timedelta(days=20)
    api.event(nb["id"], "checkin.scheduled", one_off("called-off", [mom], later))
    api.event(nb["id"], "checkin.cancelled", {"checkin_id": "called-off"})
    drain(app)

    path = feed_path(api, mom, settings)
    token = path.removeprefix("/calendar/").removesuffix(".ics")
    assert token not in redact(f'127.0.0.1 - - "GET {path} HTTP/1.1" 200 -')  # never in a request log
    with every_log_line() as lines:
        response = api.client.get(path)  # no key: the URL is the secret
    assert lines and not leaks(lines, {"token": [token]})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/calendar; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_data()

    # the invites' UID: the one in the REQUEST mom was emailed
    invite = sent_calendar(api, scheduled["id"], settings.outbox_dir)[mom][1]
    (invited,) = Calendar.from_ical(invite).walk("VEVENT")
    assert str(invited["UID"]) == checkin_uid(nb["id"], "monthly")

    # ical.js (Thunderbird's reader), with the feed's own VTIMEZONE
    (js,) = ical_js.read([body])
    assert js["method"] is None
    by_uid: dict[str, list] = {}
    for event in js["events"]:
        by_uid.setdefault(event["uid"], []).append(event)
    assert set(by_uid) == {str(invited["UID"]), checkin_uid(nb["id"], "called-off")}  # not dad's
    series = next(e for e in by_uid[str(invited["UID"])] if e["recurrence_id"] is None)
    assert series["rrule"] == "FREQ=MONTHLY;COUNT=6;BYDAY=2TU" and series["start_tzid"] == "America/Chicago"
    assert series["status"] == "CONFIRMED" and series["sequence"] == 0 and series["attendees"] == []
    span = 45 * 60
    expected = [
        [unix(s), unix(moved_to if s == march else s), unix(moved_to if s == march else s) + span]
        for s in SECOND_TUESDAYS
    ]
    assert js["occurrences"] == expected
    exceptions = {e["recurrence_id"]: e for e in by_uid[str(invited["UID"])] if e["recurrence_id"]}
    assert set(exceptions) == {unix(march), unix(may)}
    assert (exceptions[unix(march)]["status"], exceptions[unix(march)]["sequence"]) == ("CONFIRMED", 1)
    assert (exceptions[unix(may)]["status"], exceptions[unix(may)]["sequence"]) == ("CANCELLED", 2)
    (called_off,) = by_uid[checkin_uid(nb["id"], "called-off")]
    assert (called_off["status"], called_off["start"]) == ("CANCELLED", unix(later))

    # vobject (Radicale's parser) reads the same instants
    calendar = vobject.readOne(body.decode())
    assert [tz.tzid.value for tz in calendar.vtimezone_list] == ["America/Chicago"]
    events = calendar.vevent_list
    master = next(e for e in events if e.uid.value == invited["UID"] and not hasattr(e, "recurrence_id"))
    assert list(master.getrruleset(addRDate=True)) == SECOND_TUESDAYS
    overrides = {e.recurrence_id.value: e for e in events if hasattr(e, "recurrence_id")}
    assert overrides[march].dtstart.value == moved_to and overrides[may].status.value == "CANCELLED"
    (off,) = [e for e in events if e.uid.value == checkin_uid(nb["id"], "called-off")]
    assert off.dtstart.value == later and off.status.value == "CANCELLED"

    # dad's feed has only his check-in, at the time it was meant
    (dads,) = ical_js.read([api.client.get(feed_path(api, dad, settings)).get_data()])
    assert [(e["uid"], e["start"], e["status"]) for e in dads["events"]] == [
        (checkin_uid(nb["id"], "dads"), unix(ONE_OFF), "CONFIRMED")
    ]


def test_a_rotated_feed_url_is_a_404_and_reads_are_audited(app, api, team, settings):
    nb, m = team
    mom = m["mom"]["id"]
    api.event(nb["id"], "checkin.scheduled", one_off("a", [mom]))
    old = feed_path(api, mom, settings)
    assert feed_path(api, mom, settings) == old  # the same URL every time it is shown
    assert api.client.get(old).status_code == 200

    rotated = api.post(f"/v1/members/{mom}/calendar_feed/rotate", {}, status=200)
    new = rotated["calendar_feed_url"].removeprefix(settings.public_url)
    assert new != old and feed_path(api, mom, settings) == new
    gone = api.client.get(old)
    assert gone.status_code == 404 and b"BEGIN:VCALENDAR" not in gone.get_data()
    assert api.client.get(new).status_code == 200
    assert api.client.get("/calendar/" + "A" * 43 + ".ics").status_code == 404

    # a clinician is shown the member, never their feed URL; an integration key not even the member
    key = api.post(f"/v1/notebooks/{nb['id']}/keys", {"name": "Dr", "role": "clinician"})["key"]
    shown = api.client.get(f"/v1/members/{mom}", headers={"Authorization": f"Bearer {key}"}).get_json()
    assert shown["id"] == mom and shown["calendar_feed_url"] is None

    reads = [
        e for e in api.get(f"/v1/notebooks/{nb['id']}/audit")["items"] if e["action"] == "calendar_feed.read"
    ]
    assert {(e["actor_type"], e["actor_id"], e["status"]) for e in reads} == {("member", mom, 200)}
    assert len(reads) == 2

    # a member taken off the team has no feed any more
    assert (
        api.client.patch(f"/v1/members/{mom}", json={"active": False}, headers=api.headers).status_code == 200
    )
    assert api.client.get(new).status_code == 404
