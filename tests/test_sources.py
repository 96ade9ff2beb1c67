"""Signed webhooks in (issue #10): sources registered by the admin post careloop's own event
JSON, verified per Standard Webhooks over the raw body with the ``standardwebhooks`` package
(the sender's side here is that package too), each request kept as an inbound record."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from careloop import sources
from careloop.db import session_scope
from careloop.models import Event, InboundRecord, Source
from tests.conftest import build_app, close_app, drain, make_settings


def body_for(notebook_id: str, **overrides) -> bytes:
    document = {
        "notebook_id": notebook_id,
        "type": "concern.raised",
        "data": {"summary": "new tremor in the left hand", "severity": "urgent", "area": "movement"},
        **overrides,
    }
    return json.dumps(document).encode()


def signed(secret: str, body: bytes, msg_id: str = "msg_1", when: datetime | None = None) -> dict:
    """The headers a Standard Webhooks sender puts on ``body`` (signed by the package)."""
    when = when or datetime.now(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, when, body.decode()),
        "Content-Type": "application/json",
    }


def post(client, source_id: str, body: bytes, headers: dict):
    return client.post(f"/v1/webhooks/{source_id}", data=body, headers=headers)


def register(api, notebook_id: str, name: str = "Clinic EHR") -> dict:
    return api.post("/v1/sources", {"name": name, "kind": "careloop", "notebook_id": notebook_id})


def inbound(api, source_id: str, status: str | None = None) -> list[dict]:
    query = f"?status={status}" if status else ""
    return api.get(f"/v1/sources/{source_id}/inbound{query}")["items"]


def stored_records(app, source_id: str) -> list[InboundRecord]:
    with session_scope(app.extensions["careloop"].settings.database_url) as session:
        rows = session.scalars(select(InboundRecord).where(InboundRecord.source_id == source_id)).all()
        session.expunge_all()
        return list(rows)


def event_count(app, notebook_id: str) -> int:
    with session_scope(app.extensions["careloop"].settings.database_url) as session:
        return len(session.scalars(select(Event.id).where(Event.notebook_id == notebook_id)).all())


@pytest.fixture
def source(api, team):
    nb, members = team
    return register(api, nb["id"]), nb, members


# --- registering -----------------------------------------------------------------------------


def test_the_admin_registers_a_source_and_sees_its_secret_once(client, api, team):
    nb, _ = team
    created = register(api, nb["id"])
    assert created["id"].startswith("src_") and created["kind"] == "careloop"
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 40
    assert created["webhook_url"] == f"https://careloop.test/v1/webhooks/{created['id']}"

    shown = api.get(f"/v1/sources/{created['id']}")
    assert "secret" not in shown and shown["notebook_id"] == nb["id"]
    assert [s["id"] for s in api.get("/v1/sources")["items"]] == [created["id"]]
    assert created["secret"] not in json.dumps(api.get("/v1/sources")) + json.dumps(shown)


def test_sources_are_the_admins_alone(client, api, team):
    nb, _ = team
    key = api.post(f"/v1/notebooks/{nb['id']}/keys", {"name": "k"})["key"]
    created = register(api, nb["id"])
    as_key = {"Authorization": f"Bearer {key}"}
    body = {"name": "x", "kind": "careloop", "notebook_id": nb["id"]}
    assert client.post("/v1/sources", json=body, headers=as_key).status_code == 403
    assert client.get("/v1/sources", headers=as_key).status_code == 403
    assert client.get(f"/v1/sources/{created['id']}/inbound", headers=as_key).status_code == 403
    assert client.post(f"/v1/sources/{created['id']}/secret/rotate", headers=as_key).status_code == 403
    assert client.get("/v1/sources").status_code == 401


@pytest.mark.parametrize(
    "body, field",
    [
        ({"name": "x", "kind": "fax", "notebook_id": "nb_1"}, "kind"),
        ({"name": "x", "kind": "careloop"}, "notebook_id"),
        ({"name": "x\n", "kind": "careloop", "notebook_id": "nb_1"}, "name"),
    ],
)
def test_a_bad_source_is_422_naming_the_field(client, admin, body, field):
    response = client.post("/v1/sources", json=body, headers=admin)
    assert response.status_code == 422 and field in response.get_json()["fields"], response.get_json()


def test_a_source_for_a_missing_notebook_is_404(client, admin):
    body = {"name": "x", "kind": "careloop", "notebook_id": "nb_missing"}
    assert client.post("/v1/sources", json=body, headers=admin).status_code == 404


# --- receiving -------------------------------------------------------------------------------


def test_a_signed_event_is_recorded_and_routed_as_the_api_would(app, client, api, source):
    src, nb, members = source
    body = body_for(nb["id"], author_member_id=members["mom"]["id"])
    response = post(client, src["id"], body, signed(src["secret"], body))
    assert response.status_code == 202, response.get_json()
    answer = response.get_json()
    assert (
        answer["status"] == "accepted" and answer["webhook_id"] == "msg_1" and len(answer["event_ids"]) == 1
    )

    # The same event through POST /v1/notebooks/{id}/events: the same people told the same ways.
    same = json.loads(body)
    same.pop("notebook_id")
    by_api = api.post(f"/v1/notebooks/{nb['id']}/events", same, status=202)
    drain(app)
    told = [
        sorted((d["member_id"], d["channel"]) for d in api.get(f"/v1/events/{event_id}")["deliveries"])
        for event_id in (answer["event_ids"][0], by_api["id"])
    ]
    assert told[0] and told[0] == told[1]
    event = api.get(f"/v1/events/{answer['event_ids'][0]}")
    assert event["status"] == "routed" and event["author_member_id"] == members["mom"]["id"]
    assert inbound(api, src["id"]) == [answer]


def _refusals(secret: str, other_secret: str, body: bytes):
    now = datetime.now(UTC)
    good = signed(secret, body)
    altered = bytearray(body)
    altered[body.index(b"tremor")] ^= 0x01  # one byte: "tremor" → "uremor"
    return {
        "another secret": (body, signed(other_secret, body), "no signature matches"),
        "one byte altered": (bytes(altered), good, "no signature matches"),
        "stale": (body, signed(secret, body, when=now - timedelta(minutes=6)), "more than 5 minutes old"),
        "future": (body, signed(secret, body, when=now + timedelta(minutes=6)), "in the future"),
        "timestamp changed": (
            body,
            {**good, "webhook-timestamp": str(int(now.timestamp()) - 1)},
            "no signature",
        ),
        "id changed": (body, {**good, "webhook-id": "msg_2"}, "no signature matches"),
        "no signature": (body, {k: v for k, v in good.items() if k != "webhook-signature"}, "missing"),
        "no timestamp": (body, {k: v for k, v in good.items() if k != "webhook-timestamp"}, "missing"),
        "malformed signature": (body, {**good, "webhook-signature": "v1"}, "malformed"),
        "not base64": (body, {**good, "webhook-signature": "v1,***"}, "no signature matches"),
        "timestamp not a number": (body, {**good, "webhook-timestamp": "soon"}, "not a Unix time"),
        "timestamp not finite": (body, {**good, "webhook-timestamp": "inf"}, "not a Unix time"),
        "unsupported version only": (body, {**good, "webhook-signature": "v2,abc="}, "no signature matches"),
        "not UTF-8": (body + b"\xff", good, "not UTF-8"),
    }


REFUSALS = list(_refusals(sources.mint_secret(), sources.mint_secret(), body_for("nb_x")))


@pytest.mark.parametrize("case", REFUSALS)
def test_a_request_that_does_not_verify_is_401_recorded_and_creates_nothing(app, client, api, source, case):
    src, nb, _ = source
    body, headers, reason = _refusals(src["secret"], sources.mint_secret(), body_for(nb["id"]))[case]
    response = post(client, src["id"], body, headers)
    assert response.status_code == 401, response.get_json()
    assert response.get_json()["error"] == "unauthorized" and reason in response.get_json()["message"]
    assert event_count(app, nb["id"]) == 0
    [record] = inbound(api, src["id"], "rejected")
    assert reason in record["reason"] and record["event_ids"] == []
    [stored] = stored_records(app, src["id"])
    assert stored.body is None and stored.first_key is None  # keeps nothing, reserves no webhook-id

    # The genuine message with the same webhook-id still goes through afterwards.
    good = body_for(nb["id"])
    assert post(client, src["id"], good, signed(src["secret"], good)).status_code == 202


def test_a_replayed_webhook_id_gets_the_first_result_and_creates_nothing(app, client, api, source):
    src, nb, _ = source
    body = body_for(nb["id"])
    headers = signed(src["secret"], body)
    first = post(client, src["id"], body, headers)
    again = post(client, src["id"], body, headers)
    # Re-signed later with the same id (a sender's retry): still the first result.
    later = post(client, src["id"], body, signed(src["secret"], body))
    assert first.status_code == 202
    for replay in (again, later):
        assert replay.status_code == 200 and replay.get_json() == first.get_json()
        assert replay.headers["Idempotent-Replayed"] == "true"
    assert event_count(app, nb["id"]) == 1
    duplicates = inbound(api, src["id"], "duplicate")
    assert len(duplicates) == 2
    assert all(d["duplicate_of"] == first.get_json()["id"] for d in duplicates)
    assert all(r.body is None for r in stored_records(app, src["id"]) if r.status == "duplicate")


def test_concurrent_replays_make_one_event(app, api, source):
    src, nb, _ = source
    body = body_for(nb["id"])
    headers = signed(src["secret"], body, msg_id="msg_race")
    statuses: list[int] = []
    start = threading.Barrier(8)

    def send():
        client = app.test_client()
        start.wait()
        statuses.append(post(client, src["id"], body, headers).status_code)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] * 7 + [202]
    assert event_count(app, nb["id"]) == 1
    assert len(inbound(api, src["id"], "accepted")) == 1 and len(inbound(api, src["id"], "duplicate")) == 7


@pytest.mark.parametrize(
    "overrides, status, field",
    [
        ({"notebook_id": "nb_someone_else"}, 422, "notebook_id"),
        ({"data": {"summary": "s", "severity": "dire"}}, 422, "data.severity"),
        ({"type": "lab.result"}, 422, "type"),
        ({"author_member_id": "mem_nobody"}, 422, "author_member_id"),
        ({"surprise": 1}, 422, "surprise"),
    ],
)
def test_a_verified_body_that_cannot_be_mapped_is_kept_as_rejected(
    app, client, api, source, overrides, status, field
):
    src, nb, _ = source
    body = body_for(**{"notebook_id": nb["id"], **overrides})
    response = post(client, src["id"], body, signed(src["secret"], body))
    assert response.status_code == status, response.get_json()
    assert any(field in name for name in response.get_json()["fields"]), response.get_json()
    assert event_count(app, nb["id"]) == 0
    [record] = inbound(api, src["id"], "rejected")
    assert record["reason"] and record["webhook_id"] == "msg_1"
    [stored] = stored_records(app, src["id"])
    assert stored.body == body  # kept, to be run again after a fix
    # The sender's retry of the same message is answered with what became of it, not recorded twice.
    retry = post(client, src["id"], body, signed(src["secret"], body))
    assert retry.status_code == 200 and retry.get_json()["status"] == "rejected"


@pytest.mark.parametrize("raw", [b"{", b'{"a": 1, "a": 2}', b"[1]", b'{"n": NaN}'])
def test_a_verified_body_that_is_not_a_json_object_is_refused_and_kept(app, client, api, source, raw):
    src, nb, _ = source
    response = post(client, src["id"], raw, signed(src["secret"], raw))
    assert response.status_code in (400, 422) and response.get_json()["error"] in (
        "bad_request",
        "validation_error",
    )
    assert inbound(api, src["id"], "rejected")[0]["reason"]


def test_a_verified_body_of_another_type_is_415_naming_the_type(app, client, api, source):
    src, nb, _ = source
    body = body_for(nb["id"])
    response = post(client, src["id"], body, {**signed(src["secret"], body), "Content-Type": "text/plain"})
    assert response.status_code == 415 and "application/json" in response.get_json()["message"]
    assert "application/json" in inbound(api, src["id"], "rejected")[0]["reason"]


def test_an_unknown_source_is_404(client, source):
    src, nb, _ = source
    body = body_for(nb["id"])
    response = post(client, "src_unknown", body, signed(src["secret"], body))
    assert response.status_code == 404 and response.get_json()["error"] == "not_found"


def test_inbound_records_page_newest_first(client, api, source):
    src, nb, _ = source
    for n in range(3):
        body = body_for(nb["id"])
        post(client, src["id"], body, signed(src["secret"], body, msg_id=f"msg_{n}"))
    first = api.get(f"/v1/sources/{src['id']}/inbound?limit=2")
    rest = api.get(f"/v1/sources/{src['id']}/inbound?limit=2&cursor={first['next_cursor']}")
    assert [r["webhook_id"] for r in first["items"] + rest["items"]] == ["msg_2", "msg_1", "msg_0"]
    assert rest["next_cursor"] is None


# --- rotation ---------------------------------------------------------------------------------


def test_a_rotated_secret_verifies_beside_the_old_one_during_the_grace(app, client, api, source):
    src, nb, _ = source
    rotated = api.post(f"/v1/sources/{src['id']}/secret/rotate", None, status=200)
    assert rotated["secret"] != src["secret"] and rotated["secret"].startswith("whsec_")
    expires = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(hours=24)
    for n, secret in enumerate((src["secret"], rotated["secret"])):
        body = body_for(nb["id"])
        assert post(client, src["id"], body, signed(secret, body, msg_id=f"m{n}")).status_code == 202

    # After the grace only the new one verifies.
    with session_scope(app.extensions["careloop"].settings.database_url) as session:
        row = session.get(Source, src["id"])
        after = row.previous_secret_expires_at + timedelta(seconds=1)
        body = body_for(nb["id"])
        with pytest.raises(sources.SignatureRefused):
            sources.verify(row, body, signed(src["secret"], body), now=after)
        assert sources.verify(row, body, signed(rotated["secret"], body), now=after).webhook_id == "msg_1"


def test_after_the_grace_the_old_secret_is_refused(db_url, tmp_path):
    app, api = build_app(make_settings(db_url, tmp_path, webhook_secret_grace=0))
    try:
        client = app.test_client()
        nb = api.notebook()
        src = register(api, nb["id"])
        rotated = api.post(f"/v1/sources/{src['id']}/secret/rotate", None, status=200)
        body = body_for(nb["id"])
        old = post(client, src["id"], body, signed(src["secret"], body))
        assert old.status_code == 401
        assert post(client, src["id"], body, signed(rotated["secret"], body)).status_code == 202
    finally:  # its in-process queue stops before the database is cleaned (else TRUNCATE deadlocks)
        close_app(app)


def test_rotating_twice_drops_the_oldest_secret_at_once(client, api, source):
    src, nb, _ = source
    api.post(f"/v1/sources/{src['id']}/secret/rotate", None, status=200)
    newest = api.post(f"/v1/sources/{src['id']}/secret/rotate", None, status=200)
    body = body_for(nb["id"])
    assert post(client, src["id"], body, signed(src["secret"], body)).status_code == 401
    assert post(client, src["id"], body, signed(newest["secret"], body)).status_code == 202


def test_a_body_over_the_limit_is_413_before_anything_reads_it(app, client, api, source):
    src, nb, _ = source
    body = body_for(nb["id"], data={"summary": "x" * 300_000, "severity": "low"})
    response = post(client, src["id"], body, signed(src["secret"], body))
    assert response.status_code == 413 and response.get_json()["error"] == "too_large"
    assert event_count(app, nb["id"]) == 0


def test_every_webhook_is_audited_with_its_source_record_and_outcome(app, client, api, source):
    src, nb, _ = source
    body = body_for(nb["id"])
    headers = signed(src["secret"], body)
    accepted = post(client, src["id"], body, headers).get_json()
    post(client, src["id"], body, headers)  # a repeat
    post(client, src["id"], body, {**headers, "webhook-signature": "v1,AAAA"})  # forged
    rows = [
        r for r in api.get(f"/v1/notebooks/{nb['id']}/audit")["items"] if r["action"] == "webhooks.receive"
    ]
    assert all(r["actor_type"] == "source" and r["actor_id"] == src["id"] for r in rows)
    assert sorted((r["status"], r["reason"]) for r in rows) == [
        (200, "duplicate webhook-id"),
        (202, None),
        (401, "signature refused"),
    ]
    assert accepted["id"] in {r["target_id"] for r in rows}
