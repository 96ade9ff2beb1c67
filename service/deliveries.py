"""Deliveries: look at them, list dead letters, send a failed one again, acknowledge an alert."""

from __future__ import annotations

from apiflask import APIBlueprint, abort
from flask import current_app, g
from sqlalchemy import and_, or_, select

from careloop import serialize
from careloop.access import Action
from careloop.deliveries import retry_failed
from careloop.escalation import AckVia, acknowledge
from careloop.handover import hand_over_deliveries
from careloop.models import Delivery
from careloop.service import api_links
from careloop.service.audit_trail import trail
from careloop.service.auth import auth, notebook_or_404, principal, reach_or_404, refuse
from careloop.service.pagination import decode_cursor, encode_cursor
from careloop.service.schemas import DeliveriesQuery, DeliveryList, DeliveryOut
from careloop.vocabulary import RETRYABLE_STATUSES, WEBHOOK_CHANNEL, DeliveryStatus

bp = APIBlueprint("deliveries", __name__, url_prefix="/v1", tag="Deliveries")


def _delivery_or_404(delivery_id: str, action: Action = Action.READ_DELIVERIES) -> Delivery:
    delivery = g.db.get(Delivery, delivery_id)
    if delivery is not None and delivery.channel == WEBHOOK_CHANNEL:  # an endpoint's: /v1/endpoints
        refuse("delivery", None, "missing")
    return reach_or_404(Delivery, delivery_id, action, "delivery")


@bp.get("/deliveries")
@bp.auth_required(auth)
@bp.input(DeliveriesQuery, location="query", arg_name="query")
@bp.output(DeliveryList, links=api_links.FROM_DELIVERIES)
@bp.doc(
    operation_id="listDeliveries",
    summary="List deliveries, newest first; ?status=failed lists the dead letters",
    responses={404: "A notebook key asked for another notebook's deliveries"},
)
def list_deliveries(query: DeliveriesQuery):
    stmt = select(Delivery).where(Delivery.channel != WEBHOOK_CHANNEL)  # webhooks: /v1/endpoints
    reachable = principal().notebooks_for(Action.READ_DELIVERIES)  # None: every notebook (admin)
    if query.notebook_id:
        notebook_or_404(query.notebook_id, Action.READ_DELIVERIES)
        stmt = stmt.where(Delivery.notebook_id == query.notebook_id)
    elif reachable is not None:
        stmt = stmt.where(Delivery.notebook_id.in_(sorted(reachable)))
        trail().notebook_ids = sorted(reachable)
    if query.status:
        stmt = stmt.where(Delivery.status == query.status)
    if query.cursor:
        when, ident = decode_cursor(query.cursor)
        stmt = stmt.where(
            or_(Delivery.updated_at < when, and_(Delivery.updated_at == when, Delivery.id < ident))
        )
    rows = g.db.scalars(
        stmt.order_by(Delivery.updated_at.desc(), Delivery.id.desc()).limit(query.limit + 1)
    ).all()
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    return {
        "items": [serialize.delivery(d) for d in rows],
        "next_cursor": encode_cursor(rows[-1].updated_at, rows[-1].id) if more else None,
    }


@bp.get("/deliveries/<id:delivery_id>")
@bp.auth_required(auth)
@bp.output(DeliveryOut, links=api_links.FROM_DELIVERY)
@bp.doc(operation_id="getDelivery", summary="Get one delivery", responses=[404])
def get_delivery(delivery_id: str):
    return serialize.delivery(_delivery_or_404(delivery_id))


@bp.post("/deliveries/<id:delivery_id>/retry")
@bp.auth_required(auth)
@bp.output(DeliveryOut, status_code=202, links=api_links.FROM_DELIVERY)
@bp.doc(
    operation_id="retryDelivery",
    summary="Send a failed delivery again",
    description="Moves a failed or undelivered delivery back to the queue with a fresh attempt budget. "
    "Idempotent: retrying one that is already queued, sending or sent changes nothing and "
    "answers 200 with its current state; a skipped one answers 409.",
    responses={
        202: "Queued again",
        200: {
            "description": "Already on its way or sent: the delivery as it is",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DeliveryOut"}}},
        },
        404: "No such delivery",
        409: "Skipped deliveries cannot be retried",
    },
)
def retry_delivery(delivery_id: str):
    delivery = _delivery_or_404(delivery_id, Action.RETRY_DELIVERIES)
    if delivery.status == DeliveryStatus.SKIPPED:
        abort(409, f"this delivery was skipped ({delivery.error}); fix the member and record the event again")
    if delivery.status not in RETRYABLE_STATUSES:
        return serialize.delivery(delivery), 200
    return send_again(delivery), 202


def send_again(delivery: Delivery) -> dict:
    """Put a failed or undelivered delivery back on the queue with a fresh attempt budget —
    the one retry of the API and of the timeline page. Returns the delivery as the retry left
    it (serialized before it is handed over, so before a worker can claim it). A delivery that
    is no longer a dead letter is left as it is."""
    requeued = retry_failed(g.db, delivery.id)
    g.db.refresh(delivery)
    body = serialize.delivery(delivery)
    if requeued:
        hand_over_deliveries(g.db, current_app.extensions["careloop"].runtime.dispatcher, [delivery.id])
    return body


@bp.post("/deliveries/<id:delivery_id>/ack")
@bp.auth_required(auth)
@bp.output(DeliveryOut, links=api_links.FROM_DELIVERY)
@bp.doc(
    operation_id="acknowledgeDelivery",
    summary="Acknowledge an alert: someone has seen it",
    description="Records who acknowledged the delivery (`acknowledged_by`: the key's id, or `admin`) and, "
    "the first time any delivery of its event is acknowledged, stops the event's escalation: no further "
    "step is alerted, and its urgent alerts no longer fail over (`GET /v1/events/{id}`, `escalation`). "
    "Idempotent: acknowledging it again answers 200 with the first acknowledgement unchanged. Members "
    "acknowledge on their own page or by texting OK.",
    responses={200: "Acknowledged (now or before)", 404: "No such delivery"},
)
def acknowledge_delivery(delivery_id: str):
    delivery = _delivery_or_404(delivery_id, Action.ACKNOWLEDGE_DELIVERIES)
    who = principal()
    acknowledge(g.db, delivery, who.key_id or "admin", AckVia.API)
    trail().target_id = delivery.id
    return serialize.delivery(delivery)
