"""Worker throughput: deliveries/s through real ``careloop worker`` processes (as the Procfile
runs them: one for texts, one for mail) to local sinks (Postfix's smtp-sink; a minimal
Twilio-shaped HTTP 201 responder), against RQ's default ``rq worker`` running one no-op job
per delivery, measured in the same run.

    .venv/bin/python -m bench.bench_workers [EVENTS] [BACKLOG]

Each urgent concern fans out to 7 sends (5 emails, 2 texts) and 3 skipped texts; the default
715 events make 5,005 sends. Uses PostgreSQL (a database of its own, dropped afterwards),
Redis DB 14 (flushed), all on 127.0.0.1. Prints deliveries/s, the ratio to the baseline,
each worker's peak RSS and the database commits per delivery (from PostgreSQL's statistics).

Then urgent first: BACKLOG (default 5,000) ordinary deliveries (medication changes, 5 sends
each, posted through ``…/events:batch``) are routed and waiting when an urgent concern
arrives; prints how long after its routing its deliveries reached the providers, against how
long the backlog still took to drain (what it would have waited at the back of one queue).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from redis import Redis
from rq import Queue
from sqlalchemy import create_engine, func, select, text

from bench.sinks import SmtpSink, TwilioSink
from careloop.config.settings import Settings
from careloop.db import dispose_all, session_scope, upgrade
from careloop.models import Delivery, Event
from careloop.service import create_app

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/careloop_bench_workers"
REDIS_URL = "redis://127.0.0.1:6379/14"
ADMIN = "bench-admin-key-0123456789abcdef0123456789"
PREFIX = "careloop-bench"
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
TOKEN = "0123456789abcdef0123456789abcdef"
REPO = Path(__file__).resolve().parent.parent
PROCFILE_WORKERS = (("--channels", "sms"), ("--channels", "email,calendar"))


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def settings_for(smtp: SmtpSink, twilio: TwilioSink, outbox: str) -> Settings:
    return Settings.from_values(
        database_url=PG_URL,
        redis_url=REDIS_URL,
        admin_key=ADMIN,
        queue_prefix=PREFIX,
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        smtp_starttls=False,
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=TOKEN,
        twilio_from="+15005550006",
        twilio_api_url=twilio.url,
        mail_from="careloop <care@example.org>",
        outbox_dir=outbox,
        relay_interval=1.0,
    )


def worker_env(settings: Settings) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CARELOOP_", "TWILIO_", "SMTP_", "REDIS"))
    }
    env.update(
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        CARELOOP_QUEUE_PREFIX=PREFIX,
        CARELOOP_ADMIN_KEY=ADMIN,
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(settings.smtp_port),
        SMTP_STARTTLS="false",
        TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        TWILIO_AUTH_TOKEN=TOKEN,
        TWILIO_FROM="+15005550006",
        TWILIO_API_URL=settings.twilio_api_url,
        MAIL_FROM=settings.mail_from,
        CARELOOP_OUTBOX_DIR=str(settings.outbox_dir),
        CARELOOP_RELAY_INTERVAL="1",
    )
    return env


def post_events(settings: Settings, events: int) -> int:
    """A notebook with a typical team and ``events`` urgent concerns; returns the sends due."""
    app = create_app(settings=settings)
    client = app.test_client()
    nb, members = make_team(client)
    for i in range(events):
        response = client.post(
            f"/v1/notebooks/{nb['id']}/events",
            json={"type": "concern.raised", "data": {"summary": f"c{i}", "severity": "urgent"},
                  "author_member_id": members[0]["id"]},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )  # fmt: skip
        assert response.status_code == 202, response.get_json()
    app.extensions["careloop"].runtime.close()
    return events * 7


def make_team(client) -> tuple[dict, list[dict]]:
    """A notebook with a typical team (6 members, 3 with phones)."""
    headers = {"Authorization": f"Bearer {ADMIN}"}

    def post(url, body):
        response = client.post(url, json=body, headers=headers)
        assert response.status_code in (201, 202), response.get_json()
        return response.get_json()

    nb = post("/v1/notebooks", {"name": "bench", "child_name": "Maya", "timezone": "UTC"})
    team = [
        ("Dana", "parent", "dana@example.org", "+15555550101"),
        ("Sam", "parent", "sam@example.org", "+15555550102"),
        ("Dr. Shah", "neurology", "shah@example.org", None),
        ("Alex", "physical_therapy", "alex@example.org", "+15555550104"),
        ("Jordan", "speech_therapy", "jordan@example.org", None),
        ("Ms. Ortiz", "school", "ortiz@example.org", None),
    ]
    members = []
    for name, role, email, phone in team:
        body = {"name": name, "role": role, "email": email, **({"phone": phone} if phone else {})}
        members.append(post(f"/v1/notebooks/{nb['id']}/members", body))
    return nb, members


def pending() -> tuple[int, int]:
    with session_scope(PG_URL) as session:
        total = session.scalar(select(func.count()).select_from(Delivery))
        open_ = session.scalar(
            select(func.count()).select_from(Delivery).where(Delivery.status.in_(("queued", "sending")))
        )
    return total, open_


def start_workers(settings: Settings, log) -> list[subprocess.Popen]:
    env = worker_env(settings)
    return [
        subprocess.Popen(
            [sys.executable, "-m", "careloop.cli", "worker", *args],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        for args in PROCFILE_WORKERS
    ]


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(30)


def commits() -> int:
    """Transactions committed in the bench database so far (PostgreSQL's statistics)."""
    with create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        return int(
            conn.scalar(
                text("SELECT xact_commit FROM pg_stat_database WHERE datname = 'careloop_bench_workers'")
            )
        )


def run_careloop(
    settings: Settings, sends: int, smtp: SmtpSink, twilio: TwilioSink
) -> tuple[float, list[float]]:
    log = open(Path(settings.outbox_dir) / "workers.log", "wb")  # noqa: SIM115 - closed below
    start = time.perf_counter()
    procs = start_workers(settings, log)
    try:
        while smtp.messages + twilio.count < sends or pending()[1]:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a worker exited; see " + log.name)
            time.sleep(0.1)
        elapsed = time.perf_counter() - start
        rss = [peak_rss_mb(p.pid) for p in procs]
    finally:
        stop_workers(procs)
        log.close()
    return elapsed, rss


def run_urgent(settings: Settings, backlog: int) -> dict[str, float]:
    """Urgent first: an urgent concern arriving behind ``backlog`` routed, waiting deliveries."""
    app = create_app(settings=settings)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {ADMIN}"}
    nb, members = make_team(client)
    change = {"type": "medication.changed", "data": {"medication": "m", "change": "started"}}
    events = -(-backlog // 5)  # 5 sends each: both parents by text and email, neurology by email
    for start in range(0, events, 500):
        response = client.post(
            f"/v1/notebooks/{nb['id']}/events:batch",
            json={"events": [change] * min(500, events - start)},
            headers=headers,
        )
        assert response.status_code == 200, response.get_json()
    log = open(Path(settings.outbox_dir) / "urgent.log", "wb")  # noqa: SIM115 - closed below
    procs = start_workers(settings, log)
    try:
        with session_scope(PG_URL) as session:
            while session.scalar(select(func.count()).select_from(Event).where(Event.routed_at.is_(None))):
                session.commit()
                time.sleep(0.05)
            waiting = session.scalar(
                select(func.count()).select_from(Delivery).where(Delivery.status == "queued")
            )
        response = client.post(
            f"/v1/notebooks/{nb['id']}/events",
            json={"type": "concern.raised", "data": {"summary": "Seizure", "severity": "urgent"},
                  "author_member_id": members[0]["id"]},
            headers=headers,
        )  # fmt: skip
        assert response.status_code == 202, response.get_json()
        urgent = response.get_json()["id"]
        with session_scope(PG_URL) as session:
            while True:
                rows = session.execute(
                    select(Delivery.status, Delivery.sent_at).where(Delivery.event_id == urgent)
                ).all()
                if rows and all(r.status in ("sent", "skipped") for r in rows):
                    break
                session.commit()
                time.sleep(0.02)
            event = session.get(Event, urgent)
            routed, recorded = event.routed_at, event.recorded_at
            while session.scalar(
                select(func.count()).select_from(Delivery).where(Delivery.status.in_(("queued", "sending")))
            ):
                session.commit()
                time.sleep(0.1)
            drained = session.scalar(select(func.max(Delivery.sent_at)))
    finally:
        stop_workers(procs)
        log.close()
        app.extensions["careloop"].runtime.close()
    sent = [r.sent_at for r in rows if r.sent_at]
    return {
        "backlog": waiting,
        "after_routing": (max(sent) - routed).total_seconds(),
        "after_202": (max(sent) - recorded).total_seconds(),
        "drain": (drained - routed).total_seconds(),
    }


def run_rq_baseline(jobs: int) -> float:
    """RQ's default worker (a forked work horse per job) running ``jobs`` no-op jobs."""
    connection = Redis.from_url(REDIS_URL)
    queue = Queue(f"{PREFIX}-baseline", connection=connection)
    queue.enqueue_many([Queue.prepare_data("bench.noop.noop", result_ttl=60) for _ in range(jobs)])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    subprocess.run(
        [str(Path(sys.executable).parent / "rq"), "worker", "--burst", "--url", REDIS_URL, "--logging_level",
         "WARNING", queue.name],
        env=env, cwd=REPO, check=True,
    )  # fmt: skip
    return time.perf_counter() - start


def main(events: int, backlog: int) -> None:
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS careloop_bench_workers WITH (FORCE)"))
        conn.execute(text("CREATE DATABASE careloop_bench_workers"))
    Redis.from_url(REDIS_URL).flushdb()
    smtp, twilio = SmtpSink(), TwilioSink()
    try:
        with tempfile.TemporaryDirectory() as outbox:
            upgrade(PG_URL)
            settings = settings_for(smtp, twilio, outbox)
            sends = post_events(settings, events)
            before = commits()
            elapsed, rss = run_careloop(settings, sends, smtp, twilio)
            per_delivery = (commits() - before) / sends
            total, open_ = pending()
            assert open_ == 0 and smtp.messages + twilio.count == sends, (smtp.messages, twilio.count, sends)
            baseline = run_rq_baseline(sends)
            ours, theirs = sends / elapsed, sends / baseline
            print(
                f"workers: {sends:,} sends ({smtp.messages:,} emails, {twilio.count:,} texts) "
                f"in {elapsed:.1f}s "
                f"= {ours:,.0f} deliveries/s by 2 careloop workers (Procfile) · RQ's default worker "
                f"{theirs:,.0f} no-op jobs/s · ratio {ours / theirs:.1f}× (target ≥ 10×) · "
                f"{per_delivery:.2f} database transactions per delivery (reads, routing and relay included)"
            )
            print(
                "memory: workers (sms, mail) peak RSS "
                + ", ".join(f"{r:.0f} MB" for r in rss)
                + " (target < 150 MB)"
            )
            Redis.from_url(REDIS_URL).flushdb()
            urgent = run_urgent(settings, backlog)
            print(
                f"urgent first: behind {urgent['backlog']:,} waiting deliveries, an urgent concern's 7 sends "
                f"reached the providers {urgent['after_routing']:.2f} s after its routing "
                f"({urgent['after_202']:.2f} s after its 202; target ≤ 2 s) · the backlog took "
                f"{urgent['drain']:.1f} s more to drain (its wait at the back of one queue) · ratio "
                f"{urgent['after_routing'] / urgent['drain']:.3f}× of that"
            )
    finally:
        smtp.stop()
        twilio.stop()
        Redis.from_url(REDIS_URL).flushdb()
        dispose_all()
        with admin.connect() as conn:
            conn.execute(text("DROP DATABASE IF EXISTS careloop_bench_workers WITH (FORCE)"))
        admin.dispose()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 715, int(sys.argv[2]) if len(sys.argv) > 2 else 5000)
