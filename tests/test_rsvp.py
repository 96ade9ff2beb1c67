"""RSVPs read back: invites ask for an answer (RSVP=TRUE, ORGANIZER a mailbox of careloop's);
the iTIP REPLY a mail client sends is taken by the API (as text/calendar or the whole email)
and from the organizer's mailbox over IMAP (a real Dovecot); the member page answers too. Each
attendee's PARTSTAT is kept (per occurrence where they answered for one), shown by
``GET /v1/notebooks/{id}/checkins/{checkin_id}`` and on the member page, and carried by later
invites instead of asking again."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from zoneinfo import ZoneInfo

import pytest
import vobject
from icalendar import Calendar, Event, vCalAddress

from careloop.workers.mailbox import poll_mailbox
from tests.conftest import (
    REDIS_URL,
    build_app,
    build_team,
    checkin_data,
    close_app,
    drain,
    make_settings,
    wait_until,
)
from tests.conftest import run_rq_until_settled as settle
from tests.peers.dovecot_peer import running_dovecot
from tests.test_member_links import link_for, page, text_of

ORGANIZER = "rsvp@careloop.test"
ICS = {"Content-Type": "text/calendar; charset=utf-8"}
EMAIL = {"Content-Type": "message/rfc822"}


@pytest.fixture
def settings(db_url, tmp_path):
    return make_settings(db_url, tmp_path, organizer_email=f"Maya's care team <{ORGANIZER}>")


def invites(settings, uid: str) -> dict[int, bytes]:
    """The iTIP messages sent for a check-in, by SEQUENCE (an occurrence's own, for one about it)."""
    found = {}
    for path in (settings.outbox_dir / "calendar").glob("*.ics"):
        data = path.read_bytes()
        (event, *_) = Calendar.from_ical(data).walk("VEVENT")
        if str(event["UID"]) == uid:
            found[int(path.name.rsplit(".", 2)[-2])] = data
    return found


def partstats(data: bytes, recurrence_id: datetime | None = None) -> dict[str, str]:
    """email → PARTSTAT in an invite's VEVENT (the series', or the occurrence's), read by vobject."""
    for vevent in vobject.readOne(data.decode()).vevent_list:
        rid = getattr(vevent, "recurrence_id", None)
        if (rid.value if rid else None) == recurrence_id:
            return {
                a.value.removeprefix("mailto:"): a.params["PARTSTAT"][0] for a in vevent.contents["attendee"]
            }
    raise AssertionError(f"no VEVENT for {recurrence_id}")


def reply_to(invite: bytes, email: str, partstat: str, *, stamp=None, method="REPLY", **changes) -> bytes:
    """The REPLY a mail client sends for ``invite``: its UID, SEQUENCE and times (and
    RECURRENCE-ID), the ORGANIZER, and only the one attendee, with their answer."""
    (sent, *_) = Calendar.from_ical(invite).walk("VEVENT")
    event = Event()
    for name in ("UID", "SEQUENCE", "DTSTART", "DTEND", "SUMMARY", "ORGANIZER", "RECURRENCE-ID"):
        if name in sent:
            event.add(name, sent[name])
    event.add("DTSTAMP", stamp or datetime.now(UTC))
    attendee = vCalAddress(f"mailto:{email}")
    attendee.params["PARTSTAT"] = partstat
    event.add("ATTENDEE", attendee)
    for name, value in changes.items():
        event.pop(name.replace("_", "-"), None)
        if value is not None:
            event.add(name.replace("_", "-"), value)
    calendar = Calendar()
    calendar.add("PRODID", "-//Example Corp.//Mail Client//EN")
    calendar.add("VERSION", "2.0")
    calendar.add("METHOD", method)
    calendar.add_component(event)
    return calendar.to_ical()


def as_email(ics: bytes, sender: str, subject: str = "Accepted: IEP meeting") -> bytes:
    """The iMIP email carrying a REPLY, as a mail client sends it (text, and the calendar)."""
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, ORGANIZER, subject
    message.set_content("I will be there.")
    message.add_alternative(ics, maintype="text", subtype="calendar", params={"method": "REPLY"})
    return message.as_bytes()


def scheduled(app, api, attendees, **extra):
    nb = attendees["nb"]
    data = checkin_data([attendees[k]["id"] for k in ("mom", "dad", "neuro")], **extra)
    event = api.event(nb, "checkin.scheduled", data)
    drain(app)
    checkin = api.get(f"/v1/notebooks/{nb}/checkins/{data['checkin_id']}")
    return data, event, checkin


@pytest.fixture
def world(app, api):
    nb, m = build_team(api)
    return {"nb": nb["id"], **m}


def post_reply(client, admin, world, checkin_id, body, headers=ICS):
    return client.post(
        f"/v1/notebooks/{world['nb']}/checkins/{checkin_id}/replies", data=body, headers={**admin, **headers}
    )


def answers(checkin: dict) -> dict[str, str]:
    return {a["member_id"]: a["partstat"] for a in checkin["attendees"]}


# --- The invite asks, and names the organizer's mailbox ---------------------------------------------


def test_the_invite_asks_each_attendee_to_answer_the_organizers_mailbox(app, api, world, settings):
    data, _, checkin = scheduled(app, api, world)
    (invite,) = invites(settings, checkin["uid"]).values()
    (event,) = Calendar.from_ical(invite).walk("VEVENT")
    assert str(event["ORGANIZER"]) == f"mailto:{ORGANIZER}"
    assert event["ORGANIZER"].params["CN"] == "Maya's care team"
    for attendee in event["ATTENDEE"]:
        assert attendee.params["RSVP"] == "TRUE" and attendee.params["PARTSTAT"] == "NEEDS-ACTION"
    # Nobody has answered yet.
    assert set(answers(checkin).values()) == {"NEEDS-ACTION"}
    assert checkin["checkin_id"] == data["checkin_id"] and checkin["recurrence"] is None
    assert [a["name"] for a in checkin["attendees"]] == ["Dana Rivera", "Sam Rivera", "Dr. Shah"]


# --- REPLY by the API ----------------------------------------------------------------------------


def test_a_reply_posted_as_text_calendar_is_kept_and_shown(app, api, client, admin, world, settings):
    data, _, checkin = scheduled(app, api, world)
    (invite,) = invites(settings, checkin["uid"]).values()

    response = post_reply(
        client, admin, world, data["checkin_id"], reply_to(invite, "dana@example.org", "ACCEPTED")
    )

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["results"] == [
        {"member_id": world["mom"]["id"], "recurrence_id": None, "partstat": "ACCEPTED", "applied": True}
    ]
    shown = api.get(f"/v1/notebooks/{world['nb']}/checkins/{data['checkin_id']}")
    assert answers(shown) == {
        world["mom"]["id"]: "ACCEPTED",
        world["dad"]["id"]: "NEEDS-ACTION",
        world["neuro"]["id"]: "NEEDS-ACTION",
    }
    (dana,) = [a for a in shown["attendees"] if a["member_id"] == world["mom"]["id"]]
    assert dana["via"] == "api" and dana["answered_at"]
    assert body["checkin"] == shown


def test_a_whole_email_is_read_for_its_calendar_part_and_the_address_matches_in_any_case(
    app, api, client, admin, world, settings
):
    data, _, checkin = scheduled(app, api, world)
    (invite,) = invites(settings, checkin["uid"]).values()
    email = as_email(reply_to(invite, "Sam@Example.ORG", "DECLINED"), "Sam Rivera <sam@example.org>")

    response = post_reply(client, admin, world, data["checkin_id"], email, EMAIL)

    assert response.status_code == 200, response.get_json()
    assert answers(response.get_json()["checkin"])[world["dad"]["id"]] == "DECLINED"


def test_an_older_answer_arriving_late_changes_nothing(app, api, client, admin, world, settings):
    data, _, checkin = scheduled(app, api, world)
    (invite,) = invites(settings, checkin["uid"]).values()
    now = datetime.now(UTC).replace(microsecond=0)
    newer = reply_to(invite, "dana@example.org", "TENTATIVE", stamp=now)
    older = reply_to(invite, "dana@example.org", "DECLINED", stamp=now - timedelta(minutes=5))

    assert post_reply(client, admin, world, data["checkin_id"], newer).status_code == 200
    late = post_reply(client, admin, world, data["checkin_id"], older)

    assert late.status_code == 200
    assert late.get_json()["results"][0] | {"member_id": None} == {
        "member_id": None, "recurrence_id": None, "partstat": "TENTATIVE", "applied": False
    }  # fmt: skip
    # A reply to an older SEQUENCE is older, whatever its DTSTAMP.
    api.event(world["nb"], "checkin.updated", {**data, "title": "IEP meeting (room 12)"})
    drain(app)
    update = invites(settings, checkin["uid"])[1]
    accepted = reply_to(update, "dana@example.org", "ACCEPTED")
    assert post_reply(client, admin, world, data["checkin_id"], accepted).status_code == 200
    stale = reply_to(invite, "dana@example.org", "DECLINED", stamp=now + timedelta(hours=1))
    assert (
        post_reply(client, admin, world, data["checkin_id"], stale).get_json()["results"][0]["applied"]
        is False
    )
    shown = api.get(f"/v1/notebooks/{world['nb']}/checkins/{data['checkin_id']}")
    assert answers(shown)[world["mom"]["id"]] == "ACCEPTED"


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"UID": "someone-else@example.org"}, 422, "UID"),
        ({"attendee": "stranger@example.org"}, 422, "ATTENDEE"),
        ({"attendee": "ortiz@example.org"}, 422, "ATTENDEE"),  # on the team, not invited
        ({"method": "REQUEST"}, 422, "METHOD"),
        ({"partstat": "DELEGATED"}, 422, "PARTSTAT"),
        ({"DTSTAMP": None}, 422, "DTSTAMP"),
        ({"RECURRENCE_ID": datetime(2030, 1, 1, 9, tzinfo=UTC)}, 422, "RECURRENCE-ID"),
        ({"body": b"this is not a calendar"}, 422, "body"),
        ({"email": b"From: a@example.org\r\nSubject: hello\r\n\r\nno calendar here\r\n"}, 422, "body"),
    ],
)
def test_a_reply_careloop_cannot_take_is_a_4xx_naming_the_problem(
    app, api, client, admin, world, settings, change, status, field
):
    data, _, checkin = scheduled(app, api, world)
    (invite,) = invites(settings, checkin["uid"]).values()
    change = dict(change)
    headers = ICS
    if "body" in change:
        body = change.pop("body")
    elif "email" in change:
        body, headers = change.pop("email"), EMAIL
    else:
        body = reply_to(
            invite,
            change.pop("attendee", "dana@example.org"),
            change.pop("partstat", "ACCEPTED"),
            method=change.pop("method", "REPLY"),
            **change,
        )

    response = post_reply(client, admin, world, data["checkin_id"], body, headers)

    assert response.status_code == status, response.get_json()
    problem = response.get_json()
    assert problem["error"] == "validation_error" and list(problem["fields"]) == [field]
    assert problem["message"].startswith(field)
    shown = api.get(f"/v1/notebooks/{world['nb']}/checkins/{data['checkin_id']}")
    assert set(answers(shown).values()) == {"NEEDS-ACTION"}


