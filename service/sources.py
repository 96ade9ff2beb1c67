"""Sources and signed webhooks in: a clinic system registered by the admin posts careloop
events to ``/v1/webhooks/{source_id}``, signed per Standard Webhooks.

The order of checks: the source exists (404), the signature verifies over the raw body
(401, before anything reads it), the webhook-id is new (else 200 with the first result),
the body has the kind's type (415) and maps to events (400/422). Every request is kept as an
inbound record with its outcome (``GET /v1/sources/{id}/inbound``); the work is in
``careloop.sources`` (secrets, verification) and ``careloop.inbound`` (kinds, records).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from apiflask import APIBlueprint, abort
from flask import current_app, g, request
from sqlalchemy import and_, or_, select

from careloop import fhir_inbound, inbound, serialize, sources
from careloop.audit import ActorType
from careloop.handover import hand_over_events
from careloop.models import InboundRecord, Notebook, Source
from careloop.service import api_links
from careloop.service.audit_trail import trail
from careloop.service.auth import ADMIN, auth, notebook_or_404
from careloop.service.pagination import decode_cursor, encode_cursor
from careloop.service.schemas import (
    InboundList,
    InboundOut,
    InboundQuery,
    SourceIn,
    SourceList,
    SourceOut,
    SourceWithSecretOut,
)

log = logging.getLogger("careloop.service.sources")

bp = APIBlueprint("sources", __name__, url_prefix="/v1", tag="Sources")

WEBHOOK_HEADERS = [
    {
        "name": name,
        "in": "header",
        "required": True,
        "description": description,
        "schema": {"type": "string", "maxLength": 2000},
    }
    for name, description in (
        (
            "webhook-id",
            "the message's unique id (1-200 printable ASCII): a repeat is answered, not recorded twice",
        ),
        ("webhook-timestamp", "Unix time of signing; refused when more than 5 minutes off"),
        ("webhook-signature", "`v1,<base64 HMAC-SHA256>` (space-separated when several)"),
    )
]
"""The Standard Webhooks headers, as the OpenAPI document describes them."""

WEBHOOK_BODY = {
    "required": True,
    "description": "For a `careloop` source: the JSON body `POST /v1/notebooks/{id}/events` takes, "
    "plus `notebook_id` (the source's notebook). For a `fhir` source: a FHIR R4 resource, a Bundle, or a "
    "subscription notification, as `application/fhir+json` or `application/json`. The signature is "
    "checked over these exact bytes.",
    "content": {
        "application/json": {
            "schema": {"type": "object"},
            "example": {"notebook_id": "nb_4f1c2a9e8b7d6c5a4f3e", "type": "goal.updated",
                        "data": {"goal": "Walk 10 m", "status": "met"}},
        },
        "application/fhir+json": {
            "schema": {"type": "object"},
            "example": {"resourceType": "Flag", "status": "active", "code": {"text": "Seizure plan updated"},
                        "subject": {"reference": "Patient/123"}},
        },
    },
}  # fmt: skip
"""The webhook's request body, as the OpenAPI document describes it (read raw, not by a schema)."""


SIGNATURE_CHALLENGE = {"WWW-Authenticate": 'Signature realm="careloop", standard="standard-webhooks"'}
"""What a 401 asks for: a Standard Webhooks signature, not a Bearer key."""


def audit_webhook(source: Source, record: InboundRecord, reason: str | None = None) -> None:
    """Record a webhook's outcome in the audit log: who (the source), what (its inbound
    record), whose (the source's notebook), from where and how it ended (the answer's status,
    written after it by ``careloop.service.audit_trail``), with a short reason code for a
    refusal; the one call site for every webhook received. Never the body or its headers."""
    log.info("webhook %s: source=%s record=%s", record.status, source.id, record.id)
    seen = trail()
    seen.action = "webhooks.receive"
    seen.actor_type, seen.actor_id = ActorType.SOURCE, source.id
    seen.notebook_ids = [source.notebook_id] if source.notebook_id else []
    seen.target_id = record.id
    seen.reason = reason


