"""Twilio status callbacks (``POST /v1/twilio/status``), on SQLite and on PostgreSQL.

Every delivery here is real: an event goes through Redis and an RQ worker to Twilio's API
shape (Prism behind the fault proxy), so the delivery carries the SID Twilio answered and the
proxy recorded the ``StatusCallback`` URL careloop asked for. The callbacks are then posted to
exactly that URL, signed as Twilio signs them (``RequestValidator.compute_signature`` over
``CARELOOP_PUBLIC_URL`` + path + query and the form fields).

The app sits "behind a proxy": the test client talks to ``http://localhost`` while
``CARELOOP_PUBLIC_URL`` is ``https://careloop.test``. No callback carries a Bearer key.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from sqlalchemy import update
from twilio.request_validator import RequestValidator

from careloop.db import session_scope
from careloop.deliveries import OUTCOME_UNKNOWN
from careloop.models import Delivery, utcnow
from tests.conftest import run_rq_until_settled, wait_until
from tests.peers.twilio_peer import TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, TEST_FROM, Fault

PUBLIC = "https://careloop.test"
DAD_PHONE = "+15555550102"


@pytest.fixture
def api(rq_api):
    """The `team` fixture builds its notebook through this module's (RQ-mode) app."""
    return rq_api


# --- helpers -------------------------------------------------------------------------------


def sign(url: str, params: dict[str, str], token: str = TEST_AUTH_TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params)


def twilio_form(sid: str, status: str, **extra: str) -> dict[str, str]:
    """The fields Twilio posts with a message status callback."""
    return {
        "AccountSid": TEST_ACCOUNT_SID,
        "ApiVersion": "2010-04-01",
        "From": TEST_FROM,
        "To": DAD_PHONE,
        "MessageSid": sid,
        "SmsSid": sid,
        "MessageStatus": status,
        "SmsStatus": status,
        **extra,
    }


