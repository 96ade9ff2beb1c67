"""The fast path of the outbox: hand freshly committed work to the queue right away.

If the queue is down this only logs; the outbox entry stays pending and the relay hands it
over later. It never makes an accepted request fail.
"""

from __future__ import annotations

import logging

from sqlalchemy import update
from sqlalchemy.orm import Session

from careloop.deliveries import delivery_jobs, mark_enqueued
from careloop.intake import ROUTE_TOPIC
from careloop.models import OutboxEntry

log = logging.getLogger("careloop.dispatch")


def hand_over_events(session: Session, dispatcher, event_ids: list[str]) -> bool:
    """Enqueue the routing of events just recorded (their outbox entries already say "handed
    over"); if the queue is down, mark them not handed over, for the relay's next sweep."""
    try:
        dispatcher.route(event_ids)
    except Exception as exc:  # the queue is down: the relay will do it
        log.warning("queue unavailable, %d event(s) left for the relay: %s", len(event_ids), exc)
        session.execute(
            update(OutboxEntry)
            .where(OutboxEntry.topic == ROUTE_TOPIC, OutboxEntry.ref_id.in_(event_ids))
            .values(dispatched_at=None)
        )
        session.commit()
        return False
    return True


def hand_over_deliveries(
    session: Session, dispatcher, delivery_ids: list[str], delay: float | None = None
) -> bool:
    """Enqueue these deliveries (after ``delay`` seconds) and record it; if the queue is down,
    only log: the rows say they are due, and the relay hands them over."""
    jobs = delivery_jobs(session, delivery_ids)
    try:
        handed = dispatcher.deliver(jobs, delay=delay)
    except Exception as exc:
        log.warning("queue unavailable, %d deliveries left for the relay: %s", len(delivery_ids), exc)
        return False
    mark_enqueued(session, handed)
    return True
