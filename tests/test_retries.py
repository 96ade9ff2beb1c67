"""The one retry layer: a schedule reaching a day, jittered, a bounded number of attempts, and
no blind resend when an attempt's outcome is unknown — through a real RQ worker and the real
peers."""

from __future__ import annotations

import pytest

from careloop.config.settings import DEFAULT_RETRY_SCHEDULE, Settings
from careloop.deliveries import RETRY_JITTER, retry_delay
from tests.conftest import build_app, build_team, close_app, peer_settings, run_rq_until_settled
from tests.peers.twilio_peer import Fault
from tests.test_faults import all_deliveries, assert_exactly_once

SCHEDULE = (5.0, 300.0, 1800.0, 7200.0)


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [(1, 4.5, 5.5), (2, 270.0, 330.0), (3, 1620.0, 1980.0), (4, 6480.0, 7920.0), (10, 6480.0, 7920.0)],
)
def test_retry_delays_follow_the_schedule_with_jitter_and_stay_on_its_last_step(attempt, low, high):
    delays = [retry_delay(attempt, SCHEDULE) for _ in range(300)]
    assert low <= min(delays) and max(delays) <= high
    assert len({round(d, 6) for d in delays}) > 250, "no jitter"


def test_retry_delay_never_sooner_than_retry_after_but_still_capped():
    assert all(retry_delay(1, SCHEDULE, retry_after=30.0) >= 30.0 for _ in range(50))
    assert all(retry_delay(1, SCHEDULE, retry_after=86400.0) == 7200.0 for _ in range(50))


def test_the_default_schedule_keeps_trying_for_more_than_a_day():
    settings = Settings.from_values()
    assert settings.retry_schedule == DEFAULT_RETRY_SCHEDULE
    assert settings.max_attempts == len(DEFAULT_RETRY_SCHEDULE) + 1
    # even with every delay at the low end of its jitter
    assert sum(DEFAULT_RETRY_SCHEDULE) * (1 - RETRY_JITTER) >= 24 * 3600
    assert DEFAULT_RETRY_SCHEDULE[:4] == (5.0, 300.0, 1800.0, 7200.0)  # 5 s, 5 min, 30 min, 2 h


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5s,5m,30m,2h", (5.0, 300.0, 1800.0, 7200.0)), ("0.5, 1, 1d", (0.5, 1.0, 86400.0))],
)
def test_the_schedule_is_read_from_the_environment(monkeypatch, text, expected):
    monkeypatch.setenv("CARELOOP_RETRY_SCHEDULE", text)
    assert Settings().retry_schedule == expected


@pytest.mark.parametrize("text", ["", "5s,soon", "-1", "5x"])
def test_a_bad_schedule_is_refused_naming_the_setting(monkeypatch, text):
    from pydantic import ValidationError

    monkeypatch.setenv("CARELOOP_RETRY_SCHEDULE", text)
    with pytest.raises(ValidationError, match="CARELOOP_RETRY_SCHEDULE|duration"):
        Settings()


@pytest.fixture
def retry_app(pg_only_url, tmp_path, redis_conn, smtp, twilio_proxy):
    settings = peer_settings(
        pg_only_url,
        tmp_path,
        smtp,
        twilio_proxy,
        retry_schedule=(0.05, 0.1),  # three attempts
        provider_timeout=1.0,
        claim_timeout=15.0,
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
    registry = runtime.dispatcher.queue("email").scheduled_job_registry
    (job_id,) = registry.get_job_ids()
    assert registry.get_scheduled_time(job_id) >= due.replace(microsecond=0)


def test_deliveries_a_batch_claimed_before_the_database_went_are_given_back_by_its_resumed_job(
    retry_app, pg_only_url, smtp, twilio_proxy
):
    """A batch's claim can commit while its answer is lost with the connection: the job then
    knows only the deliveries it was given, not the ones it filled the batch with. When it is
    resumed, it gives those back at once instead of leaving them to the claim timeout."""
    from sqlalchemy import update

    from careloop import deliveries as dl
    from careloop.db import session_scope
    from careloop.models import Delivery
    from careloop.workers.jobs import deliver

    app, api = retry_app
    runtime = app.extensions["careloop"].runtime
    _therapy_log(api)
    _therapy_log(api)
    run_rq_until_settled(runtime)
    first, second = [d for d in all_deliveries(pg_only_url) if d.channel == "email"]
    assert len(smtp.received) == 2
    with session_scope(pg_only_url) as session:  # both due again, as if never sent
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_([first.id, second.id]))
            .values(status="queued", attempts=0, round_attempts=0, next_attempt_at=None, provider_id=None)
        )
    smtp.clear()
    token = dl.new_claim_token()
    with session_scope(pg_only_url) as session:  # the claim that committed; its answer was lost
        claimed = dl.claim_many(session, [first.id], token, fill_from=first.queue, fill_to=10)
    assert {c.delivery_id for c in claimed} == {first.id, second.id}
    assert deliver(first.id, runtime=runtime, claim_token=token) == "sent"
    (row,) = [x for x in all_deliveries(pg_only_url) if x.id == second.id]
    assert (row.status, row.attempts) == ("queued", 0)  # given back untried, due now
    run_rq_until_settled(runtime)
    assert len(smtp.received) == 2
    emails = [d for d in all_deliveries(pg_only_url) if d.channel == "email"]
    assert {(d.status, d.attempts) for d in emails} == {("sent", 1)}
