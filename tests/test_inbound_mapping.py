"""The ``mapping`` source kind (issue #11): a clinic's own JSON — here a school's IEP system —
read through a declarative field mapping checked when the source is saved and when a body
arrives; and re-running a rejected record after the source is fixed, for every kind."""

from __future__ import annotations

import json
import threading

import pytest

from tests.conftest import drain
from tests.test_inbound_fhir import fixture
from tests.test_inbound_fhir import signed as fhir_signed
from tests.test_sources import event_count, inbound, post, signed, stored_records

STUDENT = "S-1042"


def iep_mapping(nb_id: str, staff: dict[str, str]) -> dict:
    """What a school's IEP system sends, mapped: goal progress, concerns, meetings."""
    return {
        "events": [
            {
                "when": {"path": "$.kind", "equals": "goal_progress"},
                "type": "goal.updated",
                "data": {
                    "goal": "$.goal.title",
                    "status": {
                        "path": "$.goal.state",
                        "map": {"achieved": "met", "started": "new", "*": "progress"},
                    },
                    "note": {"template": "{$.goal.area}: {$.comment}"},
                },
                "occurred_at": "$.recorded_at",
            },
            {
                "when": {"path": "$.kind", "one_of": ["incident", "concern"]},
                "type": "concern.raised",
                "data": {
                    "summary": "$.text",
                    "severity": {
                        "path": "$.level",
                        "map": {"1": "low", "2": "medium", "3": "high", "4": "urgent"},
                    },
                    "area": {"const": "school"},
                },
            },
            {
                "when": {"path": "$.kind", "equals": "meeting"},
                "type": "checkin.scheduled",
                "data": {
                    "checkin_id": "$.meeting.id",
                    "title": {"template": "IEP meeting: {$.meeting.topic}"},
                    "start": "$.meeting.starts",
                    "end": "$.meeting.ends",
                    "location": "$.meeting['room name']",
                    "attendees": {"path": "$.meeting.staff[*].id", "map": staff},
                },
            },
        ],
        "notebook_by": "$.student.id",
        "notebooks": {STUDENT: nb_id},
    }


def goal_body(student: str = STUDENT, state: str = "achieved", **extra) -> bytes:
    document = {
        "kind": "goal_progress",
        "student": {"id": student, "grade": 3},
        "goal": {"title": "Walks 10 m with a walker", "state": state, "area": "mobility"},
        "comment": "met it twice this week",
        "recorded_at": "2026-11-20T10:15:00-06:00",
        **extra,
    }
    return json.dumps(document).encode()


def register_mapping(api, mapping: dict, **extra) -> dict:
    return api.post("/v1/sources", {"name": "Lincoln IEP", "kind": "mapping", "mapping": mapping, **extra})


@pytest.fixture
def iep(api, team):
    nb, members = team
    staff = {"T-ortiz": members["school"]["id"], "T-kim": members["pt"]["id"]}
    return register_mapping(api, iep_mapping(nb["id"], staff)), nb, members


# --- end to end -----------------------------------------------------------------------------


