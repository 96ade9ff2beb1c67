"""RQ jobs. Each takes an id, loads what it needs, and is safe to run more than once.

There is one retry layer: a transient provider error puts the delivery back in the queue
with a due time on its row (the retry schedule, jittered, Retry-After honoured) and schedules
the next try with RQ's ``enqueue_at``; the relay re-enqueues anything due that the queue lost.
Jobs do not raise for provider errors, so RQ's own retry never doubles ours. A job that meets
a database error puts itself back after a short wait, holding on to its claim.

RQ calls a job with its id only; the job then runs with the runtime its worker process
installed (:func:`use_runtime`). The in-process queue passes its app's runtime instead.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from careloop import deliveries as dl
from careloop import digests as dg
from careloop import metrics, reminders, webhooks
from careloop import preferences as prefs
from careloop.db import session_scope
from careloop.events import is_urgent
from careloop.handover import hand_over_deliveries
from careloop.intake import ROUTE_TOPIC
from careloop.integrations.base import DeliveryError, OutcomeUnknown
from careloop.links import link_url
from careloop.logs import request_id_bound, reset_request_id, set_request_id
from careloop.messages import MemberLink, NotebookView, OutgoingMessage, ProviderReceipt, Recipient, render
from careloop.models import Delivery, Digest, Event, Member, Notebook, OutboxEntry, new_id, utcnow
from careloop.queues import BATCH_SIZE, DigestJob, delivery_queue, is_urgent_queue
from careloop.routing import EventView, MemberView, PlannedDelivery, plan_deliveries
from careloop.runtime import Runtime
from careloop.vocabulary import WEBHOOK_CHANNEL, ChannelKind, DeliveryStatus, DigestStatus
from careloop.workers import webhook_sends

log = logging.getLogger("careloop.workers")


class RenderError(Exception):
    """The delivery can no longer be rendered (its member was removed, say)."""


_worker_runtime: Runtime | None = None


def use_runtime(runtime: Runtime | None) -> None:
    """Install the runtime that RQ jobs in this worker process run with (the worker's start
    does this; forked work horses inherit it)."""
    global _worker_runtime
    _worker_runtime = runtime


def _runtime(runtime: Runtime | None) -> Runtime:
    if runtime is not None:
        return runtime
    if _worker_runtime is None:
        raise RuntimeError("no careloop runtime in this process: run careloop's jobs with `careloop worker`")
    return _worker_runtime


DATABASE_ERRORS = (OperationalError, InterfaceError)
"""The database went away (restart, failover, network): try again shortly, never a verdict."""

DATABASE_RETRY_DELAY = 2.0
"""Seconds before a job that met a database error runs again."""

URGENT_LOOK_INTERVAL = 0.25
"""Seconds between a batch of ordinary deliveries' looks at its channel's urgent queue: when an
urgent alert waits there, the rest of the batch goes back to its queue (untried) and the
worker takes the alert next."""

OUTCOME_WRITE_PATIENCE = 60.0
"""Seconds a job keeps trying to record what the provider answered while the database is down;
after that the claim goes stale and the relay settles it (asking Twilio; SMTP: unknown)."""


def _insert_ignoring_duplicates(session: Session, rows: list[dict]) -> None:
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = (
        insert(Delivery)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["event_id", "member_id", "channel"])
        .returning(Delivery.channel, Delivery.status)
    )
    inserted = session.execute(stmt).all()  # only the rows inserted now: a second routing counts none
    for row in inserted:
        if row.status == DeliveryStatus.SKIPPED:
            metrics.delivery_outcome(row.channel, DeliveryStatus.SKIPPED)


def route_event(event_id: str, runtime: Runtime | None = None) -> int:
    """Plan and record the deliveries of one event, then hand them to the queue.

    Returns how many deliveries were handed over. Running it twice creates nothing new.
    """
    runtime = _runtime(runtime)
    token = set_request_id(None)  # _route sets the event's; reset when the job ends
    try:
        return _route(runtime, event_id)
    except DATABASE_ERRORS as exc:
        log.warning(
            "route %s: the database is unavailable (%s); trying again in %ss",
            event_id,
            type(exc).__name__,
            DATABASE_RETRY_DELAY,
        )
        try:
            runtime.dispatcher.route_later(event_id, DATABASE_RETRY_DELAY)
        except Exception:
            log.warning("route %s: the queue is unavailable too; left for the relay", event_id)
        return 0
    finally:
        reset_request_id(token)


def route_many(event_ids: list[str], runtime: Runtime | None = None) -> int:
    """Route several events recorded together, each as :func:`route_event` does, in one job.

    Urgent events' deliveries are handed over as soon as each is routed; the others' are
    handed over together at the end, several to a delivery job. Returns how many deliveries
    were handed over.
    """
    runtime = _runtime(runtime)
    later: list[str] = []
    handed = 0
    token = set_request_id(None)  # _route sets each event's in turn; reset when the job ends
    try:
        handed = _route_each(runtime, event_ids, later)
    finally:
        reset_request_id(token)
    if later:
        try:
            with session_scope(runtime.database_url) as session:
                hand_over_deliveries(session, runtime.dispatcher, later)
        except DATABASE_ERRORS:  # not recorded as handed over: the relay hands them over when due
            log.warning("%d deliveries: the database is unavailable; left for the relay", len(later))
    try:
        runtime.dispatcher.routed(event_ids)
    except Exception:  # only bookkeeping for the relay; it finds these events routed anyway
        log.warning("could not forget the routing job of %d events", len(event_ids))
    return handed + len(later)


def _route_each(runtime: Runtime, event_ids: list[str], later: list[str]) -> int:
    handed = 0
    for event_id in event_ids:
        try:
            handed += _route(runtime, event_id, later)
        except DATABASE_ERRORS as exc:
            log.warning("route %s: the database is unavailable (%s); trying again in %ss",
                        event_id, type(exc).__name__, DATABASE_RETRY_DELAY)  # fmt: skip
            try:
                runtime.dispatcher.route_later(event_id, DATABASE_RETRY_DELAY)
            except Exception:
                log.warning("route %s: the queue is unavailable too; left for the relay", event_id)
    return handed


def _route(runtime: Runtime, event_id: str, later: list[str] | None = None) -> int:
    """Route one event. ``later``: append its ordinary deliveries there for the caller to hand
    over (urgent ones are handed over here and now)."""
    # One transaction for the deliveries, routed_at and the outbox record (one commit, where
    # autocommit made each its own), and one for recording the hand-over.
    with session_scope(runtime.database_url) as session:
        event = session.get(Event, event_id)
        if event is None:
            log.warning("route_event: event %s does not exist", event_id)
            return 0
        set_request_id(_request_id(event))  # the request that recorded it: its lines carry that id
        members = session.scalars(
            select(Member)
            .where(Member.notebook_id == event.notebook_id)
            .order_by(Member.created_at, Member.id)
        ).all()
        notebook_zone = session.scalar(select(Notebook.timezone).where(Notebook.id == event.notebook_id))
        zones = {m.id: m.timezone or notebook_zone for m in members}
        preferences = {m.id: prefs.from_stored(m.preferences) for m in members}
        now = utcnow()
        urgent = is_urgent(event.type, event.data)
        planned = plan_deliveries(
            EventView(
                id=event.id,
                type=event.type,
                data=event.data,
                author_member_id=event.author_member_id,
                previous_attendees=tuple((event.context or {}).get("previous_attendees", ())),
                invite_holders=tuple((event.context or {}).get("invite_holders", ())),
            ),
            [
                MemberView(
                    id=m.id,
                    role=m.role,
                    email=m.email,
                    phone=m.phone,
                    active=m.active,
                    sms_opted_out=m.sms_opted_out,
                    timezone=zones[m.id],
                    preferences=preferences[m.id],
                )
                for m in members
            ],
            runtime.rules,
            now,
        )
        digest_of = _open_digests(session, event.notebook_id, planned, zones, preferences)
        _insert_ignoring_duplicates(
            session,
            [
                {
                    "id": new_id("dlv"),
                    "event_id": event.id,
                    "notebook_id": event.notebook_id,
                    "member_id": p.member_id,
                    "channel": p.channel,
                    "queue": delivery_queue(p.channel, urgent),
                    "status": DeliveryStatus.SKIPPED if p.skip_reason else DeliveryStatus.QUEUED,
                    "error": p.skip_reason,
                    "rules": list(p.rules),
                    "attempts": 0,
                    "round_attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                    "next_attempt_at": _due(p, digest_of) or now,
                    "link_issued_at": now,
                    "hold": p.hold,
                    "digest_id": digest_of[(p.member_id, p.channel)][0] if p.digest_window else None,
                }
                for p in planned
            ],
        )
        # Before the outbox entry is done: a crash in between leaves the event to be routed again.
        webhook_messages = []
        endpoints = webhooks.wanted_by(session, event)
        if endpoints:  # commits the deliveries with the messages; sequence numbers taken under a lock
            webhook_messages = webhooks.plan_messages(session, event.id, endpoints)
        if event.routed_at is None:
            event.routed_at = now
        session.execute(
            OutboxEntry.__table__.update()
            .where(
                OutboxEntry.topic == ROUTE_TOPIC,
                OutboxEntry.ref_id == event.id,
                OutboxEntry.done_at.is_(None),
            )
            .values(done_at=now)
        )
        session.commit()
        _close_race(session, runtime, event.id, zones, preferences)
        waiting = session.execute(
            select(Delivery.id, Delivery.next_attempt_at).where(
                Delivery.event_id == event.id,
                Delivery.status == DeliveryStatus.QUEUED,
                Delivery.enqueued_at.is_(None),
                Delivery.digest_id.is_(None),
            )
        ).all()
        to_send = [row.id for row in waiting]
        by_delay: dict[float | None, list[str]] = {}
        for row in waiting:  # now, or (quiet hours) when the member's window ends
            held = row.next_attempt_at is not None and row.next_attempt_at > now
            delay = (row.next_attempt_at - now).total_seconds() if held else None
            by_delay.setdefault(delay, []).append(row.id)
        for delay, ids in by_delay.items():
            if delay is None and later is not None and not urgent:
                later += ids  # the caller hands these over with the other events' (route_many)
            else:
                hand_over_deliveries(session, runtime.dispatcher, ids, delay=delay)
        hand_over_digests(session, runtime, {d for d, _ in digest_of.values()})
        # --- reminders (issue 12): the check-in's reminders follow its new state at once ---
        if event.type in reminders.CHECKIN_EVENT_TYPES:
            offsets = runtime.settings.reminder_offsets
            due = reminders.sync_event_checkin(session, event.notebook_id, event.context, offsets)
            reminders.hand_over(session, runtime.dispatcher, due)
        log.info(
            "routed event %s (%s): %d planned, %d webhook messages, %d handed over",
            event.id,
            event.type,
            len(planned),
            len(webhook_messages),
            len(to_send),
        )
        return len(to_send)


def _request_id(event: Event | None) -> str | None:
    """The request id the event was recorded under (its log lines carry it)."""
    return (event.context or {}).get("request_id") if event is not None else None


def _open_digests(
    session: Session,
    notebook_id: str,
    planned: list[PlannedDelivery],
    zones: dict[str, str | None],
    preferences: dict[str, prefs.Preferences],
) -> dict[tuple[str, str], tuple[str, datetime]]:
    """The digest each digested delivery joins: (member, channel) → (digest id, due time). A
    digest already going out (its hour came as this event was routed) is passed over for the
    member's next one."""
    wanted = {
        (p.member_id, str(p.channel)): prefs.DigestSlot(p.digest_window, p.not_before)
        for p in planned
        if p.digest_window and p.not_before
    }
    found: dict[tuple[str, str], tuple[str, datetime]] = {}
    for _ in range(7):  # once, or twice when its hour came as this event was routed
        if not wanted:
            break
        slots = [dg.Slot(notebook_id, m, c, s.window, s.due_at) for (m, c), s in wanted.items()]
        made = dg.ensure(session, slots)
        session.commit()
        later = {}
        for (member_id, channel), slot in wanted.items():
            digest_id, status = made[(member_id, channel, slot.window)]
            if status == DigestStatus.PENDING:
                found[(member_id, channel)] = (digest_id, slot.due_at)
            else:
                zone = ZoneInfo(zones[member_id] or "UTC")
                later[(member_id, channel)] = prefs.slot_after(slot, zone, preferences[member_id])
        wanted = later
    if wanted:
        raise RuntimeError(f"no open digest within a week for {sorted(wanted)}")
    return found