def post_callback(client, url: str, form: dict[str, str], signature: str | None = "sign"):
    """POST ``form`` to the app at ``url``'s path and query, signed over ``url`` by default."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    headers = {}
    if signature == "sign":
        headers["X-Twilio-Signature"] = sign(url, form)
    elif signature is not None:
        headers["X-Twilio-Signature"] = signature
    return client.post(target, data=form, headers=headers)


@dataclass
class SentSMS:
    client: object  # an unauthenticated test client of the RQ-mode app
    api: object
    event_id: str
    delivery_id: str
    sid: str
    callback_url: str

    def callback(self, status: str, *, sid: str | None = None, url: str | None = None, **extra):
        response = post_callback(
            self.client, url or self.callback_url, twilio_form(sid or self.sid, status, **extra)
        )
        assert response.status_code == 204, (response.status_code, response.get_json())
        return response

    def delivery(self) -> dict:
        """The delivery as ``GET /v1/events/{id}`` shows it."""
        event = self.api.get(f"/v1/events/{self.event_id}")
        (found,) = [d for d in event["deliveries"] if d["id"] == self.delivery_id]
        return found


def _send_medication_change(rq_api, runtime, team, twilio_proxy):
    """The mom records a medication change: the dad gets one SMS (and emails go out)."""
    nb, m = team
    twilio_proxy.remember_sent = True  # a SID of its own per message, as Twilio gives
    accepted = rq_api.event(
        nb["id"],
        "medication.changed",
        {"medication": "levetiracetam", "change": "dose_changed", "dose": "250 mg twice daily"},
        author_member_id=m["mom"]["id"],
    )
    run_rq_until_settled(runtime)
    event = rq_api.get(f"/v1/events/{accepted['id']}")
    (sms,) = [d for d in event["deliveries"] if d["channel"] == "sms" and d["member_id"] == m["dad"]["id"]]
    return accepted["id"], sms, event


@pytest.fixture
def sms(rq_app, rq_api, runtime, team, smtp, twilio_proxy) -> SentSMS:
    event_id, delivery, _ = _send_medication_change(rq_api, runtime, team, twilio_proxy)
    assert delivery["status"] == "sent", delivery
    (sent,) = twilio_proxy.sent
    assert sent["To"] == DAD_PHONE
    assert delivery["provider_id"] == sent["Sid"] and sent["Sid"].startswith("SM")
    assert sent["StatusCallback"] == f"{PUBLIC}/v1/twilio/status?attempt=1&delivery={delivery['id']}"
    return SentSMS(
        client=rq_app.test_client(),
        api=rq_api,
        event_id=event_id,
        delivery_id=delivery["id"],
        sid=sent["Sid"],
        callback_url=sent["StatusCallback"],
    )


def _set_delivery(database_url: str, delivery_id: str, **values) -> None:
    with session_scope(database_url) as session:
        session.execute(update(Delivery).where(Delivery.id == delivery_id).values(**values))
        session.commit()


# --- moving forward ------------------------------------------------------------------------


def test_delivered_callback_moves_sent_to_delivered_without_any_bearer_key(sms):
    before = sms.delivery()
    assert before["status"] == "sent" and before["delivered_at"] is None
    response = post_callback(sms.client, sms.callback_url, twilio_form(sms.sid, "delivered"))
    assert response.status_code == 204
    assert response.data == b""
    after = sms.delivery()  # GET /v1/events/{id} shows the new status
    assert after["status"] == "delivered"
    assert after["delivered_at"] is not None
    assert after["error"] is None
    assert after["provider_id"] == sms.sid
    assert after["sent_at"] == before["sent_at"]


@pytest.mark.parametrize(
    ("twilio_status", "code", "expected"),
    [("undelivered", "30003", "undelivered"), ("failed", "30008", "failed")],
)
def test_undelivered_and_failed_callbacks_keep_twilios_error_code(sms, twilio_status, code, expected):
    sms.callback(twilio_status, ErrorCode=code, ErrorMessage="Unreachable destination handset")
    after = sms.delivery()
    assert after["status"] == expected
    assert code in after["error"]
    assert twilio_status in after["error"]
    assert after["delivered_at"] is None


def test_failed_callback_without_error_code_still_says_what_twilio_reported(sms):
    sms.callback("failed")
    after = sms.delivery()
    assert after["status"] == "failed"
    assert after["error"] == "Twilio reported failed"


@pytest.mark.parametrize("twilio_status", ["queued", "sending", "sent", "accepted"])
def test_twilio_queued_sending_sent_keep_the_delivery_sent_and_untouched(sms, twilio_status):
    before = sms.delivery()
    sms.callback(twilio_status)
    after = sms.delivery()
    assert after["status"] == "sent"
    assert after["updated_at"] == before["updated_at"]  # not rewritten with the same status
    assert after["delivered_at"] is None and after["error"] is None


# --- out of order --------------------------------------------------------------------------


@pytest.mark.parametrize("late", ["sent", "queued", "failed", "undelivered"])
def test_nothing_moves_a_delivered_sms_backwards(sms, late):
    sms.callback("delivered")
    delivered = sms.delivery()
    assert delivered["status"] == "delivered"
    sms.callback(late, ErrorCode="30008")
    after = sms.delivery()
    assert after["status"] == "delivered"
    assert after["error"] is None
    assert after["delivered_at"] == delivered["delivered_at"]
    assert after["updated_at"] == delivered["updated_at"]


@pytest.mark.parametrize("late", ["sent", "delivered", "undelivered"])
def test_a_twilio_failure_is_final_for_later_callbacks(sms, late):
    """Twilio reported ``failed``; a ``sent`` (or anything else) arriving afterwards is ignored.

    Why: Twilio's statuses only move forward on its side (queued → sending → sent →
    delivered | undelivered | failed), and ``failed``/``undelivered`` are terminal there. A
    ``sent`` that arrives after ``failed`` was therefore posted *before* it and merely overtook
    it on the way; applying it would resurrect a message that Twilio gave up on and hide the
    dead letter from the people who must act on it. ``failed``, ``undelivered`` and
    ``delivered`` share one rank, so none of them replaces another: the first terminal report
    wins. The one failure a provider report does overrule is careloop's own "outcome unknown"
    (see the tests below), because there the provider knows and careloop does not.
    """
    sms.callback("failed", ErrorCode="30008")
    failed = sms.delivery()
    assert failed["status"] == "failed"
    sms.callback(late)
    after = sms.delivery()
    assert after["status"] == "failed"
    assert after["error"] == failed["error"] and "30008" in after["error"]
    assert after["delivered_at"] is None
    assert after["updated_at"] == failed["updated_at"]


def test_a_late_callback_of_an_earlier_attempt_never_cancels_a_manual_retry(sms, runtime, twilio_proxy):
    """Issue #9: Twilio reported ``undelivered``, a person retried, and before a worker sent the
    retry Twilio's ``sent`` for the *first* message arrived (callbacks overtake each other).
    It must not mark the retry sent: the retry goes out, once, as a new message."""
    sms.callback("undelivered", ErrorCode="30003")
    assert sms.delivery()["status"] == "undelivered"
    retried = sms.api.post(f"/v1/deliveries/{sms.delivery_id}/retry", None, status=202)
    assert retried["status"] == "queued"

    sms.callback("sent")  # the first attempt's callback URL and SID, signed as Twilio signs
    legacy = f"{PUBLIC}/v1/twilio/status?delivery={sms.delivery_id}"  # a URL of a release before
    sms.callback("delivered", url=legacy)
    queued = sms.delivery()
    assert (queued["status"], queued["attempts"], queued["provider_id"]) == ("queued", 1, None)

    run_rq_until_settled(runtime)
    first, second = twilio_proxy.sent
    assert second["StatusCallback"] == f"{PUBLIC}/v1/twilio/status?attempt=2&delivery={sms.delivery_id}"
    sent = sms.delivery()
    assert (sent["status"], sent["attempts"], sent["provider_id"]) == ("sent", 2, second["Sid"])
    # The first message's reports stay ignored; the retry's own move it forward.
    sms.callback("delivered")
    assert sms.delivery()["status"] == "sent"
    sms.callback("delivered", sid=second["Sid"], url=second["StatusCallback"])
    assert sms.delivery()["status"] == "delivered"


def test_sent_then_delivered_in_order_ends_delivered(sms):
    sms.callback("sending")
    sms.callback("sent")
    sms.callback("delivered")
    sms.callback("sent")
    assert sms.delivery()["status"] == "delivered"


def test_sent_callback_overtaking_the_workers_answer_leaves_no_stale_error(
    rq_app, rq_api, runtime, team, smtp, twilio_proxy
):
    """Attempt 1 gets a Twilio 500 (the delivery keeps that reason while queued again);
    attempt 2 reaches Twilio but its answer is slow, and Twilio's ``sent`` callback lands
    before the worker records the send. The result is ``sent``, once, with no leftover error."""
    twilio_proxy.script(Fault(status=500), Fault.slow(1.5))
    client = rq_app.test_client()
    answered = []

    def twilio_calls_back():
        sent = wait_until(lambda: twilio_proxy.sent, timeout=20, message="the second attempt")[0]
        answered.append(post_callback(client, sent["StatusCallback"], twilio_form(sent["Sid"], "sent")))

    caller = threading.Thread(target=twilio_calls_back, daemon=True)
    caller.start()
    event_id, delivery, _ = _send_medication_change(rq_api, runtime, team, twilio_proxy)
    caller.join(10)
    assert [r.status_code for r in answered] == [204]
    (sent,) = twilio_proxy.sent
    assert delivery["attempts"] == 2
    assert delivery["status"] == "sent"
    assert delivery["provider_id"] == sent["Sid"]
    assert delivery["error"] is None, delivery["error"]


# --- careloop's "outcome unknown" overruled by the provider --------------------------------


def test_outcome_unknown_from_a_crash_mid_send_is_overruled_by_twilios_delivered(
    rq_app, rq_api, runtime, team, smtp, twilio_proxy, monkeypatch
):
    """careloop broke right after Twilio took the message: the delivery is failed as "outcome
    unknown" (the worker's real path for an unexpected error around the provider call). The
    provider's ``delivered`` callback, on the URL careloop gave it, settles it."""
    channel = runtime.channels["sms"]
    real_send = channel.send

    def send_then_break(message):
        real_send(message)
        raise RuntimeError("careloop bug after Twilio accepted the message")

    monkeypatch.setattr(channel, "send", send_then_break)
    event_id, delivery, _ = _send_medication_change(rq_api, runtime, team, twilio_proxy)
    monkeypatch.undo()
    assert delivery["status"] == "failed"
    assert delivery["error"].startswith(OUTCOME_UNKNOWN)
    assert delivery["provider_id"] is None  # careloop never learnt the SID
    (sent,) = twilio_proxy.sent
    assert sent["StatusCallback"] == f"{PUBLIC}/v1/twilio/status?attempt=1&delivery={delivery['id']}"

    client = rq_app.test_client()
    response = post_callback(client, sent["StatusCallback"], twilio_form(sent["Sid"], "delivered"))
    assert response.status_code == 204
    event = rq_api.get(f"/v1/events/{event_id}")
    (after,) = [d for d in event["deliveries"] if d["id"] == delivery["id"]]
    assert after["status"] == "delivered"
    assert after["error"] is None
    assert after["delivered_at"] is not None
    assert after["provider_id"] == sent["Sid"]  # now careloop knows which message it was


