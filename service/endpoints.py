"""Outbound webhook endpoints: a clinic's system told about events, signed per Standard Webhooks.

The admin key may name any notebooks; a family key only its own (``Action.MANAGE_WEBHOOKS``);
other keys get 403. The signing secret is shown once, when the endpoint is made. Messages
carry a sequence number per endpoint, so a receiver that sees a gap asks
``/messages?after=N`` for what it missed.
"""

from __future__ import annotations

from functools import wraps

from apiflask import APIBlueprint, abort
from flask import current_app, g
from sqlalchemy import select

from careloop import webhooks
from careloop.access import Action
from careloop.handover import hand_over_deliveries
from careloop.integrations.webhooks_out import DestinationRefused, check_destination
from careloop.models import Notebook, WebhookAttempt, WebhookEndpoint, WebhookEndpointNotebook
from careloop.serialize import iso
from careloop.service import api_links
from careloop.service.audit_trail import trail
from careloop.service.auth import auth, principal, refuse
from careloop.service.schemas import (
    AttemptsQuery,
    CreatedEndpointOut,
    EndpointIn,
    EndpointList,
    EndpointOut,
    MessagesQuery,
    ReplayIn,
    ReplayOut,
    WebhookAttemptList,
    WebhookMessageList,
)
from careloop.vocabulary import DeliveryStatus

bp = APIBlueprint("endpoints", __name__, url_prefix="/v1", tag="Webhook endpoints")


def _out(endpoint: WebhookEndpoint, notebooks: list[str]) -> dict:
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "event_types": list(endpoint.event_types or []),
        "notebooks": notebooks,
        "payload": endpoint.payload,
        "enabled": endpoint.enabled,
        "disabled_at": iso(endpoint.disabled_at),
        "disabled_reason": endpoint.disabled_reason,
        "failing_since": iso(endpoint.failing_since),
        "last_sequence": endpoint.last_sequence,
        "created_at": iso(endpoint.created_at),
    }


def _may_manage(notebooks: list[str]) -> bool:
    who = principal()
    return who.admin or (bool(notebooks) and all(who.may(Action.MANAGE_WEBHOOKS, nb) for nb in notebooks))


def _endpoint_or_404(endpoint_id: str) -> tuple[WebhookEndpoint, list[str]]:
    """The endpoint, if this key may manage every notebook it serves; 404 alike for 'missing'
    and 'not yours'."""
    endpoint = g.db.get(WebhookEndpoint, endpoint_id)
    if endpoint is None:
        refuse("endpoint", None, "missing")
    notebooks = webhooks.endpoint_notebooks(g.db, endpoint_id)
    if not _may_manage(notebooks):
        reachable = [nb for nb in notebooks if principal().may_reach(nb)]
        refuse("endpoint", reachable[0] if reachable else None, "role" if reachable else "out of reach")
    seen = trail()
    seen.notebook_ids, seen.target_id = notebooks, endpoint.id
    return endpoint, notebooks


def _endpoint_first(view):
    """The endpoint in the path, checked before the route reads its body or query (a key that
    may not manage it learns nothing from input it may not send)."""

    @wraps(view)
    def checked(endpoint_id: str, **kwargs):
        g.endpoint = _endpoint_or_404(endpoint_id)
        return view(**kwargs)

    return checked


def _manager_first(view):
    """Before the body: only the admin and keys that may manage some notebook's webhooks (family
    keys) may make an endpoint; any other key gets 403, as for an admin-only route."""

    @wraps(view)
    def checked(*args, **kwargs):
        who = principal()
        if not who.admin and not who.notebooks_for(Action.MANAGE_WEBHOOKS):
            trail().reason = "role"
            abort(403, "this needs the admin key or a family key")
        return view(*args, **kwargs)

    return checked


def _dispatcher():
    return current_app.extensions["careloop"].runtime.dispatcher


