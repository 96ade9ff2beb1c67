"""Urgent first inside a batch: a worker sending a batch of ordinary deliveries looks at its
channel's urgent queue as it goes, and gives the rest of the batch back (untried, no attempt
counted) when an urgent alert waits there — so the alert never waits for a whole batch."""

from __future__ import annotations

from rq import SimpleWorker
from rq.serializers import JSONSerializer
from sqlalchemy import select

from careloop.db import session_scope
from careloop.models import Delivery
from careloop.workers import jobs
from tests.conftest import build_team, run_rq_until_settled


def _route_only(runtime) -> None:
    """Run the routing jobs waiting in Redis (and nothing else), as a worker would."""
    dispatcher = runtime.dispatcher
    worker = SimpleWorker(
        [dispatcher.route_queue], connection=dispatcher.connection, serializer=JSONSerializer
    )
    jobs.use_runtime(runtime)
    try:
        worker.work(burst=True, logging_level="WARNING")
    finally:
        jobs.use_runtime(None)


def _rows(runtime) -> list:
    with session_scope(runtime.database_url) as session:
        return session.execute(
            select(
                Delivery.id,
                Delivery.queue,
                Delivery.status,
                Delivery.attempts,
                Delivery.error,
                Delivery.sent_at,
            )
        ).all()


def test_an_ordinary_batch_gives_way_to_a_waiting_urgent_alert(rq_api, runtime, smtp, monkeypatch):
    nb, members = build_team(rq_api)
    notes = [{"type": "note.added", "data": {"text": f"word {i}", "voice": "child"}} for i in range(5)]
    response = rq_api.client.post(
        f"/v1/notebooks/{nb['id']}/events:batch", json={"events": notes}, headers=rq_api.headers
    )
    assert response.status_code == 200
    _route_only(runtime)
    ordinary = [r.id for r in _rows(runtime) if r.queue == "email"]
    assert len(ordinary) == 30  # each note to the team of 6, by email

    rq_api.event(
        nb["id"],
        "concern.raised",
        {"summary": "Seizure", "severity": "urgent"},
        author_member_id=members["mom"]["id"],
    )
    _route_only(runtime)
    assert runtime.dispatcher.urgent_waiting("email")

    monkeypatch.setattr(jobs, "URGENT_LOOK_INTERVAL", 0.0)  # look before the first send
    outcomes = jobs.deliver_many(ordinary[:10], runtime=runtime, queue="email")
    assert outcomes == {}  # nothing of the ordinary batch was sent ahead of the alert
    rows = {r.id: r for r in _rows(runtime)}
    for delivery_id in ordinary:
        row = rows[delivery_id]
        assert row.status == "queued" and row.attempts == 0, row
    assert rows[ordinary[0]].error == "not tried yet: an urgent alert went first"

    run_rq_until_settled(runtime)
    rows = _rows(runtime)
    urgent = [r for r in rows if r.queue == "email-urgent"]
    assert urgent and all(r.status == "sent" for r in urgent)
    later = [r for r in rows if r.queue == "email"]
    assert all(r.status == "sent" and r.attempts == 1 for r in later)
    assert max(r.sent_at for r in urgent) <= min(r.sent_at for r in later)
    assert len(smtp.messages) == len(urgent) + len(later)  # each once


def test_an_urgent_batch_and_a_batch_with_nothing_urgent_waiting_go_on(rq_api, runtime, smtp, monkeypatch):
    nb, _ = build_team(rq_api)
    notes = [{"type": "note.added", "data": {"text": f"word {i}", "voice": "child"}} for i in range(2)]
    rq_api.client.post(
        f"/v1/notebooks/{nb['id']}/events:batch", json={"events": notes}, headers=rq_api.headers
    )
    _route_only(runtime)
    ordinary = [r.id for r in _rows(runtime)]
    assert not runtime.dispatcher.urgent_waiting("email")
    monkeypatch.setattr(jobs, "URGENT_LOOK_INTERVAL", 0.0)
    outcomes = jobs.deliver_many(ordinary, runtime=runtime, queue="email")
    assert set(outcomes.values()) == {"sent"} and len(outcomes) == 12
