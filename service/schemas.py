"""Request schemas. They validate input and generate the OpenAPI document (/openapi.json)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    StrictBool,
    create_model,
    model_validator,
)

from careloop.access import NOTEBOOK_KEY_ROLES, KeyRole
from careloop.audit import ActorType
from careloop.contacts import PHONE_FORMAT, normalize_email, normalize_phone
from careloop.events import EVENT_KINDS, EventType, Line200, MemberId, Timestamp
from careloop.preferences import Category, Channel, Preferences, QuietHours
from careloop.service.pagination import Cursor
from careloop.text import identifier, text_type
from careloop.timezones import TIME_ZONE_FORMAT, check_time_zone
from careloop.vocabulary import ChannelKind, DeliveryStatus, Role

TimeZone = Annotated[
    str,
    Field(
        description="an IANA time zone name, e.g. America/Chicago: one of the names the `tzdata` "
        "package lists (zones and their links), `Factory` excepted",
        json_schema_extra={"format": TIME_ZONE_FORMAT},
    ),
    AfterValidator(check_time_zone),
]
Phone = Annotated[
    str,
    Field(
        description="E.164 (`+`, then 7 to 15 ASCII digits) and possible for its country code, "
        "e.g. +15551234567",
        # The format alone: "possible for its country code" is no pattern (see careloop.contacts).
        json_schema_extra={"format": PHONE_FORMAT},
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
MAX_CLINIC_NOTEBOOKS = 500
"""Notebooks one clinic key may be given at once."""
RoleName = Literal[tuple(r.value for r in Role)]  # type: ignore[valid-type]
"""A role, documented inline as an enum of its values."""


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NotebookIn(_In):
    name: Line200
    child_name: Line200
    timezone: TimeZone
    email_detail: StrictBool = Field(
        False,
        description="whether emails list the event's details (only those each recipient's role may "
        "see); texts and subjects never do",
    )


class NotebookPatch(_In):
    """Any of a notebook's fields (each may be changed, none removed: no null)."""

    name: Line200 = None  # type: ignore[assignment]
    child_name: Line200 = None  # type: ignore[assignment]
    timezone: TimeZone = None  # type: ignore[assignment]
    email_detail: StrictBool = None  # type: ignore[assignment]


NotebookKeyRole = Literal[tuple(r.value for r in NOTEBOOK_KEY_ROLES)]  # type: ignore[valid-type]
KeyRoleName = Literal[tuple(r.value for r in KeyRole)]  # type: ignore[valid-type]


class KeyIn(_In):
    name: Line200
    role: NotebookKeyRole = Field(
        KeyRole.FAMILY.value,
        description="family: everything on the notebook; clinician: events, members with contact "
        "details, deliveries; integration: events and delivery status, members without contact details",
    )


class ClinicKeyIn(_In):
    name: Line200
    role: Literal["clinic"] = Field("clinic", description="a clinic key: what a clinician may, on each")
    notebook_ids: list[NotebookId] = Field(
        min_length=1, max_length=MAX_CLINIC_NOTEBOOKS, description="the notebooks the key reaches"
    )


class MemberIn(_In):
    name: Line200
    role: RoleName
    email: Email | None = None
    phone: Phone | None = None
    timezone: TimeZone | None = None


class MemberPatch(_In):
    """Any of a member's fields; ``null`` clears email, phone or timezone (the others have to
    stay: they may be changed, not removed)."""

    name: Line200 = None  # type: ignore[assignment]
    role: RoleName = None  # type: ignore[assignment]
    email: Email | None = None
    phone: Phone | None = None
    timezone: TimeZone | None = None
    active: StrictBool = None  # type: ignore[assignment]


class PreferencesIn(Preferences):
    """A member's preferences, whole (PUT replaces them; a field left out takes its default)."""


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


AttemptNumber = text_type(r"^[1-9][0-9]{0,5}$", "must be a whole number from 1", 6)
"""An attempt's number in a Twilio callback URL (ASCII digits only)."""


