"""The ``fhir`` source kind (issue #11): FHIR R4 resources, Bundles and topic-based subscription
notifications posted signed per Standard Webhooks, mapped to notebook events and routed to
deliveries through the real HTTP app. The bodies are the published examples in
tests/fixtures/fhir/ (their README says where each came from)."""

from __future__ import annotations

import copy
import email
import email.policy
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from careloop import sources
from tests.conftest import drain

FIXTURES = Path(__file__).parent / "fixtures" / "fhir"
VAN_DEN_BROEK = "e.m.vandenbroek@bmc.nl"
"""Practitioner f001's email in the published example: a member of the test notebook."""


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def signed(secret: str, body: bytes, msg_id: str, content_type: str = "application/fhir+json") -> dict:
    now = datetime.now(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body.decode()),
        "Content-Type": content_type,
    }


class Clinic:
    """A registered ``fhir`` source and how it posts."""

    def __init__(self, client, api, source: dict):
        self.client, self.api, self.source = client, api, source
        self.sent = 0

    def post(self, document: dict, msg_id: str | None = None, content_type: str = "application/fhir+json"):
        self.sent += 1
        body = json.dumps(document).encode()
        headers = signed(self.source["secret"], body, msg_id or f"msg_{self.sent}", content_type)
        return self.client.post(f"/v1/webhooks/{self.source['id']}", data=body, headers=headers)

    def accepted(self, document: dict, **kwargs) -> list[dict]:
        """Post; the events it made (asserting it was accepted)."""
        response = self.post(document, **kwargs)
        assert response.status_code == 202, response.get_json()
        return [self.api.get(f"/v1/events/{e}") for e in response.get_json()["event_ids"]]

    def inbound(self, status: str | None = None) -> list[dict]:
        query = f"?status={status}" if status else ""
        return self.api.get(f"/v1/sources/{self.source['id']}/inbound{query}")["items"]


@pytest.fixture
def doctor(api, team):
    nb, members = team
    return api.member(nb["id"], "Dr. van den Broek", "neurology", email=VAN_DEN_BROEK)


@pytest.fixture
def clinic(client, api, team, doctor):
    """A source mapping the examples' patients (Patient/pat1, Patient/example) to the notebook."""
    nb, _ = team
    patients = {"Patient/pat1": nb["id"], "Patient/example": nb["id"]}
    source = api.post("/v1/sources", {"name": "Northside FHIR", "kind": "fhir", "patients": patients})
    assert source["patients"] == patients and source["notebook_id"] is None
    return Clinic(client, api, source)


def routed(app, api, event: dict) -> list[dict]:
    drain(app)
    deliveries = api.get(f"/v1/events/{event['id']}")["deliveries"]
    assert deliveries, "the event reached no one"
    return deliveries


# --- saving a source ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, field",
    [
        ({"kind": "fhir"}, "patients"),  # neither notebook_id nor patients
        ({"kind": "fhir", "notebook_id": "NB", "patients": {"Patient/1": "NB"}}, "patients"),  # both
        ({"kind": "careloop", "notebook_id": "NB", "patients": {"Patient/1": "NB"}}, "patients"),
        ({"kind": "fhir", "patients": {"Observation/1": "NB"}}, "patients"),
        ({"kind": "fhir", "patients": {}}, "patients"),
    ],
)
def test_a_fhir_sources_patients_are_checked_when_it_is_saved(client, admin, api, team, body, field):
    nb, _ = team
    body = json.loads(json.dumps({"name": "EHR", **body}).replace('"NB"', json.dumps(nb["id"])))
    response = client.post("/v1/sources", json=body, headers=admin)
    assert response.status_code == 422, response.get_json()
    assert any(name.startswith(field) for name in response.get_json()["fields"]), response.get_json()


def test_a_patient_mapped_to_a_missing_notebook_is_404_naming_it(client, admin):
    body = {"name": "EHR", "kind": "fhir", "patients": {"Patient/1": "nb_nowhere"}}
    response = client.post("/v1/sources", json=body, headers=admin)
    assert response.status_code == 404 and "patients.Patient/1" in response.get_json()["message"]


