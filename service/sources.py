"""Sources and signed webhooks in: a clinic system registered by the admin posts careloop
events to ``/v1/webhooks/{source_id}``, signed per Standard Webhooks.

The order of checks: the source exists (404), the signature verifies over the raw body
(401, before anything reads it), the webhook-id is new (else 200 with the first result),
the body has the kind's type (415) and maps to events (400/422). Every request is kept as an
inbound record with its outcome (``GET /v1/sources/{id}/inbound``); the work is in
``careloop.sources`` (secrets, verification) and ``careloop.inbound`` (kinds, records).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, timedelta

from apiflask import APIBlueprint, abort
from flask import Response, current_app, g, request
from sqlalchemy import and_, or_, select

from careloop import fhir_inbound, inbound, mapping_inbound, serialize, sources
from careloop.audit import ActorType
from careloop.handover import hand_over_events
from careloop.models import Event, InboundRecord, Notebook, Source
from careloop.service import api_links
from careloop.service.audit_trail import trail
from careloop.service.auth import ADMIN, auth, notebook_or_404
from careloop.service.pagination import decode_cursor, encode_cursor
from careloop.service.schemas import (
    InboundList,
    InboundOut,
    InboundQuery,
    PreviewIn,
    PreviewOut,
    RerunAllIn,
    RerunAllOut,
    SourceIn,
    SourceList,
    SourceOut,
    SourcePatch,
    SourceWithSecretOut,
)
from careloop.vocabulary import InboundStatus

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
    "plus `notebook_id` (the source's notebook). For a `fhir` source: a FHIR R4 resource, a Bundle, or a "
    "subscription notification, as `application/fhir+json` or `application/json`. For a `mapping` source: "
    "the clinic's own JSON, read through the source's mapping. For an `hl7v2` source: one HL7 v2 SIU "
    "message (S12, S13, S14 or S15) in ER7, answered with an HL7 ACK. The signature is checked over these "
    "exact bytes.",
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
    seen.notebook_ids = _notebooks(source, record)
    seen.target_id = record.id
    seen.reason = reason


def _notebooks(source: Source, record: InboundRecord) -> list[str]:
    """Whose audit log a record's request belongs in: the notebooks of the events it recorded,
    else the source's notebook (none for a mapping that chooses notebooks and chose none)."""
    notebooks = set(g.db.scalars(select(Event.notebook_id).where(Event.id.in_(record.event_ids or []))))
    return sorted(notebooks) or ([source.notebook_id] if source.notebook_id else [])


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
        404: "No such notebook (`notebook_id`, or one a patient is mapped to)",
        422: "A field is invalid: `notebook_id` missing, or for a `fhir` source neither or both of "
        "`notebook_id` and `patients`",
    },
)
def create_source(body: SourceIn):
    patients = _checked_patients(body.kind, body.notebook_id, body.patients)
    timezone = _checked_timezone(body.kind, body.timezone)
    mapping = _checked_config(body.kind, body.notebook_id, body.mapping)
    config = {key: value for key, value in (("patients", patients), ("timezone", timezone)) if value}
    source = Source(
        name=body.name,
        kind=body.kind,
        notebook_id=body.notebook_id,
        config=config or None,
        mapping=mapping,
        secret=sources.mint_secret(),
    )
    g.db.add(source)
    g.db.commit()
    return {**_out(source), "secret": source.secret}, 201


def _invalid(field: str, message: str):
    abort(422, f"{field} {message}", detail={"json": {field: [message]}})


PATIENT_KINDS = (fhir_inbound.KIND, "hl7v2")
"""Kinds whose sources may map patients to notebooks (``patients``) instead of naming one."""


