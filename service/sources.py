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
import re
from datetime import timedelta

from apiflask import APIBlueprint, abort
from flask import Response, current_app, g, request
from sqlalchemy import and_, or_, select

from careloop import inbound, serialize, sources
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

HL7_EXAMPLE = "\r".join((
    "MSH|^~\\&|SCHEDULER|NORTHSIDE|CARELOOP|FAMILY|20270112083000-0600||SIU^S12^SIU_S12|MSG00001|P|2.5",
    "SCH||20345^SCHEDULER|||||FOLLOWUP^Neurology follow-up|ROUTINE|45|MIN|^^45^20270119093000",
    "PID|1||MRN12345^^^NORTHSIDE^MR||RIVERA^MAYA",
    "AIL|1|A|NEURO^201^^NORTHSIDE^^^^^Neurology clinic, room 201",
)) + "\r"  # fmt: skip
HL7_ACK_EXAMPLE = "\r".join((
    "MSH|^~\\&|CARELOOP|FAMILY|SCHEDULER|NORTHSIDE|20270112143001+0000||ACK^S12^ACK|8a7b6c5d4e3f2a1b0c9d|P|2.5",
    "MSA|AA|MSG00001",
)) + "\r"  # fmt: skip
HL7_ACK = {
    "x-application/hl7-v2+er7": {
        "schema": {"type": "string", "description": "an HL7 v2 ACK: MSA-1 AA, AE or AR; ERR says why"},
        "example": HL7_ACK_EXAMPLE,
    }
}
"""An `hl7v2` source's answer to a verified request, as the OpenAPI document describes it."""

WEBHOOK_BODY = {
    "required": True,
    "description": "For a `careloop` source: the JSON body `POST /v1/notebooks/{id}/events` takes, "
    "plus `notebook_id` (the source's notebook); for an `hl7v2` source: one HL7 v2 SIU message (S12, "
    "S13, S14 or S15) in ER7, answered with an HL7 ACK. The signature is checked over these exact bytes.",
    "content": {
        "application/json": {
            "schema": {"type": "object"},
            "example": {"notebook_id": "nb_4f1c2a9e8b7d6c5a4f3e", "type": "goal.updated",
                        "data": {"goal": "Walk 10 m", "status": "met"}},
        },
        "x-application/hl7-v2+er7": {"schema": {"type": "string"}, "example": HL7_EXAMPLE},
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
    },
)
def create_source(body: SourceIn):
    _check_patients(body)
    notebook_id = notebook_or_404(body.notebook_id).id if body.notebook_id is not None else None
    source = Source(
        name=body.name,
        kind=body.kind,
        notebook_id=notebook_id,
        config={k: v for k, v in (("patients", body.patients), ("timezone", body.timezone)) if v} or None,
        secret=sources.mint_secret(),
    )
    g.db.add(source)
    g.db.commit()
    return {**_out(source), "secret": source.secret}, 201


PATIENT_KINDS = ("hl7v2",)
"""Kinds whose sources may map patients to notebooks (``patients``) and set a ``timezone``."""


def _check_patients(body: SourceIn) -> None:
    """A source serves one notebook, or (a kind in PATIENT_KINDS) maps patients to notebooks
    that exist: 422 naming the field otherwise."""
    fields: dict[str, list[str]] = {}
    if body.kind not in PATIENT_KINDS:
        for name in ("patients", "timezone"):
            if getattr(body, name) is not None:
                fields[name] = [f"a {body.kind} source takes no {name}"]
    if body.notebook_id is None and not body.patients:
        fields["notebook_id"] = ["required, unless patients maps patients to notebooks"]
    elif body.notebook_id is not None and body.patients:
        fields["notebook_id"] = ["give notebook_id or patients, not both"]
    known = set(g.db.scalars(select(Notebook.id).where(Notebook.id.in_(set((body.patients or {}).values())))))
    for key, notebook_id in (body.patients or {}).items():
        if body.kind == "hl7v2" and not re.fullmatch(r"[^|]*\|[^|]+", key):
            fields.setdefault(f"patients.{key}", []).append("must be '<assigning authority>|<id>'")
        if notebook_id not in known:
            fields.setdefault(f"patients.{key}", []).append("no such notebook")
    if fields:
        abort(422, "the source's notebooks are not valid", detail={"json": fields})


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
    "the first result and creates nothing. Every request is kept as an inbound record. An `hl7v2` "
    "source's verified requests are answered with an HL7 ACK (`x-application/hl7-v2+er7`) instead of JSON.",
    security=[],
    responses={
        200: "A repeat of a webhook-id already received: the first result; nothing was created",
        202: "Accepted: the events are recorded and routed in the background",
        401: "The signature does not verify (missing or malformed headers, stale or future timestamp, "
        "no matching signature); recorded as rejected",
        404: "No such source",
        415: "Verified, but the body is not of a type this source's kind reads; recorded as rejected "
        "(an `hl7v2` source answers with an HL7 ACK, AR)",
        422: "Verified, but the body cannot be mapped to events (the fields say why); recorded as rejected. "
        "An `hl7v2` source answers with an HL7 ACK: AE (unknown patient, a field it cannot use) or AR "
        "(not an SIU message careloop reads)",
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
    answer = inbound.answer(source, receipt)  # a kind's own answer: an HL7 ACK
    if answer is not None:
        replayed = {"Idempotent-Replayed": "true"} if receipt.replayed else {}
        return Response(answer.body, answer.status, replayed, content_type=answer.content_type)
    if receipt.problem is not None:
        problem = receipt.problem
        abort(problem.status, problem.reason, detail={"json": problem.fields} if problem.fields else None)
    if receipt.replayed:
        return serialize.inbound_record(receipt.record), 200, {"Idempotent-Replayed": "true"}
    return serialize.inbound_record(receipt.record), 202