def test_a_clinics_own_json_becomes_events_routed_to_deliveries(app, client, api, iep):
    src, nb, members = iep
    assert src["kind"] == "mapping" and src["notebook_id"] is None
    assert src["mapping"]["events"][0]["data"]["goal"] == {"path": "$.goal.title"}  # as saved, spelled out

    goal = post(client, src["id"], goal_body(), signed(src["secret"], goal_body(), "iep-1"))
    concern_body = json.dumps(
        {"kind": "incident", "student": {"id": STUDENT}, "text": "fell at recess", "level": 4}
    )
    concern = post(
        client, src["id"], concern_body.encode(), signed(src["secret"], concern_body.encode(), "iep-2")
    )
    meeting_body = json.dumps(
        {
            "kind": "meeting",
            "student": {"id": STUDENT},
            "meeting": {
                "id": "m-77",
                "topic": "annual review",
                "starts": "2026-12-03T15:00:00-06:00",
                "ends": "2026-12-03T16:00:00-06:00",
                "room name": "Room 4",
                "staff": [{"id": "T-ortiz"}, {"id": "T-kim"}],
            },
        }
    ).encode()
    meeting = post(client, src["id"], meeting_body, signed(src["secret"], meeting_body, "iep-3"))
    assert [r.status_code for r in (goal, concern, meeting)] == [202] * 3, [
        r.get_json() for r in (goal, concern, meeting)
    ]
    drain(app)

    events = [api.get(f"/v1/events/{r.get_json()['event_ids'][0]}") for r in (goal, concern, meeting)]
    assert [(e["type"], e["notebook_id"], e["status"]) for e in events] == [
        ("goal.updated", nb["id"], "routed"),
        ("concern.raised", nb["id"], "routed"),
        ("checkin.scheduled", nb["id"], "routed"),
    ]
    assert events[0]["data"] == {
        "goal": "Walks 10 m with a walker",
        "status": "met",
        "note": "mobility: met it twice this week",
    }
    assert events[0]["occurred_at"].startswith("2026-11-20T16:15:00")
    assert events[1]["data"] == {"summary": "fell at recess", "severity": "urgent", "area": "school"}
    assert events[2]["data"]["title"] == "IEP meeting: annual review"
    assert events[2]["data"]["location"] == "Room 4"
    assert events[2]["data"]["attendees"] == [members["school"]["id"], members["pt"]["id"]]
    for event in events:
        assert event["deliveries"], event["type"]
        assert all(d["status"] in ("sent", "skipped") for d in event["deliveries"])
    assert any(d["status"] == "sent" for e in events for d in e["deliveries"])
    assert event_count(app, nb["id"]) == 3
    assert [r["status"] for r in inbound(api, src["id"])] == ["accepted"] * 3


def test_a_source_with_one_notebook_needs_no_notebook_by(app, client, api, team):
    nb, _ = team
    mapping = {"events": [{"type": "note.added", "data": {"text": "$.message", "voice": "team"}}]}
    src = register_mapping(api, mapping, notebook_id=nb["id"])
    body = json.dumps({"message": "Maya read aloud in class"}).encode()
    response = post(client, src["id"], body, signed(src["secret"], body))
    assert response.status_code == 202, response.get_json()
    event = api.get(f"/v1/events/{response.get_json()['event_ids'][0]}")
    assert (event["notebook_id"], event["data"]) == (
        nb["id"],
        {"text": "Maya read aloud in class", "voice": "team"},
    )


# --- save time ------------------------------------------------------------------------------

GOAL = {"type": "goal.updated", "data": {"goal": "$.g", "status": "$.s"}}


def _with(**rule) -> dict:
    return {"events": [{**GOAL, **rule}]}