def _checked_patients(kind: str, notebook_id: str | None, patients: dict | None) -> dict[str, str] | None:
    """Where a source's events go, checked before it is saved: a ``fhir`` or ``hl7v2`` source
    names one notebook or maps patients to existing notebooks (an ``hl7v2`` source by
    ``<assigning authority>|<id>`` only); any other kind names its notebook (checked with its
    mapping, :func:`_checked_config`)."""
    if kind not in PATIENT_KINDS:
        if patients is not None:
            _invalid("patients", "is only for a fhir or hl7v2 source")
        return None
    if (notebook_id is None) == (patients is None):
        _invalid("patients", f"or notebook_id: a {kind} source takes exactly one of them")
    if patients is None:
        return None
    found = set(g.db.scalars(select(Notebook.id).where(Notebook.id.in_(set(patients.values())))))
    for key, target in patients.items():
        if kind == "hl7v2" and "|" not in key:
            _invalid(f"patients.{key}", "must be a PID-3 identifier as '<assigning authority>|<id>'")
        if target not in found:
            abort(404, f"patients.{key}: notebook not found")
    return dict(patients)


def _checked_timezone(kind: str, timezone: str | None) -> str | None:
    """An ``hl7v2`` source's zone for times written without an offset (the schema checked the
    name); other kinds' times carry their offsets."""
    if timezone is not None and kind != "hl7v2":
        _invalid("timezone", "is only for an hl7v2 source")
    return timezone


def _checked_config(
    kind: str, notebook_id: str | None, mapping: mapping_inbound.MappingSpec | None
) -> dict | None:
    """A source's kind, notebook and mapping, checked together (422 naming the field; 404 for a
    missing notebook_id); returns the mapping as it is stored."""
    fields: dict[str, list[str]] = {}
    chooses = mapping is not None and mapping.notebook_by is not None
    if kind == "mapping":
        if mapping is None:
            fields["mapping"] = ["a mapping source needs its field mapping"]
        else:
            fields.update(mapping_inbound.problems(mapping))
            known = set(
                g.db.scalars(
                    select(Notebook.id).where(Notebook.id.in_(set((mapping.notebooks or {}).values())))
                )
            )
            for key, target in (mapping.notebooks or {}).items():
                if target not in known:
                    fields.setdefault(f"mapping.notebooks.{key}", []).append("no such notebook")
    elif mapping is not None:
        fields["mapping"] = [f"a {kind} source takes no mapping"]
    if notebook_id is None and not chooses and kind not in PATIENT_KINDS:  # see _checked_patients
        fields["notebook_id"] = ["required (unless a mapping chooses notebooks with notebook_by)"]
    elif notebook_id is not None and chooses:
        fields["notebook_id"] = ["a mapping that chooses notebooks with notebook_by takes no notebook_id"]
    if fields:
        abort(422, "the source's configuration is not valid", detail={"json": fields})
    if notebook_id is not None:
        notebook_or_404(notebook_id)
    return None if mapping is None else mapping.model_dump(mode="json", exclude_none=True)


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


@bp.patch("/sources/<id:source_id>")
@bp.auth_required(auth, roles=[ADMIN])
@bp.input(SourcePatch, arg_name="body")
@bp.output(SourceOut)
@bp.doc(
    operation_id="updateSource",
    summary="Fix a source's name, notebook, patients, time zone or mapping (admin key); then re-run what it "
    "rejected",
    description="The fields given replace the source's; the result is checked as when it was "
    "registered (422 naming the field). Records it rejected stay rejected until re-run "
    "(`POST /v1/sources/{id}/inbound/{record_id}/rerun`).",
    responses={403: "Not the admin key", 404: "No such source, or no such notebook"},
)
def update_source(source_id: str, body: SourcePatch):
    source = _source_or_404(source_id)
    given = body.model_fields_set
    name = body.name if "name" in given and body.name is not None else source.name
    notebook_id = body.notebook_id if "notebook_id" in given else source.notebook_id
    if "mapping" in given and body.mapping is not None:
        mapping = body.mapping
    elif source.mapping is not None:
        mapping = mapping_inbound.MappingSpec.model_validate(source.mapping)
    else:
        mapping = None
    if "patients" in given:
        patients = body.patients
    else:
        patients = None if "notebook_id" in given and notebook_id else (source.config or {}).get("patients")
    patients = _checked_patients(source.kind, notebook_id, patients)
    timezone = (source.config or {}).get("timezone")
    if "timezone" in given:
        timezone = _checked_timezone(source.kind, body.timezone)
    source.mapping = _checked_config(source.kind, notebook_id, mapping)
    config = {k: v for k, v in (source.config or {}).items() if k not in ("patients", "timezone")}
    config.update((key, value) for key, value in (("patients", patients), ("timezone", timezone)) if value)
    source.config = config or None
    source.name, source.notebook_id = name, notebook_id
    g.db.commit()
    trail().target_id = source.id
    return _out(source)


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


