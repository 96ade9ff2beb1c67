"""No alert lost when the parts around careloop fail for a while: Redis restarted empty, Twilio
unreachable for longer than a short retry window, an SMTP server that swallows DATA, the
database restarted, SIGTERM to every process of a worker.

Real worker processes (`careloop worker`), a Redis and a PostgreSQL cluster of the test's own
(killed and restarted; the machine's shared ones are never touched), aiosmtpd and Twilio's API
under Prism. Every test ends by counting arrivals at the SMTP server and the Twilio mock:
nothing lost, nothing twice, nothing left queued or sending. Workloads are the smallest that
show each failure; retry schedules are shortened in proportion (the default schedule's day is
checked in tests/test_retries.py).
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from sqlalchemy import func, select

from careloop.db import dispose_all, session_scope, upgrade
from careloop.models import OutboxEntry
from tests.conftest import build_app, build_team, peer_settings, wait_until
from tests.peers.own_services import OwnPostgres, OwnRedis
from tests.peers.tcp_gate import TcpGate
from tests.test_faults import (
    all_deliveries,
    assert_exactly_once,
    process_tree,
    start_worker,
    stop_worker,
    worker_env,
)

pytestmark = pytest.mark.fault

SHORT_SCHEDULE = (0.5, 1.0, 2.0, 4.0, 8.0)
"""Six attempts over ~15 s: the test's stand-in for the day-long default."""


def urgent_concerns(api, nb, m, count: int) -> list[str]:
    """Urgent concerns by mom: each → the five others by email, dad and the PT by SMS."""
    return [
        api.event(
            nb["id"],
            "concern.raised",
            {"summary": f"concern {i}", "severity": "urgent"},
            author_member_id=m["mom"]["id"],
        )["id"]
        for i in range(count)
    ]


def settled(url) -> bool:
    """Every event routed and every delivery in a final state."""
    with session_scope(url) as session:
        unrouted = session.scalar(
            select(func.count()).select_from(OutboxEntry).where(OutboxEntry.done_at.is_(None))
        )
    rows = all_deliveries(url)
    return not unrouted and bool(rows) and not [d for d in rows if d.status in ("queued", "sending")]


@pytest.fixture
def own_redis(tmp_path):
    redis = OwnRedis(tmp_path)
    redis.start()
    yield redis
    redis.kill()


# 1 ─ Redis killed and restarted empty ───────────────────────────────────────────────────────


def test_workers_outlive_redis_restarted_empty_and_every_delivery_is_sent_once(
    pg_only_url, tmp_path, own_redis, smtp, twilio_proxy
):
    settings = peer_settings(
        pg_only_url, tmp_path, smtp, twilio_proxy, redis_url=own_redis.url, relay_interval=0.5
    )
    env = worker_env(settings)
    log = tmp_path / "workers.log"
    app, api = build_app(settings)
    workers = []
    try:
        nb, m = build_team(api)
        smtp.delay = 0.2  # sends take a while: Redis goes while deliveries are queued and in flight
        workers.append(start_worker(env, log))
        urgent_concerns(api, nb, m, 4)  # 4 × (5 emails + 2 texts)
        smtp.wait_for(2, timeout=30)
        own_redis.kill()  # everything queued in Redis is gone
        workers.append(start_worker(env, log))  # a worker started while Redis is down waits
        time.sleep(2)  # an outage, not a blip: both workers must live through it
        assert all(w.poll() is None for w in workers), log.read_text()[-3000:]
        own_redis.start()  # back, and empty
        back = time.monotonic()
        wait_until(lambda: settled(pg_only_url), timeout=60, message="every delivery settled")
        recovered_in = time.monotonic() - back
        assert all(w.poll() is None for w in workers), "a worker exited: " + log.read_text()[-3000:]
        rows = assert_exactly_once(pg_only_url, smtp, twilio_proxy)
        assert sorted({d.status for d in rows}) == ["sent", "skipped"]
        assert len(smtp.messages) == 20 and len(twilio_proxy.sent) == 8
        # found by the relay's check for lost data, not after the claim timeout (30 s here)
        assert recovered_in < settings.claim_timeout, recovered_in
        assert "the queue lost its data" in log.read_text()
    finally:
        for worker in workers:
            stop_worker(worker)


