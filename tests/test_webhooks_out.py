"""Outbound webhooks (issue 11), in the embedded mode against a real receiver on 127.0.0.1
that verifies every request with the ``standardwebhooks`` package on its own. Every test that
takes ``db_url`` runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from careloop.db import session_scope
from careloop.intake import record_event
from careloop.integrations.webhooks_out import DestinationRefused, check_destination
from careloop.models import Delivery, Notebook, WebhookEndpoint, utcnow
from careloop.vocabulary import WEBHOOK_CHANNEL
from careloop.workers import build_runtime
from careloop.workers.jobs import route_event
from tests.conftest import (
    REDIS_URL,
    build_app,
    close_app,
    drain,
    make_settings,
    run_rq_until_settled,
    wait_until,
)
from tests.peers.webhook_receiver import WebhookReceiver

GOAL = {"goal": "Walk to the bus stop", "status": "progress"}


@pytest.fixture
def receiver():
    peer = WebhookReceiver()
    yield peer
    peer.close()


@pytest.fixture
def hooks(db_url, tmp_path):
    """An app that may call 127.0.0.1, its API helper, and a notebook with a texting parent."""
    settings = make_settings(db_url, tmp_path, allow_private_webhooks=True, admin_email="admin@example.org")
    app, api = build_app(settings)
    nb = api.notebook()
    api.member(nb["id"], "Dana Rivera", "parent", email="dana@example.org", phone="+15555550101")
    yield app, api, nb
    close_app(app)  # its queue thread stops before the database is cleaned


def make_endpoint(api, receiver, notebooks, payload="full", event_types=("goal.updated",), status=201):
    body = {
        "url": receiver.url(),
        "event_types": list(event_types),
        "notebooks": notebooks,
        "payload": payload,
    }
    created = api.post("/v1/endpoints", body, status)
    if status == 201:
        receiver.secret = created["secret"]
    return created


def verified(receiver, count):
    """The receiver's requests once ``count`` of them passed its signature check."""
    wait_until(lambda: sum(r.verified for r in receiver.requests()) >= count, message=f"{count} requests")
    return receiver.requests()


def test_an_event_reaches_the_endpoint_signed_with_the_full_event_and_no_contact_details(hooks, receiver):
    app, api, nb = hooks
    created = make_endpoint(api, receiver, [nb["id"]])
    assert created["secret"].startswith("whsec_") and created["last_sequence"] == 0
    assert "secret" not in api.get(f"/v1/endpoints/{created['id']}")
    event = api.event(nb["id"], "goal.updated", GOAL)
    api.event(nb["id"], "note.added", {"text": "not for this endpoint", "voice": "family"})

    [request] = verified(receiver, 1)
    assert request.verified, "the receiver's own standardwebhooks check must pass"
    assert request.webhook_id.startswith("msg_") and request.headers["webhook-timestamp"].isdigit()
    body = request.payload
    assert body["type"] == "goal.updated" and body["sequence"] == 1 and body["id"] == request.webhook_id
    assert body["data"]["id"] == event["id"] and body["data"]["data"] == GOAL
    assert body["data"]["notebook_id"] == nb["id"]
    raw = request.body.decode()
    for detail in ("dana@example.org", "+15555550101", "Dana"):
        assert detail not in raw

    def attempts():
        return api.get(f"/v1/endpoints/{created['id']}/attempts")["items"]

    [attempt] = wait_until(attempts, message="the attempt log")
    assert attempt["status_code"] == 200 and attempt["error"] is None and attempt["latency_ms"] >= 0
    assert attempt["message_id"] == request.webhook_id and set(attempt) >= {"attempted_at", "sequence"}
    message = wait_until(
        lambda: [
            m
            for m in api.get(f"/v1/endpoints/{created['id']}/messages")["items"]
            if m["status"] == "delivered"
        ],
        message="the message delivered",
    )[0]
    assert message["body"] == body  # the listing gives what was posted
    # the member deliveries API does not list webhook messages
    assert all(d["channel"] != WEBHOOK_CHANNEL for d in api.get("/v1/deliveries")["items"])
    assert len(receiver.requests()) == 1


def test_a_thin_payload_carries_ids_only(hooks, receiver):
    _, api, nb = hooks
    make_endpoint(api, receiver, [nb["id"]], payload="thin")
    event = api.event(nb["id"], "goal.updated", GOAL)
    [request] = verified(receiver, 1)
    assert request.payload["data"] == {"id": event["id"], "notebook_id": nb["id"], "type": "goal.updated"}
    assert "Walk to the bus stop" not in request.body.decode()