def test_a_fhir_source_may_serve_one_notebook_and_maps_identifiers(app, client, api, team, doctor):
    nb, _ = team
    one = Clinic(
        client, api, api.post("/v1/sources", {"name": "EHR", "kind": "fhir", "notebook_id": nb["id"]})
    )
    flag = fixture("flag-example.json") | {"status": "active"}
    flag["subject"] = {"reference": "Patient/anyone-at-all"}
    [event] = one.accepted(flag)
    assert event["type"] == "concern.raised" and event["notebook_id"] == nb["id"]

    by_identifier = Clinic(
        client,
        api,
        api.post(
            "/v1/sources",
            {"name": "EHR 2", "kind": "fhir", "patients": {"http://hospital.example.org/mrn|4711": nb["id"]}},
        ),
    )
    flag["subject"] = {"identifier": {"system": "http://hospital.example.org/mrn", "value": "4711"}}
    assert by_identifier.accepted(flag)[0]["notebook_id"] == nb["id"]


# --- medication --------------------------------------------------------------------------------


def test_a_medication_started_then_changed_then_stopped(app, api, clinic, team):
    nb, _ = team
    published = fixture("medicationrequest0301.json")  # completed, as published
    started = copy.deepcopy(published) | {"status": "active"}
    [event] = clinic.accepted(started, content_type="application/json")
    assert event["type"] == "medication.changed" and event["notebook_id"] == nb["id"]
    assert event["data"] == {
        "medication": "Oral Form Oxycodone (product)",  # its contained Medication
        "change": "started",
        "dose": "one to two tablets every 4-6 hours as needed for rib pain",
        "note": "Patient told to take with food",
    }
    assert routed(app, api, event)

    # The prescriber changes the dose: the same request updated in a transaction.
    changed = copy.deepcopy(started)
    changed["dosageInstruction"][0]["text"] = "one tablet every 6 hours as needed for rib pain"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": changed, "request": {"method": "PUT", "url": "MedicationRequest/medrx0301"}}],
    }
    [event] = clinic.accepted(bundle)
    assert event["data"]["change"] == "dose_changed" and event["data"]["dose"].startswith(
        "one tablet every 6"
    )
    assert routed(app, api, event)

    [event] = clinic.accepted(published)
    assert event["data"]["change"] == "stopped"

    [event] = clinic.accepted(fixture("medicationstatementexample1.json"))
    assert event["data"]["medication"] == "Tylenol PM" and event["data"]["change"] == "started"
    assert event["data"]["dose"] == "1-2 tablets once daily at bedtime as needed for restless legs"


# --- appointments → check-ins -------------------------------------------------------------------


def _calendar_methods(app, api, event: dict, member_id: str) -> list[str]:
    outbox = Path(app.extensions["careloop"].settings.outbox_dir)
    methods = []
    for row in routed(app, api, event):
        if row["channel"] == "calendar" and row["member_id"] == member_id:
            assert row["status"] == "sent", row
            path = outbox / row["provider_id"].removeprefix("outbox:")
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            (part,) = [p for p in message.walk() if p.get_content_type() == "text/calendar"]
            text = part.get_payload(decode=True).decode()
            methods += [line.split(":", 1)[1] for line in text.splitlines() if line.startswith("METHOD:")]
    return methods


def _appointment_bundle(appointment: dict) -> dict:
    """The published appointment with its practitioner included: Practitioner f001's telecom
    (its email) makes them an attendee."""
    appointment = copy.deepcopy(appointment)
    appointment["participant"][1]["actor"] = {
        "reference": "Practitioner/f001",
        "display": "Eric van den Broek",
    }
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "https://example.org/fhir/Appointment/example", "resource": appointment},
            {
                "fullUrl": "https://example.org/fhir/Practitioner/f001",
                "resource": fixture("practitioner-f001.json"),
            },
        ],
    }


