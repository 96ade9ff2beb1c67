"""What a source posts, turned into notebook events — and every request kept as a record.

A verified request (``careloop.sources.verify``) is handed to its source's kind in
:data:`KIND_HANDLERS`: a :class:`SourceKind` reads the raw body and returns the events it
means (:class:`EventDraft`), or raises :class:`Unmappable` with the reason. The events are
recorded by the same intake core as ``POST /v1/notebooks/{id}/events`` (``careloop.intake``),
with their outbox entries, in the transaction that writes the request's
:class:`~careloop.models.InboundRecord` — so routing is identical, and a webhook-id is decided
once: a repeat, even a concurrent one, finds the first record (a unique constraint settles
the race) and creates nothing.

Adding a kind (FHIR, HL7 v2, a declarative mapping): subclass :class:`SourceKind` with its
``kind``, the ``media_types`` it reads and ``events(source, body)`` (and ``answer(receipt)``
when its senders expect an answer of their own, as HL7's ACK), and list it in
:data:`KIND_HANDLERS`. The API's ``kind`` enum follows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, object_session

from careloop import hl7_inbound, hl7v2, mapping_inbound
from careloop.events import EVENT_DATA, EVENT_KINDS, EventType, MemberId, Timestamp
from careloop.fhir_inbound import FhirEvents
from careloop.intake import FieldError, stage_event
from careloop.models import InboundRecord, Notebook, Source, utcnow
from careloop.sources import Verified
from careloop.text import identifier
from careloop.vocabulary import InboundStatus


class Unmappable(Exception):
    """A verified body careloop cannot turn into events (kept as a rejected record).

    Args:
        reason: what is wrong, for the sender and the inbound list (no body content).
        fields: messages by the dotted path of the field they are about, when known.
        status: the HTTP status it is answered with (422; 415 for a body of the wrong type,
            400 for one that does not parse).
    """

    def __init__(self, reason: str, fields: dict[str, list[str]] | None = None, status: int = 422):
        super().__init__(reason)
        self.reason = reason
        self.fields = fields or {}
        self.status = status


@dataclass(frozen=True)
class EventDraft:
    """One event a source's body means, for ``careloop.intake``."""

    notebook_id: str
    event_type: str
    data: dict
    occurred_at: datetime | None = None
    author_member_id: str | None = None


class SourceKind:
    """How one kind of source's bodies become events (see the module docstring)."""

    kind: ClassVar[str]
    media_types: ClassVar[tuple[str, ...]]
    """The Content-Types it reads (without parameters); another is refused as 415."""

    def events(self, source: Source, body: bytes) -> list[EventDraft]:
        """The events ``body`` means. Raises Unmappable."""
        raise NotImplementedError

    def details(self, source: Source, body: bytes) -> dict | None:
        """What the request's record keeps about the body beside its events (a FHIR
        notification's event numbers), read before mapping so a rejected record keeps it too.
        Never raises: a body it cannot read has none."""
        return None

    def answer(self, receipt: Receipt) -> Answer | None:
        """The kind's own HTTP answer to a verified request (an HL7 ACK), or None: careloop's
        JSON inbound record (or error), as for every kind that does not say otherwise."""
        return None


@dataclass(frozen=True)
class Answer:
    """A kind's own answer to a verified request: the HTTP status, body and Content-Type."""

    status: int
    body: bytes
    content_type: str


def strict_json(body: bytes) -> object:
    """A JSON document as the API reads one: UTF-8, no NaN or Infinity, no key given twice."""

    def pairs(items: list[tuple[str, object]]) -> dict:
        obj: dict = {}
        for key, value in items:
            if key in obj:
                raise Unmappable(
                    "the body gives a key twice", {key: ["this key is given more than once"]}, 400
                )
            obj[key] = value
        return obj

    def constant(name: str):
        raise Unmappable(f"{name} is not a JSON number", status=400)

    try:
        return json.loads(body, object_pairs_hook=pairs, parse_constant=constant)
    except RecursionError:
        raise Unmappable("the body is nested too deeply", status=400) from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise Unmappable("the body is not valid JSON", status=400) from None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    notebook_id: identifier()  # type: ignore[valid-type]
    occurred_at: Timestamp | None = None
    author_member_id: MemberId | None = None


