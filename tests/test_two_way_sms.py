"""Two-way SMS (``POST /v1/twilio/inbound``, issue 11), on SQLite and on PostgreSQL, in the
embedded mode: texts go to the file outbox, and Twilio's incoming-message webhook is posted
signed as Twilio signs it (``RequestValidator.compute_signature`` over CARELOOP_PUBLIC_URL +
path and the form fields)."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from careloop.db import session_scope
from careloop.models import AuditEntry
from tests.conftest import build_app, close_app, drain, make_settings, wait_until
from tests.peers.webhook_receiver import WebhookReceiver

PUBLIC = "https://careloop.test"
TOKEN = "f" * 32
MOM = "+15555550101"
CONCERN = {"summary": "Falls more often on stairs", "severity": "high"}
_sids = itertools.count(1)


@pytest.fixture
def sms(db_url, tmp_path):
    settings = make_settings(db_url, tmp_path, twilio_auth_token=TOKEN, allow_private_webhooks=True)
    app, api = build_app(settings)
    nb = api.notebook()
    mom = api.member(nb["id"], "Dana Rivera", "parent", email="dana@example.org", phone=MOM)
    api.member(nb["id"], "Dr. Shah", "neurology", email="shah@example.org")
    yield app, api, nb, mom
    close_app(app)  # its queue thread stops before the database is cleaned


def text_in(client, body: str, sender: str = MOM, signature: str | None = "sign"):
    form = {
        "AccountSid": "AC" + "0" * 32,
        "MessageSid": f"SM{next(_sids):032d}",
        "From": sender,
        "To": "+15005550006",
        "Body": body,
        "NumMedia": "0",
    }
    url = f"{PUBLIC}/v1/twilio/inbound"
    headers = {}
    if signature == "sign":
        headers["X-Twilio-Signature"] = RequestValidator(TOKEN).compute_signature(url, form)
    elif signature is not None:
        headers["X-Twilio-Signature"] = signature
    return client.post("/v1/twilio/inbound", data=form, headers=headers)


def sms_to(api, event_id, member_id):
    event = wait_until(
        lambda: (e := api.get(f"/v1/events/{event_id}"))["status"] == "routed" and e, message="routing"
    )
    return [d for d in event["deliveries"] if d["member_id"] == member_id and d["channel"] == "sms"]


@pytest.mark.parametrize("word", ["STOP", "stop", " Unsubscribe ", "QUIT", "cancel", "END", "STOPALL"])
def test_stop_then_an_event_skips_the_text_and_start_sends_again(sms, word):
    app, api, nb, mom = sms
    client = app.test_client()
    answer = text_in(client, word)
    assert answer.status_code == 200 and answer.mimetype == "text/xml"
    assert "<Message>" not in answer.get_data(as_text=True)  # Twilio answers STOP itself
    event = api.event(nb["id"], "concern.raised", CONCERN)
    [text] = sms_to(api, event["id"], mom["id"])
    assert text["status"] == "skipped" and text["error"] == "opted_out"
    [member] = [m for m in api.get(f"/v1/notebooks/{nb['id']}/members")["items"] if m["id"] == mom["id"]]
    assert member["sms_opted_out"] is True

    answer = text_in(client, "START")
    assert "texts are back on" in answer.get_data(as_text=True)
    event = api.event(nb["id"], "concern.raised", {**CONCERN, "summary": "Better today"})
    drain(app)
    [text] = sms_to(api, event["id"], mom["id"])
    assert text["status"] == "sent"


def test_help_answers_a_help_text_and_records_nothing(sms):
    app, api, nb, _ = sms
    answer = text_in(app.test_client(), "help")
    assert "Reply STOP" in answer.get_data(as_text=True)
    assert api.get(f"/v1/notebooks/{nb['id']}/events")["items"] == []


def test_free_text_becomes_a_note_by_the_member_routed_as_usual(sms):
    app, api, nb, mom = sms
    receiver = WebhookReceiver()
    try:
        body = {"url": receiver.url(), "event_types": ["note.added"], "notebooks": [nb["id"]]}
        receiver.secret = api.post("/v1/endpoints", body)["secret"]
        answer = text_in(app.test_client(), "She slept through the night!\nFirst time in weeks.")
        assert answer.status_code == 200 and "note was added" in answer.get_data(as_text=True)
        [note] = api.get(f"/v1/notebooks/{nb['id']}/events")["items"]
        assert note["type"] == "note.added" and note["author_member_id"] == mom["id"]
        assert note["data"] == {
            "text": "She slept through the night!\nFirst time in weeks.",
            "voice": "family",
        }
        # routed as any note is: here, to the clinic's endpoint
        wait_until(lambda: any(r.verified for r in receiver.requests()), message="the note's webhook")
        assert receiver.requests()[0].payload["data"]["id"] == note["id"]
    finally:
        receiver.close()


def test_ok_with_nothing_to_acknowledge_is_kept_as_a_note(sms):
    """(With an alert waiting for an acknowledgement, "OK" acknowledges it: tests/test_escalation.py.)"""
    app, api, nb, mom = sms
    text_in(app.test_client(), "OK")
    [note] = api.get(f"/v1/notebooks/{nb['id']}/events")["items"]
    assert note["data"]["text"] == "OK" and note["author_member_id"] == mom["id"]


def test_an_unknown_number_records_nothing_and_logs_no_number(sms, caplog):
    app, api, nb, _ = sms
    caplog.set_level("INFO")
    answer = text_in(app.test_client(), "Hello?", sender="+15555550199")
    assert answer.status_code == 200 and "<Message>" not in answer.get_data(as_text=True)
    assert api.get(f"/v1/notebooks/{nb['id']}/events")["items"] == []
    assert "unknown number" in caplog.text and "5550199" not in caplog.text
    text_in(app.test_client(), "Thanks!")  # from the member: audited on their notebook
    with session_scope(app.extensions["careloop"].settings.database_url) as session:
        rows = session.scalars(select(AuditEntry).where(AuditEntry.action == "twilio.inbound")).all()
        seen = sorted(((r.actor_type, r.status, r.notebook_id, r.reason) for r in rows), key=str)
    assert seen == sorted([("twilio", 200, None, "unknown number"), ("twilio", 200, nb["id"], None)], key=str)


@pytest.mark.parametrize("signature", [None, "bm90IGEgc2lnbmF0dXJl"])
def test_an_unsigned_or_badly_signed_text_is_refused(sms, signature):
    app, api, nb, mom = sms
    answer = text_in(app.test_client(), "STOP", signature=signature)
    assert answer.status_code == 403
    event = api.event(nb["id"], "concern.raised", CONCERN)
    drain(app)
    [text] = sms_to(api, event["id"], mom["id"])
    assert text["status"] == "sent"


def test_a_repeated_webhook_adds_its_note_once(sms):
    app, api, nb, _ = sms
    form = {"MessageSid": "SM" + "7" * 32, "From": MOM, "To": "+15005550006", "Body": "Twice?"}
    url = f"{PUBLIC}/v1/twilio/inbound"
    headers = {"X-Twilio-Signature": RequestValidator(TOKEN).compute_signature(url, form)}
    client = app.test_client()
    for _ in range(2):
        assert client.post("/v1/twilio/inbound", data=form, headers=headers).status_code == 200
    assert len(api.get(f"/v1/notebooks/{nb['id']}/events")["items"]) == 1
    form["Body"] = "Twice, and changed?"  # the same MessageSid with another text: the first stands
    headers = {"X-Twilio-Signature": RequestValidator(TOKEN).compute_signature(url, form)}
    assert client.post("/v1/twilio/inbound", data=form, headers=headers).status_code == 200
    [note] = api.get(f"/v1/notebooks/{nb['id']}/events")["items"]
    assert note["data"]["text"] == "Twice?"