def _due(p: PlannedDelivery, digest_of: dict[tuple[str, str], tuple[str, datetime]]) -> datetime | None:
    """When a planned delivery may go: its digest's time (which may be the member's next one),
    the end of quiet hours, or None (now)."""
    if p.digest_window:
        return digest_of[(p.member_id, p.channel)][1]
    return p.not_before


def _close_race(
    session: Session,
    runtime: Runtime,
    event_id: str,
    zones: dict[str, str | None],
    preferences: dict[str, prefs.Preferences],
) -> None:
    """Deliveries that joined a digest just as it went out move to the member's next digest
    (the digest's worker took its deliveries before these were written)."""
    ids = session.scalars(
        select(Delivery.id).where(Delivery.event_id == event_id, Delivery.digest_id.is_not(None))
    ).all()
    for delivery_id, digest_id in dg.closed_attachments(session, list(ids)):
        digest = session.get(Digest, digest_id)
        slot = prefs.slot_after(
            prefs.DigestSlot(digest.window, digest.due_at),
            ZoneInfo(zones.get(digest.member_id) or "UTC"),
            preferences.get(digest.member_id, prefs.DEFAULT),
        )
        made = dg.ensure(
            session, [dg.Slot(digest.notebook_id, digest.member_id, digest.channel, slot.window, slot.due_at)]
        )
        next_id, _ = made[(digest.member_id, digest.channel, slot.window)]
        dg.move(session, delivery_id, digest_id, next_id, slot.due_at)
        session.commit()
        hand_over_digests(session, runtime, {next_id})


