"""Fault tests: no alert lost, none sent twice — on real Redis, real RQ workers, PostgreSQL,
aiosmtpd and Twilio's API shape (Prism). Each fails if anything is lost or duplicated."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select

from careloop.db import session_scope
from careloop.models import Delivery, Event, OutboxEntry
from tests.conftest import (
    ADMIN_KEY,
    REDIS_URL,
    build_app,
    build_team,
    close_app,
    peer_settings,
    run_rq_until_settled,
    settings_env,
    wait_until,
)
from tests.peers.tcp_gate import TcpGate
from tests.peers.twilio_peer import Fault

pytestmark = pytest.mark.fault

REPO = Path(__file__).resolve().parent.parent
ENV_PREFIXES = ("CARELOOP_", "TWILIO_", "SMTP_", "REDIS_", "DATABASE_", "MAIL_")
"""Variables a test process must not pass on to the processes it starts."""


def all_deliveries(url) -> list[Delivery]:
    with session_scope(url) as session:
        return list(session.scalars(select(Delivery)).all())


def arrivals(smtp, twilio_proxy) -> collections.Counter:
    """How many times each delivery reached the SMTP server or Twilio, by delivery id."""
    counts: collections.Counter = collections.Counter()
    for message in smtp.messages:
        counts[str(message["Message-ID"]).strip("<>").split(".")[0]] += 1
    for sent in twilio_proxy.sent:
        counts[sent["StatusCallback"].rsplit("delivery=", 1)[1]] += 1
    return counts


def assert_exactly_once(url, smtp, twilio_proxy) -> list[Delivery]:
    rows = all_deliveries(url)
    counts = arrivals(smtp, twilio_proxy)
    assert not [d for d in rows if d.status in ("queued", "sending")], "a delivery was left in flight"
    twice = {k: v for k, v in counts.items() if v > 1}
    assert not twice, f"reached its recipient more than once: {twice}"
    for d in rows:
        if d.status in ("sent", "delivered"):
            assert counts[d.id] == 1, f"{d.id} marked {d.status} but arrived {counts[d.id]} times"
    unknown = set(counts) - {d.id for d in rows}
    assert not unknown, f"messages for deliveries careloop does not know: {unknown}"
    return rows


# 1 ─ Redis down while events arrive ─────────────────────────────────────────────────────────


def test_redis_down_while_200_events_posted_then_everything_routed_once(
    pg_only_url, tmp_path, redis_conn, smtp, twilio_proxy
):
    gate = TcpGate("127.0.0.1", 6379)  # closed: Redis is "down" on this URL
    settings = peer_settings(
        pg_only_url, tmp_path, smtp, twilio_proxy, redis_url=REDIS_URL.replace(":6379/", f":{gate.port}/")
    )
    app, api = build_app(settings)
    runtime = app.extensions["careloop"].runtime
    try:
        nb, m = build_team(api)
        ids = []
        for i in range(200):
            accepted = api.event(
                nb["id"],
                "medication.changed",
                {"medication": f"med-{i}", "change": "started"},
                author_member_id=m["mom"]["id"],
            )
            ids.append(accepted["id"])
        health = api.client.get("/healthz").get_json()
        assert health["status"] == "degraded" and health["queue"].startswith("unreachable")
        with session_scope(pg_only_url) as session:
            assert session.scalar(select(func.count()).select_from(Event)) == 200
            assert (
                session.scalar(
                    select(func.count()).select_from(OutboxEntry).where(OutboxEntry.done_at.is_(None))
                )
                == 200
            )
            assert session.scalar(select(func.count()).select_from(Delivery)) == 0

        gate.open()  # Redis is back
        run_rq_until_settled(runtime, timeout=180)

        rows = assert_exactly_once(pg_only_url, smtp, twilio_proxy)
        by_event = collections.defaultdict(list)
        for d in rows:
            by_event[d.event_id].append(d)
        assert sorted(by_event) == sorted(ids)
        for event_rows in by_event.values():
            assert sorted((d.channel, d.status) for d in event_rows) == [
                ("email", "sent"),
                ("email", "sent"),
                ("sms", "sent"),
                ("sms", "skipped"),
            ]
        assert len(smtp.messages) == 400 and len(twilio_proxy.sent) == 200
        assert all(api.get(f"/v1/events/{i}")["status"] == "routed" for i in ids[:5])
    finally:
        gate.close()


# 2 ─ SMTP refusing ──────────────────────────────────────────────────────────────────────────


@pytest.fixture
def fault_app(pg_only_url, tmp_path, redis_conn, smtp, twilio_proxy):
    settings = peer_settings(pg_only_url, tmp_path, smtp, twilio_proxy)
    app, api = build_app(settings)
    yield app, api
    close_app(app)


def _only(url, **where) -> Delivery:
    rows = [d for d in all_deliveries(url) if all(getattr(d, k) == v for k, v in where.items())]
    assert len(rows) == 1, rows
    return rows[0]


def test_smtp_451_twice_then_delivered_on_the_third_attempt(fault_app, pg_only_url, smtp, twilio_proxy):
    app, api = fault_app
    runtime = app.extensions["careloop"].runtime
    nb, m = build_team(api)
    smtp.script("451 4.3.0 Try again later", "451 4.3.0 Try again later")
    # therapy.logged → the parents by email; the author (mom) is not told: one delivery.
    api.event(
        nb["id"],
        "therapy.logged",
        {"discipline": "physical_therapy", "activity": "stairs"},
        author_member_id=m["mom"]["id"],
    )
    run_rq_until_settled(runtime)
    d = _only(pg_only_url, channel="email")
    assert (d.status, d.attempts, d.member_id) == ("sent", 3, m["dad"]["id"])
    assert d.provider_id == f"<{d.id}.3@careloop.test>"
    assert len(smtp.messages) == 1 and str(smtp.messages[0]["Message-ID"]) == d.provider_id
    assert_exactly_once(pg_only_url, smtp, twilio_proxy)


def test_smtp_550_fails_at_once_is_a_dead_letter_and_api_retry_sends_once(
    fault_app, pg_only_url, smtp, twilio_proxy
):
    app, api = fault_app
    runtime = app.extensions["careloop"].runtime
    nb, m = build_team(api)
    smtp.fail_always("550 5.1.1 Mailbox unavailable")
    api.event(
        nb["id"],
        "therapy.logged",
        {"discipline": "speech_therapy", "activity": "straw drinking"},
        author_member_id=m["mom"]["id"],
    )
    run_rq_until_settled(runtime)
    d = _only(pg_only_url, channel="email")
    assert (d.status, d.attempts) == ("failed", 1)
    assert "550" in d.error and "Mailbox unavailable" in d.error
    assert smtp.messages == []

    dead = api.get("/v1/deliveries?status=failed")["items"]
    assert [x["id"] for x in dead] == [d.id]
    assert dead[0]["error"] == d.error

    smtp.clear()  # the mailbox is fixed
    response = api.client.post(f"/v1/deliveries/{d.id}/retry", headers=api.headers)
    assert response.status_code == 202 and response.get_json()["status"] == "queued"
    again = api.client.post(f"/v1/deliveries/{d.id}/retry", headers=api.headers)  # a double click
    assert again.status_code == 200 and again.get_json()["status"] in ("queued", "sending", "sent")
    run_rq_until_settled(runtime)
    d = _only(pg_only_url, channel="email")
    assert (d.status, d.attempts) == ("sent", 2)
    assert len(smtp.messages) == 1
    assert api.get("/v1/deliveries?status=failed")["items"] == []
    # Retrying a sent delivery changes nothing and sends nothing.
    assert api.client.post(f"/v1/deliveries/{d.id}/retry", headers=api.headers).status_code == 200
    run_rq_until_settled(runtime)
    assert len(smtp.messages) == 1
    assert_exactly_once(pg_only_url, smtp, twilio_proxy)


# 3 ─ Twilio errors ──────────────────────────────────────────────────────────────────────────


def _sms_only_event(api, nb, m):
    # A seizure concern → neurology + parents by sms+email; neurology has no phone, mom authors.
    api.event(
        nb["id"],
        "concern.raised",
        {"summary": "Long staring spell", "severity": "medium", "area": "seizure"},
        author_member_id=m["mom"]["id"],
    )


def test_twilio_500_and_429_then_201_sends_one_message(fault_app, pg_only_url, smtp, twilio_proxy):
    app, api = fault_app
    runtime = app.extensions["careloop"].runtime
    nb, m = build_team(api)
    twilio_proxy.script(Fault(500), Fault(429, retry_after=1))
    started = time.monotonic()
    _sms_only_event(api, nb, m)
    run_rq_until_settled(runtime)
    elapsed = time.monotonic() - started
    d = _only(pg_only_url, channel="sms", status="sent")
    assert d.attempts == 3 and d.member_id == m["dad"]["id"]
    assert len(twilio_proxy.sent) == 1 and twilio_proxy.sent[0]["To"] == "+15555550102"
    assert d.provider_id == twilio_proxy.sent[0]["Sid"]
    posts = [r for r in twilio_proxy.requests if r.method == "POST"]
    assert len(posts) == 3
    assert elapsed >= 1.0, "Retry-After: 1 was not honoured"
    assert_exactly_once(pg_only_url, smtp, twilio_proxy)


def test_twilio_21610_fails_at_once_and_is_not_retried(fault_app, pg_only_url, smtp, twilio_proxy):
    app, api = fault_app
    runtime = app.extensions["careloop"].runtime
    nb, m = build_team(api)
    twilio_proxy.fail_always(Fault(400, code=21610))
    _sms_only_event(api, nb, m)
    run_rq_until_settled(runtime)
    d = _only(pg_only_url, channel="sms", member_id=m["dad"]["id"])
    assert (d.status, d.attempts) == ("failed", 1)
    assert "21610" in d.error
    assert len([r for r in twilio_proxy.requests if r.method == "POST"]) == 1
    assert twilio_proxy.sent == []


# 4 ─ a worker killed mid-send ───────────────────────────────────────────────────────────────


def worker_env(settings) -> dict:
    """A worker process's whole environment: this one, less careloop's variables, plus
    exactly those for ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    env.update(settings_env(settings), PYTHONUNBUFFERED="1")
    return env