def test_an_appointment_booked_rescheduled_then_cancelled_invites_updates_and_cancels(
    app, api, clinic, team, doctor
):
    nb, _ = team
    booked = fixture("appointment-example.json")
    [event] = clinic.accepted(_appointment_bundle(booked))
    assert event["type"] == "checkin.scheduled"
    assert event["data"] == {
        "checkin_id": "Appointment/example",
        "title": "Discussion on the results of your recent MRI",
        "start": "2013-12-10T09:00:00Z",
        "end": "2013-12-10T11:00:00Z",
        "location": "South Wing, second floor",
        "attendees": [doctor["id"]],
    }
    assert _calendar_methods(app, api, event, doctor["id"]) == ["REQUEST"]

    moved = booked | {"start": "2013-12-12T09:00:00Z", "end": "2013-12-12T10:30:00Z"}
    [event] = clinic.accepted(_appointment_bundle(moved))
    assert event["type"] == "checkin.updated" and event["data"]["start"] == "2013-12-12T09:00:00Z"
    assert _calendar_methods(app, api, event, doctor["id"]) == ["REQUEST"]

    cancelled = moved | {"status": "cancelled"}
    [event] = clinic.accepted(cancelled)
    assert event["type"] == "checkin.cancelled" and event["data"] == {"checkin_id": "Appointment/example"}
    assert _calendar_methods(app, api, event, doctor["id"]) == ["CANCEL"]


def test_an_appointment_no_member_attends_is_rejected(client, api, clinic):
    response = clinic.post(fixture("appointment-example.json"))  # its actors are not included
    assert response.status_code == 422 and "participant" in response.get_json()["message"]
    assert "member's email or phone" in clinic.inbound("rejected")[0]["reason"]


# --- flags and communications ------------------------------------------------------------------


def test_a_flag_raises_a_concern_and_a_communication_adds_a_note(app, api, clinic, team):
    nb, _ = team
    [concern] = clinic.accepted(fixture("flag-example.json") | {"status": "active"})
    assert concern["type"] == "concern.raised"
    # A source mapping patients audits each webhook in the notebooks its events went to.
    [audited] = [
        r for r in api.get(f"/v1/notebooks/{nb['id']}/audit")["items"] if r["action"] == "webhooks.receive"
    ]
    assert audited["actor_id"] == clinic.source["id"] and audited["status"] == 202
    assert concern["data"]["summary"].startswith("Patient has a big dog at his home")
    assert concern["data"]["severity"] == "high"  # a safety flag
    assert routed(app, api, concern)

    [note] = clinic.accepted(fixture("communication-example.json"))  # sent by a device
    assert note["type"] == "note.added" and note["data"]["voice"] == "team"
    assert note["data"]["text"].startswith("Patient 1 has a very high serum potassium value")
    assert note["occurred_at"].startswith("2014-12-13T02:01:10")
    drain(app)
    assert api.get(f"/v1/events/{note['id']}")["status"] == "routed"  # the rules tell no one of it

    from_the_child = fixture("communication-example.json") | {"sender": {"reference": "Patient/example"}}
    [note] = clinic.accepted(from_the_child)
    assert note["data"]["voice"] == "child"
    assert routed(app, api, note)  # the child's own words go to the team


def test_a_bundle_of_several_resources_makes_several_events(app, api, clinic):
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": fixture("communication-example.json"), "search": {"mode": "match"}},
            {"resource": fixture("medicationstatementexample1.json"), "search": {"mode": "match"}},
            {"resource": fixture("practitioner-f001.json"), "search": {"mode": "include"}},
        ],
    }
    events = clinic.accepted(bundle)
    assert [e["type"] for e in events] == ["note.added", "medication.changed"]


# --- subscription notifications -----------------------------------------------------------------


