"""The digest job: one member's daily digest on one channel, sent once.

It takes a digest id, claims the digest (one conditional UPDATE: of several workers running
its job, one wins), then the deliveries waiting in it, and sends one message listing them —
or nothing, when nothing is left in it. The retry schedule, Retry-After and "ask the provider
before resending" are the same as for single deliveries (``careloop.workers.jobs``).
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from careloop import deliveries as dl
from careloop import digests as dg
from careloop.db import session_scope
from careloop.integrations.base import DeliveryError, OutcomeUnknown
from careloop.messages import DigestItem, NotebookView, OutgoingMessage, Recipient, render_digest
from careloop.models import Delivery, Digest, Event, Member, Notebook, utcnow
from careloop.runtime import Runtime
from careloop.vocabulary import ChannelKind, DigestStatus
from careloop.workers.jobs import DATABASE_ERRORS, _runtime, hand_over_digests, member_link

log = logging.getLogger("careloop.workers")


def send_digest(digest_id: str, runtime: Runtime | None = None) -> str:
    """Send one digest if it is due and nobody else has it. Returns what became of it
    (``sent``, ``empty``, ``failed``, ``pending`` for a retry, ``rescheduled`` when run early,
    ``not-claimed``). Safe to run any number of times, by any number of workers."""
    runtime = _runtime(runtime)
    try:
        with session_scope(runtime.database_url, autocommit=True) as session:
            return _send_digest(session, runtime, digest_id)
    except DATABASE_ERRORS as exc:
        # Nothing is lost: a pending digest is handed over again by the relay, and a claim left
        # 'sending' is settled by it after the claim timeout.
        log.warning("digest %s: the database is unavailable (%s); left for the relay", digest_id, exc)
        return "database-unavailable"


def _send_digest(session: Session, runtime: Runtime, digest_id: str) -> str:
    token = dl.new_claim_token()
    attempt = dg.claim(session, digest_id, token)
    if attempt is None:
        digest = session.get(Digest, digest_id)
        if digest is not None and digest.status == DigestStatus.PENDING and digest.due_at > utcnow():
            hand_over_digests(session, runtime, {digest_id})  # run before its time: wait for it
            return "rescheduled"
        return "not-claimed"
    delivery_ids = dg.claim_deliveries(session, digest_id, token)
    if not delivery_ids:
        dg.mark_empty(session, digest_id, token)
        log.info("digest %s: nothing in it; not sent", digest_id)
        return DigestStatus.EMPTY
    digest = session.get(Digest, digest_id)
    member = session.get(Member, digest.member_id)
    notebook = session.get(Notebook, digest.notebook_id)
    if member is None or notebook is None or not member.active:
        dg.mark_failed(session, digest_id, token, "member is no longer active")
        return DigestStatus.FAILED
    channel = runtime.channels[ChannelKind(digest.channel)]
    missing = channel.unreachable_reason(member)
    if missing:
        dg.mark_failed(session, digest_id, token, missing)
        return DigestStatus.FAILED
    deliveries = session.scalars(select(Delivery).where(Delivery.id.in_(delivery_ids))).all()
    events = {
        e.id: e
        for e in session.scalars(select(Event).where(Event.id.in_({d.event_id for d in deliveries}))).all()
    }
    items = [
        DigestItem(
            event_type=events[d.event_id].type,
            data=events[d.event_id].data,
            occurred_at=events[d.event_id].occurred_at,
            link=member_link(runtime, d, member),
        )
        for d in deliveries
        if d.event_id in events
    ]
    message = render_digest(
        digest_id=digest_id,
        attempt=attempt,
        channel=digest.channel,
        notebook=NotebookView(id=notebook.id, child_name=notebook.child_name, timezone=notebook.timezone),
        recipient=Recipient(
            id=member.id, name=member.name, email=member.email, phone=member.phone, timezone=member.timezone
        ),
        items=items,
        window=digest.window,
        created_at=digest.created_at,
    )
    if not dg.mark_provider_called(session, digest_id, token):
        return "not-claimed"
    try:
        receipt = channel.send(message)
    except DeliveryError as exc:
        return _after_refusal(session, runtime, digest, token, attempt, message, exc)
    dg.mark_sent(session, digest_id, token, receipt.provider_id, receipt.status)
    log.info("digest %s sent by %s: %d events in one message", digest_id, digest.channel, len(items))
    return DigestStatus.SENT


def _after_refusal(
    session: Session,
    runtime: Runtime,
    digest: Digest,
    token: str,
    attempt: int,
    message: OutgoingMessage,
    exc: DeliveryError,
) -> str:
    schedule = runtime.settings.retry_schedule
    if exc.maybe_sent and not exc.permanent:
        try:
            receipt = runtime.channels[ChannelKind(digest.channel)].lookup(message)
        except OutcomeUnknown:
            dg.mark_failed(session, digest.id, token, dl.OUTCOME_UNKNOWN)
            return DigestStatus.FAILED
        except DeliveryError:
            receipt = None  # cannot ask now: treat as not sent only if attempts remain
        if receipt is not None:
            dg.mark_sent(session, digest.id, token, receipt.provider_id, receipt.status)
            return DigestStatus.SENT
    if exc.permanent or attempt > len(schedule):
        reason = exc.reason if exc.permanent else f"gave up after {attempt} attempts: {exc.reason}"
        dg.mark_failed(session, digest.id, token, reason)
        log.warning("digest %s failed: %s", digest.id, reason)
        return DigestStatus.FAILED
    delay = dl.retry_delay(attempt, schedule, exc.retry_after)
    dg.requeue(session, digest.id, token, exc.reason, delay)
    log.info("digest %s: %s; trying again in %.1fs", digest.id, exc.reason, delay)
    hand_over_digests(session, runtime, {digest.id})
    return DigestStatus.PENDING


def recover_stale_digest(runtime: Runtime, digest_id: str, token: str, provider_called: bool) -> str:
    """A digest whose worker vanished mid-send: never sent → pending again, due now; maybe
    sent → failed as "outcome unknown" (its deliveries too), for a person to decide."""
    with session_scope(runtime.database_url, autocommit=True) as session:
        if not provider_called:
            if dg.release(session, digest_id, token, "the worker stopped before calling the provider"):
                hand_over_digests(session, runtime, {digest_id})
                return DigestStatus.PENDING
            return "not-claimed"
        dg.mark_failed(session, digest_id, token, dl.OUTCOME_UNKNOWN)
        return DigestStatus.FAILED