def _careloop_body(event_type: EventType) -> type[_Body]:
    name = "".join(p.capitalize() for p in event_type.replace(".", "_").split("_")) + "Webhook"
    return create_model(
        name, __base__=_Body, type=(Literal[event_type.value], ...), data=(EVENT_KINDS[event_type].data, ...)
    )


CARELOOP_BODY = TypeAdapter(
    Annotated[Union[tuple(_careloop_body(t) for t in EVENT_KINDS)], Field(discriminator="type")]  # noqa: UP007
)
"""careloop's own event JSON, as ``POST /v1/notebooks/{id}/events`` takes it, plus ``notebook_id``."""


def _fields(error: ValidationError) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for problem in error.errors(include_input=False, include_url=False):
        location = [str(part) for part in problem["loc"]]
        if location and location[0] in EVENT_DATA:  # the union's tag leads the path
            location = location[1:]
        root = "type" if problem["type"].startswith("union_tag") else "body"  # the tag itself is wrong
        fields.setdefault(".".join(location) or root, []).append(problem["msg"])
    return fields


class CareloopEvents(SourceKind):
    """``careloop``: careloop's own v1 event JSON plus ``notebook_id``, which must be the
    source's notebook."""

    kind = "careloop"
    media_types = ("application/json",)

    def events(self, source: Source, body: bytes) -> list[EventDraft]:
        document = strict_json(body)
        if not isinstance(document, dict):
            raise Unmappable("the body must be a JSON object", {"body": ["a JSON object is required"]})
        try:
            item = CARELOOP_BODY.validate_python(document)
        except ValidationError as exc:
            raise Unmappable("the body is not a careloop event", _fields(exc)) from None
        if item.notebook_id != source.notebook_id:
            message = "is not the notebook this source posts to"
            raise Unmappable(f"notebook_id {message}", {"notebook_id": [message]})
        return [
            EventDraft(
                notebook_id=item.notebook_id,
                event_type=item.type,
                data=item.data.model_dump(mode="json", exclude_none=True),
                occurred_at=item.occurred_at,
                author_member_id=item.author_member_id,
            )
        ]


class MappingEvents(SourceKind):
    """``mapping``: a clinic's own JSON, read through the source's saved field mapping
    (``careloop.mapping_inbound``, where the mapping language lives)."""

    kind = "mapping"
    media_types = ("application/json",)

    def events(self, source: Source, body: bytes) -> list[EventDraft]:
        document = strict_json(body)
        try:
            spec = mapping_inbound.MappingSpec.model_validate(source.mapping or {})
            mapped = mapping_inbound.apply(spec, source.notebook_id, document)
        except ValidationError:
            message = "the source's mapping is missing or no longer valid"
            raise Unmappable(message, {"mapping": [message]}) from None
        except mapping_inbound.MappingError as exc:
            raise Unmappable(exc.reason, exc.fields) from None
        return [EventDraft(**vars(mapped))]


class Hl7v2Appointments(SourceKind):
    """``hl7v2``: HL7 v2 SIU scheduling messages as ER7 text, answered with an HL7 ACK
    (``careloop.hl7_inbound``, over the reader in ``careloop.hl7v2``)."""

    kind = "hl7v2"
    media_types = hl7v2.MEDIA_TYPES

    def events(self, source: Source, body: bytes) -> list[EventDraft]:
        try:
            found = hl7_inbound.events(object_session(source), source, body)
        except hl7v2.Hl7Problem as exc:
            raise Unmappable(exc.reason, {exc.location or "body": [exc.message]}) from None
        return [EventDraft(e.notebook_id, e.event_type, e.data) for e in found]

    def answer(self, receipt: Receipt) -> Answer | None:
        status = receipt.problem.status if receipt.problem is not None else None
        ack = hl7_inbound.answer(receipt.record, receipt.replayed, status)
        return Answer(ack.status, ack.body, ack.content_type)