class TwilioStatusQuery(_In):
    """The query of the status-callback URL careloop gave Twilio."""

    delivery: Annotated[NotebookId, Field(description="the delivery the message was")]
    attempt: Annotated[AttemptNumber, Field(description="the attempt that sent it")] | None = None


class TwilioStatusForm(BaseModel):
    """The fields of Twilio's status callback careloop reads (Twilio sends more)."""

    model_config = ConfigDict(extra="allow")
    MessageSid: Annotated[str, Field(min_length=1, max_length=64)]
    MessageStatus: Annotated[str, Field(min_length=1, max_length=32)]
    ErrorCode: Annotated[str, Field(max_length=16)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _older_names(cls, data):
        # Twilio's older field names, still sent beside (or instead of) the new ones.
        if isinstance(data, dict):
            data = dict(data)
            for new, old in (("MessageSid", "SmsSid"), ("MessageStatus", "SmsStatus")):
                if not data.get(new) and data.get(old):
                    data[new] = data[old]
        return data


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


class NotebookOut(_Out):
    id: str
    name: str
    child_name: str
    timezone: str
    email_detail: bool
    created_at: DateTimeText


class KeyOut(_Out):
    id: str
    notebook_id: str | None = Field(description="the notebook a notebook key belongs to; null: a clinic key")
    notebook_ids: list[str] = Field(description="the notebooks the key reaches")
    name: str
    role: KeyRoleName
    created_at: DateTimeText
    last_used_at: DateTimeText | None = Field(description="when it was last used, to the minute")


class CreatedKeyOut(KeyOut):
    key: str = Field(description="the secret: shown this once, stored only as a hash")


class KeyList(_Out):
    items: list[KeyOut]


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


class MemberSummaryOut(_Out):
    """A member as an integration key sees them: never a phone number or an email."""

    id: str
    notebook_id: str
    name: str
    role: RoleName
    active: bool


class MemberList(_Out):
    items: list[MemberOut | MemberSummaryOut] = Field(
        description="with contact details, or (for an integration key) without them"
    )


class LinksRevokedOut(_Out):
    member_id: str
    revoked_at: DateTimeText = Field(
        description="every member link this member was sent before this time no longer works"
    )


class PreferencesOut(_Out):
    member_id: str
    timezone: str = Field(
        description="the zone quiet hours and the digest hour are read in: the member's own, else the "
        "notebook's"
    )
    channels: dict[Category, list[Channel]]
    quiet_hours: QuietHours | None
    mode: Literal["immediate", "digest"]
    digest_hour: int
    digest_categories: list[Category]


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
    held_for: Literal["quiet_hours", "digest"] | None = Field(
        description="why a queued delivery waits: the member's quiet hours (until `next_attempt_at`), "
        "or their daily digest"
    )
    digest_id: str | None = Field(description="the daily digest that carries it, if any")
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


class AuditQuery(_In):
    limit: int = Field(50, ge=1, le=500)
    cursor: Cursor | None = None


class AuditEntryOut(_Out):
    id: str
    at: DateTimeText
    notebook_id: str | None
    actor_type: Literal[tuple(a.value for a in ActorType)]  # type: ignore[valid-type]
    actor_id: str | None = Field(description="the key's or member's id; null for the admin and for no key")
    action: str = Field(description="what was asked: the API operation (`events.create_event`), …")
    target_id: str | None = Field(description="the record acted on")
    remote_addr: str | None
    status: int = Field(description="how it ended: the answer's HTTP status")
    reason: str | None = Field(description="why it was refused: `no key`, `revoked key`, `out of reach`, …")


class AuditList(_Out):
    items: list[AuditEntryOut]
    next_cursor: str | None


class HealthOut(_Out):
    status: Literal["ok", "degraded", "down"]
    queue_mode: Literal["rq", "inprocess"]
    database: Literal["ok", "unreachable"]
    queue: Literal["ok", "unreachable"]


ERROR_SCHEMA = ErrorOut.model_json_schema()
"""The body of every 4xx/5xx answer, for apiflask's generated error responses."""