def test_outcome_unknown_is_overruled_by_sent_and_then_moves_on(sms, peers_settings):
    """Twilio saying it has the message (``sent``) is as good an answer as ``delivered``: the
    delivery is ``sent`` again, without the outcome-unknown reason, and later callbacks apply."""
    _set_delivery(peers_settings.database_url, sms.delivery_id, status="failed", error=OUTCOME_UNKNOWN)
    sms.callback("sent")
    after = sms.delivery()
    assert after["status"] == "sent" and after["error"] is None
    sms.callback("delivered")
    assert sms.delivery()["status"] == "delivered"


def test_outcome_unknown_is_not_overruled_by_another_messages_callback(sms, peers_settings):
    _set_delivery(peers_settings.database_url, sms.delivery_id, status="failed", error=OUTCOME_UNKNOWN)
    sms.callback("delivered", sid="SM" + "f" * 32)
    after = sms.delivery()
    assert after["status"] == "failed" and after["error"] == OUTCOME_UNKNOWN
    assert after["provider_id"] == sms.sid


def test_a_plain_careloop_failure_is_not_overruled(sms, peers_settings):
    """Only "outcome unknown" yields to the provider; a failure careloop is sure of stays."""
    _set_delivery(
        peers_settings.database_url, sms.delivery_id, status="failed", error="gave up after 5 attempts"
    )
    sms.callback("delivered")
    after = sms.delivery()
    assert after["status"] == "failed" and after["error"] == "gave up after 5 attempts"