@bp.post("/endpoints")
@bp.auth_required(auth)
@_manager_first
@bp.input(EndpointIn, arg_name="body")
@bp.output(CreatedEndpointOut, status_code=201, links=api_links.FROM_ENDPOINT)
@bp.doc(
    operation_id="createEndpoint",
    summary="Add a webhook endpoint; its signing secret is shown once",
    description="Every event of the named types in the named notebooks is POSTed to `url`, signed per "
    "Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`), as the full event "
    "or its ids only (`payload`). The admin key may name any notebooks, a notebook's key only its own.",
    responses={
        201: "Created: `secret` is shown this once",
        403: "A key that may not manage webhooks (only the admin and family keys may)",
        404: "A notebook that does not exist or that this key may not reach",
        422: "Invalid, or a URL careloop will not call (it names why)",
    },
)
def create_endpoint(body: EndpointIn):
    notebooks = sorted(set(body.notebooks))
    found = set(g.db.scalars(select(Notebook.id).where(Notebook.id.in_(notebooks))))
    if found != set(notebooks):
        refuse("notebook", None, "missing")
    beyond = [nb for nb in notebooks if not principal().may(Action.MANAGE_WEBHOOKS, nb)]
    if beyond:
        refuse("notebook", beyond[0], "out of reach" if not principal().may_reach(beyond[0]) else "role")
    trail().notebook_ids = notebooks
    settings = current_app.extensions["careloop"].settings
    try:
        check_destination(body.url, settings.allow_private_webhooks, settings.provider_timeout)
    except DestinationRefused as exc:
        abort(422, "Validation error", detail={"json": {"url": [exc.reason]}})
    endpoint = WebhookEndpoint(
        url=body.url,
        secret=webhooks.new_secret(),
        event_types=list(dict.fromkeys(body.event_types)),
        payload=body.payload,
        created_by=principal().key_id,
        last_sequence=0,
        enabled=True,
    )
    g.db.add(endpoint)
    g.db.flush()
    g.db.add_all(WebhookEndpointNotebook(endpoint_id=endpoint.id, notebook_id=nb) for nb in notebooks)
    g.db.commit()
    trail().target_id = endpoint.id
    return (
        {**_out(endpoint, notebooks), "secret": endpoint.secret},
        201,
        {"Location": f"/v1/endpoints/{endpoint.id}"},
    )


@bp.get("/endpoints")
@bp.auth_required(auth)
@bp.output(EndpointList)
@bp.doc(operation_id="listEndpoints", summary="List the webhook endpoints this key may see")
def list_endpoints():
    reachable = principal().notebooks_for(Action.MANAGE_WEBHOOKS)  # None: every notebook (admin)
    stmt = select(WebhookEndpoint).order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    if reachable is not None:
        trail().notebook_ids = sorted(reachable)
        stmt = stmt.where(
            WebhookEndpoint.id.in_(
                select(WebhookEndpointNotebook.endpoint_id).where(
                    WebhookEndpointNotebook.notebook_id.in_(sorted(reachable))
                )
            )
        )
    items = []
    for endpoint in g.db.scalars(stmt).all():
        notebooks = webhooks.endpoint_notebooks(g.db, endpoint.id)
        if _may_manage(notebooks):
            items.append(_out(endpoint, notebooks))
    return {"items": items}


@bp.get("/endpoints/<id:endpoint_id>")
@bp.auth_required(auth)
@_endpoint_first
@bp.output(EndpointOut, links=api_links.FROM_ENDPOINT_OUT)
@bp.doc(operation_id="getEndpoint", summary="Get a webhook endpoint (never its secret)", responses=[404])
def get_endpoint():
    return _out(*g.endpoint)


@bp.delete("/endpoints/<id:endpoint_id>")
@bp.auth_required(auth)
@_endpoint_first
@bp.output({}, status_code=204)
@bp.doc(
    operation_id="deleteEndpoint",
    summary="Delete a webhook endpoint, its messages and its attempt log",
    responses={204: "Deleted", 404: "No such endpoint"},
)
def delete_endpoint():
    endpoint, _ = g.endpoint
    webhooks.delete_endpoint(g.db, endpoint.id)
    return "", 204