def hand_over_digests(session: Session, runtime: Runtime, digest_ids: set[str]) -> None:
    """Schedule these digests' jobs for their due times; if the queue is down, the relay hands
    them over when they are due."""
    if not digest_ids:
        return
    dispatcher = runtime.dispatcher
    rows = session.execute(
        select(Digest.id, Digest.channel, Digest.due_at).where(
            Digest.id.in_(digest_ids), Digest.status == DigestStatus.PENDING
        )
    ).all()
    jobs = [DigestJob(r.id, delivery_queue(r.channel, urgent=False), r.due_at) for r in rows]
    try:
        dispatcher.digests(jobs)
    except Exception as exc:
        log.warning("queue unavailable, %d digests left for the relay: %s", len(jobs), exc)
        return
    dg.mark_enqueued(session, [j.digest_id for j in jobs])


def member_link(runtime: Runtime, delivery: Delivery, member: Member) -> MemberLink:
    """The member's own link to this delivery's event, as this round of it carries it."""
    issued_at = delivery.link_issued_at or delivery.created_at
    token = runtime.links.token(delivery.id, member.link_generation, issued_at)
    return MemberLink(
        url=link_url(runtime.settings.public_url, token), expires_at=runtime.links.expires_at(issued_at)
    )


def build_message(session: Session, runtime: Runtime, claim: dl.Claim) -> OutgoingMessage:
    """The message for one claimed delivery: the member's own link, and details as their role
    and the notebook allow. Every attempt of one round gives the same text."""
    delivery = session.get(Delivery, claim.delivery_id)
    attempt = claim.attempt
    event = session.get(Event, delivery.event_id)
    notebook = session.get(Notebook, delivery.notebook_id)
    member = session.get(Member, delivery.member_id)
    if event is None or notebook is None or member is None:
        raise RenderError("the event, notebook or member no longer exists")
    # A deactivated member's calendar still gets the CANCEL of a check-in it holds.
    holder = delivery.channel == ChannelKind.CALENDAR and member.id in (event.context or {}).get(
        "invite_holders", ()
    )
    if not member.active and not holder:
        raise RenderError("member is no longer active")
    attendee_ids = set((event.context or {}).get("checkin", {}).get("attendees") or []) | {member.id}
    attendees = []
    if delivery.channel == ChannelKind.CALENDAR:
        attendees = [
            Recipient(id=m.id, name=m.name, email=m.email, phone=m.phone, active=m.active)
            for m in session.scalars(select(Member).where(Member.id.in_(attendee_ids))).all()
        ]
    detail_fields = (
        runtime.policy.visible_fields(member.role, event.type, event.data) if notebook.email_detail else ()
    )
    return render(
        delivery_id=delivery.id,
        attempt=attempt,
        channel=delivery.channel,
        event_type=event.type,
        data=event.data,
        context=event.context or {},
        notebook=NotebookView(id=notebook.id, child_name=notebook.child_name, timezone=notebook.timezone),
        recipient=Recipient(
            id=member.id,
            name=member.name,
            email=member.email,
            phone=member.phone,
            timezone=member.timezone,
            active=member.active,
        ),
        attendees=attendees,
        link=member_link(runtime, delivery, member),
        detail_fields=detail_fields,
        mail_from=runtime.settings.mail_from,
        created_at=delivery.created_at,
    )