def test_a_failure_is_retried_with_the_same_id_until_it_succeeds(hooks, receiver):
    _, api, nb = hooks
    created = make_endpoint(api, receiver, [nb["id"]])
    receiver.script(500, 200)
    api.event(nb["id"], "goal.updated", GOAL)
    first, second = verified(receiver, 2)
    assert (first.answered, second.answered) == (500, 200)
    assert first.webhook_id == second.webhook_id and first.body == second.body
    attempts = wait_until(
        lambda: (
            len(api.get(f"/v1/endpoints/{created['id']}/attempts")["items"]) == 2
            and api.get(f"/v1/endpoints/{created['id']}/attempts")["items"]
        ),
        message="two attempts logged",
    )
    assert [a["status_code"] for a in attempts] == [200, 500]  # newest first
    assert attempts[1]["error"] == "answered 500"
    wait_until(
        lambda: api.get(f"/v1/endpoints/{created['id']}/messages")["items"][0]["status"] == "delivered",
        message="the message delivered",
    )
    endpoint = api.get(f"/v1/endpoints/{created['id']}")
    assert endpoint["enabled"] and endpoint["failing_since"] is None


def test_a_timeout_is_retried(hooks, receiver):
    _, api, nb = hooks
    created = make_endpoint(api, receiver, [nb["id"]])
    receiver.script((200, {}, 3.0))  # slower than CARELOOP_PROVIDER_TIMEOUT (2 s here)
    api.event(nb["id"], "goal.updated", GOAL)
    first, second = verified(receiver, 2)
    assert first.webhook_id == second.webhook_id
    attempts = wait_until(
        lambda: len(items := api.get(f"/v1/endpoints/{created['id']}/attempts")["items"]) == 2 and items,
        message="two attempts logged",
    )
    assert attempts[1]["error"] == "timed out" and attempts[1]["status_code"] is None
    assert attempts[0]["status_code"] == 200


def test_retry_after_is_honoured(hooks, receiver):
    _, api, nb = hooks
    make_endpoint(api, receiver, [nb["id"]])
    receiver.script((429, {"Retry-After": "2"}), 200)
    api.event(nb["id"], "goal.updated", GOAL)
    first, second = verified(receiver, 2)
    assert first.answered == 429 and second.answered == 200
    # the schedule alone would have tried again after 0.05 s
    assert second.at - first.at >= 2.0, second.at - first.at


def test_410_disables_the_endpoint_and_later_events_make_no_message(hooks, receiver):
    app, api, nb = hooks
    created = make_endpoint(api, receiver, [nb["id"]])
    receiver.script(410)
    api.event(nb["id"], "goal.updated", GOAL)
    endpoint = wait_until(
        lambda: (e := api.get(f"/v1/endpoints/{created['id']}")) and not e["enabled"] and e,
        message="the endpoint disabled",
    )
    assert "410" in endpoint["disabled_reason"]
    api.event(nb["id"], "goal.updated", {**GOAL, "status": "met"})
    wait_until(lambda: app.extensions["careloop"].runtime.dispatcher.drain(5), message="queue drained")
    assert len(receiver.requests()) == 1
    assert [m["sequence"] for m in api.get(f"/v1/endpoints/{created['id']}/messages")["items"]] == [1]


def test_a_redirect_is_not_followed(hooks, receiver):
    _, api, nb = hooks
    created = make_endpoint(api, receiver, [nb["id"]])
    receiver.script((302, {"Location": receiver.url("/elsewhere")}))
    api.event(nb["id"], "goal.updated", GOAL)
    message = wait_until(
        lambda: [
            m for m in api.get(f"/v1/endpoints/{created['id']}/messages")["items"] if m["status"] == "failed"
        ],
        message="the message failed",
    )[0]
    assert "302" in message["error"]
    assert [r.path for r in receiver.requests()] == ["/hooks"]


def test_a_receiver_fetches_a_gap_by_sequence_number(hooks, receiver):
    _, api, nb = hooks
    created = make_endpoint(api, receiver, [nb["id"]])
    for status in ("new", "progress", "met"):
        api.event(nb["id"], "goal.updated", {**GOAL, "status": status})
    got = verified(receiver, 3)
    by_sequence = {r.payload["sequence"]: r for r in got}
    assert sorted(by_sequence) == [1, 2, 3]
    # the receiver "lost" number 2: it has 1 and 3, and asks for what came after 1
    page = api.get(f"/v1/endpoints/{created['id']}/messages?after=1&limit=1")
    assert [m["sequence"] for m in page["items"]] == [2] and page["next_after"] == 2
    assert page["items"][0]["body"] == json.loads(by_sequence[2].body)
    rest = api.get(f"/v1/endpoints/{created['id']}/messages?after={page['next_after']}")
    assert [m["sequence"] for m in rest["items"]] == [3] and rest["next_after"] is None


