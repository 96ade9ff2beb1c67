"""HL7 v2 scheduling in (issue #11): a clinic's scheduling engine posts SIU messages as ER7
text to an ``hl7v2`` source, signed per Standard Webhooks (by the ``standardwebhooks`` package,
as a sender would); they become check-ins — invites, updates, cancellations in the outbox —
and every request is answered with an HL7 ACK, read back here with the ``hl7`` package."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import hl7
import icalendar
import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from careloop import sources
from careloop.db import session_scope
from careloop.models import Event, InboundRecord
from tests.conftest import drain
from tests.log_leaks import every_log_line, leaks, phone_forms

ER7 = "x-application/hl7-v2+er7"

# The HL7 v2.5 SIU^S12 shape (chapter 10's examples): the schedule (SCH), the patient (PID) and
# a parent as next of kin (NK1), the visit (PV1), and the resources (RGS, AIS, AIL, AIP).
S12 = [
    "MSH|^~\\&|SCHEDULER|NORTHSIDE|CARELOOP|FAMILY|20270112083000-0600||SIU^S12^SIU_S12|MSG00001|P|2.5",
    "SCH|10345^CLINIC|20345^SCHEDULER|||||FOLLOWUP^Neurology follow-up^LOCAL|ROUTINE^Routine^HL70276|45"
    "|MIN^minutes^ANS+|^^45^20270119093000^20270119101500|||||1173^SHAH^ANIKA^^^DR"
    "|^WPN^Internet^Shah@Example.org||||||||Booked^Booked^HL70278",
    "PID|1||MRN12345^^^NORTHSIDE^MR~4455^^^&2.16.840.1.113883.19.5&ISO^PI||RIVERA^MAYA||20180304|F"
    "|||||^PRN^PH^^1^555^5550101",
    "NK1|1|RIVERA^SAM|FTH^Father^HL70063||^PRN^PH^^1^555^5550102",
    "PV1|1|O|NEURO^201^^NORTHSIDE||||1173^SHAH^ANIKA^^^DR",
    "RGS|1|A",
    "AIS|1|A|NEUROFU^Neurology follow-up^LOCAL|20270119093000|||45|MIN",
    "AIL|1|A|NEURO^201^^NORTHSIDE^^^^^Neurology clinic, room 201",
    "AIP|1|A|1173^SHAH^ANIKA^^^DR|NEURO^Neurologist",
]
# Rescheduled a week later at 14:00 (TQ1 carries the timing, as v2.5 prefers), by the clinic.
S13 = [
    "MSH|^~\\&|SCHEDULER|NORTHSIDE|CARELOOP|FAMILY|20270115101500-0600||SIU^S13^SIU_S12|MSG00002|P|2.5",
    "SCH|10345^CLINIC|20345^SCHEDULER||||RESCHED^Rescheduled by clinic|FOLLOWUP^Neurology follow-up^LOCAL"
    "|ROUTINE|45|MIN||||||1173^SHAH^ANIKA^^^DR|^WPN^Internet^shah@example.org||||||||Booked",
    "TQ1|1||||||20270126140000|20270126144500",
    *S12[2:],
]
S15 = [
    "MSH|^~\\&|SCHEDULER|NORTHSIDE|CARELOOP|FAMILY|20270120090000-0600||SIU^S15^SIU_S12|MSG00003|P|2.5",
    "SCH|10345^CLINIC|20345^SCHEDULER|||||FOLLOWUP^Neurology follow-up^LOCAL|ROUTINE|45|MIN"
    "|||||||||||||||Cancelled^Cancelled^HL70278",
    *S12[2:4],
]


def er7(segments: list[str], separator: str = "\r") -> bytes:
    return (separator.join(segments) + separator).encode()


def replaced(segments: list[str], old: str, new: str) -> list[str]:
    return [s.replace(old, new) for s in segments]


def signed(secret: str, body: bytes, msg_id: str = "msg_1", content_type: str = ER7) -> dict:
    when = datetime.now(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, when, body.decode()),
        "Content-Type": content_type,
    }


def post(client, source: dict, body: bytes, msg_id: str = "msg_1", **headers):
    return client.post(
        f"/v1/webhooks/{source['id']}",
        data=body,
        headers={**signed(source["secret"], body, msg_id), **headers},
    )


def ack(response) -> hl7.Message:
    """The answer, read as an HL7 ACK by the ``hl7`` package."""
    assert response.content_type.startswith(ER7), (response.status_code, response.data[:300])
    text = response.get_data(as_text=True)
    assert text.startswith("MSH|^~\\&|") and text.endswith("\r") and "\n" not in text
    message = hl7.parse(text)
    assert field(message, "MSH", 9) == f"ACK^{message['MSH.9.1.2']}^ACK"
    return message


def refusal(message: hl7.Message) -> tuple[str, str, str]:
    """MSA-1, ERR-2 (where) and ERR-3's code (what) of an ACK."""
    return str(message["MSA.1"]), field(message, "ERR", 2), str(message["ERR.3.1.1"])