@pytest.mark.parametrize(
    "mapping, field",
    [
        ({"events": [{"type": "lab.result", "data": {}}]}, "mapping.events.0.type"),
        ({"events": []}, "mapping.events"),
        (_with(data={"goal": "$.g", "status": "$.s", "colour": "$.c"}), "mapping.events.0.data.colour"),
        (_with(data={"goal": "$.g"}), "mapping.events.0.data.status"),
        (_with(data={"goal": "$.g", "status": {"const": "finished"}}), "mapping.events.0.data.status.const"),
        (_with(data={"goal": "$.g", "status": "done"}), "mapping.events.0.data.status.const"),
        (
            _with(data={"goal": "$.g", "status": {"path": "$.s", "map": {"ok": "met", "x": "finished"}}}),
            "mapping.events.0.data.status.map.x",
        ),
        (
            _with(data={"goal": "$.g", "status": {"path": "$.s", "default": "someday"}}),
            "mapping.events.0.data.status.default",
        ),
        (_with(data={"goal": "$.goals[*]", "status": "$.s"}), "mapping.events.0.data.goal.path"),
        (_with(data={"goal": "$.g..h", "status": "$.s"}), "mapping.events.0.data.goal.path"),
        (_with(data={"goal": {"path": "$.g", "const": "x"}, "status": "$.s"}), "mapping.events.0.data.goal"),
        (_with(data={"goal": {"jsonpath": "$.g"}, "status": "$.s"}), "mapping.events.0.data.goal.jsonpath"),
        (_with(when={"path": "$.k"}), "mapping.events.0.when"),
        (_with(occurred_at={"const": "yesterday"}), "mapping.events.0.occurred_at.const"),
        (_with(author_member_id={"const": "not an id!"}), "mapping.events.0.author_member_id.const"),
        ({"events": [GOAL, GOAL]}, "mapping.events.1"),
        ({"events": [GOAL], "notebook_by": "$.student.id"}, "mapping.notebooks"),
        ({"events": [GOAL], "notebook_by": "$.s[*]", "notebooks": {"a": "nb_1"}}, "mapping.notebook_by"),
        (
            {"events": [GOAL], "notebook_by": "$.s", "notebooks": {"S-1": "nb_missing"}},
            "mapping.notebooks.S-1",
        ),
    ],
)
def test_a_mapping_that_can_never_make_a_valid_event_is_refused_naming_the_field(
    api, client, admin, team, mapping, field
):
    nb, _ = team
    body = {"name": "IEP", "kind": "mapping", "mapping": mapping}
    if "notebook_by" not in mapping:
        body["notebook_id"] = nb["id"]
    response = client.post("/v1/sources", json=body, headers=admin)
    assert response.status_code == 422 and field in response.get_json()["fields"], response.get_json()
    assert api.get("/v1/sources")["items"] == []


@pytest.mark.parametrize(
    "body, field",
    [
        ({"name": "IEP", "kind": "mapping", "notebook_id": "{nb}"}, "mapping"),
        (
            {"name": "EHR", "kind": "careloop", "notebook_id": "{nb}", "mapping": {"events": [GOAL]}},
            "mapping",
        ),
        ({"name": "IEP", "kind": "mapping", "mapping": {"events": [GOAL]}}, "notebook_id"),
        (
            {
                "name": "IEP",
                "kind": "mapping",
                "notebook_id": "{nb}",
                "mapping": {"events": [GOAL], "notebook_by": "$.s", "notebooks": {"S-1": "{nb}"}},
            },
            "notebook_id",
        ),
    ],
)
def test_kind_notebook_and_mapping_are_checked_together(client, admin, team, body, field):
    nb, _ = team
    body = json.loads(json.dumps(body).replace("{nb}", nb["id"]))
    response = client.post("/v1/sources", json=body, headers=admin)
    assert response.status_code == 422 and field in response.get_json()["fields"], response.get_json()


# --- receive time ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, field",
    [
        (goal_body(student="S-9999"), "notebook_by"),
        (
            json.dumps({"kind": "goal_progress", "goal": {"title": "t", "state": "achieved"}}).encode(),
            "notebook_by",
        ),
        (
            json.dumps(
                {"kind": "goal_progress", "student": {"id": STUDENT}, "goal": {"state": "met"}}
            ).encode(),
            "data.goal",
        ),
        (goal_body(recorded_at="last tuesday"), "occurred_at"),
        (goal_body(kind="attendance"), "when"),
        (
            json.dumps({"kind": "incident", "student": {"id": STUDENT}, "text": "x", "level": 9}).encode(),
            "data.severity",
        ),
        (
            json.dumps(
                {"kind": "incident", "student": {"id": STUDENT}, "text": "\u0007", "level": 1}
            ).encode(),
            "data.summary",
        ),
    ],
)
def test_a_body_the_mapping_cannot_map_is_rejected_422_naming_the_field_and_kept(
    app, client, api, iep, body, field
):
    src, nb, _ = iep
    response = post(client, src["id"], body, signed(src["secret"], body))
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["fields"], response.get_json()
    assert event_count(app, nb["id"]) == 0
    [record] = inbound(api, src["id"], "rejected")
    assert record["reason"] and record["reruns"] == 0
    assert [r.body for r in stored_records(app, src["id"])] == [body]


