"""No phone number, email address, key, token, Authorization header, webhook secret or event
text in any log line of a realistic run (issue #10): events in through the API with a notebook
key and through a signed webhook (and a refused one), routing, texts through Twilio's API
(Prism) and email through SMTP (aiosmtpd) on real RQ workers, Twilio status callbacks, and
member-link pages opened, tampered with and revoked."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook
from twilio.request_validator import RequestValidator

from tests.conftest import build_team, run_rq_until_settled
from tests.log_leaks import BEARER, every_log_line, leaks, phone_forms
from tests.peers.twilio_peer import TEST_ACCOUNT_SID, TEST_AUTH_TOKEN

pytestmark = pytest.mark.fault

LINK = re.compile(r"https://careloop\.test/m/([A-Za-z0-9_.-]+)")
TEXTS = {
    "medication": "levetiracetam",
    "dose": "250 mg twice daily",
    "concern": "new tremor in the left hand",
    "note": "Maya said her first full sentence",
    "webhook concern": "falls asleep at school every afternoon",
}


def test_no_log_line_holds_a_contact_detail_secret_token_or_event_text(
    rq_app, rq_api, runtime, smtp, twilio_proxy
):
    client = rq_app.test_client()
    with every_log_line() as lines:
        nb, members = build_team(rq_api)
        key = rq_api.post(f"/v1/notebooks/{nb['id']}/keys", {"name": "clinic"})["key"]
        as_key = {"Authorization": f"Bearer {key}"}
        events = [
            {"type": "medication.changed",
             "data": {"medication": TEXTS["medication"], "change": "dose_changed", "dose": TEXTS["dose"]}},
            {"type": "concern.raised", "data": {"summary": TEXTS["concern"], "severity": "urgent"}},
            {"type": "note.added", "data": {"text": TEXTS["note"], "voice": "child"}},
        ]  # fmt: skip
        for event in events:
            assert (
                client.post(f"/v1/notebooks/{nb['id']}/events", json=event, headers=as_key).status_code == 202
            )
        assert client.get(f"/v1/notebooks/{nb['id']}/members", headers=as_key).status_code == 200
        assert client.get("/v1/deliveries", headers={"Authorization": "Bearer clk_wrong"}).status_code == 401

        source = rq_api.post("/v1/sources", {"name": "EHR", "kind": "careloop", "notebook_id": nb["id"]})
        concern = {"summary": TEXTS["webhook concern"], "severity": "high", "area": "school"}
        body = json.dumps({"notebook_id": nb["id"], "type": "concern.raised", "data": concern})
        now = datetime.now(UTC)
        headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": Webhook(source["secret"]).sign("msg_1", now, body),
                   "Content-Type": "application/json"}  # fmt: skip
        assert client.post(f"/v1/webhooks/{source['id']}", data=body, headers=headers).status_code == 202
        assert client.post(f"/v1/webhooks/{source['id']}", data=body, headers=headers).status_code == 200
        forged = {**headers, "webhook-signature": "v1,AAAA"}
        assert client.post(f"/v1/webhooks/{source['id']}", data=body, headers=forged).status_code == 401
        rotated = rq_api.post(f"/v1/sources/{source['id']}/secret/rotate", None, status=200)

        run_rq_until_settled(runtime)
        texts = twilio_proxy.sent
        mails = smtp.messages
        assert texts and mails

        # Twilio's status callback for the first text, signed as Twilio signs it.
        sid_text = texts[0]
        callback = sid_text["StatusCallback"]
        form = {"MessageSid": "SM" + "0" * 32, "MessageStatus": "delivered"}
        signature = RequestValidator(TEST_AUTH_TOKEN).compute_signature(callback, form)
        path = callback.removeprefix("https://careloop.test")
        client.post(path, data=form, headers={"X-Twilio-Signature": signature})

        tokens = set()
        for text in texts:
            tokens.update(LINK.findall(text["Body"]))
        for mail in mails:
            tokens.update(LINK.findall(mail.get_body(("plain",)).get_content()))
        assert tokens
        for token in sorted(tokens):
            assert client.get(f"/m/{token}").status_code == 200
        one = sorted(tokens)[0]
        assert client.get(f"/m/{one[:-2]}xx").status_code == 404
        for member in members.values():
            rq_api.post(f"/v1/members/{member['id']}/links/revoke", None, status=200)
        assert client.get(f"/m/{one}").status_code == 404

    assert lines, "nothing was logged: the capture is broken"
    assert any("webhook accepted" in line for line in lines)  # the capture sees careloop's own lines
    secrets = {
        "phone": {form for m in members.values() if m.get("phone") for form in phone_forms(m["phone"])},
        "email": {m["email"] for m in members.values() if m.get("email")},
        "admin key": {rq_api.headers["Authorization"].split()[1]},
        "notebook key": {key},
        "webhook secret": {
            source["secret"],
            source["secret"].removeprefix("whsec_"),
            rotated["secret"],
            rotated["secret"].removeprefix("whsec_"),
        },  # fmt: skip
        "member-link token": tokens | {one[:-2]},
        "Twilio token": {TEST_AUTH_TOKEN},
        "event text": set(TEXTS.values()),
    }
    found = leaks(lines, secrets, harmless=[TEST_ACCOUNT_SID]) + [
        f"Authorization: {line[:200]}" for line in lines if BEARER.search(line)
    ]
    assert found == [], "\n".join(found[:20])