def deliver_many(
    delivery_ids: list[str], runtime: Runtime | None = None, queue: str | None = None
) -> dict[str, str]:
    """Send a batch of deliveries (one queue's): claimed together, loaded together, sent one
    by one, each at most once per claim. Returns what became of each delivery.

    With ``queue``, the batch also takes other due deliveries waiting in that queue, up to
    :data:`~careloop.queues.BATCH_SIZE` (their own jobs then find nothing left to do): under a
    backlog, a worker sends in full batches.

    A provider that fails transiently is not tried again in this batch: the rest of its
    deliveries go back untried (no attempt counted) and are due again shortly. A batch that has
    run for half the job timeout gives the rest back the same way, so a slow provider never
    makes RQ kill a job mid-send.
    """
    runtime = _runtime(runtime)
    token = dl.new_claim_token()
    claims: list[dl.Claim] = []
    done = 0
    outcomes: dict[str, str] = {}
    sent: list[tuple[dl.Claim, ProviderReceipt]] = []  # accepted, recorded with the next write
    try:
        with session_scope(runtime.database_url, autocommit=True) as session:
            claims = dl.claim_many(session, list(delivery_ids), token, fill_from=queue, fill_to=BATCH_SIZE)
            claimed = {c.delivery_id for c in claims}
            for delivery_id in delivery_ids:
                if delivery_id not in claimed:
                    outcomes[delivery_id] = _not_claimed(session, runtime, delivery_id)
            loaded = _preload(session, claims)  # noqa: F841 - held: the session keeps only weak references
            budget = time.monotonic() + runtime.job_timeout / 2
            failing: set[str] = set()  # channels that failed transiently in this batch
            untried: list[dl.Claim] = []
            yielded: list[dl.Claim] = []  # left for an urgent alert waiting in the channel's queue
            look = time.monotonic() + URGENT_LOOK_INTERVAL if queue and not is_urgent_queue(queue) else None
            bug: Exception | None = None
            for claim in claims:
                delivery = session.get(Delivery, claim.delivery_id)
                key = webhook_sends.failing_key(delivery)
                if look is not None and time.monotonic() >= look:
                    look = time.monotonic() + URGENT_LOOK_INTERVAL
                    if runtime.dispatcher.urgent_waiting(delivery.channel):
                        look = None
                        log.info("an urgent alert is waiting: the rest of this batch goes back to its queue")
                if look is None and queue and not is_urgent_queue(queue):
                    yielded.append(claim)
                elif key in failing or time.monotonic() > budget:
                    untried.append(claim)
                else:
                    try:
                        with request_id_bound(_delivery_request_id(session, claim.delivery_id)):
                            outcomes[claim.delivery_id] = _send(session, runtime, claim, failing, sent)
                    except DATABASE_ERRORS:
                        raise
                    except Exception as exc:  # recorded on that delivery; the rest still go
                        log.exception("delivery %s: unexpected error", claim.delivery_id)
                        bug = bug or exc
                done += 1
            _record_sent(runtime, sent)
            if untried:
                _give_back(session, runtime, untried, runtime.settings.retry_schedule[0])
            if yielded:
                _give_back(session, runtime, yielded, 0.0, "not tried yet: an urgent alert went first")
            if bug is not None:
                raise bug  # RQ keeps the failed job for an operator to see
    except DATABASE_ERRORS as exc:
        # Nothing is lost: each delivery row (queued, or claimed by `token`) still says what to do.
        _record_sent(runtime, sent)
        left = [c.delivery_id for c in claims[max(done - 1, 0) :]] or list(delivery_ids)
        _resume_later(runtime, left, token, exc)
    return outcomes


