"""The core loop in production shape: intake → Redis → a real RQ worker → aiosmtpd / Twilio's
API (Prism) — on SQLite and on PostgreSQL."""

from __future__ import annotations

import re

import icalendar
import pytest

from tests.conftest import checkin_data, run_rq_until_settled


@pytest.fixture
def api(rq_api):
    """The `team` fixture builds its notebook through this module's (RQ-mode) app."""
    return rq_api


def _calendar_part(message):
    for part in message.walk():
        if part.get_content_type() == "text/calendar":
            return part
    raise AssertionError("no text/calendar part")


def _by_recipient(messages):
    return {str(m["To"].addresses[0].addr_spec): m for m in messages}


def test_medication_change_reaches_neurology_and_parents_but_not_the_author(
    rq_api, runtime, team, smtp, twilio_proxy
):
    nb, m = team
    # emails carry details only where the notebook turns them on (and then as each role may see)
    url = f"/v1/notebooks/{nb['id']}"
    response = rq_api.client.patch(url, json={"email_detail": True}, headers=rq_api.headers)
    assert response.status_code == 200 and response.get_json()["email_detail"] is True
    accepted = rq_api.event(
        nb["id"],
        "medication.changed",
        {"medication": "levetiracetam", "change": "dose_changed", "dose": "250 mg twice daily"},
        author_member_id=m["mom"]["id"],
    )
    assert accepted["status"] == "accepted"
    run_rq_until_settled(runtime)

    event = rq_api.get(f"/v1/events/{accepted['id']}")
    assert event["status"] == "routed"
    got = {(d["member_id"], d["channel"]): d for d in event["deliveries"]}
    assert set(got) == {
        (m["dad"]["id"], "sms"),
        (m["dad"]["id"], "email"),
        (m["neuro"]["id"], "sms"),
        (m["neuro"]["id"], "email"),
    }
    assert got[(m["neuro"]["id"], "sms")]["status"] == "skipped"
    assert got[(m["neuro"]["id"], "sms")]["error"] == "member has no phone number"
    for key in [(m["dad"]["id"], "sms"), (m["dad"]["id"], "email"), (m["neuro"]["id"], "email")]:
        assert got[key]["status"] == "sent", got[key]
        assert got[key]["attempts"] == 1
        assert got[key]["provider_id"]

    # Email: details for the clinician, with the Message-ID careloop recorded.
    mails = _by_recipient(smtp.messages)
    assert set(mails) == {"sam@example.org", "shah@example.org"}
    neuro_mail = mails["shah@example.org"]
    assert neuro_mail["Message-ID"] == got[(m["neuro"]["id"], "email")]["provider_id"]
    text = neuro_mail.get_body(("plain",)).get_content()
    assert "levetiracetam" in text and "250 mg twice daily" in text
    assert neuro_mail.get_body(("html",)) is not None

    # SMS: one message to the dad, carrying no medication name or dose.
    assert [s["To"] for s in twilio_proxy.sent] == ["+15555550102"]
    body = twilio_proxy.sent[0]["Body"]
    assert "Maya" in body
    assert "levetiracetam" not in body and "250 mg" not in body  # (a token may hold "250")
    # ...and a link of the dad's own that opens this event's page, no key needed
    (token,) = re.findall(r"https://careloop\.test/m/(\S+)", body)
    event_page = rq_api.client.get(f"/m/{token}")
    assert event_page.status_code == 200
    assert "For Sam Rivera (parent)" in event_page.get_data(as_text=True)
    assert "levetiracetam" in event_page.get_data(as_text=True)
    sms = got[(m["dad"]["id"], "sms")]
    assert (
        twilio_proxy.sent[0]["StatusCallback"]
        == f"https://careloop.test/v1/twilio/status?attempt=1&delivery={sms['id']}"
    )


def test_urgent_concern_sms_has_no_concern_text(rq_api, runtime, team, twilio_proxy):
    nb, m = team
    accepted = rq_api.event(
        nb["id"],
        "concern.raised",
        {"summary": "Choking on thin liquids", "severity": "urgent", "area": "swallowing"},
    )
    run_rq_until_settled(runtime)
    phones = sorted(s["To"] for s in twilio_proxy.sent)
    assert phones == ["+15555550101", "+15555550102", "+15555550104"]
    for sent in twilio_proxy.sent:
        assert "Choking" not in sent["Body"] and "liquids" not in sent["Body"]
        assert "URGENT" in sent["Body"]
    event = rq_api.get(f"/v1/events/{accepted['id']}")
    slp_email = [
        d for d in event["deliveries"] if d["member_id"] == m["slp"]["id"] and d["channel"] == "email"
    ]
    assert len(slp_email) == 1  # matched two rules (whole team + speech/swallowing), one delivery
    assert set(slp_email[0]["rules"]) == {
        "serious-concerns-to-whole-team",
        "speech-and-swallowing-to-speech-therapy",
    }


