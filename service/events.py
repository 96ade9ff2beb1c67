"""Event intake and the notebook's event history."""

from __future__ import annotations

import logging
import re

from apiflask import APIBlueprint, abort
from flask import current_app, g, request
from pydantic import ValidationError
from sqlalchemy import and_, or_, select

from careloop import metrics, reminders, serialize
from careloop.access import Action
from careloop.handover import hand_over_events
from careloop.intake import FieldError, IdempotencyConflict, record_event, record_events
from careloop.models import Delivery, Event
from careloop.service import api_links
from careloop.service.audit_trail import trail
from careloop.service.auth import auth, before_the_body, notebook_or_404, reach_or_404
from careloop.service.errors import error_body, validation_detail
from careloop.service.pagination import decode_cursor, encode_cursor
from careloop.service.schemas import (
    BATCH_MAX,
    EventAccepted,
    EventBatchIn,
    EventBatchOut,
    EventIn,
    EventList,
    EventsQuery,
    EventWithDeliveries,
)
from careloop.vocabulary import WEBHOOK_CHANNEL

bp = APIBlueprint("events", __name__, url_prefix="/v1", tag="Events")

log = logging.getLogger("careloop.service")

IDEMPOTENCY_KEY_MAX = 200
"""Characters an Idempotency-Key may have (the database column's size)."""

IDEMPOTENCY_KEY_PATTERN = r"^[\x20-\x7e]*[\x21-\x7e][\x20-\x7e]*$"
"""Printable ASCII, not blank: characters and bytes are one and the same (an HTTP header
arrives as bytes), as the IETF Idempotency-Key draft's structured-field string has it."""

IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Makes a retried request safe: the same key and body return the first event.",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": IDEMPOTENCY_KEY_MAX,
        "pattern": IDEMPOTENCY_KEY_PATTERN,
    },
}
"""The header, as the OpenAPI document describes it."""


IDEMPOTENCY_KEY_PROBLEM = f"must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters"


def _valid_key(key: object) -> bool:
    return (
        isinstance(key, str)
        and len(key) <= IDEMPOTENCY_KEY_MAX
        and bool(re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key))
    )


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _valid_key(key):
        abort(422, "Validation error", detail={"headers": {"Idempotency-Key": [IDEMPOTENCY_KEY_PROBLEM]}})
    return key.strip()


