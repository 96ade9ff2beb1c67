"""The outbox relay: hands over whatever the database promised but the queue does not have.

It runs beside every ``careloop worker`` (a child process), as ``careloop relay``,
and in the embedded mode's idle time. Everything it does is safe to do twice.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from careloop import deliveries as dl
from careloop import digests as dg
from careloop import reminders as rm
from careloop.calendar_publishing import CALDAV_TOPIC
from careloop.db import session_scope
from careloop.intake import ROUTE_TOPIC
from careloop.logs import request_id_bound
from careloop.models import OutboxEntry, utcnow
from careloop.queues import DigestJob, delivery_queue
from careloop.runtime import Runtime
from careloop.workers.digests import recover_stale_digest
from careloop.workers.escalation import run_due
from careloop.workers.jobs import recover_stale
from careloop.workers.mailbox import schedule as schedule_mailbox_poll
from careloop.workers.reminders import recover_stale_reminder
from careloop.workers.webhook_sends import notify_disabled

log = logging.getLogger("careloop.relay")

BATCH = 500
"""Most records handed over per sweep and kind."""


def relay_once(runtime: Runtime) -> dict[str, int]:
    """One sweep: pending events to route, due deliveries and digests to send, stale sends to
    check, escalation steps and urgent failovers to fire (``careloop.workers.escalation``), the
    RSVP mailbox to read when its poll is due.

    Returns how many events and deliveries were handed over and stale sends checked.

    Work handed to the queue more than a claim timeout ago and not done is handed over again
    only when Redis no longer has its job (a job merely waiting in a long queue is left
    alone). When Redis has lost its data (restarted empty, flushed), everything pending is
    handed over on this sweep, without waiting for the claim timeout.
    """
    settings = runtime.settings
    dispatcher = runtime.dispatcher
    counts = {"events": 0, "deliveries": 0, "stale": 0}
    published = 0
    digests = 0
    with session_scope(runtime.database_url) as session:
        if dispatcher.lost_data():
            forget_hand_overs(session)
        now = utcnow()
        cutoff = now - timedelta(seconds=settings.claim_timeout)
        entries = _undispatched(session, ROUTE_TOPIC, cutoff)
        if entries:
            missing = dispatcher.missing_routes([ref for _, ref in entries])
            if missing:
                dispatcher.route(missing)
            _dispatched(session, entries, now)
            counts["events"] = len(missing)

        publishes = _undispatched(session, CALDAV_TOPIC, cutoff)
        if publishes and runtime.jobs.publish is not None:
            missing = dispatcher.missing_publishes(list(dict.fromkeys(ref for _, ref in publishes)))
            if missing:
                dispatcher.publish(missing)
            _dispatched(session, publishes, now)
            published = len(missing)

        due = dl.due_for_enqueue(session, settings.claim_timeout, BATCH)
        if due:
            missing = {job.delivery_id for job in dispatcher.missing_deliveries(due)}
            lost = [job._replace(job_id=None) for job in due if job.delivery_id in missing]
            handed = dispatcher.deliver(lost)
            waiting = [job for job in due if job.delivery_id not in missing]
            dl.mark_enqueued(session, handed + waiting)  # waiting ones: checked again later
            counts["deliveries"] = len(handed)

        due_digests = dg.due_for_enqueue(session, settings.claim_timeout, BATCH)
        if due_digests:
            due_jobs = [DigestJob(i, delivery_queue(c, urgent=False), due) for i, c, due in due_digests]
            lost = dispatcher.missing_digests(due_jobs)
            dispatcher.digests(lost)
            dg.mark_enqueued(session, [job.digest_id for job in due_jobs])
            digests = len(lost)

        # --- reminders (issue 12): re-plan check-ins, hand over due ones Redis lost, settle stale ---
        counts_reminders = 0
        try:
            counts_reminders = rm.relay_sweep(session, runtime)
        except Exception:  # the rest of the sweep (stale sends above all) goes on
            session.rollback()
            log.warning("relay: reminders could not be swept; trying again next sweep", exc_info=True)
        for reminder_id, token, called in rm.stale_claims(session, settings.claim_timeout):
            recover_stale_reminder(runtime, reminder_id, token, called)
            counts["stale"] += 1

        for delivery_id, token in dl.stale_claims(session, settings.claim_timeout):
            with request_id_bound(None):  # its lines carry the id of the event it is about
                recover_stale(runtime, delivery_id, token)
            counts["stale"] += 1
        for digest_id, token, called in dg.stale_claims(session, settings.claim_timeout):
            recover_stale_digest(runtime, digest_id, token, called)
            counts["stale"] += 1

        notify_disabled(runtime, session)
    schedule_mailbox_poll(runtime)  # RSVP replies, when CARELOOP_IMAP_URL is set
    fired = run_due(runtime)  # escalation steps and urgent failovers: the database is their clock
    if any(counts.values()) or digests or counts_reminders or published or any(fired.values()):
        log.info(
            "relay: %(events)d events, %(deliveries)d deliveries, %(digests)d digests, %(reminders)d "
            "reminders, %(publishes)d CalDAV publishes handed over, %(stale)d stale sends checked, "
            "%(steps)d escalation steps and %(failovers)d failovers fired",
            {**counts, "digests": digests, "reminders": counts_reminders, "publishes": published, **fired},
        )
    return counts


def forget_hand_overs(session: Session) -> None:
    """Redis lost its data: every pending event, queued delivery and pending digest counts as never
    handed over, so this sweep (and, for work not yet due, the sweep when it is) hands it over."""
    log.warning("the queue lost its data (Redis restarted empty, or flushed): handing all pending work over")
    session.execute(update(OutboxEntry).where(OutboxEntry.done_at.is_(None)).values(dispatched_at=None))
    dl.forget_enqueued(session)
    dg.forget_enqueued(session)
    rm.forget_enqueued(session)
    session.commit()


def run_relay(runtime: Runtime, should_stop: Callable[[], bool], wait: Callable[[float], object]) -> None:
    """Sweep every ``relay_interval`` seconds until ``should_stop()``; survive errors (Redis or
    the database being down is exactly when the relay must keep trying)."""
    failing = False
    while not should_stop():
        try:
            relay_once(runtime)
        except Exception as exc:
            interval = runtime.settings.relay_interval
            if not failing:  # once per outage, with the traceback; then quietly until it passes
                log.warning("relay sweep failed; trying again every %ss", interval, exc_info=True)
            else:
                log.debug("relay sweep failed again: %s", type(exc).__name__)
            failing = True
        else:
            if failing:
                log.warning("relay sweeps work again")
            failing = False
        wait(runtime.settings.relay_interval)


def start_relay_process(parent_pid: int) -> subprocess.Popen:
    """``careloop relay`` as a child process of a worker.

    A process, not a thread: RQ forks a work horse per job, and a thread holding a lock at
    that moment (a connection pool's, say) would leave the lock held forever in the horse.
    The child exits by itself when its parent is gone, even after a SIGKILL.
    """
    return subprocess.Popen(
        [sys.executable, "-m", "careloop.cli", "relay", "--parent-pid", str(parent_pid)],
        stdin=subprocess.DEVNULL,
    )


def stop_relay_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


def _undispatched(session, topic: str, cutoff) -> list:
    """(entry id, ref id) of outbox entries of ``topic`` not done and not handed to the queue
    since ``cutoff``, oldest first. Several relays (one per worker) share the work instead of
    repeating it: rows another holds are passed over (PostgreSQL)."""
    return session.execute(
        select(OutboxEntry.id, OutboxEntry.ref_id)
        .where(
            OutboxEntry.topic == topic,
            OutboxEntry.done_at.is_(None),
            or_(OutboxEntry.dispatched_at.is_(None), OutboxEntry.dispatched_at < cutoff),
        )
        .order_by(OutboxEntry.id)
        .limit(BATCH)
        .with_for_update(skip_locked=True)
    ).all()


def _dispatched(session, entries: list, now) -> None:
    """These entries were handed to the queue just now; commit."""
    session.execute(
        update(OutboxEntry).where(OutboxEntry.id.in_([i for i, _ in entries])).values(dispatched_at=now)
    )
    session.commit()