def _record_sent(runtime: Runtime, sent: list[tuple[dl.Claim, ProviderReceipt]]) -> None:
    """Record the providers' acceptances not yet written (patiently: they exist only here)."""
    if not sent:
        return

    def write() -> None:
        with session_scope(runtime.database_url) as tx:  # one transaction, one commit
            for claim, receipt in sent:
                dl.mark_sent(tx, claim, receipt.provider_id, receipt.status, commit=False)

    _patiently(write)
    sent.clear()


def _mark_provider_called(
    runtime: Runtime, claim: dl.Claim, sent: list[tuple[dl.Claim, ProviderReceipt]]
) -> bool:
    """:func:`careloop.deliveries.mark_provider_called`, committed together with the acceptances
    of the sends before it: one commit (a WAL flush, the costliest part of a delivery on
    PostgreSQL) per delivery instead of two. A crash before this commit leaves those earlier
    sends as a crash right after their provider call always did ("called", settled by the relay)."""

    def write() -> bool:
        with session_scope(runtime.database_url) as tx:
            for earlier, receipt in sent:
                dl.mark_sent(tx, earlier, receipt.provider_id, receipt.status, commit=False)
            return dl.mark_provider_called(tx, claim, commit=False)

    called = _patiently(write)
    sent.clear()
    return called