@bp.post("/sources/<id:source_id>/preview")
@bp.auth_required(auth, roles=[ADMIN])
@bp.input(PreviewIn, arg_name="body")
@bp.output(PreviewOut)
@bp.doc(
    operation_id="previewSource",
    summary="What a sample body would become if the source posted it now; nothing is recorded (admin key)",
    description="For every kind: the sample goes through the source's kind as a webhook's body would "
    "(no signature), and the answer lists the events it would make, or says why it cannot be mapped "
    "exactly as the webhook would. A `mapping` source may try an unsaved `mapping` (checked as when "
    "saved). The notebook's members are not looked at (an unknown author is found when recorded).",
    responses={
        400: "The sample does not parse as the kind reads it",
        403: "Not the admin key",
        404: "No such source, or a notebook the tried mapping names does not exist",
        415: "The content_type is not one the source's kind reads",
        422: "The sample cannot be mapped (the fields say why), or the tried mapping is not valid",
    },
)
def preview_source(source_id: str, body: PreviewIn):
    source = _source_or_404(source_id)
    trial = source
    if body.mapping is not None:
        if source.kind != "mapping":
            abort(
                422,
                "only a mapping source takes a mapping",
                detail={"json": {"mapping": ["not a mapping source"]}},
            )
        notebook_id = None if body.mapping.notebook_by is not None else source.notebook_id
        mapping = _checked_config(source.kind, notebook_id, body.mapping)
        trial = Source(
            kind=source.kind, notebook_id=notebook_id, mapping=mapping
        )  # never added to the session
    raw = body.body.encode() if isinstance(body.body, str) else json.dumps(body.body).encode()
    try:
        drafts = inbound.preview(trial, raw, body.content_type)
    except inbound.Unmappable as problem:
        abort(problem.status, problem.reason, detail={"json": problem.fields} if problem.fields else None)
    trail().target_id = source.id
    return {
        "events": [
            {
                "notebook_id": d.notebook_id,
                "type": d.event_type,
                "data": d.data,
                "occurred_at": serialize.iso(d.occurred_at.astimezone(UTC)) if d.occurred_at else None,
                "author_member_id": d.author_member_id,
            }
            for d in drafts
        ]
    }