def field(message: hl7.Message, segment: str, number: int) -> str:
    """A whole field as written (``message["ERR.2"]`` would be its first component)."""
    return str(message.segment(segment)(number))


def register(api, nb_id: str, **settings) -> dict:
    body = {"name": "Northside scheduling", "kind": "hl7v2", **settings}
    if "patients" not in settings:
        body["notebook_id"] = nb_id
    return api.post("/v1/sources", body)


def inbound(api, source_id: str, status: str | None = None) -> list[dict]:
    return api.get(f"/v1/sources/{source_id}/inbound" + (f"?status={status}" if status else ""))["items"]


def event_count(app, notebook_id: str) -> int:
    with session_scope(app.extensions["careloop"].settings.database_url) as session:
        return len(session.scalars(select(Event.id).where(Event.notebook_id == notebook_id)).all())


def calendar_files(outbox) -> dict[int, icalendar.Calendar]:
    """The outbox's .ics files (one per iTIP message), by SEQUENCE."""
    found = {}
    for path in (outbox / "calendar").glob("*.ics"):
        calendar = icalendar.Calendar.from_ical(path.read_bytes())
        (vevent,) = calendar.walk("VEVENT")
        found.setdefault(int(vevent["SEQUENCE"]), calendar)
    return found


@pytest.fixture
def clinic(api, team):
    nb, members = team
    source = register(api, nb["id"], patients={"NORTHSIDE|MRN12345": nb["id"]})
    return source, nb, members


# --- the loop: new, rescheduled, cancelled -------------------------------------------------