KIND_HANDLERS: dict[str, SourceKind] = {
    handler.kind: handler
    for handler in (CareloopEvents(), FhirEvents(), MappingEvents(), Hl7v2Appointments())  # type: ignore[misc]
}
"""Every source kind careloop reads, by the ``kind`` a source is registered with."""


@dataclass(frozen=True)
class Receipt:
    """What a verified request came to.

    ``record`` is the request's own record, or for a repeated webhook-id the first one (then
    ``replayed`` is true); ``problem`` is why it was rejected just now, if it was; ``created``
    lists the events it recorded, to be handed to the queue.
    """

    record: InboundRecord
    replayed: bool = False
    problem: Unmappable | None = None
    created: list[str] = field(default_factory=list)


def answer(source: Source, receipt: Receipt) -> Answer | None:
    """The answer ``source``'s kind gives to a verified request, if it has its own."""
    respond = getattr(KIND_HANDLERS.get(source.kind), "answer", None)  # FhirEvents is no SourceKind
    return respond(receipt) if respond is not None else None


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def receive(
    session: Session, source: Source, verified: Verified, body: bytes, content_type: str | None
) -> Receipt:
    """Decide a verified request once per webhook-id and keep its record; commit.

    The first request with a webhook-id is accepted (its events recorded) or rejected with
    the reason, and its body kept either way so it can be run again. A request repeating a
    webhook-id gets a ``duplicate`` record of its own and the first record's answer; it
    creates nothing. Two racing requests are settled by the unique constraint on
    (source, first webhook-id): the loser sees the winner's record.
    """
    for _ in range(3):
        first = session.scalars(
            select(InboundRecord).where(
                InboundRecord.source_id == source.id, InboundRecord.first_key == verified.webhook_id
            )
        ).one_or_none()
        if first is not None:
            session.add(
                InboundRecord(
                    source_id=source.id,
                    webhook_id=verified.webhook_id,
                    status=InboundStatus.DUPLICATE,
                    reason=f"webhook-id seen before, first received as {first.id}",
                    event_ids=list(first.event_ids),
                    duplicate_of=first.id,
                )
            )
            session.commit()
            return Receipt(first, replayed=True)
        try:
            return _decide(session, source, verified, body, content_type)
        except IntegrityError:  # a concurrent twin won: read its record on the next turn
            session.rollback()
    raise RuntimeError("could not record an inbound request after three tries")


def _decide(
    session: Session, source: Source, verified: Verified, body: bytes, content_type: str | None
) -> Receipt:
    def record(status: InboundStatus, reason: str | None = None) -> InboundRecord:
        row = InboundRecord(
            source_id=source_id,
            webhook_id=verified.webhook_id,
            first_key=verified.webhook_id,
            status=status,
            reason=reason,
            event_ids=[],
            content_type=(content_type or "")[:200] or None,
            body=body,
            details=details,
        )
        session.add(row)
        session.flush()  # claims the webhook-id now: a concurrent twin fails here or waits
        return row

    source_id = source.id
    details = None
    try:
        handler = _handler(source, content_type)
        details = handler.details(source, body)
        drafts = handler.events(source, body)
        accepted = record(InboundStatus.ACCEPTED)
        created = [_stage(session, draft) for draft in drafts]
        accepted.event_ids = created
        session.commit()
        return Receipt(accepted, created=created)
    except FieldError as exc:
        problem = Unmappable(f"{exc.field} {exc.message}", {exc.field: [exc.message]})
    except Unmappable as exc:
        problem = exc
    session.rollback()
    rejected = record(InboundStatus.REJECTED, problem.reason)
    session.commit()
    return Receipt(rejected, problem=problem)


def _handler(source: Source, content_type: str | None) -> SourceKind:
    """``source``'s kind, if it reads a body of this type. Raises Unmappable."""
    handler = KIND_HANDLERS.get(source.kind)
    if handler is None:
        raise Unmappable(f"careloop no longer reads sources of kind {source.kind!r}")
    if media_type(content_type) not in handler.media_types:
        raise Unmappable(f"the body must be {' or '.join(handler.media_types)}", status=415)
    return handler