def deliver(delivery_id: str, runtime: Runtime | None = None, claim_token: str | None = None) -> str:
    """Send one delivery. Returns the status it ended in.

    ``claim_token``: this job holds that claim already (it met a database error and put itself
    back); it carries on from where it stopped instead of claiming again. (Also the job that
    releases before 0.2 queued, one per delivery.)
    """
    runtime = _runtime(runtime)
    if claim_token is None:
        return deliver_many([delivery_id], runtime=runtime).get(delivery_id, "not-claimed")
    try:
        with session_scope(runtime.database_url, autocommit=True) as session:
            orphans = dl.untried_claims(session, claim_token, exclude=delivery_id)
            if orphans:  # the batch's claim committed but its answer was lost: the rest go back
                _give_back(session, runtime, orphans, 0)
            claim = dl.take_over(session, delivery_id, claim_token)
            if claim is None:
                return deliver_many([delivery_id], runtime=runtime).get(delivery_id, "not-claimed")
            if claim.provider_called and webhook_sends.is_webhook(session, claim):
                return webhook_sends.resend_interrupted(session, runtime, claim)
            if claim.provider_called:  # this job called the provider before the database went
                message = build_message(session, runtime, claim)
                reason = "an attempt interrupted by the database"
                return _settle_by_lookup(session, runtime, claim, message, reason)
            sent: list[tuple[dl.Claim, ProviderReceipt]] = []
            status = _send(session, runtime, claim, set(), sent)
            _record_sent(runtime, sent)
            return status
    except DATABASE_ERRORS as exc:
        _resume_later(runtime, [delivery_id], claim_token, exc)
        return "database-unavailable"


def _delivery_request_id(session: Session, delivery_id: str) -> str | None:
    delivery = session.get(Delivery, delivery_id)
    return _request_id(session.get(Event, delivery.event_id)) if delivery is not None else None


def _resume_later(runtime: Runtime, delivery_ids: list[str], token: str, exc: Exception) -> None:
    log.warning(
        "%d deliveries: the database is unavailable (%s); trying again in %ss",
        len(delivery_ids),
        type(exc).__name__,
        DATABASE_RETRY_DELAY,
    )
    try:
        for delivery_id in delivery_ids:
            runtime.dispatcher.resume(delivery_id, token, DATABASE_RETRY_DELAY)
    except Exception:
        log.warning("the queue is unavailable too; the relay hands these deliveries over later")


def _preload(session: Session, claims: list[dl.Claim]) -> list:
    """Load what the batch's messages need in four queries. The caller holds the returned
    objects for the batch: the session's identity map (which ``session.get`` reads) keeps only
    weak references."""
    if not claims:
        return []
    ids = [c.delivery_id for c in claims]
    deliveries = session.scalars(select(Delivery).where(Delivery.id.in_(ids))).all()
    events = session.scalars(select(Event).where(Event.id.in_({d.event_id for d in deliveries}))).all()
    notebook_ids = {d.notebook_id for d in deliveries}
    notebooks = session.scalars(select(Notebook).where(Notebook.id.in_(notebook_ids))).all()
    member_ids = {d.member_id for d in deliveries}
    for event in events:
        member_ids.update((event.context or {}).get("checkin", {}).get("attendees") or [])
    members = session.scalars(select(Member).where(Member.id.in_(member_ids))).all()
    return [*deliveries, *events, *notebooks, *members]