def test_s12_s13_s15_invite_update_and_cancel_the_team_end_to_end(app, client, api, clinic, settings):
    source, nb, members = clinic
    chicago = ZoneInfo("America/Chicago")
    with every_log_line() as lines:
        first = post(client, source, er7(S12), "msg_s12")
        assert first.status_code == 202
        answer = ack(first)
        assert (str(answer["MSA.1"]), str(answer["MSA.2"])) == ("AA", "MSG00001")
        assert str(answer["MSH.9.1.2"]) == "S12" and str(answer["MSH.5"]) == "SCHEDULER"
        assert str(answer["MSH.3"]) == "CARELOOP" and str(answer["MSH.12"]) == "2.5"
        [record] = inbound(api, source["id"], "accepted")
        assert len(record["event_ids"]) == 1 and record["webhook_id"] == "msg_s12"
        drain(app)

        scheduled = api.get(f"/v1/events/{record['event_ids'][0]}")
        assert scheduled["type"] == "checkin.scheduled" and scheduled["status"] == "routed"
        data = scheduled["data"]
        assert data["checkin_id"] == "hl7:20345@SCHEDULER" and data["title"] == "Neurology follow-up"
        assert data["location"] == "Neurology clinic, room 201"
        # A time without an offset is the notebook's (Chicago): 09:30 there, for SCH-9's 45 minutes.
        assert datetime.fromisoformat(data["start"]) == datetime(2027, 1, 19, 9, 30, tzinfo=chicago)
        assert datetime.fromisoformat(data["end"]) == datetime(2027, 1, 19, 10, 15, tzinfo=chicago)
        # The patient's phone (PID-13), the father's (NK1-5) and the neurologist's email (SCH-17).
        invited = {members[m]["id"] for m in ("mom", "dad", "neuro")}
        assert set(data["attendees"]) == invited
        calendar = {
            (d["member_id"], d["status"]) for d in scheduled["deliveries"] if d["channel"] == "calendar"
        }
        assert calendar == {(m, "sent") for m in invited}

        # Rescheduled, sent with line feeds between segments (as some engines do).
        moved = post(client, source, er7(S13, "\n"), "msg_s13")
        assert moved.status_code == 202 and str(ack(moved)["MSA.1"]) == "AA"
        cancelled = post(client, source, er7(S15), "msg_s15")
        assert cancelled.status_code == 202 and str(ack(cancelled)["MSA.2"]) == "MSG00003"
        drain(app)

    types = [api.get(f"/v1/events/{r['event_ids'][0]}")["type"] for r in reversed(inbound(api, source["id"]))]
    assert types == ["checkin.scheduled", "checkin.updated", "checkin.cancelled"]
    invites = calendar_files(settings.outbox_dir)
    assert {seq: str(cal["METHOD"]) for seq, cal in invites.items()} == {
        0: "REQUEST",
        1: "REQUEST",
        2: "CANCEL",
    }
    uids = {str(cal.walk("VEVENT")[0]["UID"]) for cal in invites.values()}
    assert len(uids) == 1
    starts = {seq: cal.walk("VEVENT")[0].decoded("DTSTART") for seq, cal in invites.items() if seq < 2}
    assert starts[0] == datetime(2027, 1, 19, 9, 30, tzinfo=chicago)
    assert starts[1] == datetime(2027, 1, 26, 14, 0, tzinfo=chicago)  # TQ1-7
    assert str(invites[1].walk("VEVENT")[0]["SUMMARY"]) == "Neurology follow-up"

    contacts = {f"{m}'s phone": phone_forms(members[m]["phone"]) for m in ("mom", "dad")}
    contacts["email"] = [members["neuro"]["email"], "MRN12345", "RIVERA"]
    assert leaks(lines, contacts) == []


def test_s14_modifies_and_an_offset_in_the_message_is_kept(app, client, api, clinic):
    source, nb, _ = clinic
    assert post(client, source, er7(S12), "msg_s12").status_code == 202
    s14 = replaced(
        replaced(S12, "SIU^S12^", "SIU^S14^"), "^20270119093000^20270119101500", "^202701191100-0500"
    )
    s14 = replaced(s14, "Neurology follow-up^LOCAL|ROUTINE", "Neurology follow-up (EEG review)^LOCAL|ROUTINE")
    response = post(client, source, er7(s14), "msg_s14")
    assert response.status_code == 202, response.data
    [latest, _] = inbound(api, source["id"], "accepted")
    event = api.get(f"/v1/events/{latest['event_ids'][0]}")
    assert event["type"] == "checkin.updated" and event["data"]["title"] == "Neurology follow-up (EEG review)"
    start = datetime.fromisoformat(event["data"]["start"])
    assert start.utcoffset().total_seconds() == -5 * 3600 and start.hour == 11
    assert datetime.fromisoformat(event["data"]["end"]) - start == timedelta(minutes=45)