def test_email_delivery_failed_as_outcome_unknown_ignores_a_twilio_callback(
    rq_app, rq_api, runtime, team, smtp, twilio_proxy, peers_settings
):
    """An email whose worker vanished mid-send goes through the real stale-claim path and ends
    "outcome unknown" with no provider id. A Twilio callback naming it — even correctly
    signed — is about an SMS and must not mark the email delivered."""
    from careloop.workers.relay import relay_once

    event_id, _, event = _send_medication_change(rq_api, runtime, team, twilio_proxy)
    (email,) = [
        d for d in event["deliveries"] if d["channel"] == "email" and d["member_id"] == team[1]["dad"]["id"]
    ]
    # the worker died during the SMTP call: still "sending", claim older than the timeout
    _set_delivery(
        peers_settings.database_url,
        email["id"],
        status="sending",
        provider_id=None,
        claim_token="dead-worker",
        claimed_at=utcnow() - timedelta(hours=1),
    )
    assert relay_once(runtime)["stale"] == 1
    failed = rq_api.get(f"/v1/events/{event_id}")
    (failed,) = [d for d in failed["deliveries"] if d["id"] == email["id"]]
    assert failed["status"] == "failed" and failed["error"] == OUTCOME_UNKNOWN
    assert failed["provider_id"] is None

    url = f"{PUBLIC}/v1/twilio/status?delivery={email['id']}"
    response = post_callback(rq_app.test_client(), url, twilio_form(twilio_proxy.sent[0]["Sid"], "delivered"))
    assert response.status_code == 204
    after = rq_api.get(f"/v1/events/{event_id}")
    (after,) = [d for d in after["deliveries"] if d["id"] == email["id"]]
    assert after == failed


# --- which callbacks count -----------------------------------------------------------------


def test_callback_for_another_message_sid_is_ignored(sms):
    before = sms.delivery()
    response = sms.callback("delivered", sid="SM" + "0" * 32)
    assert response.status_code == 204
    assert sms.delivery() == before


def test_unknown_message_status_is_ignored(sms):
    before = sms.delivery()
    sms.callback("teleported")
    assert sms.delivery() == before


def test_unknown_delivery_id_answers_204_like_any_other_and_changes_nothing(sms):
    """No difference between "no such delivery" and "ignored": a caller learns nothing."""
    before = sms.delivery()
    url = f"{PUBLIC}/v1/twilio/status?delivery=dlv_doesnotexist"
    response = post_callback(sms.client, url, twilio_form(sms.sid, "delivered"))
    assert response.status_code == 204
    assert response.data == b""
    assert sms.delivery() == before


