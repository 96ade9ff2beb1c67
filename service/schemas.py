"""Request schemas. They validate input and generate the OpenAPI document (/openapi.json)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    create_model,
)

from careloop.contacts import E164_PATTERN, PHONE_FORMAT, normalize_email, normalize_phone
from careloop.events import EVENT_KINDS, EventType, Line200, MemberId, Timestamp
from careloop.service.pagination import Cursor
from careloop.text import identifier
from careloop.timezones import TIME_ZONES, check_time_zone
from careloop.vocabulary import ChannelKind, DeliveryStatus, Role

TimeZone = Annotated[
    str,
    Field(description="an IANA time zone name", json_schema_extra={"enum": list(TIME_ZONES)}),
    AfterValidator(check_time_zone),
]
Phone = Annotated[
    str,
    Field(
        description="E.164 in ASCII digits, possible for its country code, e.g. +15551234567",
        json_schema_extra={"pattern": E164_PATTERN, "format": PHONE_FORMAT},
    ),
    AfterValidator(normalize_phone),
]
Email = Annotated[
    str,
    Field(
        max_length=254,
        description="an ASCII local part; an internationalised domain is stored in its ASCII form",
        json_schema_extra={"format": "email"},
    ),
    AfterValidator(normalize_email),
]
NotebookId = identifier()
RoleName = Literal[tuple(r.value for r in Role)]  # type: ignore[valid-type]
"""A role, documented inline as an enum of its values."""


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NotebookIn(_In):
    name: Line200
    child_name: Line200
    timezone: TimeZone
    email_detail: bool = Field(
        False,
        description="whether emails list the event's details (only those each recipient's role may "
        "see); texts and subjects never do",
    )


class NotebookPatch(_In):
    name: Line200 | None = None
    child_name: Line200 | None = None
    timezone: TimeZone | None = None
    email_detail: bool | None = None


class KeyIn(_In):
    name: Line200


class MemberIn(_In):
    name: Line200
    role: RoleName
    email: Email | None = None
    phone: Phone | None = None
    timezone: TimeZone | None = None


class MemberPatch(_In):
    name: Line200 | None = None
    role: RoleName | None = None
    email: Email | None = None
    phone: Phone | None = None
    timezone: TimeZone | None = None
    active: bool | None = None


class _EventBase(_In):
    occurred_at: Timestamp | None = None
    author_member_id: MemberId | None = None


def _request_model(event_type: EventType) -> type[_EventBase]:
    """``{"type": <event_type>, "data": <its data model>, ...}``, named after the type
    (``medication.changed`` → ``MedicationChangedIn``) in the OpenAPI document."""
    name = "".join(part.capitalize() for part in event_type.replace(".", "_").split("_")) + "In"
    return create_model(
        name,
        __base__=_EventBase,
        type=(Literal[event_type.value], ...),
        data=(EVENT_KINDS[event_type].data, ...),
    )


EVENT_REQUESTS: tuple[type[_EventBase], ...] = tuple(_request_model(t) for t in EVENT_KINDS)
"""One request model per event type, built from ``careloop.events``."""


class EventIn(RootModel[Annotated[Union[EVENT_REQUESTS], Field(discriminator="type")]]):  # noqa: UP007
    """A notebook event: `type` selects the shape of `data`."""


class EventsQuery(_In):
    model_config = ConfigDict(extra="forbid")
    type: Literal[tuple(t.value for t in EventType)] | None = None  # type: ignore[valid-type]
    since: Timestamp | None = None
    limit: int = Field(50, ge=1, le=200)
    cursor: Cursor | None = None


class DeliveriesQuery(_In):
    status: Literal[tuple(s.value for s in DeliveryStatus)] | None = None  # type: ignore[valid-type]
    notebook_id: NotebookId | None = None
    limit: int = Field(50, ge=1, le=500)
    cursor: Cursor | None = None


# --- Responses ---------------------------------------------------------------------------------
# Declared so /openapi.json describes every body that comes back; apiflask passes each
# answer through its model, so an answer that broke the documented shape would fail loudly.

DateTimeText = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
"""An ISO 8601 date-time in UTC, as careloop writes them (``2026-11-29T08:00:00Z``)."""


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(_Out):
    error: str = Field(description="a short code: validation_error, not_found, conflict, …")
    message: str
    fields: dict[str, list[str]] | None = Field(None, description="what is wrong with each named field")
    detail: dict[str, Any] | None = Field(None, description="more about the error, where there is more")


class NotebookOut(_Out):
    id: str
    name: str
    child_name: str
    timezone: str
    email_detail: bool
    created_at: DateTimeText


class KeyOut(_Out):
    id: str
    notebook_id: str
    name: str
    created_at: DateTimeText


class CreatedKeyOut(KeyOut):
    key: str = Field(description="the secret: shown this once, stored only as a hash")


class MemberOut(_Out):
    id: str
    notebook_id: str
    name: str
    role: RoleName
    email: str | None
    phone: str | None
    timezone: str | None
    active: bool
    created_at: DateTimeText
    updated_at: DateTimeText


class MemberList(_Out):
    items: list[MemberOut]


class LinksRevokedOut(_Out):
    member_id: str
    revoked_at: DateTimeText = Field(
        description="every member link this member was sent before this time no longer works"
    )


class EventAccepted(_Out):
    id: str
    status: Literal["accepted"]
    type: Literal[tuple(t.value for t in EventType)]  # type: ignore[valid-type]


class DeliveryOut(_Out):
    id: str
    event_id: str
    notebook_id: str
    member_id: str
    channel: Literal[tuple(c.value for c in ChannelKind)]  # type: ignore[valid-type]
    status: Literal[tuple(s.value for s in DeliveryStatus)]  # type: ignore[valid-type]
    attempts: int
    provider_id: str | None
    error: str | None
    rules: list[str]
    created_at: DateTimeText
    updated_at: DateTimeText
    next_attempt_at: DateTimeText | None = Field(description="when a queued delivery is tried next")
    sent_at: DateTimeText | None
    delivered_at: DateTimeText | None


class DeliveryList(_Out):
    items: list[DeliveryOut]
    next_cursor: str | None


class EventOut(_Out):
    id: str
    notebook_id: str
    type: Literal[tuple(t.value for t in EventType)]  # type: ignore[valid-type]
    data: dict[str, Any] = Field(description="as recorded; its shape is the request's for this type")
    occurred_at: DateTimeText
    recorded_at: DateTimeText
    author_member_id: str | None
    status: Literal["accepted", "routed"]
    routed_at: DateTimeText | None


class EventWithDeliveries(EventOut):
    deliveries: list[DeliveryOut]


class EventList(_Out):
    items: list[EventOut]
    next_cursor: str | None


class HealthOut(_Out):
    status: Literal["ok", "degraded", "down"]
    queue_mode: Literal["rq", "inprocess"]
    database: Literal["ok", "unreachable"]
    queue: Literal["ok", "unreachable"]


ERROR_SCHEMA = ErrorOut.model_json_schema()
"""The body of every 4xx/5xx answer, for apiflask's generated error responses."""