def _source_or_404(source_id: str) -> Source:
    source = g.db.get(Source, source_id)
    if source is None:
        abort(404, "source not found")
    return source


def _out(source: Source) -> dict:
    return serialize.source(source, current_app.extensions["careloop"].settings.public_url)


@bp.post("/sources")
@bp.auth_required(auth, roles=[ADMIN])
@bp.input(SourceIn, arg_name="body")
@bp.output(SourceWithSecretOut, status_code=201, links=api_links.FROM_SOURCE)
@bp.doc(
    operation_id="createSource",
    summary="Register a source that posts signed webhooks (admin key); the secret is shown once",
    responses={
        201: "Created: `secret` is shown this once",
        403: "Not the admin key",
        404: "No such notebook",
        422: "A field is invalid; `notebook_id` missing, or for a `fhir` source neither or both of "
        "`notebook_id` and `patients`, or a patient mapped to no notebook",
    },
)
def create_source(body: SourceIn):
    patients = _checked_patients(body)
    notebook_id = notebook_or_404(body.notebook_id).id if body.notebook_id else None
    source = Source(
        name=body.name,
        kind=body.kind,
        notebook_id=notebook_id,
        config={"patients": patients} if patients else None,
        secret=sources.mint_secret(),
    )
    g.db.add(source)
    g.db.commit()
    return {**_out(source), "secret": source.secret}, 201


def _invalid(field: str, message: str):
    abort(422, f"{field} {message}", detail={"json": {field: [message]}})


def _checked_patients(body: SourceIn) -> dict[str, str] | None:
    """Where a source's events go, checked before it is saved: a ``fhir`` source names one
    notebook or maps patients to existing notebooks; any other kind names its notebook."""
    if body.kind != fhir_inbound.KIND:
        if body.patients is not None:
            _invalid("patients", "is only for a fhir source")
        if body.notebook_id is None:
            _invalid("notebook_id", f"is required for a {body.kind} source")
        return None
    if (body.notebook_id is None) == (body.patients is None):
        _invalid("patients", "or notebook_id: a fhir source takes exactly one of them")
    if body.patients is None:
        return None
    wanted = set(body.patients.values())
    found = set(g.db.scalars(select(Notebook.id).where(Notebook.id.in_(wanted))))
    for key, notebook_id in body.patients.items():
        if notebook_id not in found:
            _invalid(f"patients.{key}", "names no notebook")
    return dict(body.patients)


@bp.get("/sources")
@bp.auth_required(auth, roles=[ADMIN])
@bp.output(SourceList, links=api_links.FROM_SOURCES)
@bp.doc(
    operation_id="listSources",
    summary="List sources (admin key), oldest first",
    responses={403: "Not the admin key"},
)
def list_sources():
    rows = g.db.scalars(select(Source).order_by(Source.created_at, Source.id)).all()
    return {"items": [_out(s) for s in rows]}


@bp.get("/sources/<id:source_id>")
@bp.auth_required(auth, roles=[ADMIN])
@bp.output(SourceOut)
@bp.doc(
    operation_id="getSource",
    summary="Get a source (admin key)",
    responses={403: "Not the admin key", 404: "No such source"},
)
def get_source(source_id: str):
    return _out(_source_or_404(source_id))


@bp.post("/sources/<id:source_id>/secret/rotate")
@bp.auth_required(auth, roles=[ADMIN])
@bp.output(SourceWithSecretOut)
@bp.doc(
    operation_id="rotateSourceSecret",
    summary="Give a source a new signing secret (admin key); the old one verifies for a grace period",
    description="The new secret is shown this once. The one it replaces still verifies until "
    "`previous_secret_expires_at` (CARELOOP_WEBHOOK_SECRET_GRACE after now, 24 hours by default), so "
    "the sender can switch without losing a message; rotating again drops the older one at once.",
    responses={403: "Not the admin key", 404: "No such source"},
)
def rotate_secret(source_id: str):
    source = _source_or_404(source_id)
    grace = timedelta(seconds=current_app.extensions["careloop"].settings.webhook_secret_grace)
    secret = sources.rotate(source, grace)
    g.db.commit()
    log.info("webhook secret rotated: source=%s", source.id)
    return {**_out(source), "secret": secret}


