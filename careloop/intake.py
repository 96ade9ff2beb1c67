"""Recording a notebook event: the event, its check-in state and its outbox entry, in one
transaction. Whatever is accepted here is routed later even if the queue is down now.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from careloop.calendar_publishing import stage_publish
from careloop.checkins import CheckinError, apply_event
from careloop.logs import current_request_id
from careloop.models import Event, Member, Notebook, OutboxEntry, new_id, utcnow

ROUTE_TOPIC = "route_event"
"""Outbox topic of "this event needs routing"."""


class FieldError(ValueError):
    """Input that is well-formed but wrong for this notebook; names the field (→ 422)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body (→ 409)."""


def request_hash(payload: dict) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _checkin_context(session: Session, notebook: Notebook, event_type: str, data: dict) -> dict:
    """Move the check-in on (:func:`careloop.checkins.apply_event`); its snapshot for routing."""
    try:
        return apply_event(session, notebook, event_type, data)
    except CheckinError as exc:
        raise FieldError(exc.field, exc.message) from None


def record_event(session: Session, notebook: Notebook, **event) -> tuple[Event, bool]:
    """Store an event and its outbox entry; commit. Returns (event, created).

    Keyword arguments: ``event_type``, ``data``, ``occurred_at``, ``author_member_id``,
    ``idempotency_key``. With an idempotency key, a repeat of the same request returns the
    first event (created=False); a different request under the same key raises
    IdempotencyConflict. Concurrent requests are settled by the database's unique
    constraints, not by a read: the one that loses the race is decided again against the
    winner's row (the same event again, a 409, or a 422 for a check-in already scheduled).
    """
    try:
        return _record(session, notebook, **event)
    except IntegrityError:
        return _record(session, notebook, **event)


def stage_event(session: Session, notebook: Notebook, **event) -> Event:
    """Add an event and its outbox entry to the session, flushed but not committed, for a
    caller that writes more in the same transaction (an inbound webhook's record). Takes
    :func:`record_event`'s keyword arguments but no idempotency key; raises FieldError."""
    event_row, _ = _stage(session, notebook, idempotency_key=None, **event)
    return event_row


def _record(session: Session, notebook: Notebook, **event) -> tuple[Event, bool]:
    try:
        recorded = _stage(session, notebook, **event)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return recorded


def _stage(
    session: Session,
    notebook: Notebook,
    *,
    event_type: str,
    data: dict,
    occurred_at: datetime | None,
    author_member_id: str | None,
    idempotency_key: str | None,
    member_ids: set[str] | None = None,
) -> tuple[Event, bool]:
    """Add an event and its outbox entry to the session (flushed, not committed)."""
    payload = {
        "type": event_type,
        "data": data,
        "occurred_at": occurred_at,
        "author_member_id": author_member_id,
    }
    digest = request_hash(payload)
    if idempotency_key:
        existing = _find_idempotent(session, notebook.id, idempotency_key, digest)
        if existing:
            return existing, False

    if member_ids is None and (author_member_id is not None or data.get("attendees")):
        member_ids = set(session.scalars(select(Member.id).where(Member.notebook_id == notebook.id)))
    if author_member_id is not None and author_member_id not in member_ids:
        raise FieldError("author_member_id", "is not a member of this notebook")
    for index, member_id in enumerate(data.get("attendees") or []):
        if member_id not in member_ids:
            raise FieldError(f"data.attendees.{index}", f"{member_id!r} is not a member of this notebook")

    context = _checkin_context(session, notebook, event_type, data) if "checkin_id" in data else {}
    context.update(_traced())
    event = Event(
        notebook_id=notebook.id,
        type=event_type,
        data=data,
        context=context,
        occurred_at=occurred_at or utcnow(),
        author_member_id=author_member_id,
        idempotency_key=idempotency_key,
        request_hash=digest if idempotency_key else None,
    )
    session.add(event)
    session.flush()
    # Counted as handed over from the start: the caller hands it to the queue right after the
    # commit and resets this only if that fails (one write fewer per event); a process that
    # dies in between leaves it for the relay, which finds no job for it after the claim timeout.
    session.add(OutboxEntry(topic=ROUTE_TOPIC, ref_id=event.id, dispatched_at=event.recorded_at or utcnow()))
    if "checkin_id" in data:  # the notebook's CalDAV calendar, if it has one, gets the change too
        stage_publish(session, notebook.id, data["checkin_id"])
    return event, True


def _traced() -> dict:
    """What the event keeps of the request that recorded it: its request id, so the routing and
    delivery jobs log the same id as the web process did (careloop.logs)."""
    request_id = current_request_id()
    return {"request_id": request_id} if request_id else {}


def _find_idempotent(session: Session, notebook_id: str, key: str, digest: str) -> Event | None:
    event = session.execute(
        select(Event).where(Event.notebook_id == notebook_id, Event.idempotency_key == key)
    ).scalar_one_or_none()
    if event is not None and event.request_hash != digest:
        raise IdempotencyConflict(key)
    return event


@dataclass(frozen=True)
class BatchOutcome:
    """What became of one item of a batch: ``status`` 202 (accepted; ``replayed`` when an
    Idempotency key returned an earlier event), or the 4xx it would have had alone with
    ``field`` and ``message``."""

    index: int
    status: int
    event_id: str | None = None
    replayed: bool = False
    field: str | None = None
    message: str | None = None


def record_events(session: Session, notebook: Notebook, items: list[dict]) -> list[BatchOutcome]:
    """Store many events of one notebook in one transaction; each is decided on its own.

    ``items`` are :func:`record_event`'s keyword arguments, already validated. Ordinary events
    are written with one multi-row INSERT for the events and one for their outbox entries;
    check-ins and items with an idempotency key go one by one inside savepoints (they read
    and lock rows). Items that fail (a 409 or a 422 they would have had alone) are left out;
    the rest commit together. Returns one outcome per item, in order.
    """
    member_ids = set(session.scalars(select(Member.id).where(Member.notebook_id == notebook.id)))
    outcomes: dict[int, BatchOutcome] = {}
    events, entries = [], []
    now = utcnow()
    try:
        for index, item in enumerate(items):
            data = item["data"]
            if item.get("idempotency_key") or "checkin_id" in data:
                outcomes[index] = _stage_one(session, notebook, index, item, member_ids)
                continue
            problem = _member_problem(item, member_ids)
            if problem:
                outcomes[index] = BatchOutcome(index, 422, field=problem.field, message=problem.message)
                continue
            event_id = new_id("evt")
            events.append(
                {
                    "id": event_id,
                    "notebook_id": notebook.id,
                    "type": item["event_type"],
                    "data": data,
                    "context": _traced(),
                    "occurred_at": item.get("occurred_at") or now,
                    "recorded_at": now,
                    "author_member_id": item.get("author_member_id"),
                }
            )
            entries.append(dict(topic=ROUTE_TOPIC, ref_id=event_id, created_at=now, dispatched_at=now))
            outcomes[index] = BatchOutcome(index, 202, event_id=event_id)
        if events:
            session.execute(insert(Event), events)
            session.execute(insert(OutboxEntry), entries)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return [outcomes[i] for i in range(len(items))]


def _member_problem(item: dict, member_ids: set[str]) -> FieldError | None:
    author = item.get("author_member_id")
    if author is not None and author not in member_ids:
        return FieldError("author_member_id", "is not a member of this notebook")
    for index, member_id in enumerate(item["data"].get("attendees") or []):
        if member_id not in member_ids:
            return FieldError(f"data.attendees.{index}", f"{member_id!r} is not a member of this notebook")
    return None


def _stage_one(
    session: Session, notebook: Notebook, index: int, item: dict, member_ids: set[str]
) -> BatchOutcome:
    """One check-in or idempotent item, in a savepoint of the batch's transaction.

    (On SQLite, whose single writer cannot race inside a transaction, there is no savepoint:
    every refusal is decided before anything is written.)
    """
    nested = session.get_bind().dialect.name != "sqlite"
    for _ in range(2):  # a unique-constraint race is decided again against the winner's row
        savepoint = session.begin_nested() if nested else None
        try:
            event, created = _stage(session, notebook, **item, member_ids=member_ids)
        except FieldError as exc:
            outcome = BatchOutcome(index, 422, field=exc.field, message=exc.message)
        except IdempotencyConflict:
            message = "this key was used with a different request body"
            outcome = BatchOutcome(index, 409, field="idempotency_key", message=message)
        except IntegrityError:
            if savepoint is None:
                raise
            savepoint.rollback()
            continue
        else:
            if savepoint is not None:
                savepoint.commit()
            return BatchOutcome(index, 202, event_id=event.id, replayed=not created)
        if savepoint is not None:
            savepoint.rollback()
        return outcome
    return BatchOutcome(index, 409, field="idempotency_key", message="a concurrent request holds this key")