def start_worker(env, log_path: Path, *args: str) -> subprocess.Popen:
    """`careloop worker` as a real process (its own process group: worker, horse, scheduler)."""
    return subprocess.Popen(
        [sys.executable, "-m", "careloop.cli", "worker", *args],
        cwd=REPO,
        env=env,
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_worker(proc: subprocess.Popen, sig=signal.SIGTERM, timeout=30) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (RQ's work horse runs in a process group of its own)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[ppid].append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def crash(proc: subprocess.Popen) -> list[int]:
    """SIGKILL a worker with its work horse and scheduler at once, as a machine crash would."""
    pids = process_tree(proc.pid)
    for pid in reversed(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)
    return pids


def _statuses(url) -> collections.Counter:
    return collections.Counter(d.status for d in all_deliveries(url))


def test_worker_killed_mid_send_leaves_nothing_stuck_and_nothing_twice(
    pg_only_url, tmp_path, redis_conn, smtp, twilio_proxy
):
    settings = peer_settings(
        pg_only_url,
        tmp_path,
        smtp,
        twilio_proxy,
        provider_timeout=2.0,
        claim_timeout=16.0,
        relay_interval=0.5,
    )
    app, api = build_app(settings)
    env = worker_env(settings)
    log = tmp_path / "workers.log"
    smtp.delay = 1.5  # the server takes its time to say 250: the kill lands while a send waits
    twilio_proxy.remember_sent = True  # the mock keeps messages so a lookup can find them, like Twilio
    twilio_proxy.delay = 0.3
    first = second = None
    try:
        nb, m = build_team(api)
        for i in range(8):
            api.event(
                nb["id"],
                "medication.changed",
                {"medication": f"med-{i}", "change": "stopped"},
                author_member_id=m["mom"]["id"],
            )
        first = start_worker(env, log)
        smtp.wait_for(3, timeout=60)  # the third email is at the server, its 250 still pending
        killed = crash(first)
        assert len(killed) >= 2, "the work horse was not found"
        killed_at = time.monotonic()
        in_flight = _statuses(pg_only_url)
        assert in_flight["sending"] >= 1, f"the kill did not land mid-send: {in_flight}"
        # work left for the second worker: deliveries still queued, or claimed by the dead
        # worker's batch without their provider ever being called
        untried = [
            d
            for d in all_deliveries(pg_only_url)
            if d.status == "queued" or (d.status == "sending" and d.provider_called_at is None)
        ]
        assert untried, f"nothing was left for the second worker: {in_flight}"

        smtp.delay = 0
        twilio_proxy.delay = 0
        second = start_worker(env, log)
        wait_until(
            lambda: not {"queued", "sending"} & set(+_statuses(pg_only_url)),
            timeout=120,
            interval=0.5,
            message="the second worker to settle every delivery",
        )
        assert time.monotonic() - killed_at < 120
        rows = assert_exactly_once(pg_only_url, smtp, twilio_proxy)
        unknown = [d for d in rows if d.status == "failed"]
        assert unknown, (
            "the email in flight at the kill should be failed as outcome unknown",
            in_flight,
            [(d.channel, d.status, d.attempts, d.error) for d in rows],
        )
        for d in unknown:
            assert d.error.startswith("outcome unknown"), d.error
        assert all(d.status in ("sent", "skipped", "failed") for d in rows)
        assert sum(d.status == "sent" for d in rows) == len(rows) - len(unknown) - 8  # 8 skipped sms
    finally:
        for proc in (first, second):
            if proc is not None:
                stop_worker(proc)
        if os.environ.get("CARELOOP_TEST_SHOW_WORKER_LOG"):
            print(log.read_text())


# 5 ─ one Idempotency-Key, 50 concurrent posts ───────────────────────────────────────────────


def test_same_event_posted_50_times_concurrently_is_one_event(
    db_url, tmp_path, redis_conn, smtp, twilio_proxy
):
    from werkzeug.serving import make_server

    settings = peer_settings(db_url, tmp_path, smtp, twilio_proxy)
    app, api = build_app(settings)
    runtime = app.extensions["careloop"].runtime
    nb, m = build_team(api)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/v1/notebooks/{nb['id']}/events"
    body = json.dumps(
        {
            "type": "concern.raised",
            "data": {"summary": "Fell twice today", "severity": "high", "area": "movement"},
        }
    ).encode()

    def post(_):
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={
                "Authorization": f"Bearer {ADMIN_KEY}",
                "Content-Type": "application/json",
                "Idempotency-Key": "fall-1",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())["id"]

    try:
        with ThreadPoolExecutor(max_workers=50) as pool:
            results = list(pool.map(post, range(50)))
        assert {status for status, _ in results} == {202}
        assert len({event_id for _, event_id in results}) == 1
        run_rq_until_settled(runtime)
        with session_scope(db_url) as session:
            assert session.scalar(select(func.count()).select_from(Event)) == 1
            assert session.scalar(select(func.count()).select_from(OutboxEntry)) == 1
        rows = assert_exactly_once(db_url, smtp, twilio_proxy)
        # high concern: whole team (6 members, sms+email) → 12 deliveries, 3 of them skipped sms
        assert len(rows) == 12 and sum(d.status == "skipped" for d in rows) == 3
        assert len(smtp.messages) == 6 and len(twilio_proxy.sent) == 3
    finally:
        server.shutdown()


# 6 ─ two workers racing ─────────────────────────────────────────────────────────────────────


def test_two_workers_racing_on_50_deliveries_send_each_once(
    pg_only_url, tmp_path, redis_conn, smtp, twilio_proxy
):
    """Each delivery's job is enqueued twice and two worker processes race over them. About 50
    deliveries prove what 500 did (the race is per job, not per batch) in a tenth of the time."""
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    from careloop.workers import jobs

    settings = peer_settings(pg_only_url, tmp_path, smtp, twilio_proxy)
    app, api = build_app(settings)
    runtime = app.extensions["careloop"].runtime
    env = worker_env(settings)
    log = tmp_path / "workers.log"
    workers = []
    try:
        nb, m = build_team(api)
        # An urgent concern by mom → 10 deliveries (7 to send, 3 skipped sms); 7 events → 49 sends.
        for i in range(7):
            api.event(
                nb["id"],
                "concern.raised",
                {"summary": f"concern {i}", "severity": "urgent"},
                author_member_id=m["mom"]["id"],
            )
        # Route in-process only (route queue), so every delivery job waits in the deliver queue...
        route_queue = runtime.dispatcher.route_queue
        jobs.use_runtime(runtime)
        try:
            SimpleWorker(
                [route_queue], connection=runtime.dispatcher.connection, serializer=JSONSerializer
            ).work(burst=True, logging_level="WARNING")
        finally:
            jobs.use_runtime(None)
        to_send = [d.id for d in all_deliveries(pg_only_url) if d.status == "queued"]
        assert len(to_send) == 49
        # ...then enqueue every delivery a second time, as a redelivery would: two jobs per delivery.
        # (each with an id of its own: as if an older release had enqueued it, or a relay had)
        queues = {d.id: d.queue for d in all_deliveries(pg_only_url)}
        for delivery_id in to_send:
            runtime.dispatcher.queue(queues[delivery_id]).enqueue(jobs.deliver, delivery_id)
        queued = sum(runtime.dispatcher.queue(q).count for q in ("sms-urgent", "email-urgent"))
        assert queued == 7 * 2 + 49  # per event a batch job per queue, plus one job per delivery
        workers = [start_worker(env, log, "--burst"), start_worker(env, log, "--burst")]
        for proc in workers:
            proc.wait(timeout=300)
            assert proc.returncode == 0, log.read_text()[-3000:]
        rows = assert_exactly_once(pg_only_url, smtp, twilio_proxy)
        sent = [d for d in rows if d.status == "sent"]
        assert len(sent) == 49 and all(d.attempts == 1 for d in sent)
        assert len(smtp.messages) == 35 and len(twilio_proxy.sent) == 14
    finally:
        for proc in workers:
            stop_worker(proc)


def test_concurrent_checkin_requests_never_500_and_each_update_gets_its_own_sequence(
    db_url, tmp_path, redis_conn, smtp, twilio_proxy
):
    """Twenty clinics' systems scheduling the same check-in at once: one wins, the rest get a
    422 naming data.checkin_id. Then ten concurrent updates: ten distinct SEQUENCE numbers."""
    from werkzeug.serving import make_server

    from tests.conftest import checkin_data

    settings = peer_settings(db_url, tmp_path, smtp, twilio_proxy)
    app, api = build_app(settings)
    nb, m = build_team(api)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/v1/notebooks/{nb['id']}/events"

    def post(body):
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    attendees = [m["dad"]["id"], m["slp"]["id"]]
    try:
        with ThreadPoolExecutor(max_workers=20) as pool:
            scheduled = list(
                pool.map(post, [{"type": "checkin.scheduled", "data": checkin_data(attendees)}] * 20)
            )
        codes = sorted(code for code, _ in scheduled)
        assert codes == [202] + [422] * 19, codes
        assert all("data.checkin_id" in body["fields"] for code, body in scheduled if code == 422)

        updates = [
            {"type": "checkin.updated", "data": checkin_data(attendees, title=f"IEP v{i}")} for i in range(10)
        ]
        with ThreadPoolExecutor(max_workers=10) as pool:
            answers = list(pool.map(post, updates))
        assert [code for code, _ in answers] == [202] * 10
        with session_scope(db_url) as session:
            sequences = sorted(
                e.context["checkin"]["sequence"]
                for e in session.scalars(select(Event).where(Event.type == "checkin.updated"))
            )
        assert sequences == list(range(1, 11))
    finally:
        server.shutdown()
