"""TwilioSMS against Twilio's OpenAPI spec served by Prism, through the fault proxy."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import pytest
import requests

from careloop.config.settings import Settings
from careloop.gsm import sms_safe
from careloop.integrations.base import DeliveryError
from careloop.integrations.sms_twilio import TwilioSMS, mask_number
from careloop.messages import OutgoingMessage
from tests.peers import twilio_peer
from tests.peers.twilio_peer import (
    TEST_ACCOUNT_SID,
    TEST_AUTH_TOKEN,
    TEST_FROM,
    Fault,
    free_port,
)

TO = "+15557654321"
CALLBACK_BASE = "https://careloop.example.org"

# Prism answers every list with the spec's example page; its first message is this one.
PRISM_EXAMPLE_TO = "+18182008801"
PRISM_EXAMPLE_BODY = "testing"
PRISM_EXAMPLE_SID = "SMded05904ccb347238880ca9264e8fe1c"

GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)


def make_sms(url: str, **kwargs) -> TwilioSMS:
    kwargs.setdefault("status_callback_base", CALLBACK_BASE)
    return TwilioSMS(TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, TEST_FROM, api_url=url, **kwargs)


def message(text: str = "Ada has a new check-in on Tuesday.", to: str = TO, **kwargs) -> OutgoingMessage:
    return OutgoingMessage(
        delivery_id=kwargs.pop("delivery_id", "d-101"),
        attempt=kwargs.pop("attempt", 1),
        channel="sms",
        to=to,
        to_name="Sam",
        subject="",
        text=text,
        **kwargs,
    )


# --- send --------------------------------------------------------------------------------


def test_send_returns_sid_and_reaches_twilio_once(twilio_proxy):
    receipt = make_sms(twilio_proxy.url).send(message())

    assert receipt.provider_id.startswith("SM") and len(receipt.provider_id) == 34
    assert receipt.status == "sent"  # Prism's example answer says "queued"
    assert len(twilio_proxy.sent) == 1
    sent = twilio_proxy.sent[0]
    assert sent["To"] == TO
    assert sent["From"] == TEST_FROM
    assert sent["Body"] == "Ada has a new check-in on Tuesday."
    assert sent["StatusCallback"] == f"{CALLBACK_BASE}/v1/twilio/status?attempt=1&delivery=d-101"
    (post,) = [r for r in twilio_proxy.requests if r.method == "POST"]
    assert post.path == f"/2010-04-01/Accounts/{TEST_ACCOUNT_SID}/Messages.json"
    assert post.headers["Authorization"].startswith("Basic ")
    assert post.status == 201


def test_send_without_callback_base_asks_for_no_callback(twilio_proxy):
    make_sms(twilio_proxy.url, status_callback_base=None).send(message())

    assert len(twilio_proxy.sent) == 1
    assert "StatusCallback" not in twilio_proxy.sent[0]


def test_send_makes_body_gsm7_safe(twilio_proxy):
    make_sms(twilio_proxy.url).send(message("Ada\u2019s check\u2011in \u2013 Tue\u00a010:00\u2026"))

    assert twilio_proxy.sent[0]["Body"] == "Ada's check-in - Tue 10:00..."


def test_send_refuses_overlong_body_without_calling_twilio(twilio_proxy):
    with pytest.raises(DeliveryError) as caught:
        make_sms(twilio_proxy.url).send(message("x" * 1601))

    assert caught.value.permanent
    assert "1601" in caught.value.reason
    assert twilio_proxy.requests == []


def test_send_logs_neither_body_nor_full_number(twilio_proxy, caplog):
    caplog.set_level(logging.DEBUG)
    make_sms(twilio_proxy.url).send(message("secret words"))

    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert mask_number(TO) in logged  # the send was logged, masked
    assert TO not in logged and TO.lstrip("+") not in logged and "%2B1555" not in logged
    assert "secret words" not in logged


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "setting"),
    [
        (("XX0123456789abcdef0123456789abcdef", TEST_AUTH_TOKEN, TEST_FROM), {}, "TWILIO_ACCOUNT_SID"),
        (("AC0123456789abcdef", TEST_AUTH_TOKEN, TEST_FROM), {}, "TWILIO_ACCOUNT_SID"),
        ((TEST_ACCOUNT_SID, "", TEST_FROM), {}, "TWILIO_AUTH_TOKEN"),
        ((TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, "15005550006"), {}, "TWILIO_FROM"),
        ((TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, "+1 500 555 0006"), {}, "TWILIO_FROM"),
        ((TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, TEST_FROM), {"api_url": "127.0.0.1:4010"}, "TWILIO_API_URL"),
        ((TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, TEST_FROM), {"timeout": 0}, "CARELOOP_PROVIDER_TIMEOUT"),
    ],
)
def test_bad_configuration_fails_at_construction_naming_the_setting(args, kwargs, setting):
    with pytest.raises(ValueError, match=setting):
        TwilioSMS(*args, **kwargs)


def test_from_settings(twilio_proxy):
    settings = Settings(
        twilio_account_sid=TEST_ACCOUNT_SID,
        twilio_auth_token=TEST_AUTH_TOKEN,
        twilio_from=TEST_FROM,
        twilio_api_url=twilio_proxy.url,
        public_url="https://care.example.org/",
        provider_timeout=3,
    )
    sms = TwilioSMS.from_settings(settings)

    assert sms.timeout == 3.0
    sms.send(message(delivery_id="d-7"))
    assert twilio_proxy.sent[0]["StatusCallback"] == (
        "https://care.example.org/v1/twilio/status?attempt=1&delivery=d-7"
    )


@pytest.mark.parametrize(
    "public_url", ["http://127.0.0.1:8000", "http://localhost:5000", "http://[::1]:8000"]
)
def test_a_loopback_public_url_asks_twilio_for_no_status_callback(twilio_proxy, public_url):
    settings = Settings.from_values(
        twilio_account_sid=TEST_ACCOUNT_SID,
        twilio_auth_token=TEST_AUTH_TOKEN,
        twilio_from=TEST_FROM,
        twilio_api_url=twilio_proxy.url,
        public_url=public_url,
    )
    TwilioSMS.from_settings(settings).send(message(delivery_id="d-8"))
    assert len(twilio_proxy.sent) == 1 and "StatusCallback" not in twilio_proxy.sent[0]


def test_from_settings_without_twilio_names_the_setting():
    settings = Settings(twilio_account_sid=None, twilio_auth_token=None, twilio_from=None)
    with pytest.raises(ValueError, match="TWILIO_ACCOUNT_SID"):
        TwilioSMS.from_settings(settings)


# --- failures ----------------------------------------------------------------------------


def test_500_is_transient_and_the_next_attempt_succeeds(twilio_proxy):
    twilio_proxy.script(Fault(500))
    sms = make_sms(twilio_proxy.url)

    with pytest.raises(DeliveryError) as caught:
        sms.send(message())
    assert not caught.value.permanent
    assert "500" in caught.value.reason
    assert twilio_proxy.sent == []

    receipt = sms.send(message(attempt=2))
    assert receipt.provider_id.startswith("SM")
    assert len(twilio_proxy.sent) == 1


def test_429_is_transient_with_retry_after(twilio_proxy):
    twilio_proxy.script(Fault(429, retry_after=7))

    with pytest.raises(DeliveryError) as caught:
        make_sms(twilio_proxy.url).send(message())

    assert not caught.value.permanent
    assert caught.value.retry_after == 7
    assert "20429" in caught.value.reason


def test_503_without_retry_after_is_transient(twilio_proxy):
    twilio_proxy.fail_always(Fault(503))

    with pytest.raises(DeliveryError) as caught:
        make_sms(twilio_proxy.url).send(message())

    assert not caught.value.permanent
    assert caught.value.retry_after is None


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (21610, "opted out"),
        (21211, "invalid 'To'"),
        (21614, "not a mobile number"),
        (21612, "cannot be reached"),
        (21408, "region"),
        (21606, "'From' number"),
    ],
)
def test_recipient_errors_are_permanent_and_name_the_code(twilio_proxy, code, words):
    twilio_proxy.script(Fault(400, code=code))

    with pytest.raises(DeliveryError) as caught:
        make_sms(twilio_proxy.url).send(message())

    assert caught.value.permanent
    assert caught.value.reason.startswith(f"Twilio {code}: ")
    assert words in caught.value.reason
    assert TO not in caught.value.reason


def test_other_4xx_is_permanent_and_masks_numbers_in_twilio_message(twilio_proxy):
    twilio_proxy.script(Fault(400, code=21604, message="'To' {To} is required to send a message"))

    with pytest.raises(DeliveryError) as caught:
        make_sms(twilio_proxy.url).send(message())

    assert caught.value.permanent
    assert "21604" in caught.value.reason
    assert mask_number(TO) in caught.value.reason
    assert TO not in caught.value.reason


def test_bad_credentials_are_permanent(twilio_proxy):
    twilio_proxy.script(Fault(401))

    with pytest.raises(DeliveryError) as caught:
        make_sms(twilio_proxy.url).send(message())

    assert caught.value.permanent
    assert "20003" in caught.value.reason


def test_connection_refused_is_transient():
    sms = make_sms(f"http://127.0.0.1:{free_port()}")

    with pytest.raises(DeliveryError) as caught:
        sms.send(message())

    assert not caught.value.permanent
    assert "refused" in caught.value.reason


def test_slow_answer_beyond_timeout_is_transient_and_outcome_unknown(twilio_proxy):
    twilio_proxy.delay = 3
    sms = make_sms(twilio_proxy.url, timeout=0.5)

    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        sms.send(message())

    assert time.monotonic() - started < 2
    assert not caught.value.permanent
    assert "outcome unknown" in caught.value.reason
    assert len(twilio_proxy.sent) == 1  # it did reach Twilio: the retry must look up first


def test_http_client_cuts_a_longer_requested_timeout_to_its_own(twilio_proxy):
    twilio_proxy.delay = 3
    sms = make_sms(twilio_proxy.url, timeout=0.5)
    url = f"https://api.twilio.com/2010-04-01/Accounts/{TEST_ACCOUNT_SID}/Messages.json"

    started = time.monotonic()
    with pytest.raises(requests.Timeout):
        sms.http_client.request("GET", url, auth=(TEST_ACCOUNT_SID, TEST_AUTH_TOKEN), timeout=60)

    assert time.monotonic() - started < 2


def test_lost_answer_is_transient(twilio_proxy):
    twilio_proxy.script(Fault.lost_answer())

    with pytest.raises(DeliveryError) as caught:
        make_sms(twilio_proxy.url).send(message())

    assert not caught.value.permanent
    assert "outcome unknown" in caught.value.reason
    assert len(twilio_proxy.sent) == 1


# --- lookup ------------------------------------------------------------------------------


def test_lookup_returns_none_when_twilio_has_no_such_message(twilio_proxy):
    found = make_sms(twilio_proxy.url).lookup(message())

    assert found is None
    (listing,) = twilio_proxy.requests
    assert listing.method == "GET" and listing.status == 200  # Prism accepted the query
    assert listing.query["To"] == [TO] and listing.query["From"] == [TEST_FROM]


def test_lookup_finds_prisms_example_message_by_to_and_body(twilio_proxy):
    found = make_sms(twilio_proxy.url).lookup(message(PRISM_EXAMPLE_BODY, to=PRISM_EXAMPLE_TO))

    assert found is not None
    assert found.provider_id == PRISM_EXAMPLE_SID
    assert found.status == "sent"
    assert len(twilio_proxy.requests) == 1  # one page only, although Prism offers a next page


def test_lookup_ignores_messages_older_than_the_delivery(twilio_proxy):
    planned = datetime.now(UTC)  # the example message is from 2019

    found = make_sms(twilio_proxy.url).lookup(
        message(PRISM_EXAMPLE_BODY, to=PRISM_EXAMPLE_TO, created_at=planned)
    )

    assert found is None


def test_lookup_after_a_lost_answer_finds_the_message_so_it_is_not_sent_twice(twilio_proxy):
    twilio_proxy.remember_sent = True
    twilio_proxy.script(Fault.lost_answer())
    sms = make_sms(twilio_proxy.url)
    planned = message(created_at=datetime.now(UTC))

    with pytest.raises(DeliveryError):
        sms.send(planned)
    found = sms.lookup(planned)

    assert found is not None
    assert found.provider_id == twilio_proxy.sent[0]["Sid"]
    assert sms.lookup(message("another text", created_at=planned.created_at)) is None
    assert sms.lookup(message(to="+15550000011", created_at=planned.created_at)) is None


def test_lookup_transport_error_is_transient():
    sms = make_sms(f"http://127.0.0.1:{free_port()}")

    with pytest.raises(DeliveryError) as caught:
        sms.lookup(message())

    assert not caught.value.permanent


# --- sms_safe ----------------------------------------------------------------------------


def test_sms_safe_replaces_characters_that_force_ucs2():
    text = "\u201cSee you\u201d \u2018soon\u2019 \u2013 10\u00a0am \u2014 Room\u202f4\u2026"

    safe = sms_safe(text)

    assert safe == "\"See you\" 'soon' - 10 am - Room 4..."
    assert set(safe) <= GSM7_BASIC


def test_sms_safe_keeps_gsm7_text_as_is():
    text = "Check-in: Tue 10:00 @ Clinic (room 4) - Ada's team. Ñandú? ¿Sí!"
    assert sms_safe(text) == text


# --- the peer itself ---------------------------------------------------------------------


def test_missing_prism_fails_with_setup_instructions(monkeypatch, tmp_path):
    monkeypatch.setattr(twilio_peer, "PRISM_BIN", tmp_path / "prism")

    with pytest.raises(pytest.fail.Exception, match="scripts/test.sh"):
        twilio_peer.PrismProcess().start()
