"""End to end: a steady stream of events (default 100/s for 60 s), each fanned out to 3 sends
(two emails and a text), through the Procfile's processes (gunicorn ``web``, the ``worker`` and
``mailer``) to local sinks. Reports the latency from the event's acceptance (202) to the
provider accepting each message (p50, p99, max) and checks nothing was lost.

    .venv/bin/python -m bench.bench_e2e [EVENTS_PER_SECOND] [SECONDS]   (run.sh: 100/s, 60 s; --quick 15 s)
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from redis import Redis
from sqlalchemy import create_engine, func, select, text

from bench.bench_http import PG_ADMIN, REDIS_URL, call, procfile_web, serve
from bench.sinks import SmtpSink, TwilioSink, free_port
from careloop.db import dispose_all, session_scope, upgrade
from careloop.models import Delivery, Event

REPO = Path(__file__).resolve().parent.parent
DB = "careloop_bench_e2e"
PG_URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB}"
ADMIN = "bench-admin-key-0123456789abcdef0123456789"
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2


def post_steadily(port: int, path: str, key: str, rate: float, seconds: float, body: dict) -> int:
    """POST ``body`` ``rate`` times a second for ``seconds`` from 4 keep-alive connections."""
    sent = [0]
    interval = 4 / rate
    start = time.monotonic()

    def client(offset: float) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        payload = json.dumps(body)
        n = 0
        while (due := start + offset + n * interval) < start + seconds:
            time.sleep(max(0.0, due - time.monotonic()))
            conn.request("POST", path, payload, headers)
            response = conn.getresponse()
            response.read()
            assert response.status == 202, response.status
            sent[0] += 1
            n += 1

    threads = [threading.Thread(target=client, args=(i * interval / 4,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sent[0]


def main(rate: float, seconds: float) -> None:
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        conn.execute(text(f"CREATE DATABASE {DB}"))
    upgrade(PG_URL)
    Redis.from_url(REDIS_URL).flushdb()
    smtp, twilio = SmtpSink(), TwilioSink()
    keep = ("PATH", "HOME", "LANG")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(
        DATABASE_URL=PG_URL, REDIS_URL=REDIS_URL, CARELOOP_ADMIN_KEY=ADMIN, CARELOOP_QUEUE_PREFIX="bench-e2e",
        SMTP_HOST="127.0.0.1", SMTP_PORT=str(smtp.port), SMTP_STARTTLS="false", MAIL_FROM="care@example.org",
        TWILIO_ACCOUNT_SID=ACCOUNT_SID, TWILIO_AUTH_TOKEN="0123456789abcdef0123456789abcdef",
        TWILIO_FROM="+15005550006", TWILIO_API_URL=twilio.url, CARELOOP_RELAY_INTERVAL="1",
    )  # fmt: skip
    procs = []
    try:
        port = free_port()
        procs.append(serve(procfile_web(), env, port))
        for args in (("--channels", "sms"), ("--channels", "email,calendar")):
            procs.append(
                subprocess.Popen([sys.executable, "-m", "careloop.cli", "worker", *args], env=env, cwd=REPO,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            )  # fmt: skip
        nb = call(port, "/v1/notebooks", {"name": "b", "child_name": "Maya", "timezone": "UTC"}, ADMIN)
        _members = [
            call(port, f"/v1/notebooks/{nb['id']}/members", body, ADMIN)
            for body in (
                {"name": "Dana", "role": "parent", "email": "dana@example.org"},
                {"name": "Sam", "role": "parent", "email": "sam@example.org", "phone": "+15555550102"},
            )
        ]
        key = call(port, f"/v1/notebooks/{nb['id']}/keys", {"name": "bench"}, ADMIN)["key"]
        # a medication change by neither parent: both parents by email, Sam by text = 3 sends
        body = {"type": "medication.changed", "data": {"medication": "m", "change": "started"}}
        time.sleep(3)  # the workers finish starting (their start is not what this measures)
        began = time.monotonic()
        posted = post_steadily(port, f"/v1/notebooks/{nb['id']}/events", key, rate, seconds, body)
        achieved = posted / (time.monotonic() - began)
        expected = posted * 3
        # Wait until every message arrived, or nothing is left to send (then what is missing is
        # lost); a machine too slow for the rate gets time to catch up, up to 20 minutes.
        deadline = time.monotonic() + 1200
        while smtp.messages + twilio.count < expected and time.monotonic() < deadline:
            with session_scope(PG_URL) as session:
                open_ = session.scalar(
                    select(func.count())
                    .select_from(Delivery)
                    .where(Delivery.status.in_(("queued", "sending")))
                )
                unrouted = session.scalar(
                    select(func.count()).select_from(Event).where(Event.routed_at.is_(None))
                )
            if not open_ and not unrouted:
                time.sleep(1)  # the sinks count what the providers accepted a moment ago
                break
            time.sleep(0.5)
        with session_scope(PG_URL) as session:
            lags = [
                (sent - recorded).total_seconds() * 1000
                for sent, recorded in session.execute(
                    select(Delivery.sent_at, Event.recorded_at)
                    .join(Event, Event.id == Delivery.event_id)
                    .where(Delivery.sent_at.is_not(None))
                )  # fmt: skip
            ]
        lags.sort()
        arrived = smtp.messages + twilio.count
        print(
            f"end to end: {posted:,} events at {rate:g}/s for {seconds:g}s (posted at {achieved:.0f}/s), "
            f"fan-out 3 → {arrived:,} of "
            f"{expected:,} messages at the sinks (lost: {expected - arrived}); "
            f"202 → provider accepted: p50 {statistics.median(lags):.0f} ms, "
            f"p99 {lags[int(len(lags) * 0.99) - 1]:.0f} ms, max {lags[-1]:.0f} ms"
        )
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
        smtp.stop()
        twilio.stop()
        Redis.from_url(REDIS_URL).flushdb()
        dispose_all()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        admin.dispose()


if __name__ == "__main__":
    main(
        float(sys.argv[1]) if len(sys.argv) > 1 else 100.0, float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
    )