@bp.post("/notebooks/<id:notebook_id>/events")
@bp.auth_required(auth)
@before_the_body(Action.RECORD_EVENTS)
@bp.input(EventIn, arg_name="body")
@bp.output(EventAccepted, status_code=202, links=api_links.FROM_ACCEPTED_EVENT)
@bp.doc(
    operation_id="createEvent",
    summary="Record a notebook event",
    description="Answers 202 once the event is stored; routing and delivery happen in the background. "
    "Send an `Idempotency-Key` header to make retries safe: the same key and body return the "
    "first event, the same key with another body answers 409.",
    responses={
        202: "Accepted",
        404: "No such notebook",
        409: "Idempotency-Key reused with a different body",
        422: "Invalid",
        503: "The database is unavailable: nothing was recorded; send it again after Retry-After",
    },
)
def create_event(notebook_id: str, body: EventIn):
    notebook = notebook_or_404(notebook_id, Action.RECORD_EVENTS)
    key = _idempotency_key()
    item = body.root
    try:
        event, created = record_event(
            g.db,
            notebook,
            event_type=item.type,
            data=item.data.model_dump(mode="json", exclude_none=True),
            occurred_at=item.occurred_at,
            author_member_id=item.author_member_id,
            idempotency_key=key,
        )
    except FieldError as exc:
        abort(422, "Validation error", detail={"json": {exc.field: [exc.message]}})
    except IdempotencyConflict:
        abort(409, "this Idempotency-Key was used with a different request body")
    trail().target_id = event.id
    if created:
        metrics.event_accepted(event.type, "api")
        log.info("event %s (%s) recorded in notebook %s", event.id, event.type, notebook.id)
        hand_over_events(g.db, current_app.extensions["careloop"].runtime.dispatcher, [event.id])
    else:
        log.info("event %s: a repeat of its request (Idempotency-Key); nothing recorded", event.id)
    headers = {"Location": f"/v1/events/{event.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return {"id": event.id, "status": "accepted", "type": event.type}, 202, headers


def _batch_item(raw: dict) -> tuple[dict | None, dict | None]:
    """One item of a batch, validated as ``createEvent`` validates its body and header:
    (``record_events`` item, None) or (None, the 422 body it would have had alone)."""
    raw = dict(raw)
    key = raw.pop("idempotency_key", None)
    detail: dict[str, list[str]] = {}
    if key is not None and not _valid_key(key):
        detail["idempotency_key"] = [IDEMPOTENCY_KEY_PROBLEM]
    try:
        item = EventIn.model_validate(raw).root
    except ValidationError as exc:
        detail.update(validation_detail(exc.errors()))
    if detail:
        return None, error_body(422, "Validation error", {"json": detail})
    return {
        "event_type": item.type,
        "data": item.data.model_dump(mode="json", exclude_none=True),
        "occurred_at": item.occurred_at,
        "author_member_id": item.author_member_id,
        "idempotency_key": key.strip() if key is not None else None,
    }, None


@bp.post("/notebooks/<id:notebook_id>/events:batch")
@bp.auth_required(auth)
@before_the_body(Action.RECORD_EVENTS)
@bp.input(EventBatchIn, arg_name="body")
@bp.output(EventBatchOut, links=api_links.FROM_EVENT_BATCH)
@bp.doc(
    operation_id="createEvents",
    summary="Record many notebook events at once",
    description=f"1 to {BATCH_MAX} events of one notebook. Each is validated and answered on its own "
    "in `results` (in order): `accepted` as `createEvent` would answer 202, `duplicate` when its "
    "`idempotency_key` was used before for the same event (its first `id`), or `rejected` with "
    "the 4xx body it would have had alone (`http_status` 422 or 409). All accepted events are "
    "stored in one transaction with their routing, then routed in the background. The answer is "
    "200 however many were rejected; a body that is not such a list is a 422 naming `events`.",
    responses={
        200: "Each event's outcome",
        404: "No such notebook",
        422: "Not a list of 1 to 500 objects",
        503: "The database is unavailable: nothing was recorded; send it again after Retry-After",
    },
)
def create_events(notebook_id: str, body: EventBatchIn):
    notebook = notebook_or_404(notebook_id, Action.RECORD_EVENTS)
    results: list[dict] = [{}] * len(body.events)
    items, positions = [], []
    for index, raw in enumerate(body.events):
        item, error = _batch_item(raw)
        if error is not None:
            results[index] = {"index": index, "status": "rejected", "http_status": 422, "error": error}
        else:
            items.append(item)
            positions.append(index)
    created = []
    outcomes = record_events(g.db, notebook, items) if items else []
    for position, item, outcome in zip(positions, items, outcomes, strict=True):
        if outcome.status == 202:
            status = "duplicate" if outcome.replayed else "accepted"
            results[position] = {"index": position, "status": status, "id": outcome.event_id}
            if not outcome.replayed:
                created.append(outcome.event_id)
                metrics.event_accepted(item["event_type"], "api")
        else:
            detail = {"json": {outcome.field: [outcome.message]}} if outcome.field else None
            message = "Validation error" if outcome.status == 422 else outcome.message
            error = error_body(outcome.status, message, detail)
            results[position] = {"index": position, "status": "rejected", "http_status": outcome.status,
                                 "error": error}  # fmt: skip
    if created:
        hand_over_events(g.db, current_app.extensions["careloop"].runtime.dispatcher, created)
    return {"results": results}


@bp.get("/notebooks/<id:notebook_id>/events")
@bp.auth_required(auth)
@before_the_body(Action.READ_EVENTS)
@bp.input(EventsQuery, location="query", arg_name="query")
@bp.output(EventList, links=api_links.FROM_EVENTS)
@bp.doc(operation_id="listEvents", summary="List events, newest first (by occurred_at)", responses=[404])
def list_events(notebook_id: str, query: EventsQuery):
    notebook = notebook_or_404(notebook_id, Action.READ_EVENTS)
    stmt = select(Event).where(Event.notebook_id == notebook.id)
    if query.type:
        stmt = stmt.where(Event.type == query.type)
    if query.since:
        stmt = stmt.where(Event.occurred_at >= query.since)
    if query.cursor:
        when, ident = decode_cursor(query.cursor)
        stmt = stmt.where(or_(Event.occurred_at < when, and_(Event.occurred_at == when, Event.id < ident)))
    rows = g.db.scalars(stmt.order_by(Event.occurred_at.desc(), Event.id.desc()).limit(query.limit + 1)).all()
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    return {
        "items": [serialize.event(e) for e in rows],
        "next_cursor": encode_cursor(rows[-1].occurred_at, rows[-1].id) if more else None,
    }


@bp.get("/events/<id:event_id>")
@bp.auth_required(auth)
@bp.output(EventWithDeliveries, links=api_links.FROM_EVENT)
@bp.doc(operation_id="getEvent", summary="Get an event with its deliveries", responses=[404])
def get_event(event_id: str):
    event = reach_or_404(Event, event_id, Action.READ_EVENTS, "event")
    deliveries = g.db.scalars(
        select(Delivery)
        .where(Delivery.event_id == event.id, Delivery.channel != WEBHOOK_CHANNEL)
        .order_by(Delivery.created_at, Delivery.id)
    ).all()
    body = serialize.event(event, list(deliveries))
    # --- reminders (issue 12): a check-in event shows its check-in's reminders ---
    body["reminders"] = [
        serialize.reminder(r) for r in reminders.of_checkin(g.db, event.notebook_id, event.context)
    ]
    return body
