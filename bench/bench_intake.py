"""Intake throughput: POST /v1/notebooks/{id}/events through the whole Flask app (auth,
validation, one transaction for event + outbox entry, hand-over to RQ on Redis), against a
baseline that only inserts the same two rows per event with SQLAlchemy, in the same process.

    .venv/bin/python bench/bench_intake.py [N]

Uses a temporary SQLite file, a PostgreSQL database of its own (careloop_bench, dropped
afterwards) and Redis DB 14 (flushed afterwards), all on 127.0.0.1.
"""

from __future__ import annotations

import sys
import tempfile
import time

from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from careloop.config.settings import Settings
from careloop.db import dispose_all, get_engine, upgrade
from careloop.models import Event, OutboxEntry, utcnow

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/careloop_bench"
REDIS_URL = "redis://127.0.0.1:6379/14"
ADMIN = "bench-admin-key-0123456789abcdef0123456789"
DATA = {"medication": "levetiracetam", "change": "dose_changed", "dose": "250 mg"}


def bench(url: str, n: int) -> tuple[float, float]:
    from careloop.service import create_app

    upgrade(url)
    settings = Settings.from_values(
        database_url=url, redis_url=REDIS_URL, admin_key=ADMIN, queue_prefix="careloop-bench"
    )
    app = create_app(settings=settings)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {ADMIN}"}
    nb = client.post(
        "/v1/notebooks", json={"name": "b", "child_name": "Maya", "timezone": "UTC"}, headers=headers
    ).get_json()
    path = f"/v1/notebooks/{nb['id']}/events"

    start = time.perf_counter()
    for _ in range(n):
        response = client.post(path, json={"type": "medication.changed", "data": DATA}, headers=headers)
        assert response.status_code == 202, response.get_json()
    api = time.perf_counter() - start

    engine = get_engine(url)
    start = time.perf_counter()
    for _ in range(n):
        with Session(engine) as session:
            event = Event(
                notebook_id=nb["id"], type="medication.changed", data=DATA, context={}, occurred_at=utcnow()
            )
            session.add(event)
            session.flush()
            session.add(OutboxEntry(topic="route_event", ref_id=event.id))
            session.commit()
    baseline = time.perf_counter() - start
    app.extensions["careloop"].runtime.dispatcher.connection.flushdb()
    app.extensions["careloop"].runtime.close()
    return api, baseline


def main(n: int) -> None:
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS careloop_bench WITH (FORCE)"))
        conn.execute(text("CREATE DATABASE careloop_bench"))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, url in (("sqlite", f"sqlite:///{tmp}/bench.db"), ("postgresql", PG_URL)):
                api, baseline = bench(url, n)
                print(
                    f"{name:>10}: API {n / api:7,.0f} events/s ({api * 1e3 / n:5.2f} ms each) · "
                    f"bare insert {n / baseline:7,.0f}/s · ratio {api / baseline:.1f}× the baseline's time"
                )
    finally:
        dispose_all()
        with admin.connect() as conn:
            conn.execute(text("DROP DATABASE IF EXISTS careloop_bench WITH (FORCE)"))
        admin.dispose()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