def test_replay_sends_one_event_again_with_its_id_and_a_range_makes_missing_messages(hooks, receiver):
    app, api, nb = hooks
    before = api.event(nb["id"], "goal.updated", {**GOAL, "status": "new"})  # before the endpoint
    drain(app)  # routed before the endpoint exists
    created = make_endpoint(api, receiver, [nb["id"]])
    event = api.event(nb["id"], "goal.updated", GOAL)
    [first] = verified(receiver, 1)
    wait_until(
        lambda: api.get(f"/v1/endpoints/{created['id']}/messages")["items"][0]["status"] == "delivered",
        message="the message delivered",
    )  # a message still in flight is not sent again
    answer = api.post(f"/v1/endpoints/{created['id']}/replay", {"event_id": event["id"]}, 202)
    assert answer == {"resent": [first.webhook_id], "created": []}
    again = verified(receiver, 2)[1]
    assert again.webhook_id == first.webhook_id and again.payload == first.payload
    answer = api.post(f"/v1/endpoints/{created['id']}/replay", {"event_id": before["id"]}, 202)
    assert answer["resent"] == [] and len(answer["created"]) == 1
    third = verified(receiver, 3)[2]
    assert third.payload["sequence"] == 2 and third.payload["data"]["id"] == before["id"]
    api.post(
        f"/v1/endpoints/{created['id']}/replay",
        {"since": "2030-01-01T00:00:00Z", "until": "2020-01-01T00:00:00Z"},
        422,
    )


def test_failing_for_days_disables_the_endpoint_and_emails_the_admin(hooks, receiver, tmp_path):
    app, api, nb = hooks
    created = make_endpoint(api, receiver, [nb["id"]])
    with session_scope(app.extensions["careloop"].settings.database_url) as session:
        session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == created["id"])
            .values(failing_since=utcnow() - timedelta(days=5, minutes=1))
        )
        session.commit()
    receiver.script(503)
    api.event(nb["id"], "goal.updated", GOAL)
    endpoint = wait_until(
        lambda: (e := api.get(f"/v1/endpoints/{created['id']}")) and not e["enabled"] and e,
        message="the endpoint disabled",
    )
    assert "5 days" in endpoint["disabled_reason"]
    outbox = tmp_path / "outbox" / "email"
    mail = wait_until(
        lambda: [p.read_text() for p in outbox.glob("*.eml") if created["id"] in p.read_text()],
        message="the admin's email",
    )
    assert "admin@example.org" in mail[0] and "replay" in mail[0]
    assert len(receiver.requests()) == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hooks",
        "http://localhost/hooks",
        "http://169.254.169.254/latest/meta-data",
        "http://10.1.2.3/hooks",
        "http://192.168.0.10/hooks",
        "http://[::1]/hooks",
        "http://[::ffff:127.0.0.1]/hooks",
        "http://0.0.0.0/hooks",
    ],
)
def test_private_loopback_and_link_local_addresses_are_refused(db_url, tmp_path, url):
    app, api = build_app(make_settings(db_url, tmp_path))
    nb = api.notebook()
    body = {"url": url, "event_types": ["goal.updated"], "notebooks": [nb["id"]]}
    answer = api.post("/v1/endpoints", body, 422)
    assert list(answer["fields"]) == ["url"] and "private" in answer["fields"]["url"][0]
    with pytest.raises(DestinationRefused):
        check_destination(url, allow_private=False)
    close_app(app)


@pytest.mark.parametrize(
    "url, problem",
    [
        ("ftp://example.org/hooks", "http or https"),
        ("http://user:pw@example.org/hooks", "user name"),
        ("http://example.org:99999/hooks", "valid URL"),
        ("file:///etc/passwd", "http or https"),
    ],
)
def test_urls_of_the_wrong_shape_are_refused(url, problem):
    with pytest.raises(DestinationRefused, match=problem):
        check_destination(url, allow_private=True)


def test_a_public_address_passes_the_check():
    check_destination("https://93.184.216.34/hooks", allow_private=False)  # an IP: no name lookup


