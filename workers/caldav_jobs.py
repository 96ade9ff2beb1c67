"""The CalDAV publish job: writes one check-in, as it is now, to its notebook's calendar.

Handed out by the relay for each pending outbox entry of topic
:data:`~careloop.calendar_publishing.CALDAV_TOPIC` (ref: the check-in's row id). It reads the
check-in, ends its transaction, PUTs (or, once cancelled, DELETEs) the resource, then looks
again: a check-in changed meanwhile is written again, so a slower job carrying an older state
can never have the last word. Only then are the entries it saw marked done. A failure leaves
them pending and records why on the calendar's row; the relay hands them over again after
the claim timeout, until the calendar takes it. Safe to run twice.
"""

from __future__ import annotations

import logging

from sqlalchemy import func, select, update

from careloop.calendar_publishing import CALDAV_TOPIC
from careloop.checkins import calendar_entry
from careloop.db import session_scope
from careloop.integrations.caldav_publish import CaldavPublisher, CaldavTarget, PublishError
from careloop.integrations.calendar_invite import build_calendar
from careloop.models import CaldavCalendar, Checkin, Notebook, OutboxEntry, utcnow
from careloop.runtime import Runtime
from careloop.workers.jobs import _runtime

log = logging.getLogger("careloop.workers")

MAX_ROUNDS = 5
"""Writes one job makes while the check-in keeps changing under it (each change has its own
entry and job too, so stopping here loses nothing)."""


def publish_checkin(ref: str, runtime: Runtime | None = None) -> str:
    """Publish the check-in with row id ``ref``; returns what became of it (for RQ's record)."""
    runtime = _runtime(runtime)
    with session_scope(runtime.database_url) as session:
        newest = session.scalar(
            select(func.max(OutboxEntry.id)).where(
                OutboxEntry.topic == CALDAV_TOPIC, OutboxEntry.ref_id == ref, OutboxEntry.done_at.is_(None)
            )
        )
        if newest is None:
            return "nothing pending"
        outcome = "published"
        for _ in range(MAX_ROUNDS):
            checkin = session.get(Checkin, int(ref)) if ref.isdigit() else None
            calendar = session.get(CaldavCalendar, checkin.notebook_id) if checkin is not None else None
            if checkin is None or calendar is None:
                outcome = "no check-in or no calendar"
                break
            notebook = session.get(Notebook, checkin.notebook_id)
            seen = (checkin.sequence, checkin.cancelled)
            entry = calendar_entry(checkin, notebook)
            target = CaldavTarget(calendar.url, calendar.username, calendar.password)
            session.commit()  # no transaction held open over the network
            publisher = CaldavPublisher(target, timeout=runtime.settings.provider_timeout)
            try:
                if entry.cancelled:
                    publisher.delete(entry.uid)
                else:
                    publisher.put(entry.uid, build_calendar([entry]))
            except PublishError as exc:
                session.execute(
                    update(CaldavCalendar)
                    .where(CaldavCalendar.notebook_id == calendar.notebook_id)
                    .values(last_error=exc.reason, last_error_at=utcnow())
                )
                session.commit()
                log.warning(
                    "CalDAV publish of check-in %s (notebook %s) failed, to be tried again: %s",
                    ref, calendar.notebook_id, exc.reason,
                )  # fmt: skip
                return "failed"
            session.expire_all()
            now = session.get(Checkin, int(ref))
            if now is None or (now.sequence, now.cancelled) == seen:
                session.execute(
                    update(CaldavCalendar)
                    .where(CaldavCalendar.notebook_id == calendar.notebook_id)
                    .values(last_published_at=utcnow(), last_error=None, last_error_at=None)
                )
                log.info(
                    "CalDAV: check-in %s (notebook %s) %s",
                    ref, calendar.notebook_id, "removed" if entry.cancelled else "written",
                )  # fmt: skip
                break
        session.execute(
            update(OutboxEntry)
            .where(
                OutboxEntry.topic == CALDAV_TOPIC,
                OutboxEntry.ref_id == ref,
                OutboxEntry.id <= newest,
                OutboxEntry.done_at.is_(None),
            )
            .values(done_at=utcnow())
        )
        session.commit()
        return outcome