def test_subscription_notifications_r4b_and_r4_backport_become_events(app, api, clinic):
    [concern] = clinic.accepted(fixture("r4b-notification-full-resource.json"))
    assert concern["type"] == "concern.raised"
    [record] = clinic.inbound()
    assert record["notification"]["type"] == "event-notification"
    assert record["notification"]["event_numbers"] == [2]
    assert record["notification"]["subscription"] == "https://example.org/fhir/Subscription/admission"

    r4 = fixture("r4-notification-full-resource.json")
    r4["entry"][0]["resource"]["parameter"][4]["valueString"] = "3"  # the subscription's next event
    r4["entry"][0]["resource"]["parameter"][5]["part"][0]["valueString"] = "3"
    r4["entry"][1]["resource"]["sender"] = {"reference": "Patient/example"}
    [note] = clinic.accepted(r4)
    assert note["type"] == "note.added"
    assert clinic.inbound()[0]["notification"]["event_numbers"] == [3]
    assert clinic.inbound()[0]["notification"]["gap"] is None
    assert routed(app, api, note)

    # R5 writes the Bundle type subscription-notification and the counters as numbers.
    r5 = fixture("r4b-notification-full-resource.json") | {"type": "subscription-notification"}
    r5["entry"][0]["resource"] |= {"eventsSinceSubscriptionStart": 4}
    r5["entry"][0]["resource"]["notificationEvent"][0]["eventNumber"] = 4
    [concern] = clinic.accepted(r5)
    assert concern["type"] == "concern.raised"
    latest = clinic.inbound()[0]["notification"]
    assert latest["event_numbers"] == [4] and latest["events_since_start"] == 4 and latest["gap"] is None


def test_handshake_and_heartbeat_are_answered_and_recorded_never_evented(app, api, clinic, team):
    nb, _ = team
    for name, kind in (
        ("r4b-notification-handshake.json", "handshake"),
        ("r4b-notification-heartbeat.json", "heartbeat"),
    ):
        response = clinic.post(fixture(name))
        assert response.status_code == 202, response.get_json()
        answer = response.get_json()
        assert answer["status"] == "accepted" and answer["event_ids"] == []
        assert answer["notification"]["type"] == kind
    assert [r["notification"]["type"] for r in clinic.inbound()] == ["heartbeat", "handshake"]
    assert api.get(f"/v1/notebooks/{nb['id']}/events")["items"] == []


def test_a_skipped_event_number_is_flagged_on_the_record(app, api, clinic):
    handshake = clinic.post(fixture("r4b-notification-handshake.json")).get_json()  # 0 events so far
    assert handshake["notification"]["gap"] is None

    # Event 2 arrives first: event 1 was never received.
    clinic.accepted(fixture("r4b-notification-full-resource.json"))
    assert clinic.inbound()[0]["notification"]["gap"] == {"first": 1, "last": 1}

    # A heartbeat saying 4 events so far: 3 and 4 never came either.
    heartbeat = fixture("r4b-notification-heartbeat.json")
    heartbeat["entry"][0]["resource"]["eventsSinceSubscriptionStart"] = "4"
    assert clinic.post(heartbeat).get_json()["notification"]["gap"] == {"first": 3, "last": 4}

    # Event 1 turns up late: kept, and marked late rather than a gap.
    late = fixture("r4b-notification-full-resource.json")
    late["entry"][0]["resource"]["notificationEvent"][0]["eventNumber"] = "1"
    clinic.accepted(late)
    latest = clinic.inbound()[0]["notification"]
    assert latest["late"] is True and latest["gap"] is None
    gaps = [r["notification"]["gap"] for r in clinic.inbound() if r["notification"]["gap"]]
    assert gaps == [{"first": 3, "last": 4}, {"first": 1, "last": 1}]


# --- refusals ----------------------------------------------------------------------------------


def test_a_bad_signature_is_401_and_creates_nothing(client, api, clinic, team):
    nb, _ = team
    body = json.dumps(fixture("flag-example.json") | {"status": "active"}).encode()
    headers = signed(sources.mint_secret(), body, "msg_forged")
    response = client.post(f"/v1/webhooks/{clinic.source['id']}", data=body, headers=headers)
    assert response.status_code == 401
    assert api.get(f"/v1/notebooks/{nb['id']}/events")["items"] == []
    [record] = clinic.inbound("rejected")
    assert "no signature matches" in record["reason"]