def test_the_address_is_checked_again_at_send_time(hooks, receiver):
    app, api, nb = hooks
    created = make_endpoint(api, receiver, [nb["id"]])
    app.extensions["careloop"].runtime.webhook_sender.allow_private = False  # as if the name moved
    api.event(nb["id"], "goal.updated", GOAL)
    attempts = wait_until(
        lambda: api.get(f"/v1/endpoints/{created['id']}/attempts")["items"], message="attempt"
    )
    assert attempts[0]["status_code"] is None and "destination refused" in attempts[0]["error"]
    assert receiver.requests() == []


def test_a_family_key_manages_endpoints_of_its_own_notebook_only(hooks, receiver):
    app, api, nb = hooks
    other = api.notebook(child_name="Leo")
    key = api.post(f"/v1/notebooks/{nb['id']}/keys", {"name": "clinic"})["key"]
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    body = {"url": receiver.url(), "event_types": ["goal.updated"], "notebooks": [other["id"]]}
    assert client.post("/v1/endpoints", json=body, headers=headers).status_code == 404
    body["notebooks"] = [nb["id"]]
    clinician = api.post(f"/v1/notebooks/{nb['id']}/keys", {"name": "dr", "role": "clinician"})["key"]
    refused = client.post("/v1/endpoints", json=body, headers={"Authorization": f"Bearer {clinician}"})
    assert refused.status_code == 403  # only family keys (and the admin) manage webhooks
    mine = client.post("/v1/endpoints", json=body, headers=headers)
    assert mine.status_code == 201
    theirs = make_endpoint(api, receiver, [other["id"]])
    listed = client.get("/v1/endpoints", headers=headers).get_json()["items"]
    assert [e["id"] for e in listed] == [mine.get_json()["id"]]
    assert client.get(f"/v1/endpoints/{theirs['id']}", headers=headers).status_code == 404
    assert client.delete(f"/v1/endpoints/{theirs['id']}", headers=headers).status_code == 404
    assert client.delete(f"/v1/endpoints/{mine.get_json()['id']}", headers=headers).status_code == 204
    assert client.get(f"/v1/endpoints/{mine.get_json()['id']}", headers=headers).status_code == 404


def test_sequence_numbers_have_no_gap_and_no_repeat_when_routing_races(db_url, tmp_path):
    settings = make_settings(db_url, tmp_path, allow_private_webhooks=True)
    runtime = build_runtime(settings)
    with session_scope(db_url) as session:
        notebook = Notebook(name="n", child_name="M", timezone="UTC")
        session.add(notebook)
        session.flush()
        endpoint = WebhookEndpoint(
            url="http://127.0.0.1:9/hooks", secret="whsec_" + "A" * 43, event_types=["goal.updated"],
            payload="thin", last_sequence=0, enabled=True,
        )  # fmt: skip
        session.add(endpoint)
        session.commit()
        from careloop.models import WebhookEndpointNotebook

        session.add(WebhookEndpointNotebook(endpoint_id=endpoint.id, notebook_id=notebook.id))
        session.commit()
        events = [
            record_event(
                session,
                notebook,
                event_type="goal.updated",
                data=GOAL,
                occurred_at=None,
                author_member_id=None,
                idempotency_key=None,
            )[0].id  # fmt: skip
            for _ in range(24)
        ]
        endpoint_id = endpoint.id
    # the jobs would send to port 9: keep them in this test's in-process queue, never run
    runtime.dispatcher.stop()
    work = events + events  # every event routed twice, all at once
    errors = []

    def run(ids):
        try:
            for event_id in ids:
                route_event(event_id, runtime=runtime)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(work[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    with session_scope(db_url) as session:
        rows = session.execute(
            select(Delivery.event_id, Delivery.sequence).where(Delivery.member_id == endpoint_id)
        ).all()
        last = session.get(WebhookEndpoint, endpoint_id).last_sequence
    assert sorted(seq for _, seq in rows) == list(range(1, 25))
    assert sorted(e for e, _ in rows) == sorted(events)
    assert last == 24
    runtime.close()


def test_through_rq_workers_a_failed_message_is_retried_by_the_scheduler(
    db_url, tmp_path, redis_conn, receiver
):
    settings = make_settings(db_url, tmp_path, redis_url=REDIS_URL, allow_private_webhooks=True)
    app, api = build_app(settings)
    nb = api.notebook()
    created = make_endpoint(api, receiver, [nb["id"]])
    receiver.script(503, 200)
    api.event(nb["id"], "goal.updated", GOAL)
    run_rq_until_settled(app.extensions["careloop"].runtime)
    first, second = receiver.requests()
    assert first.verified and second.verified and first.webhook_id == second.webhook_id
    [message] = api.get(f"/v1/endpoints/{created['id']}/messages")["items"]
    assert message["status"] == "delivered" and message["attempts"] == 2
    close_app(app)
