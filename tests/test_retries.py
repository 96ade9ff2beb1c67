"""The one retry layer: backoff with jitter, a bounded number of attempts, and no blind resend
when an attempt's outcome is unknown — through a real RQ worker and the real peers."""

from __future__ import annotations

import pytest

from careloop.deliveries import backoff
from tests.conftest import build_app, build_team, close_app, peer_settings, run_rq_until_settled
from tests.peers.twilio_peer import Fault
from tests.test_faults import all_deliveries, assert_exactly_once


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [(1, 2.5, 5.0), (2, 5.0, 10.0), (3, 10.0, 20.0), (4, 20.0, 40.0), (10, 50.0, 100.0)],
)
def test_backoff_doubles_with_jitter_and_is_capped(attempt, low, high):
    delays = [backoff(attempt, base=5.0, cap=100.0) for _ in range(300)]
    assert low <= min(delays) and max(delays) <= high
    assert len({round(d, 6) for d in delays}) > 250, "no jitter"


def test_backoff_never_sooner_than_retry_after_but_still_capped():
    assert all(backoff(1, base=0.1, cap=60.0, retry_after=30.0) >= 30.0 for _ in range(50))
    assert all(backoff(1, base=0.1, cap=60.0, retry_after=3600.0) == 60.0 for _ in range(50))


@pytest.fixture
def retry_app(pg_only_url, tmp_path, redis_conn, smtp, twilio_proxy):
    settings = peer_settings(
        pg_only_url, tmp_path, smtp, twilio_proxy, max_attempts=3, provider_timeout=1.0, claim_timeout=15.0
    )
    app, api = build_app(settings)
    yield app, api
    close_app(app)


def _therapy_log(api):
    nb, m = build_team(api)  # therapy.logged → parents by email; mom is the author → one email to dad
    api.event(
        nb["id"],
        "therapy.logged",
        {"discipline": "occupational_therapy", "activity": "buttons"},
        author_member_id=m["mom"]["id"],
    )


def test_smtp_4xx_every_time_fails_after_the_attempt_budget_with_the_last_error(
    retry_app, pg_only_url, smtp, twilio_proxy
):
    app, api = retry_app
    smtp.fail_always("452 4.2.2 Mailbox full")
    _therapy_log(api)
    run_rq_until_settled(app.extensions["careloop"].runtime)
    (d,) = [d for d in all_deliveries(pg_only_url) if d.channel == "email"]
    assert (d.status, d.attempts) == ("failed", 3)
    assert d.error.startswith("gave up after 3 attempts: SMTP 452")
    assert smtp.messages == []


def test_smtp_answer_lost_after_the_message_was_sent_is_not_resent(
    retry_app, pg_only_url, smtp, twilio_proxy
):
    """The server has the message but its 250 comes after careloop's timeout: SMTP cannot be
    asked, so the delivery fails as 'outcome unknown' — one arrival, never two."""
    app, api = retry_app
    smtp.delay = 2.0  # longer than the 1 s provider timeout
    _therapy_log(api)
    run_rq_until_settled(app.extensions["careloop"].runtime)
    (d,) = [d for d in all_deliveries(pg_only_url) if d.channel == "email"]
    assert (d.status, d.attempts) == ("failed", 1)
    assert d.error.startswith("outcome unknown")
    assert len(smtp.received) == 1
    assert_exactly_once(pg_only_url, smtp, twilio_proxy)


def _text_dad(app, api, url):
    """A seizure concern by mom → parents and neurology; the one text goes to dad."""
    nb, m = build_team(api)
    api.event(
        nb["id"],
        "concern.raised",
        {"summary": "s", "severity": "low", "area": "seizure"},
        author_member_id=m["mom"]["id"],
    )
    run_rq_until_settled(app.extensions["careloop"].runtime)
    (delivery,) = [d for d in all_deliveries(url) if d.channel == "sms" and d.status != "skipped"]
    return delivery


def test_twilio_answer_lost_is_looked_up_not_resent(retry_app, pg_only_url, smtp, twilio_proxy):
    """Twilio took the message but the answer never came back: careloop asks Twilio before any
    resend, finds it, and records it as sent — one message at Twilio."""
    app, api = retry_app
    twilio_proxy.remember_sent = True  # the mock keeps what it accepted and lists it, like Twilio
    twilio_proxy.script(Fault.lost_answer())
    d = _text_dad(app, api, pg_only_url)
    assert (d.status, d.attempts) == ("sent", 1)
    assert len(twilio_proxy.sent) == 1 and d.provider_id == twilio_proxy.sent[0]["Sid"]
    assert_exactly_once(pg_only_url, smtp, twilio_proxy)


def test_twilio_answer_lost_before_it_took_the_message_is_sent_again(
    retry_app, pg_only_url, smtp, twilio_proxy
):
    """The connection dropped and Twilio has nothing: the lookup says so, and the message is
    sent again — still exactly once at Twilio."""
    app, api = retry_app
    twilio_proxy.remember_sent = True
    twilio_proxy.script(Fault(hang_up=True))  # hang up without forwarding: Twilio never saw it
    d = _text_dad(app, api, pg_only_url)
    assert (d.status, d.attempts) == ("sent", 2)
    assert len(twilio_proxy.sent) == 1
    assert_exactly_once(pg_only_url, smtp, twilio_proxy)


def test_a_retry_run_early_is_rescheduled_for_its_due_time_not_sent(
    retry_app, pg_only_url, smtp, twilio_proxy
):
    from datetime import timedelta

    from sqlalchemy import update

    from careloop.db import session_scope
    from careloop.models import Delivery, utcnow
    from careloop.workers.jobs import deliver

    app, api = retry_app
    runtime = app.extensions["careloop"].runtime
    _therapy_log(api)
    run_rq_until_settled(runtime)
    (d,) = [d for d in all_deliveries(pg_only_url) if d.channel == "email"]
    assert (d.status, d.attempts, len(smtp.received)) == ("sent", 1, 1)
    due = utcnow() + timedelta(seconds=5)
    with session_scope(pg_only_url) as session:
        session.execute(
            update(Delivery).where(Delivery.id == d.id).values(status="queued", next_attempt_at=due)
        )
    assert deliver(d.id, runtime=runtime) == "rescheduled"
    (row,) = [x for x in all_deliveries(pg_only_url) if x.id == d.id]
    assert (row.status, row.attempts) == ("queued", 1)
    assert len(smtp.received) == 1  # nothing sent early
    registry = runtime.dispatcher.deliver_queue.scheduled_job_registry
    (job_id,) = registry.get_job_ids()
    assert registry.get_scheduled_time(job_id) >= due.replace(microsecond=0)