def test_blank_lines_are_no_segments_and_a_malformed_escape_reaches_no_log_line(app, client, api, clinic):
    source, nb, _ = clinic
    # The hl7 package logs a field's text when an escape in it is one it cannot read (\\C…\\).
    odd = replaced(
        S12, "Neurology follow-up^LOCAL|ROUTINE", "Neurology \\C2842\\follow-up for RIVERA^LOCAL|ROUTINE"
    )
    with every_log_line() as lines:
        response = post(client, source, er7(odd, "\r\n\r\n"))
    assert response.status_code == 202 and str(ack(response)["MSA.1"]) == "AA"
    assert event_count(app, nb["id"]) == 1
    assert leaks(lines, {"message text": ["RIVERA", "C2842", "follow-up"]}) == []


def test_a_source_serving_one_notebook_reads_times_in_its_own_zone(app, client, api, team):
    nb, members = team
    source = register(api, nb["id"], timezone="America/New_York")
    assert source["timezone"] == "America/New_York" and source["patients"] is None
    # No contact of anyone on the team: every active member attends, and the rules decide the rest.
    anonymous = replaced(replaced(replaced(S12, "^PRN^PH^^1^555^5550101", ""), "^PRN^PH^^1^555^5550102", ""),
                         "^WPN^Internet^Shah@Example.org", "")  # fmt: skip
    response = post(client, source, er7(anonymous))
    assert response.status_code == 202, response.data
    [record] = inbound(api, source["id"])
    data = api.get(f"/v1/events/{record['event_ids'][0]}")["data"]
    assert datetime.fromisoformat(data["start"]) == datetime(
        2027, 1, 19, 9, 30, tzinfo=ZoneInfo("America/New_York")
    )
    assert sorted(data["attendees"]) == sorted(m["id"] for m in members.values())


# --- acknowledgements of what careloop cannot take ------------------------------------------


def test_an_unknown_patient_is_ae_kept_as_rejected_and_answered_the_same_when_repeated(
    app, client, api, clinic
):
    source, nb, _ = clinic
    body = er7(replaced(S12, "MRN12345^^^NORTHSIDE", "MRN99999^^^NORTHSIDE"))
    response = post(client, source, body)
    assert response.status_code == 422
    answer = ack(response)
    assert (str(answer["MSA.1"]), str(answer["MSA.2"])) == ("AE", "MSG00001")
    assert field(answer, "ERR", 2) == "PID^1^3" and str(answer["ERR.3.1.1"]) == "204"
    assert str(answer["ERR.4"]) == "E" and "PID-3" in str(answer["MSA.3"])
    assert event_count(app, nb["id"]) == 0
    [record] = inbound(api, source["id"], "rejected")
    assert record["reason"].startswith("PID-3 names no patient") and record["event_ids"] == []
    with session_scope(app.extensions["careloop"].settings.database_url) as session:
        assert session.get(InboundRecord, record["id"]).body == body  # kept, to be run again

    again = post(client, source, body)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    repeated = ack(again)
    assert [str(s) for s in repeated[1:]] == [str(s) for s in answer[1:]]  # MSA and ERR
    assert str(repeated["MSH.10"]) == str(answer["MSH.10"])
    assert len(inbound(api, source["id"], "duplicate")) == 1


def test_a_repeated_webhook_id_gets_the_first_aa_and_creates_nothing(app, client, api, clinic):
    source, nb, _ = clinic
    first = post(client, source, er7(S12))
    again = post(client, source, er7(S12))
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert str(ack(again).segment("MSA")) == str(ack(first).segment("MSA")) == "MSA|AA|MSG00001"
    assert event_count(app, nb["id"]) == 1


