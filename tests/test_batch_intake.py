"""POST /v1/notebooks/{id}/events:batch: each item answered as it would be alone, the accepted
ones stored together, idempotency within and across batches, the envelope's limits, and a
batch routed exactly once through a real RQ worker."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import func, select

from careloop.db import session_scope
from careloop.models import Delivery, Event, OutboxEntry, utcnow
from tests.conftest import build_team, checkin_data, run_rq_until_settled
from tests.test_api import BAD_EVENTS, assert_422_names, db_session, event_ids, post_event, valid_bodies


def batch(client, notebook_id, events, headers, status=200):
    response = client.post(
        f"/v1/notebooks/{notebook_id}/events:batch", json={"events": events}, headers=headers
    )
    assert response.status_code == status, (response.status_code, response.get_json())
    return response.get_json()


def without_nulls(body: dict) -> dict:
    return {k: v for k, v in body.items() if v is not None}


@pytest.fixture
def app(app):
    yield app
    app.extensions["careloop"].runtime.dispatcher.drain(timeout=30)


def test_each_item_is_answered_as_it_would_be_alone(app, client, admin, team):
    """Every bad body of test_api's table, between valid events: each bad one gets the very
    422 body a request of its own gets, the valid ones are stored, in order."""
    nb, members = team
    alone = {}
    for label, build, _ in BAD_EVENTS:
        response = post_event(client, nb["id"], build(members), admin)
        alone[label] = response.get_json()
        assert response.status_code == 422, (label, alone[label])
    good = valid_bodies(members, checkin_id="batch-1")
    events, expected = [], []
    for (label, build, _), body in zip(BAD_EVENTS, list(good.values()) * 10, strict=False):
        events += [build(members), body]
        expected += [label, body]
    results = batch(client, nb["id"], events, admin)["results"]

    assert [r["index"] for r in results] == list(range(len(events)))
    for result, wanted in zip(results, expected, strict=True):
        if isinstance(wanted, str):
            assert result["status"] == "rejected" and result["http_status"] == 422, (wanted, result)
            assert without_nulls(result["error"]) == alone[wanted], wanted
            assert result["id"] is None
        else:
            assert result["status"] == "accepted", (wanted, result)
    accepted = [r["id"] for r in results if r["status"] == "accepted"]
    assert len(accepted) == len(BAD_EVENTS)
    stored = set(event_ids(client, admin, nb["id"], limit=200))
    assert stored == set(accepted)
    session = db_session(app)
    try:
        routes = session.scalars(select(OutboxEntry.ref_id).where(OutboxEntry.ref_id.in_(accepted))).all()
        assert Counter(routes) == Counter(accepted)  # one routing record each, written with it
    finally:
        session.close()


def test_idempotency_keys_within_and_across_batches_and_with_the_header(app, client, admin, team):
    nb, members = team
    note = {"type": "note.added", "data": {"text": "First steps!", "voice": "family"}}
    other = {"type": "note.added", "data": {"text": "Something else", "voice": "family"}}
    first = batch(
        client,
        nb["id"],
        [
            {**note, "idempotency_key": "ehr-1"},
            {**note, "idempotency_key": "ehr-1"},  # the same event again in the same batch
            {**other, "idempotency_key": "ehr-1"},  # the same key, another event: 409 alone
            {**note, "idempotency_key": " "},  # blank: the header's rule
            {**note, "idempotency_key": 7},
        ],
        admin,
    )["results"]
    assert [r["status"] for r in first] == ["accepted", "duplicate", "rejected", "rejected", "rejected"]
    assert first[1]["id"] == first[0]["id"]
    assert first[2]["http_status"] == 409 and first[2]["error"]["error"] == "conflict"
    assert first[3]["http_status"] == 422 and first[3]["error"]["fields"] == {
        "idempotency_key": ["must be 1 to 200 printable ASCII characters"]
    }
    assert first[4]["error"]["fields"].keys() == {"idempotency_key"}

    again = batch(client, nb["id"], [{**note, "idempotency_key": "ehr-1"}, note], admin)["results"]
    assert again[0] == {**again[0], "status": "duplicate", "id": first[0]["id"]}
    assert again[1]["status"] == "accepted"
    # a key sent as the header of a single request is the same key in a batch, and back
    replay = post_event(client, nb["id"], note, admin, key="ehr-1")
    assert replay.status_code == 202 and replay.get_json()["id"] == first[0]["id"]
    single = post_event(client, nb["id"], other, admin, key="ehr-2").get_json()["id"]
    (from_batch,) = batch(client, nb["id"], [{**other, "idempotency_key": "ehr-2"}], admin)["results"]
    assert from_batch["status"] == "duplicate" and from_batch["id"] == single
    assert sorted(event_ids(client, admin, nb["id"])) == sorted([first[0]["id"], again[1]["id"], single])


def test_checkins_in_a_batch_are_decided_in_order(app, client, admin, team):
    nb, members = team
    bodies = valid_bodies(members, checkin_id="iep-9")
    results = batch(
        client,
        nb["id"],
        [bodies["checkin.scheduled"], bodies["checkin.scheduled"], bodies["checkin.updated"],
         bodies["checkin.cancelled"], bodies["checkin.updated"]],
        admin,
    )["results"]  # fmt: skip
    assert [r["status"] for r in results] == ["accepted", "rejected", "accepted", "accepted", "rejected"]
    assert results[1]["error"]["fields"].keys() == {"data.checkin_id"}
    assert results[4]["error"]["fields"].keys() == {"data.checkin_id"}


@pytest.mark.parametrize(
    "body, field",
    [
        ({"events": [{"type": "note.added", "data": {"text": "t", "voice": "team"}}] * 501}, "events"),
        ({"events": []}, "events"),
        ({"events": {"type": "note.added"}}, "events"),
        ({"events": ["note.added"]}, "events.0"),
        ({}, "events"),
        ({"events": [], "extra": 1}, ("events", "extra")),
    ],
    ids=["501 events", "none", "not a list", "an item not an object", "missing", "unknown field"],
)
def test_a_bad_envelope_is_422_naming_the_field_and_stores_nothing(client, admin, team, body, field):
    nb, _ = team
    response = client.post(f"/v1/notebooks/{nb['id']}/events:batch", json=body, headers=admin)
    assert_422_names(response, field)
    assert event_ids(client, admin, nb["id"]) == []


def test_500_events_are_stored_in_one_answer(app, client, admin, team):
    nb, _ = team
    events = [{"type": "note.added", "data": {"text": f"n{i}", "voice": "child"}} for i in range(500)]
    results = batch(client, nb["id"], events, admin)["results"]
    assert Counter(r["status"] for r in results) == {"accepted": 500}
    session = db_session(app)
    try:
        count = session.scalar(select(func.count()).select_from(Event).where(Event.notebook_id == nb["id"]))
        assert count == 500
    finally:
        session.close()


def test_a_notebook_key_batches_into_its_own_notebook_only(client, admin, api, team):
    nb, _ = team
    other = api.notebook(child_name="Leo Park")
    key = client.post(f"/v1/notebooks/{nb['id']}/keys", json={"name": "ehr"}, headers=admin).get_json()["key"]
    headers = {"Authorization": f"Bearer {key}"}
    note = {"type": "note.added", "data": {"text": "t", "voice": "team"}}
    response = client.post(f"/v1/notebooks/{other['id']}/events:batch", json={"events": [note]},
                           headers=headers)  # fmt: skip
    assert response.status_code == 404
    assert batch(client, nb["id"], [note], headers)["results"][0]["status"] == "accepted"
    response = client.post(f"/v1/notebooks/{nb['id']}/events:batch", json={"events": [note]})
    assert response.status_code == 401


def test_a_batch_is_routed_and_sent_exactly_once_through_rq(rq_api, runtime, smtp, twilio_proxy):
    """Twenty events in one batch (two of them replays), through Redis and a real RQ worker to
    aiosmtpd and Twilio's API: every planned message sent once, each event routed once."""
    nb, m = build_team(rq_api)
    concern = {"type": "concern.raised", "data": {"summary": "Fever", "severity": "high"},
               "author_member_id": m["mom"]["id"]}  # fmt: skip
    notes = [{"type": "note.added", "data": {"text": f"word {i}", "voice": "child"}} for i in range(16)]
    events = [{**concern, "idempotency_key": "c-1"}, {**concern, "idempotency_key": "c-1"}, *notes]
    events += [{"type": "checkin.scheduled", "data": checkin_data([m["dad"]["id"], m["pt"]["id"]], "b-1")}]
    events += [{**concern, "idempotency_key": "c-1"}]
    results = batch(rq_api.client, nb["id"], events, rq_api.headers)["results"]
    assert Counter(r["status"] for r in results) == {"accepted": 18, "duplicate": 2}
    run_rq_until_settled(runtime)
    run_rq_until_settled(runtime)  # a second pass finds nothing more to do

    with session_scope(runtime.database_url) as session:
        rows = session.execute(select(Delivery.event_id, Delivery.member_id, Delivery.channel,
                                      Delivery.status, Delivery.attempts)).all()  # fmt: skip
        routed = session.scalar(select(func.count()).select_from(Event).where(Event.routed_at.is_not(None)))
    assert routed == 18
    sent = [r for r in rows if r.status == "sent"]
    assert sent and all(r.attempts == 1 for r in sent)
    assert all(r.status in ("sent", "skipped") for r in rows), Counter(r.status for r in rows)
    by_channel = Counter(r.channel for r in sent)
    assert len(smtp.messages) == by_channel["email"] + by_channel["calendar"]
    assert len(twilio_proxy.sent) == by_channel["sms"]
    recipients = Counter(str(msg["To"]) + msg["Message-ID"] for msg in smtp.messages)
    assert max(recipients.values()) == 1  # no message twice