# 2 ─ Twilio unreachable for longer than a short retry window ─────────────────────────────────


def test_twilio_unreachable_for_a_while_dead_letters_nothing(
    pg_only_url, tmp_path, redis_conn, smtp, twilio_proxy
):
    gate = TcpGate("127.0.0.1", int(twilio_proxy.url.rsplit(":", 1)[1]))  # closed: Twilio is away
    settings = peer_settings(
        pg_only_url,
        tmp_path,
        smtp,
        twilio_proxy,
        twilio_api_url=f"http://127.0.0.1:{gate.port}",
        retry_schedule=SHORT_SCHEDULE,
        provider_timeout=1.0,
    )
    log = tmp_path / "workers.log"
    app, api = build_app(settings)
    worker = start_worker(worker_env(settings), log)
    try:
        nb, m = build_team(api)
        for i in range(3):  # medication changes by mom → one text each, to dad
            api.event(nb["id"], "medication.changed", {"medication": f"m{i}", "change": "started"},
                      author_member_id=m["mom"]["id"])  # fmt: skip

        # The texts wait, each with the time of its next try for all to see.
        def waiting():
            items = api.get("/v1/deliveries?status=queued")["items"]
            texts = [d for d in items if d["channel"] == "sms" and d["attempts"] >= 2]
            return len(texts) == 3 and all(d["next_attempt_at"] and d["error"] for d in texts)

        wait_until(waiting, timeout=30, message="texts waiting to be tried again")

        # ...longer than the old 5-attempt window of this scale would have lasted
        def texts():
            return [d for d in all_deliveries(pg_only_url) if d.channel == "sms" and d.status != "skipped"]

        wait_until(lambda: min(d.attempts for d in texts()) >= 4, timeout=30, message="four attempts each")
        assert not [d for d in all_deliveries(pg_only_url) if d.status == "failed"]
        gate.open()
        wait_until(lambda: settled(pg_only_url), timeout=60, message="the texts sent once Twilio is back")
        rows = assert_exactly_once(pg_only_url, smtp, twilio_proxy)
        assert not [d for d in rows if d.status == "failed"]
        assert len(twilio_proxy.sent) == 3 and len(smtp.messages) == 6  # dad and neurology by email
    finally:
        stop_worker(worker)
        gate.close()


# 3 ─ An SMTP server that swallows DATA, and texts that must not wait for it ─────────────────


def test_a_hung_smtp_server_neither_loses_mail_nor_delays_texts(
    pg_only_url, tmp_path, redis_conn, smtp, twilio_proxy
):
    settings = peer_settings(
        pg_only_url, tmp_path, smtp, twilio_proxy, retry_schedule=SHORT_SCHEDULE, provider_timeout=1.0
    )
    env = worker_env(settings)
    log = tmp_path / "workers.log"
    app, api = build_app(settings)
    # as the Procfile runs them: texts and mail in processes of their own
    workers = [
        start_worker(env, log, "--channels", "sms"),
        start_worker(env, log, "--channels", "email,calendar"),
    ]
    try:
        nb, m = build_team(api)
        smtp.swallow_data(10)
        posted = time.monotonic()
        urgent_concerns(api, nb, m, 2)  # 10 emails, 4 texts
        wait_until(lambda: len(twilio_proxy.sent) == 4, timeout=15, message="the texts")
        texts_took = time.monotonic() - posted
        assert smtp.swallowing() > 0, "the texts waited for the SMTP server"
        assert texts_took < 8, texts_took
        wait_until(lambda: settled(pg_only_url), timeout=60, message="the mail, once SMTP answers again")
        rows = assert_exactly_once(pg_only_url, smtp, twilio_proxy)
        assert smtp.swallowed >= 1 and len(smtp.messages) == 10
        # a DATA never answered sent nothing: retried, never "outcome unknown"
        assert not [d for d in rows if d.status == "failed"], [d.error for d in rows if d.error]
    finally:
        for worker in workers:
            stop_worker(worker)