def _drafts(source: Source, body: bytes, content_type: str | None) -> list[EventDraft]:
    """What ``body`` means to ``source``'s kind. Raises Unmappable."""
    return _handler(source, content_type).events(source, body)


def preview(source: Source, body: bytes, content_type: str | None) -> list[EventDraft]:
    """The events ``body`` would make if ``source`` posted it now; nothing is recorded (the
    notebook's members are not looked at: those checks come when events are recorded).
    Raises Unmappable."""
    return _drafts(source, body, content_type)


class RerunRefused(Exception):
    """A record that cannot be run again (→ 409): already accepted, a duplicate, or kept
    without a body (its request did not verify)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def rerun(session: Session, source: Source, record: InboundRecord) -> Receipt:
    """Run a rejected record's kept body through ``source``'s kind again, as it is configured
    now (after a fix to its mapping or notebook); commit.

    The signature was verified when the body arrived, so it is not checked again (its
    timestamp would be stale by now). The record becomes ``accepted`` with its events at most
    once: the change from rejected to accepted is a conditional update in the transaction that
    records the events, so of two concurrent reruns one wins and the other is refused. A rerun
    that fails again keeps the record rejected with the new reason. Either way ``reruns``
    counts it and ``reran_at`` says when.

    Raises:
        RerunRefused: the record is accepted (or became so just now), a duplicate, or has no body.
    """
    if record.status == InboundStatus.DUPLICATE:
        raise RerunRefused(f"a duplicate of {record.duplicate_of}: run that record again instead")
    if record.status != InboundStatus.REJECTED:
        raise RerunRefused("the record was already accepted")
    if record.body is None:
        raise RerunRefused("the request did not verify, so no body was kept to run again")
    record_id, body, content_type = record.id, record.body, record.content_type
    still_rejected = (InboundRecord.id == record_id) & (InboundRecord.status == InboundStatus.REJECTED)
    counted = {"reruns": InboundRecord.reruns + 1, "reran_at": utcnow()}
    try:
        drafts = _drafts(source, body, content_type)
        claimed = session.execute(
            update(InboundRecord)
            .where(still_rejected)
            .values(status=InboundStatus.ACCEPTED, reason=None, **counted)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # a concurrent rerun accepted it first
            session.rollback()
            raise RerunRefused("the record was already accepted")
        created = [_stage(session, draft) for draft in drafts]
        session.execute(
            update(InboundRecord)
            .where(InboundRecord.id == record_id)
            .values(event_ids=created)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        session.refresh(record)
        return Receipt(record, created=created)
    except FieldError as exc:
        problem = Unmappable(f"{exc.field} {exc.message}", {exc.field: [exc.message]})
    except Unmappable as exc:
        problem = exc
    session.rollback()
    session.execute(
        update(InboundRecord)
        .where(still_rejected)
        .values(reason=problem.reason, **counted)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    session.refresh(record)
    if record.status != InboundStatus.REJECTED:
        raise RerunRefused("the record was already accepted")
    return Receipt(record, problem=problem)


def _stage(session: Session, draft: EventDraft) -> str:
    notebook = session.get(Notebook, draft.notebook_id)
    if notebook is None:
        raise Unmappable("notebook_id names no notebook", {"notebook_id": ["no such notebook"]})
    event = stage_event(
        session,
        notebook,
        event_type=draft.event_type,
        data=draft.data,
        occurred_at=draft.occurred_at,
        author_member_id=draft.author_member_id,
    )
    return event.id


def refuse(session: Session, source: Source, webhook_id: str | None, reason: str) -> InboundRecord:
    """Keep a request that did not verify: no body, and its webhook-id reserves nothing."""
    row = InboundRecord(
        source_id=source.id, webhook_id=webhook_id, status=InboundStatus.REJECTED, reason=reason, event_ids=[]
    )
    session.add(row)
    session.commit()
    return row