def test_a_mapping_source_reads_json_only(client, api, iep):
    src, _, _ = iep
    body = goal_body()
    response = post(client, src["id"], body, {**signed(src["secret"], body), "Content-Type": "text/plain"})
    assert response.status_code == 415


# --- re-running after a fix -----------------------------------------------------------------


def _fix_notebooks(api, client, admin, src, nb_id: str) -> dict:
    mapping = {**src["mapping"], "notebooks": {**src["mapping"]["notebooks"], "S-2001": nb_id}}
    response = client.patch(f"/v1/sources/{src['id']}", json={"mapping": mapping}, headers=admin)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_a_rejected_record_reruns_after_the_source_is_fixed_exactly_once(app, client, api, admin, iep):
    src, nb, _ = iep
    body = goal_body(student="S-2001")  # a student the school has not told careloop about yet
    assert post(client, src["id"], body, signed(src["secret"], body)).status_code == 422
    [record] = inbound(api, src["id"], "rejected")
    url = f"/v1/sources/{src['id']}/inbound/{record['id']}/rerun"

    again = client.post(url, headers=admin)  # nothing fixed yet: still rejected, the reason renewed
    assert again.status_code == 422 and "notebook_by" in again.get_json()["fields"]
    [record] = inbound(api, src["id"], "rejected")
    assert record["reruns"] == 1 and record["reran_at"]

    fixed = _fix_notebooks(api, client, admin, src, nb["id"])
    assert fixed["mapping"]["notebooks"]["S-2001"] == nb["id"]
    answer = client.post(url, headers=admin)
    assert answer.status_code == 200, answer.get_json()
    accepted = answer.get_json()
    assert accepted["status"] == "accepted" and accepted["reason"] is None and len(accepted["event_ids"]) == 1
    assert accepted["reruns"] == 2 and accepted["id"] == record["id"]
    drain(app)
    event = api.get(f"/v1/events/{accepted['event_ids'][0]}")
    assert event["type"] == "goal.updated" and event["status"] == "routed" and event["deliveries"]

    second = client.post(url, headers=admin)
    assert second.status_code == 409 and "already accepted" in second.get_json()["message"]
    assert event_count(app, nb["id"]) == 1
    assert inbound(api, src["id"]) == [accepted]
    # The sender's own retry of the message is answered with what it came to now.
    retry = post(client, src["id"], body, signed(src["secret"], body))
    assert retry.status_code == 200 and retry.get_json()["status"] == "accepted"


def test_two_concurrent_reruns_record_the_events_once(app, client, api, admin, iep):
    src, nb, _ = iep
    body = goal_body(student="S-2001")
    post(client, src["id"], body, signed(src["secret"], body))
    [record] = inbound(api, src["id"], "rejected")
    _fix_notebooks(api, client, admin, src, nb["id"])
    url = f"/v1/sources/{src['id']}/inbound/{record['id']}/rerun"
    statuses: list[int] = []
    start = threading.Barrier(4)

    def rerun():
        own = app.test_client()
        start.wait()
        statuses.append(own.post(url, headers=admin).status_code)

    threads = [threading.Thread(target=rerun) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 409, 409, 409]
    drain(app)
    assert event_count(app, nb["id"]) == 1
    [accepted] = inbound(api, src["id"], "accepted")
    assert len(accepted["event_ids"]) == 1