def test_the_wrong_media_type_an_unknown_or_cancelled_checkin(app, api, client, admin, world, settings):
    data, _, checkin = scheduled(app, api, world)
    (invite,) = invites(settings, checkin["uid"]).values()
    reply = reply_to(invite, "dana@example.org", "ACCEPTED")

    as_json = client.post(
        f"/v1/notebooks/{world['nb']}/checkins/{data['checkin_id']}/replies", json={}, headers=admin
    )
    assert as_json.status_code == 415 and as_json.get_json()["error"] == "unsupported_media_type"
    unknown = post_reply(client, admin, world, "no-such-checkin", reply)
    assert unknown.status_code == 404 and unknown.get_json()["message"] == "check-in not found"
    assert (
        client.get(f"/v1/notebooks/{world['nb']}/checkins/no-such-checkin", headers=admin).status_code == 404
    )

    api.event(world["nb"], "checkin.cancelled", {"checkin_id": data["checkin_id"]})
    drain(app)
    cancelled = post_reply(client, admin, world, data["checkin_id"], reply)
    assert cancelled.status_code == 409 and cancelled.get_json()["fields"] == {
        "UID": ["this check-in is cancelled"]
    }
    assert api.get(f"/v1/notebooks/{world['nb']}/checkins/{data['checkin_id']}")["cancelled"] is True