@bp.get("/endpoints/<id:endpoint_id>/messages")
@bp.auth_required(auth)
@_endpoint_first
@bp.input(MessagesQuery, location="query", arg_name="query")
@bp.output(WebhookMessageList)
@bp.doc(
    operation_id="listEndpointMessages",
    summary="The endpoint's messages numbered above `after`, in order",
    description="A receiver that sees sequence numbers jump (5 after 3) asks for `after=3` and gets "
    "what it missed, whatever became of it: each item's `body` is exactly what is POSTed.",
    responses=[404],
)
def list_messages(query: MessagesQuery):
    endpoint, _ = g.endpoint
    rows = webhooks.messages_after(g.db, endpoint.id, query.after, query.limit + 1)
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    queued = DeliveryStatus.QUEUED
    items = [
        {
            "id": message.id,
            "sequence": message.sequence,
            "event_id": message.event_id,
            "status": message.status,
            "attempts": message.attempts,
            "error": message.error,
            "created_at": iso(message.created_at),
            "delivered_at": iso(message.sent_at) if message.status == DeliveryStatus.DELIVERED else None,
            "next_attempt_at": iso(message.next_attempt_at) if message.status == queued else None,
            "body": webhooks.message_document(message, event, endpoint.payload),
        }
        for message, event in rows
    ]
    return {"items": items, "next_after": rows[-1][0].sequence if more else None}


@bp.get("/endpoints/<id:endpoint_id>/attempts")
@bp.auth_required(auth)
@_endpoint_first
@bp.input(AttemptsQuery, location="query", arg_name="query")
@bp.output(WebhookAttemptList)
@bp.doc(
    operation_id="listEndpointAttempts",
    summary="Every attempt at the endpoint, newest first: time, status code, latency, error",
    description="Neither the request's nor the answer's body is kept.",
    responses=[404],
)
def list_attempts(query: AttemptsQuery):
    endpoint, _ = g.endpoint
    stmt = select(WebhookAttempt).where(WebhookAttempt.endpoint_id == endpoint.id)
    if query.before is not None:
        stmt = stmt.where(WebhookAttempt.id < query.before)
    rows = g.db.scalars(stmt.order_by(WebhookAttempt.id.desc()).limit(query.limit + 1)).all()
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    items = [
        {
            "id": a.id,
            "message_id": a.message_id,
            "sequence": a.sequence,
            "attempted_at": iso(a.attempted_at),
            "status_code": a.status_code,
            "latency_ms": a.latency_ms,
            "error": a.error,
        }
        for a in rows
    ]
    return {"items": items, "next_before": rows[-1].id if more else None}


@bp.post("/endpoints/<id:endpoint_id>/replay")
@bp.auth_required(auth)
@_endpoint_first
@bp.input(ReplayIn, arg_name="body")
@bp.output(ReplayOut, status_code=202)
@bp.doc(
    operation_id="replayEndpoint",
    summary="Send one event's message, or a time range's, again",
    description="Messages go again with their own id and sequence number (receivers de-duplicate by "
    "`webhook-id`); events the endpoint wanted but has no message about get one, numbered next. "
    "Turns a disabled endpoint back on.",
    responses={202: "Queued", 404: "No such endpoint", 422: "`until` before `since`"},
)
def replay(body: ReplayIn):
    endpoint, _ = g.endpoint
    if body.since and body.until and body.until < body.since:
        abort(422, "Validation error", detail={"json": {"until": ["must not be before since"]}})
    resent, made = webhooks.replay(g.db, endpoint, body.event_id, body.since, body.until)
    if resent or made:
        hand_over_deliveries(g.db, _dispatcher(), resent + made)
    return {"resent": resent, "created": made}, 202
