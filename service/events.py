"""Event intake and the notebook's event history."""

from __future__ import annotations

import re

from apiflask import APIBlueprint, abort
from flask import current_app, g, request
from sqlalchemy import and_, or_, select

from careloop import serialize
from careloop.access import Action
from careloop.handover import hand_over_events
from careloop.intake import FieldError, IdempotencyConflict, record_event
from careloop.models import Delivery, Event
from careloop.service import api_links
from careloop.service.audit_trail import trail
from careloop.service.auth import auth, before_the_body, notebook_or_404, reach_or_404
from careloop.service.pagination import decode_cursor, encode_cursor
from careloop.service.schemas import EventAccepted, EventIn, EventList, EventsQuery, EventWithDeliveries

bp = APIBlueprint("events", __name__, url_prefix="/v1", tag="Events")

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


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if len(key) > IDEMPOTENCY_KEY_MAX or not re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key):
        problem = f"must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters"
        abort(422, "Validation error", detail={"headers": {"Idempotency-Key": [problem]}})
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
        hand_over_events(g.db, current_app.extensions["careloop"].runtime.dispatcher, [event.id])
    headers = {"Location": f"/v1/events/{event.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return {"id": event.id, "status": "accepted", "type": event.type}, 202, headers


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
        select(Delivery).where(Delivery.event_id == event.id).order_by(Delivery.created_at, Delivery.id)
    ).all()
    return serialize.event(event, list(deliveries))
