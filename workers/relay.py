"""The outbox relay: hands over whatever the database promised but the queue does not have.

It runs inside every ``careloop worker`` (a thread beside RQ's loop), as ``careloop relay``,
and in the embedded mode's idle time. Everything it does is safe to do twice.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import or_, select, update

from careloop import deliveries as dl
from careloop.db import session_scope
from careloop.intake import ROUTE_TOPIC
from careloop.models import OutboxEntry, utcnow
from careloop.runtime import Runtime
from workers.jobs import recover_stale

log = logging.getLogger("careloop.relay")

BATCH = 500
"""Most records handed over per sweep and kind."""


def relay_once(runtime: Runtime) -> dict[str, int]:
    """One sweep: pending events to route, due deliveries to send, stale sends to check."""
    settings = runtime.settings
    counts = {"events": 0, "deliveries": 0, "stale": 0}
    with session_scope(runtime.database_url) as session:
        now = utcnow()
        cutoff = now - timedelta(seconds=settings.claim_timeout)
        entries = session.execute(
            select(OutboxEntry.id, OutboxEntry.ref_id)
            .where(
                OutboxEntry.topic == ROUTE_TOPIC,
                OutboxEntry.done_at.is_(None),
                or_(OutboxEntry.dispatched_at.is_(None), OutboxEntry.dispatched_at < cutoff),
            )
            .order_by(OutboxEntry.id)
            .limit(BATCH)
        ).all()
        if entries:
            runtime.dispatcher.route([ref for _, ref in entries])
            session.execute(
                update(OutboxEntry)
                .where(OutboxEntry.id.in_([i for i, _ in entries]))
                .values(dispatched_at=now)
            )
            session.commit()
            counts["events"] = len(entries)

        due = dl.due_for_enqueue(session, settings.claim_timeout, BATCH)
        if due:
            runtime.dispatcher.deliver(due)
            dl.mark_enqueued(session, due)
            counts["deliveries"] = len(due)

        for delivery_id, token in dl.stale_claims(session, settings.claim_timeout):
            recover_stale(runtime, delivery_id, token)
            counts["stale"] += 1
    if any(counts.values()):
        log.info(
            "relay: %(events)d events, %(deliveries)d deliveries handed over, %(stale)d stale sends checked",
            counts,
        )
    return counts


class RelayThread(threading.Thread):
    """Runs ``relay_once`` every ``relay_interval`` seconds until stopped; survives errors
    (Redis or the database being down is exactly when it must keep trying)."""

    def __init__(self, runtime: Runtime):
        super().__init__(name="careloop-relay", daemon=True)
        self.runtime = runtime
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                relay_once(self.runtime)
            except Exception as exc:
                log.warning("relay sweep failed: %s", exc)
            self.stopped.wait(self.runtime.settings.relay_interval)

    def stop(self) -> None:
        self.stopped.set()