@bp.get("/sources/<id:source_id>/inbound")
@bp.auth_required(auth, roles=[ADMIN])
@bp.input(InboundQuery, location="query", arg_name="query")
@bp.output(InboundList)
@bp.doc(
    operation_id="listInbound",
    summary="What a source posted, newest first (admin key): accepted, rejected with the reason, duplicates",
    responses={403: "Not the admin key", 404: "No such source"},
)
def list_inbound(source_id: str, query: InboundQuery):
    source = _source_or_404(source_id)
    stmt = select(InboundRecord).where(InboundRecord.source_id == source.id)
    if query.status:
        stmt = stmt.where(InboundRecord.status == query.status)
    if query.cursor:
        when, ident = decode_cursor(query.cursor)
        stmt = stmt.where(
            or_(
                InboundRecord.received_at < when,
                and_(InboundRecord.received_at == when, InboundRecord.id < ident),
            )
        )
    order = (InboundRecord.received_at.desc(), InboundRecord.id.desc())
    rows = g.db.scalars(stmt.order_by(*order).limit(query.limit + 1)).all()
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    return {
        "items": [serialize.inbound_record(r) for r in rows],
        "next_cursor": encode_cursor(rows[-1].received_at, rows[-1].id) if more else None,
    }


@bp.post("/webhooks/<id:source_id>")
@bp.output(InboundOut, status_code=202)
@bp.doc(
    operation_id="receiveWebhook",
    summary="A source posts an event, signed per Standard Webhooks",
    description="No Bearer key: the `webhook-id`, `webhook-timestamp` and `webhook-signature` headers "
    "must verify over the raw body with the source's secret (or, during a rotation's grace, the one "
    "before it), within 5 minutes of careloop's clock. A webhook-id seen before is answered 200 with "
    "the first result and creates nothing. Every request is kept as an inbound record.",
    security=[],
    responses={
        200: "A repeat of a webhook-id already received: the first result; nothing was created",
        202: "Accepted: the events are recorded and routed in the background",
        401: "The signature does not verify (missing or malformed headers, stale or future timestamp, "
        "no matching signature); recorded as rejected",
        404: "No such source",
        415: "Verified, but the body is not of a type this source's kind reads; recorded as rejected",
        422: "Verified, but the body cannot be mapped to events (the fields say why); recorded as rejected",
        503: "The database is unavailable: nothing was recorded; send it again after Retry-After",
    },
)
def receive_webhook(source_id: str):
    source = _source_or_404(source_id)
    body = request.get_data(cache=True)  # the raw bytes, exactly as signed (over the limit: 413)
    try:
        verified = sources.verify(source, body, request.headers)
    except sources.SignatureRefused as refused:
        record = inbound.refuse(g.db, source, sources.claimed_webhook_id(request.headers), refused.reason)
        audit_webhook(source, record, "signature refused")
        abort(401, f"the webhook signature does not verify: {refused.reason}", headers=SIGNATURE_CHALLENGE)
    receipt = inbound.receive(g.db, source, verified, body, request.headers.get("Content-Type"))
    if receipt.replayed:
        audit_webhook(source, receipt.record, "duplicate webhook-id")
    else:
        audit_webhook(source, receipt.record, None if receipt.problem is None else "not mappable")
    if receipt.created:
        hand_over_events(g.db, current_app.extensions["careloop"].runtime.dispatcher, receipt.created)
    if receipt.problem is not None:
        problem = receipt.problem
        abort(problem.status, problem.reason, detail={"json": problem.fields} if problem.fields else None)
    if receipt.replayed:
        return serialize.inbound_record(receipt.record), 200, {"Idempotent-Replayed": "true"}
    return serialize.inbound_record(receipt.record), 202