# 4 ─ The database restarted under load ──────────────────────────────────────────────────────


@pytest.fixture
def own_pg():
    cluster = OwnPostgres()
    cluster.create()
    upgrade(cluster.url)
    yield cluster
    dispose_all()
    cluster.destroy()


def test_a_database_restart_loses_nothing_and_intake_answers_503(
    own_pg, tmp_path, redis_conn, smtp, twilio_proxy
):
    settings = peer_settings(own_pg.url, tmp_path, smtp, twilio_proxy, claim_timeout=60.0, relay_interval=0.5)
    env = worker_env(settings)
    log = tmp_path / "workers.log"
    app, api = build_app(settings)
    workers = []
    try:
        nb, m = build_team(api)
        smtp.delay = 0.3
        workers = [start_worker(env, log), start_worker(env, log)]
        urgent_concerns(api, nb, m, 3)  # 15 emails, 6 texts
        smtp.wait_for(1, timeout=30)
        own_pg.stop()  # fast shutdown: every connection is cut, mid-job for some
        answers = [
            api.client.post(
                f"/v1/notebooks/{nb['id']}/events",
                json={
                    "type": "note.added",
                    "data": {"text": "while the database is down", "voice": "family"},
                },
                headers=api.headers,
            )
            for _ in range(5)
        ]
        assert {a.status_code for a in answers} == {503}, [a.get_json() for a in answers]
        assert all(a.headers["Retry-After"] and a.get_json()["error"] == "unavailable" for a in answers)
        own_pg.start()
        back = time.monotonic()
        urgent_concerns(api, nb, m, 1)  # intake works again at once
        wait_until(lambda: settled(own_pg.url), timeout=60, message="every delivery settled")
        # jobs that met the database error were tried again within seconds, not after the
        # 60 s claim timeout
        assert time.monotonic() - back < 30
        assert all(w.poll() is None for w in workers), log.read_text()[-3000:]
        rows = assert_exactly_once(own_pg.url, smtp, twilio_proxy)
        assert len(smtp.messages) == 20 and len(twilio_proxy.sent) == 8
        assert not [d for d in rows if d.status == "failed"], [d.error for d in rows if d.error]
    finally:
        for worker in workers:
            stop_worker(worker)


# 5 ─ SIGTERM to every process, as systemd, Heroku and Kubernetes send it ──────────────────


def test_sigterm_to_every_process_of_a_worker_finishes_the_send_in_hand(
    pg_only_url, tmp_path, redis_conn, smtp, twilio_proxy
):
    settings = peer_settings(pg_only_url, tmp_path, smtp, twilio_proxy)
    log = tmp_path / "worker.log"
    app, api = build_app(settings)
    nb, m = build_team(api)
    smtp.delay = 1.0  # the server has the message but answers slowly (within the 2 s timeout)
    worker = start_worker(worker_env(settings), log, "--channels", "email")
    try:
        api.event(
            nb["id"],
            "therapy.logged",
            {"discipline": "speech_therapy", "activity": "straws"},
            author_member_id=m["mom"]["id"],
        )  # fmt: skip → one email, to dad
        smtp.wait_for(1, timeout=30)  # mid-send: the 250 has not come yet
        for pid in process_tree(worker.pid):  # each process, not just the group
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        assert worker.wait(timeout=60) == 0, log.read_text()[-3000:]
        rows = assert_exactly_once(pg_only_url, smtp, twilio_proxy)
        assert [(d.status, d.attempts) for d in rows if d.channel == "email"] == [("sent", 1)]
    finally:
        stop_worker(worker)