def test_checkin_invite_update_and_cancel_are_real_itip(rq_api, runtime, team, smtp):
    nb, m = team
    attendees = [m["mom"]["id"], m["slp"]["id"], m["school"]["id"]]
    rq_api.event(nb["id"], "checkin.scheduled", checkin_data(attendees, location="Room 12"))
    run_rq_until_settled(runtime)
    first = _by_recipient(smtp.messages)
    assert set(first) == {"dana@example.org", "jordan@example.org", "ortiz@example.org"}
    part = _calendar_part(first["jordan@example.org"])
    assert part.get_params()[0] == ("text/calendar", "")
    assert dict(part.get_params())["method"] == "REQUEST"
    cal = icalendar.Calendar.from_ical(part.get_payload(decode=True))
    assert str(cal["METHOD"]) == "REQUEST"
    vevent = cal.walk("VEVENT")[0]
    uid = str(vevent["UID"])
    assert int(vevent["SEQUENCE"]) == 0
    assert str(vevent["ORGANIZER"]).lower() == "mailto:careloop@careloop.test"
    emails = sorted(str(a).lower().removeprefix("mailto:") for a in vevent["ATTENDEE"])
    assert emails == ["dana@example.org", "jordan@example.org", "ortiz@example.org"]
    for attendee in vevent["ATTENDEE"]:
        assert attendee.params["RSVP"] == "TRUE"
        assert attendee.params["PARTSTAT"] == "NEEDS-ACTION"
    assert vevent["DTSTART"].params["TZID"] == "America/Chicago"
    assert [str(tz["TZID"]) for tz in cal.walk("VTIMEZONE")] == ["America/Chicago"]
    assert str(vevent["LOCATION"]) == "Room 12"

    # Update: the school drops out, PT joins. Same UID, SEQUENCE 1; the school gets a CANCEL.
    smtp.clear()
    rq_api.event(
        nb["id"],
        "checkin.updated",
        checkin_data([m["mom"]["id"], m["slp"]["id"], m["pt"]["id"]], title="IEP (moved)"),
    )
    run_rq_until_settled(runtime)
    second = _by_recipient(smtp.messages)
    assert set(second) == {"dana@example.org", "jordan@example.org", "alex@example.org", "ortiz@example.org"}
    for addr, mail in second.items():
        cal = icalendar.Calendar.from_ical(_calendar_part(mail).get_payload(decode=True))
        vevent = cal.walk("VEVENT")[0]
        assert str(vevent["UID"]) == uid
        assert int(vevent["SEQUENCE"]) == 1
        expected = "CANCEL" if addr == "ortiz@example.org" else "REQUEST"
        assert str(cal["METHOD"]) == expected, addr

    # Cancel: everyone still invited gets METHOD:CANCEL, SEQUENCE 2.
    smtp.clear()
    rq_api.event(nb["id"], "checkin.cancelled", {"checkin_id": "iep-1"})
    run_rq_until_settled(runtime)
    third = _by_recipient(smtp.messages)
    assert set(third) == {"dana@example.org", "jordan@example.org", "alex@example.org"}
    for mail in third.values():
        part = _calendar_part(mail)
        assert dict(part.get_params())["method"] == "CANCEL"
        cal = icalendar.Calendar.from_ical(part.get_payload(decode=True))
        vevent = cal.walk("VEVENT")[0]
        assert str(cal["METHOD"]) == "CANCEL" and str(vevent["STATUS"]) == "CANCELLED"
        assert str(vevent["UID"]) == uid and int(vevent["SEQUENCE"]) == 2


def test_routing_twice_sends_nothing_twice(rq_api, runtime, team, smtp, twilio_proxy):
    """A route job that runs again (redelivery) creates no second delivery and no second send."""
    from careloop.workers.jobs import route_event

    nb, _ = team
    accepted = rq_api.event(nb["id"], "medication.changed", {"medication": "baclofen", "change": "started"})
    run_rq_until_settled(runtime)
    before = rq_api.get(f"/v1/events/{accepted['id']}")["deliveries"]
    sent_mail, sent_sms = len(smtp.messages), len(twilio_proxy.sent)
    assert route_event(accepted["id"], runtime=runtime) == 0
    runtime.dispatcher.route([accepted["id"]])
    run_rq_until_settled(runtime)
    after = rq_api.get(f"/v1/events/{accepted['id']}")["deliveries"]
    assert sorted(d["id"] for d in after) == sorted(d["id"] for d in before)
    assert (len(smtp.messages), len(twilio_proxy.sent)) == (sent_mail, sent_sms)