def _give_back(
    session: Session,
    runtime: Runtime,
    claims: list[dl.Claim],
    delay: float,
    reason: str = "not tried yet: its provider was failing or the batch ran long",
) -> None:
    """Deliveries of this batch not tried (their provider is failing, time ran out, or an urgent
    alert is waiting)."""
    dl.release(session, claims, reason, delay)
    log.info("%d deliveries given back untried; due again in %ss", len(claims), delay)
    hand_over_deliveries(session, runtime.dispatcher, [c.delivery_id for c in claims], delay=delay)


def _not_claimed(session: Session, runtime: Runtime, delivery_id: str) -> str:
    due = dl.seconds_until_due(session, delivery_id)
    if due:  # the queue ran it before its retry was due: wait for the rest
        hand_over_deliveries(session, runtime.dispatcher, [delivery_id], delay=due)
        return "rescheduled"
    log.info("deliver: %s is not queued; nothing to do", delivery_id)
    return "not-claimed"


def _send(
    session: Session,
    runtime: Runtime,
    claim: dl.Claim,
    failing: set[str],
    sent: list[tuple[dl.Claim, ProviderReceipt]],
) -> str:
    """Send one claimed delivery. Its acceptance is appended to ``sent``, to be recorded with the
    next delivery's "provider called" (or by :func:`_record_sent` at the end of the batch)."""
    delivery_id = claim.delivery_id
    delivery = session.get(Delivery, delivery_id)
    if delivery.channel == WEBHOOK_CHANNEL:
        return webhook_sends.send(session, runtime, claim, failing)
    try:
        message = build_message(session, runtime, claim)
    except RenderError as exc:
        dl.mark_failed(session, claim, str(exc))
        return DeliveryStatus.FAILED
    except DATABASE_ERRORS:
        raise
    except Exception as exc:  # a bug or bad stored data; no provider was called
        log.exception("delivery %s: could not build the message", delivery_id)
        reason = f"could not build the message ({type(exc).__name__}); nothing was sent"
        dl.mark_failed(session, claim, reason)
        return DeliveryStatus.FAILED
    channel = runtime.channels[ChannelKind(delivery.channel)]
    # the member's contact may have been removed since routing planned this delivery
    missing = channel.unreachable_reason(session.get(Member, delivery.member_id))
    if missing:
        dl.mark_failed(session, claim, missing)
        return DeliveryStatus.FAILED
    if not _mark_provider_called(runtime, claim, sent):  # committed before the call: see recover_stale
        log.info("delivery %s: the claim was taken over; not sending", delivery_id)
        return "not-claimed"
    started = time.perf_counter()
    try:
        receipt = channel.send(message)
    except DeliveryError as exc:
        metrics.PROVIDER_LATENCY.labels(delivery.channel, "error").observe(time.perf_counter() - started)
        if not exc.permanent:
            failing.add(delivery.channel)
        refusal = exc
        return _patiently(lambda: _after_refusal(session, runtime, claim, message, refusal))
    except Exception:
        metrics.PROVIDER_LATENCY.labels(delivery.channel, "error").observe(time.perf_counter() - started)
        # A bug, not a provider answer: the provider may or may not have the message.
        reason = dl.OUTCOME_UNKNOWN + " (unexpected error in careloop)"
        _patiently(lambda: dl.mark_failed(session, claim, reason))
        raise
    metrics.PROVIDER_LATENCY.labels(delivery.channel, "ok").observe(time.perf_counter() - started)
    sent.append((claim, receipt))
    log.info("delivery %s sent by %s (%s)", delivery_id, delivery.channel, receipt.provider_id)
    return receipt.status


def _after_refusal(
    session: Session, runtime: Runtime, claim: dl.Claim, message: OutgoingMessage, exc: DeliveryError
) -> str:
    delivery_id = claim.delivery_id
    if exc.maybe_sent and not exc.permanent:
        log.warning("delivery %s: %s; asking the provider before any resend", delivery_id, exc.reason)
        return _settle_by_lookup(session, runtime, claim, message, resend_reason=exc.reason)
    schedule = runtime.settings.retry_schedule
    if exc.permanent or claim.round_attempt > len(schedule):
        reason = exc.reason
        if not exc.permanent:
            reason = f"gave up after {claim.round_attempt} attempts: {exc.reason}"
        dl.mark_failed(session, claim, reason)
        log.warning("delivery %s failed: %s", delivery_id, reason)
        return DeliveryStatus.FAILED
    delay = dl.retry_delay(claim.round_attempt, schedule, exc.retry_after)
    dl.requeue(session, claim, exc.reason, delay)
    log.info("delivery %s: %s; trying again in %.1fs", delivery_id, exc.reason, delay)
    _hand_over_retry(session, runtime, claim, delay)
    return DeliveryStatus.QUEUED