@pytest.mark.parametrize(
    "document, field, reason",
    [
        (fixture("practitioner-f001.json"), "resourceType", "Practitioner is not a resource careloop maps"),
        (
            {"resourceType": "Observation", "status": "final", "code": {"text": "K+"}},
            "resourceType",
            "Observation",
        ),
        ({"resourceType": "Flag", "status": "active"}, "code", "not valid FHIR"),  # code, subject missing
        ({"resourceType": "Spaceship"}, "resourceType", "not a FHIR resource type"),
        (
            {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": {"resourceType": "Spaceship"}}],
            },
            "body",
            "not valid FHIR R4B Bundle",
        ),
        (
            {
                "resourceType": "Flag",
                "status": "active",
                "code": {"text": "x"},
                "subject": {"reference": "Patient/1"},
                "colour": "red",
            },
            "colour",
            "not valid FHIR",
        ),  # fmt: skip
        (fixture("flag-example.json"), "status", "a Flag that is inactive raises no concern"),  # as published
        ({"resourceType": "Bundle", "type": "document", "entry": []}, "type", "document Bundle"),
        (
            fixture("r4b-notification-full-resource.json")
            | {"entry": fixture("r4b-notification-full-resource.json")["entry"][:1]},
            "entry",
            "full-resource",
        ),  # fmt: skip
    ],
)
def test_an_unmappable_body_is_422_and_kept_as_rejected(app, api, clinic, team, document, field, reason):
    nb, _ = team
    response = clinic.post(document)
    assert response.status_code == 422, response.get_json()
    answer = response.get_json()
    assert reason in answer["message"] and any(field in name for name in answer["fields"]), answer
    [record] = clinic.inbound("rejected")
    assert reason in record["reason"] and record["event_ids"] == []
    assert api.get(f"/v1/notebooks/{nb['id']}/events")["items"] == []


def test_an_unknown_patient_is_422_naming_it(api, clinic, team):
    nb, _ = team
    flag = fixture("flag-example.json") | {"status": "active", "subject": {"reference": "Patient/stranger"}}
    response = clinic.post(flag)
    assert response.status_code == 422 and "subject" in response.get_json()["fields"]
    assert "Patient/stranger" in response.get_json()["message"]
    [record] = clinic.inbound("rejected")
    assert "does not map to a notebook (Patient/stranger)" in record["reason"]
    assert api.get(f"/v1/notebooks/{nb['id']}/events")["items"] == []


def test_an_unknown_patients_record_runs_again_once_the_source_maps_them(
    app, client, admin, api, clinic, team
):
    nb, _ = team
    flag = fixture("flag-example.json") | {"status": "active", "subject": {"reference": "Patient/stranger"}}
    assert clinic.post(flag).status_code == 422
    [record] = clinic.inbound("rejected")

    patients = {**clinic.source["patients"], "Patient/stranger": nb["id"]}
    fixed = client.patch(f"/v1/sources/{clinic.source['id']}", json={"patients": patients}, headers=admin)
    assert fixed.status_code == 200 and fixed.get_json()["patients"] == patients
    again = api.post(f"/v1/sources/{clinic.source['id']}/inbound/{record['id']}/rerun", None, status=200)
    assert again["status"] == "accepted" and len(again["event_ids"]) == 1
    assert api.get(f"/v1/events/{again['event_ids'][0]}")["type"] == "concern.raised"


def test_a_repeated_webhook_id_is_answered_once_and_creates_one_event(app, api, clinic, team):
    nb, _ = team
    flag = fixture("flag-example.json") | {"status": "active"}
    first = clinic.post(flag, msg_id="msg_same")
    again = clinic.post(flag, msg_id="msg_same")
    assert first.status_code == 202 and again.status_code == 200
    assert again.get_json() == first.get_json() and again.headers["Idempotent-Replayed"] == "true"
    assert len(api.get(f"/v1/notebooks/{nb['id']}/events")["items"]) == 1
    assert len(clinic.inbound("duplicate")) == 1


def test_another_content_type_is_415(clinic):
    response = clinic.post(fixture("flag-example.json") | {"status": "active"}, content_type="text/plain")
    assert response.status_code == 415 and "application/fhir+json" in response.get_json()["message"]