# --- Later invites carry the answers ---------------------------------------------------------------


def test_an_update_carries_each_attendees_last_answer_instead_of_asking_again(
    app, api, client, admin, world, settings
):
    """Kept through a change of time too (the issue's choice; RFC 5546 lets an organizer reset
    answers on a reschedule): an attendee who cannot come after all answers again."""
    data, _, checkin = scheduled(app, api, world)
    (invite,) = invites(settings, checkin["uid"]).values()
    post_reply(client, admin, world, data["checkin_id"], reply_to(invite, "dana@example.org", "ACCEPTED"))
    post_reply(client, admin, world, data["checkin_id"], reply_to(invite, "shah@example.org", "DECLINED"))

    start = datetime.fromisoformat(data["start"]) + timedelta(hours=2)
    moved = {**data, "start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat()}
    api.event(world["nb"], "checkin.updated", moved)
    drain(app)

    update = invites(settings, checkin["uid"])[1]
    assert partstats(update) == {
        "dana@example.org": "ACCEPTED", "sam@example.org": "NEEDS-ACTION", "shah@example.org": "DECLINED"
    }  # fmt: skip
    (event,) = Calendar.from_ical(update).walk("VEVENT")
    assert event.start == start and int(event["SEQUENCE"]) == 1
    assert all(a.params["RSVP"] == "TRUE" for a in event["ATTENDEE"])


def test_an_answer_for_one_occurrence_is_kept_apart_and_carried_by_that_occurrences_invite(
    app, api, client, admin, world, settings
):
    tz = ZoneInfo("America/Chicago")
    first = datetime(2027, 1, 12, 17, 0, tzinfo=tz)
    data = checkin_data(
        [world[k]["id"] for k in ("mom", "dad", "neuro")],
        checkin_id="monthly",
        recurrence="FREQ=WEEKLY;COUNT=4",
    )
    data.update(start=first.isoformat(), end=(first + timedelta(minutes=45)).isoformat())
    api.event(world["nb"], "checkin.scheduled", data)
    drain(app)
    checkin = api.get(f"/v1/notebooks/{world['nb']}/checkins/monthly")
    assert checkin["recurrence"] == "FREQ=WEEKLY;COUNT=4"
    (series,) = invites(settings, checkin["uid"]).values()
    second = first + timedelta(weeks=1)

    post_reply(client, admin, world, "monthly", reply_to(series, "sam@example.org", "ACCEPTED"))
    one = reply_to(series, "sam@example.org", "DECLINED", RECURRENCE_ID=second)
    answered = post_reply(client, admin, world, "monthly", one).get_json()

    key = second.astimezone(UTC).isoformat()
    assert answered["results"][0]["recurrence_id"] == key
    shown = answered["checkin"]
    assert answers(shown)[world["dad"]["id"]] == "ACCEPTED"
    (occurrence,) = shown["occurrences"]
    assert occurrence["recurrence_id"] == key and answers(occurrence)[world["dad"]["id"]] == "DECLINED"
    assert answers(occurrence)[world["mom"]["id"]] == "NEEDS-ACTION"

    # That occurrence moves alone: its invite shows Sam's answer for it; the series keeps his other.
    moved = second + timedelta(hours=1)
    api.event(
        world["nb"],
        "checkin.updated",
        {**{k: v for k, v in data.items() if k != "recurrence"}, "occurrence": second.isoformat(),
         "start": moved.isoformat(), "end": (moved + timedelta(minutes=45)).isoformat()},
    )  # fmt: skip
    drain(app)
    (sequence,) = set(invites(settings, checkin["uid"])) - {0}
    alone = invites(settings, checkin["uid"])[sequence]
    assert partstats(alone, second)["sam@example.org"] == "DECLINED"
    assert partstats(alone, second)["dana@example.org"] == "NEEDS-ACTION"


# --- The member page ----------------------------------------------------------------------------------


def _csrf(html: str) -> str:
    (token,) = re.findall(r'name="csrf_token" value="([^"]+)"', html)
    return token


def test_the_member_page_shows_answers_and_offers_accept_and_decline(
    app, api, client, admin, world, settings
):
    data, event, checkin = scheduled(app, api, world)
    (invite,) = invites(settings, checkin["uid"]).values()
    post_reply(client, admin, world, data["checkin_id"], reply_to(invite, "dana@example.org", "ACCEPTED"))
    token = link_for(settings, event["id"], world["dad"]["id"], "calendar")

    html = page(client, token)
    form_token = _csrf(html)
    words = text_of(html)
    assert "Dana Rivera (parent), accepted" in words and "Sam Rivera (parent) Dr. Shah" in words
    assert "You have not answered yet" in words

    # Without the form's CSRF token: refused, nothing changes.
    refused = client.post(f"/m/{token}/rsvp", data={"answer": "decline"})
    assert refused.status_code == 400
    assert answers(api.get(f"/v1/notebooks/{world['nb']}/checkins/{data['checkin_id']}"))[
        world["dad"]["id"]
    ] == ("NEEDS-ACTION")

    declined = client.post(f"/m/{token}/rsvp", data={"answer": "decline", "csrf_token": form_token})
    assert declined.status_code == 303 and declined.headers["Location"].endswith(f"/m/{token}")
    assert declined.headers["Cache-Control"] == "no-store"
    words = text_of(page(client, token))
    assert "Your answer: declined" in words and "Sam Rivera (parent), declined" in words
    shown = api.get(f"/v1/notebooks/{world['nb']}/checkins/{data['checkin_id']}")
    (sam,) = [a for a in shown["attendees"] if a["member_id"] == world["dad"]["id"]]
    assert (sam["partstat"], sam["via"]) == ("DECLINED", "member_page")

    accepted = client.post(f"/m/{token}/rsvp", data={"answer": "accept", "csrf_token": form_token})
    assert accepted.status_code == 303
    assert "Your answer: accepted" in text_of(page(client, token))

    # The answer given on the page is carried by the next invite.
    api.event(world["nb"], "checkin.updated", {**data, "location": "Room 12"})
    drain(app)
    assert partstats(invites(settings, checkin["uid"])[1])["sam@example.org"] == "ACCEPTED"

    # Nothing to answer once it is cancelled.
    api.event(world["nb"], "checkin.cancelled", {"checkin_id": data["checkin_id"]})
    drain(app)
    assert "csrf_token" not in page(client, token)
    gone = client.post(f"/m/{token}/rsvp", data={"answer": "accept", "csrf_token": form_token})
    assert gone.status_code == 409  # as the API answers a reply to a cancelled check-in


def test_a_member_not_invited_sees_the_answers_and_no_buttons(app, api, client, world, settings):
    data = checkin_data([world["mom"]["id"], world["school"]["id"]])
    event = api.event(world["nb"], "checkin.scheduled", data)
    drain(app)
    token = link_for(settings, event["id"], world["school"]["id"], "calendar")
    api.event(world["nb"], "checkin.updated", {**data, "attendees": [world["mom"]["id"]]})
    drain(app)
    html = page(client, token)
    assert "csrf_token" not in html and "Accept" not in text_of(html)
    response = client.post(f"/m/{token}/rsvp", data={"answer": "accept"})
    assert response.status_code == 400


# --- The organizer's mailbox, over IMAP (Dovecot) ------------------------------------------------------


@pytest.fixture
def dovecot():
    with running_dovecot() as peer:
        yield peer


def test_replies_are_read_from_the_mailbox_once_and_junk_is_flagged_without_logging_it(
    db_url, tmp_path, redis_conn, dovecot, caplog
):
    settings = make_settings(
        db_url, tmp_path, redis_url=REDIS_URL, organizer_email=ORGANIZER, imap_url=dovecot.url,
        imap_poll_interval=0.2,
    )  # fmt: skip
    app, api = build_app(settings)
    try:
        runtime = app.extensions["careloop"].runtime
        nb, m = build_team(api)
        world = {"nb": nb["id"], **m}
        data = checkin_data([m["mom"]["id"], m["dad"]["id"]])
        api.event(nb["id"], "checkin.scheduled", data)
        settle(runtime)
        checkin = api.get(f"/v1/notebooks/{nb['id']}/checkins/{data['checkin_id']}")
        (invite,) = invites(settings, checkin["uid"]).values()

        dovecot.append(as_email(reply_to(invite, "dana@example.org", "ACCEPTED"), "Dana <dana@example.org>"))
        junk = as_email(reply_to(invite, "mallory@example.org", "ACCEPTED"), "Mallory <mallory@example.org>",
                        subject="Private: Maya's seizure diary")  # fmt: skip
        dovecot.append(junk)
        dovecot.append(b"From: someone@example.org\r\nSubject: Lunch?\r\n\r\nNot a calendar at all.\r\n")
        caplog.set_level(logging.INFO)

        # Each relay sweep hands a poll to RQ when one is due; the worker runs it.
        def read() -> dict | None:
            settle(runtime)
            shown = api.get(f"/v1/notebooks/{nb['id']}/checkins/{data['checkin_id']}")
            return shown if answers(shown)[world["mom"]["id"]] != "NEEDS-ACTION" else None

        shown = wait_until(read, timeout=20, message="the mailbox read")
        (dana,) = [a for a in shown["attendees"] if a["member_id"] == world["mom"]["id"]]
        assert (dana["partstat"], dana["via"]) == ("ACCEPTED", "mailbox")
        assert answers(shown)[world["dad"]["id"]] == "NEEDS-ACTION"
        flags = dovecot.flags()
        assert flags[0] == {"\\Seen"}
        assert flags[1] == flags[2] == {"\\Seen", "\\Flagged"}
        for secret in ("mallory", "seizure", "Lunch", "someone@example.org", "dana@example.org"):
            assert secret not in caplog.text
        assert "flagged" in caplog.text

        # Each message is read once: the next poll finds nothing new.
        assert poll_mailbox(runtime) == {"taken": 0, "flagged": 0, "left": 0}
        # A later answer by mail wins over the earlier one.
        dovecot.append(as_email(reply_to(invite, "dana@example.org", "DECLINED"), "Dana <dana@example.org>"))
        assert poll_mailbox(runtime) == {"taken": 1, "flagged": 0, "left": 0}
        shown = api.get(f"/v1/notebooks/{nb['id']}/checkins/{data['checkin_id']}")
        assert answers(shown)[world["mom"]["id"]] == "DECLINED"
    finally:
        close_app(app)


def test_a_mailbox_that_cannot_be_read_is_logged_without_its_password(db_url, tmp_path, caplog):
    from tests.peers.dovecot_peer import _free_port

    settings = make_settings(
        db_url, tmp_path, imap_url=f"imap://organizer:hunter2-secret@127.0.0.1:{_free_port()}/INBOX"
    )
    app, _ = build_app(settings)
    try:
        caplog.set_level(logging.INFO)
        assert poll_mailbox(app.extensions["careloop"].runtime) == {"taken": 0, "flagged": 0, "left": 0}
        assert "could not be reached" in caplog.text and "hunter2" not in caplog.text
    finally:
        close_app(app)


def test_the_imap_url_is_checked_at_start_and_never_echoed(tmp_path):
    with pytest.raises(ValueError, match="CARELOOP_IMAP_URL") as refused:
        make_settings("sqlite://", tmp_path, imap_url="http://user:hunter2@example.org/")
    assert "hunter2" not in str(refused.value)
    assert "hunter2" not in repr(make_settings("sqlite://", tmp_path, imap_url="imap://u:hunter2@h/INBOX"))