# --- signatures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("bm90IGEgc2lnbmF0dXJl", id="garbage"),
        pytest.param("wrong-token", id="other-auth-token"),
        pytest.param("other-host", id="other-host"),
        pytest.param("other-delivery", id="other-query"),
        pytest.param("other-form", id="form-changed-after-signing"),
    ],
)
def test_bad_or_missing_signature_is_403_and_changes_nothing(sms, signature):
    before = sms.delivery()
    form = twilio_form(sms.sid, "delivered")
    if signature == "wrong-token":
        signature = sign(sms.callback_url, form, token="f" * 32)
    elif signature == "other-host":
        signature = sign(sms.callback_url.replace(PUBLIC, "https://attacker.test"), form)
    elif signature == "other-delivery":
        signature = sign(f"{PUBLIC}/v1/twilio/status?delivery=dlv_other", form)
    elif signature == "form-changed-after-signing":
        signature = sign(sms.callback_url, twilio_form(sms.sid, "failed"))
    response = post_callback(sms.client, sms.callback_url, form, signature=signature)
    assert response.status_code == 403
    body = response.get_json()
    assert body["error"] == "forbidden"
    assert sms.delivery() == before


def test_behind_a_proxy_only_the_public_url_signature_counts(sms):
    """The test client reaches the app as http://localhost; Twilio signed the public URL."""
    form = twilio_form(sms.sid, "delivered")
    internal = sms.callback_url.replace(PUBLIC, "http://localhost")
    refused = post_callback(sms.client, sms.callback_url, form, signature=sign(internal, form))
    assert refused.status_code == 403
    assert sms.delivery()["status"] == "sent"

    accepted = post_callback(sms.client, sms.callback_url, form, signature=sign(sms.callback_url, form))
    assert accepted.status_code == 204
    assert sms.delivery()["status"] == "delivered"


# --- malformed callbacks -------------------------------------------------------------------


def test_missing_delivery_parameter_is_422_naming_it(sms):
    before = sms.delivery()
    url = f"{PUBLIC}/v1/twilio/status"
    response = post_callback(sms.client, url, twilio_form(sms.sid, "delivered"))
    assert response.status_code == 422
    body = response.get_json()
    assert body["error"] == "validation_error"
    assert set(body["fields"]) == {"query.delivery"}
    assert sms.delivery() == before


@pytest.mark.parametrize("missing", ["MessageStatus", "MessageSid"])
def test_missing_status_or_sid_is_422_naming_the_field(sms, missing):
    before = sms.delivery()
    form = twilio_form(sms.sid, "delivered")
    del form[missing]
    del form[missing.replace("Message", "Sms")]
    response = post_callback(sms.client, sms.callback_url, form)
    assert response.status_code == 422
    body = response.get_json()
    assert body["error"] == "validation_error"
    assert set(body["fields"]) == {missing}
    assert sms.delivery() == before


def test_a_malformed_attempt_number_is_422_naming_it(sms):
    before = sms.delivery()
    for attempt in ("0", "x", "1.5", "\uff11", "-1", "1234567"):
        url = f"{PUBLIC}/v1/twilio/status?attempt={attempt}&delivery={sms.delivery_id}"
        response = post_callback(sms.client, url, twilio_form(sms.sid, "delivered"))
        assert response.status_code == 422, attempt
        assert set(response.get_json()["fields"]) == {"query.attempt"}, attempt
    assert sms.delivery() == before


def test_validation_comes_after_the_signature(sms):
    """An unsigned, incomplete request learns nothing about what is missing: 403, not 422."""
    response = post_callback(sms.client, f"{PUBLIC}/v1/twilio/status", {}, signature=None)
    assert response.status_code == 403


# --- not configured ------------------------------------------------------------------------


def test_without_twilio_configured_the_endpoint_is_404_json(client):
    url = f"{PUBLIC}/v1/twilio/status?delivery=dlv_x"
    response = post_callback(client, url, twilio_form("SM" + "1" * 32, "delivered"))
    assert response.status_code == 404
    assert response.is_json
    assert response.get_json()["error"] == "not_found"
    assert "Twilio" in response.get_json()["message"]


def test_a_callback_is_counted_and_logged_with_its_events_request_id(sms, db_url, caplog):
    """A callback is a request of its own; its line names the request id of the event the
    delivery is about, so one grep of that id shows the text arriving too."""
    from prometheus_client import REGISTRY

    from careloop.models import Event

    def delivered() -> float:
        labels = {"channel": "sms", "status": "delivered"}
        return REGISTRY.get_sample_value("careloop_deliveries_total", labels) or 0.0

    with session_scope(db_url) as session:
        request_id = session.get(Event, sms.event_id).context["request_id"]
    before = delivered()
    with caplog.at_level("INFO", logger="careloop.service"):
        sms.callback("delivered")
    assert delivered() - before == 1
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("twilio status")]
    assert line.endswith(f"the event's request id: {request_id}") and sms.delivery_id in line
    sms.callback("delivered")  # a repeat changes nothing and counts nothing
    assert delivered() - before == 1