def test_rerun_works_for_a_careloop_source_too(app, client, api, admin, team):
    nb, _ = team
    other = api.notebook(child_name="Leo Park")
    src = api.post("/v1/sources", {"name": "EHR", "kind": "careloop", "notebook_id": nb["id"]})
    body = json.dumps(
        {"notebook_id": other["id"], "type": "note.added", "data": {"text": "hi", "voice": "team"}}
    )
    response = post(client, src["id"], body.encode(), signed(src["secret"], body.encode()))
    assert response.status_code == 422  # the EHR was set up for the wrong notebook
    record = response_record = inbound(api, src["id"], "rejected")[0]
    assert response_record["reason"]
    moved = client.patch(f"/v1/sources/{src['id']}", json={"notebook_id": other["id"]}, headers=admin)
    assert moved.status_code == 200 and moved.get_json()["notebook_id"] == other["id"]
    answer = client.post(f"/v1/sources/{src['id']}/inbound/{record['id']}/rerun", headers=admin)
    assert answer.status_code == 200 and answer.get_json()["status"] == "accepted", answer.get_json()
    assert event_count(app, other["id"]) == 1 and event_count(app, nb["id"]) == 0


def test_rerun_works_for_a_fhir_source_after_its_patients_are_fixed(app, client, api, admin, team):
    nb, _ = team
    src = api.post("/v1/sources", {"name": "FHIR", "kind": "fhir", "patients": {"Patient/pat1": nb["id"]}})
    flag = fixture("flag-example.json") | {"status": "active", "subject": {"reference": "Patient/stranger"}}
    body = json.dumps(flag).encode()
    response = client.post(
        f"/v1/webhooks/{src['id']}", data=body, headers=fhir_signed(src["secret"], body, "f-1")
    )
    assert response.status_code == 422  # a patient the clinic has not mapped yet
    [record] = inbound(api, src["id"], "rejected")
    patients = {"Patient/pat1": nb["id"], "Patient/stranger": nb["id"]}
    fixed = client.patch(f"/v1/sources/{src['id']}", json={"patients": patients}, headers=admin)
    assert fixed.status_code == 200, fixed.get_json()
    answer = client.post(f"/v1/sources/{src['id']}/inbound/{record['id']}/rerun", headers=admin)
    assert answer.status_code == 200 and answer.get_json()["status"] == "accepted", answer.get_json()
    drain(app)
    event = api.get(f"/v1/events/{answer.get_json()['event_ids'][0]}")
    assert event["type"] == "concern.raised" and event["status"] == "routed" and event["deliveries"]


def test_what_cannot_be_rerun_is_409_and_other_records_404(app, client, api, admin, iep):
    src, nb, _ = iep
    body = goal_body()
    headers = signed(src["secret"], body)
    accepted = post(client, src["id"], body, headers).get_json()
    post(client, src["id"], body, headers)  # a duplicate
    post(client, src["id"], body, {**headers, "webhook-id": "forged", "webhook-signature": "v1,AAAA"})
    rows = {r["status"]: r for r in inbound(api, src["id"])}
    assert set(rows) == {"accepted", "duplicate", "rejected"}
    for status, message in (
        ("accepted", "already accepted"),
        ("duplicate", accepted["id"]),
        ("rejected", "did not verify"),
    ):
        answer = client.post(f"/v1/sources/{src['id']}/inbound/{rows[status]['id']}/rerun", headers=admin)
        assert answer.status_code == 409 and message in answer.get_json()["message"], (
            status,
            answer.get_json(),
        )
    other = api.post("/v1/sources", {"name": "EHR", "kind": "careloop", "notebook_id": nb["id"]})
    for source_id, record_id in ((other["id"], accepted["id"]), (src["id"], "inb_00000000000000000000")):
        answer = client.post(f"/v1/sources/{source_id}/inbound/{record_id}/rerun", headers=admin)
        assert answer.status_code == 404 and answer.get_json()["message"] == "inbound record not found"
    assert event_count(app, nb["id"]) == 1