@pytest.mark.parametrize(
    "body, error, location",
    [
        (b"this is not an HL7 message", "100", ""),
        (b"", "100", ""),
        (er7(S12) + er7(S12), "100", ""),  # a batch: one message per request
        (er7(replaced(S12, "SIU^S12^SIU_S12", "ADT^A04^ADT_A01")), "200", "MSH^1^9"),
        (er7(replaced(S12, "SIU^S12^SIU_S12", "SIU^S26^SIU_S12")), "201", "MSH^1^9"),
        (er7(replaced(S12, "|P|2.5", "|P|3.0")), "203", "MSH^1^12"),
        (er7(replaced(S12, "MSH|^~\\&|", "MSH|^~|&|")), "102", "MSH^1^2"),  # a delimiter given twice
    ],
    ids=["garbage", "empty", "two messages", "ADT", "no-show", "version 3", "delimiters"],
)
def test_what_is_no_siu_message_careloop_reads_is_ar(app, client, api, clinic, body, error, location):
    source, nb, _ = clinic
    response = post(client, source, body)
    assert response.status_code == 422
    answer = ack(response)
    assert str(answer["MSA.1"]) == "AR" and str(answer["ERR.3.1.1"]) == error
    assert field(answer, "ERR", 2) == location
    assert event_count(app, nb["id"]) == 0
    [record] = inbound(api, source["id"], "rejected")
    assert record["reason"] == str(answer["MSA.3"])


@pytest.mark.parametrize(
    "change, location, error",
    [
        (("20345^SCHEDULER", ""), "SCH^1^2", "101"),  # no filler appointment id
        (("^^45^20270119093000^20270119101500", "^^45^2027011909"), "SCH^1^11", "102"),  # to the hour only
        (("|45|MIN^minutes^ANS+|", "|45|FORTNIGHT|"), "SCH^1^10", "103"),
    ],
    ids=["no SCH-2", "start to the hour", "unknown unit"],
)
def test_a_schedule_careloop_cannot_use_is_ae(app, client, api, clinic, change, location, error):
    source, nb, _ = clinic
    segments = replaced(S12, *change)
    if location != "SCH^1^2":  # the start must come from SCH-11 alone; and no end to fall back on
        segments = [s for s in segments if not s.startswith(("AIS", "AIL", "AIP"))]
    if error == "103":
        segments = replaced(segments, "^^45^20270119093000^20270119101500", "^^^20270119093000")
    response = post(client, source, er7(segments))
    assert response.status_code == 422
    answer = ack(response)
    assert refusal(answer) == ("AE", location, error)
    assert event_count(app, nb["id"]) == 0


def test_an_update_of_an_appointment_never_scheduled_is_ae_on_sch_2(app, client, api, clinic):
    source, nb, _ = clinic
    response = post(client, source, er7(S13))
    assert response.status_code == 422
    answer = ack(response)
    assert refusal(answer) == ("AE", "SCH^1^2", "204")
    assert "no scheduled check-in" in inbound(api, source["id"], "rejected")[0]["reason"]


def test_another_content_type_is_415_and_ar(app, client, api, clinic):
    source, _, _ = clinic
    response = post(client, source, er7(S12), **{"Content-Type": "application/json"})
    assert response.status_code == 415 and str(ack(response)["MSA.1"]) == "AR"
    assert ER7 in inbound(api, source["id"], "rejected")[0]["reason"]


def test_a_bad_signature_is_401_recorded_and_answered_as_json(app, client, api, clinic):
    source, nb, _ = clinic
    body = er7(S12)
    forged = signed(sources.mint_secret(), body)
    response = client.post(f"/v1/webhooks/{source['id']}", data=body, headers=forged)
    assert response.status_code == 401 and response.get_json()["error"] == "unauthorized"
    [record] = inbound(api, source["id"], "rejected")
    assert record["reason"] == "no signature matches" and event_count(app, nb["id"]) == 0
    # The same message signed with the source's secret still goes through with that webhook-id.
    assert post(client, source, body).status_code == 202