def test_the_relay_leaves_a_waiting_batch_routing_job_alone_and_replaces_a_lost_one(rq_api, runtime):
    """Events recorded together share one routing job; the relay asks Redis for that job (not one
    per event) before handing them over again."""
    from datetime import timedelta

    from rq import Queue
    from rq.serializers import JSONSerializer
    from sqlalchemy import update

    from careloop.queues import ROUTE_BATCH_SIZE
    from careloop.workers.relay import relay_once

    nb, _ = build_team(rq_api)
    count = ROUTE_BATCH_SIZE + 3
    notes = [{"type": "note.added", "data": {"text": f"n{i}", "voice": "family"}} for i in range(count)]
    ids = [r["id"] for r in batch(rq_api.client, nb["id"], notes, rq_api.headers)["results"]]
    dispatcher = runtime.dispatcher
    queue = Queue(dispatcher.route_queue.name, connection=dispatcher.connection, serializer=JSONSerializer)
    assert len(queue.job_ids) == 2  # 28 events: a job of 25 and one of 3

    def age_hand_overs():
        with session_scope(runtime.database_url) as session:
            old = utcnow() - timedelta(seconds=runtime.settings.claim_timeout + 1)
            session.execute(update(OutboxEntry).values(dispatched_at=old))

    age_hand_overs()
    assert relay_once(runtime)["events"] == 0  # both jobs still wait in the queue
    assert len(queue.job_ids) == 2
    lost = queue.job_ids[0]
    queue.remove(lost)
    dispatcher.connection.delete(f"rq:job:{lost}")
    age_hand_overs()
    assert relay_once(runtime)["events"] == ROUTE_BATCH_SIZE  # the lost job's events, once
    assert len(queue.job_ids) == 2
    run_rq_until_settled(runtime)
    with session_scope(runtime.database_url) as session:
        routed = session.scalars(select(Event.id).where(Event.routed_at.is_not(None))).all()
    assert sorted(routed) == sorted(ids)
    assert dispatcher.connection.hlen(dispatcher.route_jobs_key) == 0  # forgotten once routed