def test_a_patch_is_checked_as_a_new_source_is(client, admin, iep):
    src, _, _ = iep
    bad = {**src["mapping"], "notebooks": {STUDENT: "nb_missing"}}
    response = client.patch(f"/v1/sources/{src['id']}", json={"mapping": bad}, headers=admin)
    assert response.status_code == 422 and f"mapping.notebooks.{STUDENT}" in response.get_json()["fields"]
    response = client.patch(f"/v1/sources/{src['id']}", json={"name": "Lincoln IEP v2"}, headers=admin)
    assert response.status_code == 200 and response.get_json()["mapping"] == src["mapping"]
    assert response.get_json()["name"] == "Lincoln IEP v2"


def test_a_rerun_is_audited_with_the_admin_the_record_and_the_outcome(app, client, api, admin, iep):
    src, nb, _ = iep
    body = goal_body(student="S-2001")
    post(client, src["id"], body, signed(src["secret"], body))
    [record] = inbound(api, src["id"], "rejected")
    url = f"/v1/sources/{src['id']}/inbound/{record['id']}/rerun"
    client.post(url, headers=admin)
    _fix_notebooks(api, client, admin, src, nb["id"])
    client.post(url, headers=admin)
    client.post(url, headers=admin)
    rows = [
        r
        for r in api.get(f"/v1/notebooks/{nb['id']}/audit")["items"]
        if r["action"] == "sources.inbound.rerun"
    ]
    assert all(r["actor_type"] == "admin" and r["target_id"] == record["id"] for r in rows)
    assert sorted((r["status"], r["reason"]) for r in rows) == [(200, None), (409, "not rejected")]


def test_every_rejected_record_reruns_oldest_first_in_one_call(app, client, api, admin, iep):
    src, nb, _ = iep
    bodies = [goal_body(student="S-2001"), goal_body(student="S-2001", state="started"), goal_body(kind="x")]
    for number, body in enumerate(bodies):
        assert post(client, src["id"], body, signed(src["secret"], body, f"iep-{number}")).status_code == 422
    _fix_notebooks(api, client, admin, src, nb["id"])
    url = f"/v1/sources/{src['id']}/inbound/rerun"

    first = client.post(url, json={"limit": 2}, headers=admin)
    assert first.status_code == 200, first.get_json()
    answer = first.get_json()
    assert (answer["accepted"], answer["rejected"]) == (2, 0) and answer["next_cursor"]
    assert [r["webhook_id"] for r in answer["items"]] == ["iep-0", "iep-1"]
    rest = client.post(url, json={"cursor": answer["next_cursor"]}, headers=admin).get_json()
    assert (rest["accepted"], rest["rejected"], rest["next_cursor"]) == (0, 1, None)
    assert rest["items"][0]["webhook_id"] == "iep-2" and "no rule" in rest["items"][0]["reason"]
    drain(app)
    events = [api.get(f"/v1/events/{r['event_ids'][0]}") for r in answer["items"]]
    assert [e["data"]["status"] for e in events] == ["met", "new"]
    assert all(e["status"] == "routed" and e["deliveries"] for e in events)
    assert client.post(url, json={}, headers=admin).get_json()["items"][0]["reruns"] == 2
    assert event_count(app, nb["id"]) == 2


def test_records_rejected_again_are_not_run_again_on_the_way(client, api, admin, iep):
    src, _, _ = iep
    for number in range(3):
        body = goal_body(kind="attendance")  # no rule takes it, fix or not
        post(client, src["id"], body, signed(src["secret"], body, f"iep-{number}"))
    url, seen, cursor = f"/v1/sources/{src['id']}/inbound/rerun", [], None
    for _ in range(5):
        answer = client.post(url, json={"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=admin)
        seen += [r["webhook_id"] for r in answer.get_json()["items"]]
        cursor = answer.get_json()["next_cursor"]
        if cursor is None:
            break
    assert seen == ["iep-0", "iep-1", "iep-2"]
    assert all(r["reruns"] == 1 for r in inbound(api, src["id"], "rejected"))