def _hand_over_retry(session: Session, runtime: Runtime, claim: dl.Claim, delay: float) -> None:
    # if the queue is down, the row says when; the relay hands it over then
    hand_over_deliveries(session, runtime.dispatcher, [claim.delivery_id], delay=delay)


def _patiently(write):
    """Run a database write that records a provider's answer, retrying while the database is
    unavailable (up to :data:`OUTCOME_WRITE_PATIENCE` seconds): the answer exists only here."""
    deadline = time.monotonic() + OUTCOME_WRITE_PATIENCE
    pause = 0.2
    while True:
        try:
            return write()
        except DATABASE_ERRORS:
            if time.monotonic() > deadline:
                raise
            log.warning("the database is unavailable while recording a provider's answer; retrying")
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def recover_stale(runtime: Runtime, delivery_id: str, token: str) -> str:
    """Decide what happened to a send whose worker vanished, without resending blindly.

    A worker that vanished before calling the provider (no call recorded for its claim) sent
    nothing: the delivery is simply tried again. Otherwise the provider is asked (Twilio keeps
    a list of messages); where it cannot be asked (SMTP) the delivery is failed as "outcome
    unknown" for a person to decide.
    """
    with session_scope(runtime.database_url, autocommit=True) as session:
        claim = dl.take_over(session, delivery_id, token)
        if claim is None:
            return "not-claimed"
        set_request_id(_delivery_request_id(session, delivery_id))  # the caller bounds it (relay)
        if not claim.provider_called:
            return _retry_uncalled(session, runtime, claim)
        if webhook_sends.is_webhook(session, claim):
            return webhook_sends.resend_interrupted(session, runtime, claim)
        try:
            message = build_message(session, runtime, claim)
        except RenderError as exc:
            dl.mark_failed(session, claim, str(exc))
            return DeliveryStatus.FAILED
        return _settle_by_lookup(
            session,
            runtime,
            claim,
            message,
            resend_reason="an interrupted attempt never reached the provider",
        )


def _retry_uncalled(session: Session, runtime: Runtime, claim: dl.Claim) -> str:
    """A claimed attempt that never called its provider: not an attempt at all; queue it now."""
    reason = "the worker stopped before calling the provider; trying again"
    dl.release(session, [claim], reason, 0.0)
    log.info("delivery %s: %s", claim.delivery_id, reason)
    hand_over_deliveries(session, runtime.dispatcher, [claim.delivery_id])
    return DeliveryStatus.QUEUED


def _settle_by_lookup(
    session: Session, runtime: Runtime, claim: dl.Claim, message: OutgoingMessage, resend_reason: str
) -> str:
    """An attempt may have reached the provider: ask it, and resend only if it says no.

    Where the provider cannot be asked, the delivery fails as "outcome unknown" for a person
    to decide; where asking fails for now, the claim is left to go stale and be checked again.
    """
    try:
        receipt = runtime.channels[ChannelKind(message.channel)].lookup(message)
    except OutcomeUnknown:
        dl.mark_failed(session, claim, dl.OUTCOME_UNKNOWN)
        log.warning("delivery %s: outcome unknown", claim.delivery_id)
        return DeliveryStatus.FAILED
    except DeliveryError as exc:
        log.info(
            "delivery %s: cannot ask the provider yet (%s); will look again", claim.delivery_id, exc.reason
        )
        return DeliveryStatus.SENDING
    if receipt is not None:
        dl.mark_sent(session, claim, receipt.provider_id, receipt.status)
        log.info(
            "delivery %s: the provider has it (%s); not resending", claim.delivery_id, receipt.provider_id
        )
        return receipt.status
    schedule = runtime.settings.retry_schedule
    if claim.round_attempt > len(schedule):
        dl.mark_failed(session, claim, f"gave up after {claim.round_attempt} attempts: {resend_reason}")
        return DeliveryStatus.FAILED
    delay = dl.retry_delay(claim.round_attempt, schedule)
    dl.requeue(session, claim, f"{resend_reason}; the provider does not have it, sending again", delay)
    _hand_over_retry(session, runtime, claim, delay)
    return DeliveryStatus.QUEUED