@bp.post("/sources/<id:source_id>/inbound/rerun")
@bp.auth_required(auth, roles=[ADMIN])
@bp.input(RerunAllIn, arg_name="body")
@bp.output(RerunAllOut)
@bp.doc(
    operation_id="rerunRejectedInbound",
    summary="Run every rejected record of a source again, oldest first, after a fix (admin key)",
    description="As `POST /v1/sources/{id}/inbound/{record_id}/rerun` for each rejected record that kept "
    "a body, up to `limit`, oldest first (so a system's events keep their order): each is accepted at "
    "most once, or keeps `rejected` with its new reason. `next_cursor` goes on after them.",
    responses={403: "Not the admin key", 404: "No such source"},
)
def rerun_rejected(source_id: str, body: RerunAllIn):
    source = _source_or_404(source_id)
    waiting = (
        select(InboundRecord)
        .where(
            InboundRecord.source_id == source.id,
            InboundRecord.status == InboundStatus.REJECTED,
            InboundRecord.body.is_not(None),
        )
        .order_by(InboundRecord.received_at, InboundRecord.id)
    )
    if body.cursor:
        when, ident = decode_cursor(body.cursor)
        waiting = waiting.where(
            or_(
                InboundRecord.received_at > when,
                and_(InboundRecord.received_at == when, InboundRecord.id > ident),
            )
        )
    rows = g.db.scalars(waiting.limit(body.limit + 1)).all()
    more = len(rows) > body.limit
    rows = rows[: body.limit]
    last = encode_cursor(rows[-1].received_at, rows[-1].id) if more else None
    items, created, accepted, notebooks = [], [], 0, set()
    for record in rows:
        try:
            receipt = inbound.rerun(g.db, source, record)
        except inbound.RerunRefused:  # a concurrent re-run took it
            continue
        items.append(serialize.inbound_record(receipt.record))
        created.extend(receipt.created)
        if receipt.problem is None:
            accepted += 1
            notebooks.update(_notebooks(source, receipt.record))
    seen = trail()
    seen.action, seen.target_id = "sources.inbound.rerun", source.id
    seen.notebook_ids = sorted(notebooks) or ([source.notebook_id] if source.notebook_id else [])
    log.info("inbound records re-run: source=%s accepted=%d of %d", source.id, accepted, len(items))
    if created:
        hand_over_events(g.db, current_app.extensions["careloop"].runtime.dispatcher, created)
    return {"items": items, "accepted": accepted, "rejected": len(items) - accepted, "next_cursor": last}


@bp.post("/sources/<id:source_id>/inbound/<id:record_id>/rerun")
@bp.auth_required(auth, roles=[ADMIN])
@bp.output(InboundOut)
@bp.doc(
    operation_id="rerunInbound",
    summary="Run a rejected record's kept body again, after a fix to the source (admin key)",
    description="The body kept from the verified request goes through the source's kind as it is "
    "configured now; its signature is not checked again. Accepted: the record becomes `accepted` with "
    "its events, which are routed as any other — at most once, even if re-run twice at the same time. "
    "Rejected again: the record keeps `rejected` with the new reason, and the answer says why.",
    responses={
        200: "Accepted now: the record, with its events",
        403: "Not the admin key",
        404: "No such source or record",
        400: "Still a body that does not parse; the record keeps the reason",
        409: "Not a rejected record with a kept body: already accepted (perhaps by a concurrent re-run), "
        "a duplicate, or a request that did not verify",
        415: "Still not a body of a type this source's kind reads; the record keeps the reason",
        422: "Still cannot be mapped (the fields say why); the record keeps the new reason",
    },
)
def rerun_inbound(source_id: str, record_id: str):
    source = _source_or_404(source_id)
    record = g.db.get(InboundRecord, record_id)
    if record is None or record.source_id != source.id:
        abort(404, "inbound record not found")
    seen = trail()
    seen.action, seen.target_id = "sources.inbound.rerun", record.id
    seen.notebook_ids = _notebooks(source, record)
    try:
        receipt = inbound.rerun(g.db, source, record)
    except inbound.RerunRefused as refused:
        seen.reason = "not rejected"
        seen.notebook_ids = _notebooks(source, g.db.get(InboundRecord, record_id))
        abort(409, refused.reason)
    log.info(
        "inbound record re-run: source=%s record=%s status=%s", source.id, record.id, receipt.record.status
    )
    if receipt.created:
        seen.notebook_ids = _notebooks(source, receipt.record)
        hand_over_events(g.db, current_app.extensions["careloop"].runtime.dispatcher, receipt.created)
    if receipt.problem is not None:
        seen.reason = "not mappable"
        problem = receipt.problem
        abort(problem.status, problem.reason, detail={"json": problem.fields} if problem.fields else None)
    return serialize.inbound_record(receipt.record)


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