# --- registering ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, field",
    [
        ({"kind": "hl7v2"}, "patients"),  # neither notebook_id nor patients
        ({"kind": "hl7v2", "notebook_id": "NB", "patients": {"A|1": "NB"}}, "patients"),  # both
        ({"kind": "hl7v2", "patients": {"MRN12345": "NB"}}, "patients.MRN12345"),  # no authority
        ({"kind": "hl7v2", "patients": {"Patient/1": "NB"}}, "patients.Patient/1"),  # FHIR's, not HL7's
        ({"kind": "hl7v2", "notebook_id": "NB", "timezone": "Mars/Olympus"}, "timezone"),
        ({"kind": "careloop", "notebook_id": "NB", "timezone": "UTC"}, "timezone"),
        ({"kind": "careloop", "patients": {"A|1": "NB"}}, "patients"),
    ],
)
def test_a_source_that_cannot_route_is_422_naming_the_field(client, admin, api, team, body, field):
    nb, _ = team
    body = {"name": "x", **body, "notebook_id": nb["id"] if body.get("notebook_id") else None}
    if "patients" in body:
        body["patients"] = {k: nb["id"] if v == "NB" else v for k, v in body["patients"].items()}
    response = client.post("/v1/sources", json=body, headers=admin)
    assert response.status_code == 422, response.get_json()
    assert any(name.startswith(field) for name in response.get_json()["fields"]), response.get_json()


def test_a_patient_mapped_to_a_missing_notebook_is_404_like_notebook_id(client, admin):
    body = {"name": "x", "kind": "hl7v2", "patients": {"NORTHSIDE|1": "nb_missing"}}
    response = client.post("/v1/sources", json=body, headers=admin)
    assert response.status_code == 404 and "patients.NORTHSIDE|1" in response.get_json()["message"]


def test_a_patient_added_to_the_source_lets_its_rejected_message_run_again(app, client, api, clinic):
    source, nb, _ = clinic
    other = api.notebook(child_name="Leo Park")
    leo = er7(replaced(S12, "MRN12345^^^NORTHSIDE", "MRN77^^^NORTHSIDE"))
    assert post(client, source, leo).status_code == 422
    [record] = inbound(api, source["id"], "rejected")
    patients = {"NORTHSIDE|MRN12345": nb["id"], "NORTHSIDE|MRN77": other["id"]}
    fixed = client.patch(f"/v1/sources/{source['id']}", json={"patients": patients}, headers=api.headers)
    assert fixed.status_code == 200 and fixed.get_json()["patients"] == patients
    rerun = client.post(f"/v1/sources/{source['id']}/inbound/{record['id']}/rerun", headers=api.headers)
    assert rerun.status_code == 200 and rerun.get_json()["status"] == "accepted"
    assert event_count(app, other["id"]) == 1 and event_count(app, nb["id"]) == 0
    zone = client.patch(
        f"/v1/sources/{source['id']}", json={"timezone": "Europe/London"}, headers=api.headers
    )
    assert zone.get_json()["timezone"] == "Europe/London" and zone.get_json()["patients"] == patients


def test_a_source_maps_patients_of_several_notebooks(app, client, api, team):
    nb, members = team
    other = api.notebook(child_name="Leo Park")
    dana = api.member(other["id"], "Dana Park", "parent", email="dana.park@example.org")
    source = register(
        api, nb["id"], patients={"NORTHSIDE|MRN12345": nb["id"], "2.16.840.1.113883.19.5|77": other["id"]}
    )
    assert source["notebook_id"] is None and source["patients"]["2.16.840.1.113883.19.5|77"] == other["id"]
    leo = replaced(
        S12,
        "MRN12345^^^NORTHSIDE^MR~4455^^^&2.16.840.1.113883.19.5&ISO^PI",
        "77^^^&2.16.840.1.113883.19.5&ISO^MR",
    )
    assert post(client, source, er7(leo), "msg_leo").status_code == 202
    assert post(client, source, er7(S12), "msg_maya").status_code == 202
    assert event_count(app, other["id"]) == 1 and event_count(app, nb["id"]) == 1
    _, leo_record = inbound(api, source["id"])  # newest first
    data = api.get(f"/v1/events/{leo_record['event_ids'][0]}")["data"]
    assert data["attendees"] == [dana["id"]]  # no contact of hers: the notebook's whole team, her
