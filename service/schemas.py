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
from careloop.fhir_inbound import KIND as FHIR_KIND
from careloop.fhir_inbound import MAX_PATIENTS, PATIENT_KEY_PATTERN
from careloop.inbound import KIND_HANDLERS
from careloop.mapping_inbound import MappingSpec
from careloop.preferences import Category, Channel, Preferences, QuietHours
from careloop.service.pagination import Cursor
from careloop.text import identifier, text_type
from careloop.timezones import TIME_ZONE_FORMAT, check_time_zone
from careloop.vocabulary import ChannelKind, DeliveryStatus, InboundStatus, Role

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


def examples(*values: dict) -> dict:
    """``model_config`` entries giving a model its examples for ``/openapi.json`` (``/docs``
    shows them); tests/test_openapi_docs.py checks each against its model."""
    return {"json_schema_extra": {"examples": list(values)}}


NB, MEM, MEM2, EVT, DLV, KEY = (
    "nb_4f1c2a9e8b7d6c5a4f3e", "mem_0a1b2c3d4e5f6a7b8c9d", "mem_9d8c7b6a5f4e3d2c1b0a",
    "evt_6e5d4c3b2a1f0e9d8c7b", "dlv_1a2b3c4d5e6f7a8b9c0d", "key_7c6b5a4f3e2d1c0b9a8f",
)  # fmt: skip
WHEN, LATER = "2026-11-29T14:00:00Z", "2026-11-29T14:00:03Z"


class NotebookIn(_In):
    model_config = ConfigDict(
        **examples({"name": "Maya's notebook", "child_name": "Maya Rivera", "timezone": "America/Chicago"})
    )
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

    model_config = ConfigDict(**examples({"email_detail": True}))

    name: Line200 = None  # type: ignore[assignment]
    child_name: Line200 = None  # type: ignore[assignment]
    timezone: TimeZone = None  # type: ignore[assignment]
    email_detail: StrictBool = None  # type: ignore[assignment]


NotebookKeyRole = Literal[tuple(r.value for r in NOTEBOOK_KEY_ROLES)]  # type: ignore[valid-type]
KeyRoleName = Literal[tuple(r.value for r in KeyRole)]  # type: ignore[valid-type]


class KeyIn(_In):
    model_config = ConfigDict(**examples({"name": "clinic EHR"}))
    name: Line200
    role: NotebookKeyRole = Field(
        KeyRole.FAMILY.value,
        description="family: everything on the notebook; clinician: events, members with contact "
        "details, deliveries; integration: events and delivery status, members without contact details",
    )


class ClinicKeyIn(_In):
    model_config = ConfigDict(
        **examples({"name": "Riverside clinic EHR", "role": "clinic", "notebook_ids": [NB]})
    )
    name: Line200
    role: Literal["clinic"] = Field("clinic", description="a clinic key: what a clinician may, on each")
    notebook_ids: list[NotebookId] = Field(
        min_length=1, max_length=MAX_CLINIC_NOTEBOOKS, description="the notebooks the key reaches"
    )


class MemberIn(_In):
    model_config = ConfigDict(
        **examples(
            {"name": "Dr. Priya Shah", "role": "neurology", "email": "pshah@neuro.example.org",
             "timezone": "America/Chicago"},
            {"name": "Dana Rivera", "role": "parent", "email": "dana@example.org", "phone": "+15555550101"},
        )
    )  # fmt: skip
    name: Line200
    role: RoleName
    email: Email | None = None
    phone: Phone | None = None
    timezone: TimeZone | None = None


class MemberPatch(_In):
    """Any of a member's fields; ``null`` clears email, phone or timezone (the others have to
    stay: they may be changed, not removed)."""

    model_config = ConfigDict(**examples({"phone": None}, {"active": False}))

    name: Line200 = None  # type: ignore[assignment]
    role: RoleName = None  # type: ignore[assignment]
    email: Email | None = None
    phone: Phone | None = None
    timezone: TimeZone | None = None
    active: StrictBool = None  # type: ignore[assignment]


PREFERENCES_IN_EXAMPLE = {
    "channels": {"concern": ["sms", "email"], "therapy": ["email"], "note": ["email"]},
    "quiet_hours": {"start": "21:00", "end": "07:00"}, "mode": "digest", "digest_hour": 18,
    "digest_categories": ["therapy", "goal", "note"],
}  # fmt: skip


class PreferencesIn(Preferences):
    """A member's preferences, whole (PUT replaces them; a field left out takes its default)."""

    model_config = ConfigDict(**examples(PREFERENCES_IN_EXAMPLE))


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

    model_config = ConfigDict(
        **examples(
            {"type": "medication.changed", "author_member_id": MEM,
             "data": {"medication": "levetiracetam", "change": "dose_changed", "dose": "250 mg twice daily"}},
            {"type": "concern.raised",
             "data": {"summary": "Choking on thin liquids", "severity": "urgent", "area": "swallowing"}},
        )
    )  # fmt: skip


BATCH_MAX = 500
"""Events one ``POST …/events:batch`` may carry."""


class EventBatchIn(_In):
    """Many events of one notebook at once; each item is decided on its own."""

    model_config = ConfigDict(
        **examples({"events": [
            {"type": "note.added", "data": {"text": "Slept well", "voice": "family"},
             "idempotency_key": "row-1"},
            {"type": "goal.updated", "data": {"goal": "Walk 10 m", "status": "progress"}},
        ]})
    )  # fmt: skip

    events: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=BATCH_MAX,
        description=f"1 to {BATCH_MAX} events, each a JSON object shaped as `createEvent`'s body "
        "(`type`, `data`, `occurred_at`?, `author_member_id`?) plus an optional `idempotency_key` "
        "(as the `Idempotency-Key` header: 1 to 200 printable ASCII characters). An item that is "
        "not an object makes the whole batch a 422; an object that is not a valid event is "
        "answered on its own in `results`.",
    )


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

    model_config = ConfigDict(
        extra="allow",
        **examples(
            {"MessageSid": "SM0123456789abcdef0123456789abcdef", "MessageStatus": "delivered"},
            {"MessageSid": "SM0123456789abcdef0123456789abcdef", "MessageStatus": "undelivered",
             "ErrorCode": "30003"},
        ),
    )  # fmt: skip
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


WEBHOOK_URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#@]+([/?][^\s#]*)?$"
"""An http(s) URL with a host and no user name, password or fragment (the address it resolves to
is checked when the endpoint is saved and at every send)."""

WEBHOOK_URL_FORMAT = "webhook-url"
"""The documented format of an endpoint URL (an http(s) URL whose host resolves to public addresses)."""

EventTypeName = Literal[tuple(t.value for t in EventType)]  # type: ignore[valid-type]


class EndpointIn(_In):
    model_config = ConfigDict(
        **examples(
            {
                "url": "https://ehr.clinic.example/careloop",
                "event_types": ["medication.changed", "concern.raised"],
                "notebooks": [NB],
                "payload": "full",
            }
        )
    )

    url: Annotated[
        str,
        Field(
            min_length=10,
            max_length=2000,
            pattern=WEBHOOK_URL_PATTERN,
            description="where messages are POSTed: http or https, no redirects followed; a host "
            "resolving to a private, loopback or link-local address is refused (unless "
            "CARELOOP_ALLOW_PRIVATE_WEBHOOKS is set)",
            json_schema_extra={"format": WEBHOOK_URL_FORMAT},
        ),
    ]
    event_types: Annotated[
        list[EventTypeName],
        Field(min_length=1, max_length=len(EventType), description="the events it hears about"),
    ]
    notebooks: Annotated[
        list[NotebookId],
        Field(min_length=1, max_length=100, description="the notebooks whose events it hears about"),
    ]
    payload: Literal["full", "thin"] = Field(
        "full", description="`full`: the event as recorded (never contact details); `thin`: its ids only"
    )


class ReplayIn(_In):
    model_config = ConfigDict(**examples({"event_id": EVT}, {"since": WHEN, "until": LATER}))

    """What to send again: one event's message, or the messages about events recorded in a time
    range (either bound may be left out; nothing given: every message, up to 1000)."""

    event_id: Annotated[NotebookId, Field(description="the event whose message to send again")] | None = None
    since: Timestamp | None = None
    until: Timestamp | None = None


class MessagesQuery(_In):
    after: int = Field(0, ge=0, le=2**31 - 1, description="the last sequence number the receiver has")
    limit: int = Field(100, ge=1, le=500)


class AttemptsQuery(_In):
    before: int | None = Field(
        None, ge=1, le=2**31 - 1, description="`next_before` of the previous page (newest first)"
    )
    limit: int = Field(100, ge=1, le=500)


class TwilioInboundForm(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        **examples({"MessageSid": "SM" + "0" * 32, "From": "+15555550101", "Body": "STOP"}),
    )

    """The fields of Twilio's incoming-message webhook careloop reads (Twilio sends more)."""

    MessageSid: Annotated[str, Field(min_length=1, max_length=64)]
    From: Annotated[str, Field(min_length=1, max_length=64, description="the sender's number, E.164")]
    Body: Annotated[str, Field(max_length=2000)] = ""

    @model_validator(mode="before")
    @classmethod
    def _older_names(cls, data):
        if isinstance(data, dict) and not data.get("MessageSid") and data.get("SmsSid"):
            data = {**data, "MessageSid": data["SmsSid"]}
        return data


# --- Responses ---------------------------------------------------------------------------------
# Declared so /openapi.json describes every body that comes back; apiflask passes each
# answer through its model, so an answer that broke the documented shape would fail loudly.

DateTimeText = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
"""An ISO 8601 date-time in UTC, as careloop writes them (``2026-11-29T08:00:00Z``)."""


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(_Out):
    model_config = ConfigDict(
        **examples(
            {"error": "validation_error", "message": "Validation error",
             "fields": {"data.severity": ["Input should be 'low', 'medium', 'high' or 'urgent'"]}},
            {"error": "not_found", "message": "notebook not found"},
        )
    )  # fmt: skip
    error: str = Field(description="a short code: validation_error, not_found, conflict, …")
    message: str
    fields: dict[str, list[str]] | None = Field(None, description="what is wrong with each named field")


NOTEBOOK_EXAMPLE = {
    "id": NB, "name": "Maya's notebook", "child_name": "Maya Rivera", "timezone": "America/Chicago",
    "email_detail": False, "created_at": WHEN,
}  # fmt: skip


class NotebookOut(_Out):
    model_config = ConfigDict(**examples(NOTEBOOK_EXAMPLE))
    id: str
    name: str
    child_name: str
    timezone: str
    email_detail: bool
    created_at: DateTimeText


KEY_EXAMPLE = {
    "id": KEY, "notebook_id": NB, "notebook_ids": [NB], "name": "clinic EHR", "role": "integration",
    "created_at": WHEN, "last_used_at": None,
}  # fmt: skip


class KeyOut(_Out):
    model_config = ConfigDict(**examples(KEY_EXAMPLE))
    id: str
    notebook_id: str | None = Field(description="the notebook a notebook key belongs to; null: a clinic key")
    notebook_ids: list[str] = Field(description="the notebooks the key reaches")
    name: str
    role: KeyRoleName
    created_at: DateTimeText
    last_used_at: DateTimeText | None = Field(description="when it was last used, to the minute")


class CreatedKeyOut(KeyOut):
    model_config = ConfigDict(
        **examples({**KEY_EXAMPLE, "key": "clk_Q2FyZWxvb3AgZXhhbXBsZSBrZXkgLSBub3QgcmVhbCEh"})
    )  # fmt: skip
    key: str = Field(description="the secret: shown this once, stored only as a hash")


MEMBER_EXAMPLE = {
    "id": MEM, "notebook_id": NB, "name": "Dr. Priya Shah", "role": "neurology",
    "email": "pshah@neuro.example.org", "phone": None, "timezone": "America/Chicago", "active": True,
    "sms_opted_out": False, "created_at": WHEN, "updated_at": WHEN,
}  # fmt: skip


class KeyList(_Out):
    model_config = ConfigDict(**examples({"items": [KEY_EXAMPLE]}))
    items: list[KeyOut]


class MemberOut(_Out):
    model_config = ConfigDict(**examples(MEMBER_EXAMPLE))
    id: str
    notebook_id: str
    name: str
    role: RoleName
    email: str | None
    phone: str | None
    timezone: str | None
    active: bool
    sms_opted_out: bool = Field(
        description="the member texted STOP: their texts are skipped (`opted_out`) until they text START; "
        "only their own text changes it"
    )
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
    model_config = ConfigDict(**examples({"items": [MEMBER_EXAMPLE]}))
    items: list[MemberOut | MemberSummaryOut] = Field(
        description="with contact details, or (for an integration key) without them"
    )


class LinksRevokedOut(_Out):
    model_config = ConfigDict(**examples({"member_id": MEM, "revoked_at": WHEN}))
    member_id: str
    revoked_at: DateTimeText = Field(
        description="every member link this member was sent before this time no longer works"
    )


class PreferencesOut(_Out):
    model_config = ConfigDict(
        **examples({
            "member_id": MEM, "timezone": "America/Chicago",
            "quiet_hours": {"start": "21:00", "end": "07:00"},
            "channels": {"medication": ["sms", "email", "calendar"], "concern": ["sms", "email"],
                         "therapy": ["email"], "goal": ["sms", "email", "calendar"],
                         "checkin": ["email", "calendar"], "note": ["email"]},
            "mode": "digest", "digest_hour": 18, "digest_categories": ["therapy", "goal", "note"]})
    )  # fmt: skip
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
    model_config = ConfigDict(**examples({"id": EVT, "status": "accepted", "type": "medication.changed"}))
    id: str
    status: Literal["accepted"]
    type: Literal[tuple(t.value for t in EventType)]  # type: ignore[valid-type]


DELIVERY_EXAMPLES = (
    {"id": DLV, "event_id": EVT, "notebook_id": NB, "member_id": MEM2, "channel": "sms",
     "status": "delivered", "attempts": 1, "provider_id": "SM0123456789abcdef0123456789abcdef", "error": None,
     "rules": ["parents-hear-everything"], "created_at": WHEN, "updated_at": LATER, "next_attempt_at": None,
     "sent_at": WHEN, "delivered_at": LATER, "held_for": None, "digest_id": None, "escalation_step": 0,
     "reason": None, "failover_of": None, "acknowledged_at": "2026-11-29T14:06:00Z", "acknowledged_by": MEM2,
     "acknowledged_via": "sms"},
    {"id": "dlv_0d9c8b7a6f5e4d3c2b1a", "event_id": EVT, "notebook_id": NB, "member_id": MEM,
     "channel": "email", "status": "failed", "attempts": 1, "provider_id": None,
     "error": "SMTP 550: 5.1.1 mailbox unavailable", "rules": ["neurology-hears-medication"],
     "created_at": WHEN, "updated_at": LATER, "next_attempt_at": None, "sent_at": None, "delivered_at": None,
     "held_for": None, "digest_id": None, "escalation_step": 1,
     "reason": "escalation step 1: nobody acknowledged the alert within 15 minutes", "failover_of": None,
     "acknowledged_at": None, "acknowledged_by": None, "acknowledged_via": None},
)  # fmt: skip


class BatchResult(_Out):
    index: int = Field(description="the item's position in `events`, from 0")
    status: Literal["accepted", "duplicate", "rejected"] = Field(
        description="`accepted`: stored and to be routed (as a 202 alone); `duplicate`: its "
        "`idempotency_key` was used before with the same event, `id` is that first event; "
        "`rejected`: nothing stored, `error` is the body it would have had alone"
    )
    id: str | None = Field(None, description="the event's id (accepted, duplicate)")
    http_status: int | None = Field(None, description="the status it would have had alone (rejected)")
    error: ErrorOut | None = Field(None, description="why it was rejected")


class EventBatchOut(_Out):
    model_config = ConfigDict(
        **examples({"results": [
            {"index": 0, "status": "accepted", "id": EVT, "http_status": None, "error": None},
            {"index": 1, "status": "rejected", "id": None, "http_status": 422,
             "error": {"error": "validation_error", "message": "Validation error",
                       "fields": {"data.severity": ["Input should be 'low', 'medium', 'high' or 'urgent'"]}}},
        ]})
    )  # fmt: skip
    results: list[BatchResult] = Field(description="one per item, in the order given")


class DeliveryOut(_Out):
    model_config = ConfigDict(**examples(*DELIVERY_EXAMPLES))
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
    escalation_step: int = Field(
        0, description="0: sent by the rules; n: sent by the event's escalation step n (nobody acknowledged)"
    )
    reason: str | None = Field(
        None, description="why it exists when not by a rule alone: an escalation step, or a failover"
    )
    failover_of: str | None = Field(
        None, description="the urgent delivery on another channel that had not got through, for a failover"
    )
    acknowledged_at: DateTimeText | None = Field(None, description="when someone said they have seen it")
    acknowledged_by: str | None = Field(
        None, description="who: the member's id (member page, SMS), or the key's id or `admin` (API)"
    )
    acknowledged_via: Literal["api", "member_page", "sms"] | None = Field(None, description="how")


class DeliveryList(_Out):
    model_config = ConfigDict(**examples({"items": list(DELIVERY_EXAMPLES), "next_cursor": None}))
    items: list[DeliveryOut]
    next_cursor: str | None


EVENT_EXAMPLE = {
    "id": EVT, "notebook_id": NB, "type": "medication.changed",
    "data": {"medication": "levetiracetam", "change": "dose_changed", "dose": "250 mg twice daily"},
    "occurred_at": WHEN, "recorded_at": WHEN, "author_member_id": MEM2, "status": "routed", "routed_at": WHEN,
}  # fmt: skip


class EventOut(_Out):
    model_config = ConfigDict(**examples(EVENT_EXAMPLE))
    id: str
    notebook_id: str
    type: Literal[tuple(t.value for t in EventType)]  # type: ignore[valid-type]
    data: dict[str, Any] = Field(description="as recorded; its shape is the request's for this type")
    occurred_at: DateTimeText
    recorded_at: DateTimeText
    author_member_id: str | None
    status: Literal["accepted", "routed"]
    routed_at: DateTimeText | None


ESCALATION_EXAMPLE = {
    "status": "acknowledged", "rule": "serious-concerns-to-whole-team", "acknowledge_within": 900,
    "acknowledge_by": "2026-11-29T14:15:00Z", "acknowledged_at": "2026-11-29T14:21:00Z",
    "acknowledged_by": MEM2, "acknowledged_via": "sms", "acknowledged_delivery_id": DLV,
    "next_step_at": None,
    "steps": [
        {"step": 1, "roles": ["parent", "guardian"], "due_at": "2026-11-29T14:15:00Z",
         "fired_at": "2026-11-29T14:15:02Z", "member_ids": [MEM2], "delivery_ids": [DLV]},
        {"step": 2, "roles": ["neurology"], "due_at": "2026-11-29T14:30:00Z", "fired_at": None,
         "member_ids": [], "delivery_ids": []},
    ],
    "failovers": [
        {"at": "2026-11-29T14:05:03Z", "member_id": MEM, "from_delivery_id": "dlv_5e4d3c2b1a0f9e8d7c6b",
         "delivery_id": "dlv_0d9c8b7a6f5e4d3c2b1a", "channel": "email",
         "reason": "failover from dlv_5e4d3c2b1a0f9e8d7c6b: the sms alert had not got through after "
                   "5 minutes"},
    ],
}  # fmt: skip


class EscalationStepOut(_Out):
    step: int = Field(description="1 for the first step")
    roles: list[str] = Field(description="whom it alerts: roles, member ids, `team` or `everyone`")
    due_at: DateTimeText
    fired_at: DateTimeText | None = Field(description="when it fired (None: not yet, or never: acknowledged)")
    member_ids: list[str] = Field(description="the members it alerted, on every channel they have")
    delivery_ids: list[str]


class FailoverOut(_Out):
    at: DateTimeText
    member_id: str
    from_delivery_id: str = Field(description="the urgent delivery that had not got through")
    delivery_id: str = Field(description="the new delivery on another of the member's channels")
    channel: Literal[tuple(c.value for c in ChannelKind)]  # type: ignore[valid-type]
    reason: str | None


class EscalationOut(_Out):
    """An event that waits for someone to acknowledge it (see README, "Rules")."""

    model_config = ConfigDict(**examples(ESCALATION_EXAMPLE))
    status: Literal["waiting", "overdue", "acknowledged"]
    rule: str | None = Field(description="the rule that asked for it (None: an urgent concern's default)")
    acknowledge_within: int = Field(description="seconds")
    acknowledge_by: DateTimeText
    acknowledged_at: DateTimeText | None
    acknowledged_by: str | None = Field(description="a member's id, a key's id or `admin`")
    acknowledged_via: Literal["api", "member_page", "sms"] | None
    acknowledged_delivery_id: str | None
    next_step_at: DateTimeText | None = Field(description="when the next step fires if nobody acknowledges")
    steps: list[EscalationStepOut]
    failovers: list[FailoverOut]


# --- reminders (issue 12) ---
REMINDER_EXAMPLE = {
    "id": "rem_5e4d3c2b1a0f9e8d7c6b", "member_id": MEM, "channel": "sms",
    "occurrence": "2027-01-12T23:00:00+00:00", "starts_at": "2027-01-12T23:00:00Z", "offset_minutes": 1440,
    "due_at": "2027-01-11T23:00:00Z",
    "held_for": None, "status": "sent", "attempts": 1, "provider_id": "SM0123456789abcdef0123456789abcdef",
    "error": None, "sent_at": "2027-01-11T23:00:01Z",
}  # fmt: skip


class ReminderOut(_Out):
    """One reminder of a check-in: one occurrence, one attendee, one time before it, one channel."""

    model_config = ConfigDict(**examples(REMINDER_EXAMPLE))
    id: str
    member_id: str
    channel: Literal["sms", "email"]
    occurrence: str | None = Field(
        description="the occurrence's original start (its RECURRENCE-ID) in a recurring check-in"
    )
    starts_at: DateTimeText = Field(description="when the occurrence starts (as it stood when planned)")
    offset_minutes: int = Field(description="how long before the start it goes (1440: 24 h)")
    due_at: DateTimeText = Field(description="when it goes (later than start − offset only for quiet hours)")
    held_for: Literal["quiet_hours"] | None = Field(
        description="a pending 24 h reminder moved to the end of the member's quiet hours"
    )
    status: Literal["pending", "sending", "sent", "failed", "cancelled"] = Field(
        description="`cancelled`: dropped (the check-in moved or was cancelled, the attendee was removed, "
        "or it had begun); `error` says which"
    )
    attempts: int
    provider_id: str | None
    error: str | None
    sent_at: DateTimeText | None


class EventWithDeliveries(EventOut):
    model_config = ConfigDict(
        **examples(
            {**EVENT_EXAMPLE, "deliveries": list(DELIVERY_EXAMPLES), "escalation": ESCALATION_EXAMPLE,
             "reminders": []}
        )
    )
    deliveries: list[DeliveryOut]
    escalation: EscalationOut | None = Field(
        None, description="its wait for an acknowledgement, if it needs one (urgent concerns always do)"
    )
    reminders: list[ReminderOut] = Field(
        default_factory=list,
        description="for a check-in event: every reminder of its check-in, by due time (moved and "
        "cancelled ones too); empty for other events",
    )


class EventList(_Out):
    model_config = ConfigDict(
        **examples({"items": [EVENT_EXAMPLE], "next_cursor": "1764424800000000.evt_6e5d4c3b2a1f0e9d8c7b"})
    )
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
    model_config = ConfigDict(
        **examples({"items": [{
            "id": "aud_5b4a3c2d1e0f9a8b7c6d", "at": WHEN, "notebook_id": NB, "actor_type": "key",
            "actor_id": KEY, "action": "events.create_event", "target_id": EVT, "remote_addr": "203.0.113.7",
            "status": 202, "reason": None}], "next_cursor": None})
    )  # fmt: skip
    items: list[AuditEntryOut]
    next_cursor: str | None


class HealthOut(_Out):
    model_config = ConfigDict(
        **examples(
            {"status": "ok", "queue_mode": "rq", "database": "ok", "queue": "ok"},
            {"status": "degraded", "queue_mode": "rq", "database": "ok", "queue": "unreachable"},
        )
    )
    status: Literal["ok", "degraded", "down"]
    queue_mode: Literal["rq", "inprocess"]
    database: Literal["ok", "unreachable"]
    queue: Literal["ok", "unreachable"]


class ReadyOut(_Out):
    model_config = ConfigDict(
        **examples(
            {"status": "ready", "database": "ok", "queue": "ok", "migrations": "at_head", "failing": []},
            {"status": "not_ready", "database": "ok", "queue": "unreachable", "migrations": "at_head",
             "failing": ["queue"]},
        )
    )  # fmt: skip
    status: Literal["ready", "not_ready"]
    database: Literal["ok", "unreachable"]
    queue: Literal["ok", "unreachable", "not_configured"]
    migrations: Literal["at_head", "behind", "unknown"]
    failing: list[Literal["database", "queue", "migrations"]] = Field(
        description="The parts that are not ready (empty when ready)"
    )


# --- Sources: signed webhooks in -------------------------------------------------------------

SourceKindName = Literal[tuple(KIND_HANDLERS)]  # type: ignore[valid-type]
"""A kind careloop reads (``careloop.inbound.KIND_HANDLERS``)."""

InboundStatusName = Literal[tuple(s.value for s in InboundStatus)]  # type: ignore[valid-type]


SOURCE_EXAMPLE = {
    "id": "src_3e2d1c0b9a8f7e6d5c4b", "name": "Northside EHR", "kind": "careloop", "notebook_id": NB,
    "webhook_url": "https://careloop.example.org/v1/webhooks/src_3e2d1c0b9a8f7e6d5c4b", "created_at": WHEN,
    "secret_rotated_at": None, "previous_secret_expires_at": None, "mapping": None,
}  # fmt: skip
INBOUND_EXAMPLE = {
    "id": "inb_8a7b6c5d4e3f2a1b0c9d", "source_id": "src_3e2d1c0b9a8f7e6d5c4b", "webhook_id": "msg_2hX9",
    "received_at": WHEN, "status": "accepted", "reason": None, "event_ids": [EVT], "duplicate_of": None,
    "notification": None, "reruns": 0, "reran_at": None,
}  # fmt: skip
NOTIFICATION_EXAMPLE = {
    "type": "event-notification", "subscription": "https://ehr.clinic.example/fhir/Subscription/admission",
    "topic": "http://hl7.org/SubscriptionTopic/admission", "events_since_start": 5, "event_numbers": [5],
    "gap": {"first": 3, "last": 4}, "late": False,
}  # fmt: skip
FHIR_SOURCE_EXAMPLE = {
    **SOURCE_EXAMPLE, "name": "Northside FHIR", "kind": "fhir", "notebook_id": None,
    "patients": {"Patient/123": NB, "http://hospital.example.org/mrn|4711": NB},
}  # fmt: skip

PatientKey = Annotated[str, Field(min_length=1, max_length=401, pattern=PATIENT_KEY_PATTERN)]
"""A key of a ``fhir`` source's ``patients`` map: ``Patient/<id>`` or ``<system>|<value>``."""


MAPPING_EXAMPLE = MappingSpec.model_config["json_schema_extra"]["examples"][0]
_ONE_NOTEBOOK = {"notebook_id": {"type": "string"}, "patients": {"type": "null"}}
_BY_PATIENT = {"patients": {"type": "object"}, "notebook_id": {"type": "null"}}
_OTHER_KINDS = [k for k in KIND_HANDLERS if k not in (FHIR_KIND, "mapping")]
SOURCE_TARGETS = [
    {"properties": {"kind": {"enum": _OTHER_KINDS}, **_ONE_NOTEBOOK}, "required": ["notebook_id"]},
    {"properties": {"kind": {"const": FHIR_KIND}, **_ONE_NOTEBOOK}, "required": ["notebook_id"]},
    {"properties": {"kind": {"const": FHIR_KIND}, **_BY_PATIENT}, "required": ["patients"]},
    {"properties": {"kind": {"const": "mapping"}, "patients": {"type": "null"}}, "required": ["mapping"]},
]  # fmt: skip
"""Where a source's events go, in the schema as the API checks it: any kind names its notebook,
a ``fhir`` source may map patients instead (never both), a ``mapping`` source has its mapping
(which may choose the notebook)."""

Patients = Annotated[
    dict[PatientKey, NotebookId],  # type: ignore[valid-type]
    Field(min_length=1, max_length=MAX_PATIENTS, json_schema_extra={"additionalProperties": False}),
]


class SourceIn(_In):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"name": "Northside EHR", "kind": "careloop", "notebook_id": NB},
                {"name": "Northside FHIR", "kind": "fhir", "patients": FHIR_SOURCE_EXAMPLE["patients"]},
                {"name": "Lincoln Elementary IEP", "kind": "mapping", "mapping": MAPPING_EXAMPLE},
            ],
            "anyOf": SOURCE_TARGETS,
        }
    )
    name: Line200
    kind: SourceKindName = Field(
        description="how its bodies are read: `careloop` is careloop's own event JSON; `fhir` is FHIR R4 "
        "resources, Bundles and R4B/R5 (or backport) subscription notifications; `mapping` is the clinic's "
        "own JSON, read through `mapping`"
    )
    notebook_id: NotebookId | None = Field(
        None,
        description="the notebook its events go to; required unless a `fhir` source gives `patients` or a "
        "mapping chooses notebooks (`notebook_by`)",
    )
    patients: Patients | None = Field(
        None,
        description="`fhir` only, instead of `notebook_id`: the notebook of each patient, by `Patient/<id>` "
        "or by an identifier's `<system>|<value>`",
    )
    mapping: MappingSpec | None = Field(
        None, description="for a `mapping` source (required there, refused elsewhere): its field mapping"
    )


class SourcePatch(_In):
    """A source's name, notebook, patients or mapping, fixed (then re-run what it rejected)."""

    model_config = ConfigDict(
        **examples(
            {"mapping": MAPPING_EXAMPLE},
            {"name": "Northside EHR (new)"},
            {"patients": FHIR_SOURCE_EXAMPLE["patients"]},
        )
    )
    name: Line200 = None  # type: ignore[assignment]
    notebook_id: NotebookId | None = Field(
        None, description="null: the mapping chooses notebooks, or a `fhir` source's `patients` do"
    )
    patients: Patients | None = Field(None, description="`fhir` only: replaces the patients map")
    mapping: MappingSpec = None  # type: ignore[assignment]


class SourceOut(_Out):
    model_config = ConfigDict(**examples(SOURCE_EXAMPLE, FHIR_SOURCE_EXAMPLE))
    id: str
    name: str
    kind: SourceKindName
    notebook_id: str | None
    patients: dict[str, str] | None = Field(None, description="a `fhir` source's patients' notebooks")
    webhook_url: str = Field(description="where it posts, signed per Standard Webhooks")
    created_at: DateTimeText
    secret_rotated_at: DateTimeText | None
    previous_secret_expires_at: DateTimeText | None = Field(
        description="until when the secret before the last rotation still verifies"
    )
    mapping: MappingSpec | None = Field(description="a `mapping` source's field mapping, as saved")


class SourceWithSecretOut(SourceOut):
    model_config = ConfigDict(
        **examples({**SOURCE_EXAMPLE, "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})
    )
    secret: str = Field(description="the signing secret (`whsec_…`): shown this once")


class SourceList(_Out):
    model_config = ConfigDict(**examples({"items": [SOURCE_EXAMPLE]}))
    items: list[SourceOut]


class InboundQuery(_In):
    status: InboundStatusName | None = None
    limit: int = Field(50, ge=1, le=200)
    cursor: Cursor | None = None


class NotificationGapOut(_Out):
    first: int = Field(description="the first event number never received")
    last: int = Field(description="the last one")


class InboundNotificationOut(_Out):
    model_config = ConfigDict(**examples(NOTIFICATION_EXAMPLE))
    type: str = Field(
        description="handshake, heartbeat, event-notification, query-status or query-event (only "
        "event-notification and query-event carry events)"
    )
    subscription: str | None = Field(description="the Subscription that sent it")
    topic: str | None
    events_since_start: int | None = Field(description="the sender's count of events so far")
    event_numbers: list[int] = Field(description="the numbers of the events it carries")
    gap: NotificationGapOut | None = Field(
        description="event numbers no earlier request carried, between the highest before and this one: "
        "missed notifications (fetch them from the sender)"
    )
    late: bool = Field(description="it carries a number at or below the highest seen before (out of order)")


class InboundOut(_Out):
    model_config = ConfigDict(
        **examples(
            INBOUND_EXAMPLE,
            {**INBOUND_EXAMPLE, "webhook_id": "msg_2hXa", "notification": NOTIFICATION_EXAMPLE},
        )
    )
    id: str
    source_id: str
    webhook_id: str | None = Field(
        description="as the request claimed it (verified unless it was rejected for its signature)"
    )
    received_at: DateTimeText
    status: InboundStatusName
    reason: str | None = Field(description="why it was rejected, or which record it repeats")
    event_ids: list[str] = Field(description="the events it recorded (a duplicate: the first's)")
    duplicate_of: str | None
    notification: InboundNotificationOut | None = Field(
        None, description="a FHIR subscription notification's type and event numbers, and any gap before them"
    )
    reruns: int = Field(description="how many times its kept body was run again after a fix")
    reran_at: DateTimeText | None = Field(description="when it was last run again")


class InboundList(_Out):
    model_config = ConfigDict(**examples({"items": [INBOUND_EXAMPLE], "next_cursor": None}))
    items: list[InboundOut]
    next_cursor: str | None


class RerunAllIn(_In):
    model_config = ConfigDict(**examples({"limit": 100}))
    limit: int = Field(100, ge=1, le=200, description="at most this many records, oldest first")
    cursor: Cursor | None = Field(
        None, description="`next_cursor` of the previous call: go on after the records it ran"
    )


class RerunAllOut(_Out):
    model_config = ConfigDict(
        **examples(
            {
                "items": [{**INBOUND_EXAMPLE, "reruns": 1, "reran_at": LATER}],
                "accepted": 1,
                "rejected": 0,
                "next_cursor": None,
            }
        )
    )
    items: list[InboundOut] = Field(description="the records run again, oldest first, as they are now")
    accepted: int = Field(description="how many were accepted this time")
    rejected: int = Field(description="how many were rejected again (each with its new reason)")
    next_cursor: str | None = Field(
        description="more rejected records are left beyond the limit: pass it as `cursor` to run them "
        "(records rejected again here are not run again on the way)"
    )


ERROR_SCHEMA = ErrorOut.model_json_schema()
"""The body of every 4xx/5xx answer, for apiflask's generated error responses."""


EP = "ep_2b3c4d5e6f7a8b9c0d1e"
ENDPOINT_EXAMPLE = {
    "id": EP, "url": "https://ehr.clinic.example/careloop", "event_types": ["medication.changed"],
    "notebooks": [NB], "payload": "full", "enabled": True, "disabled_at": None, "disabled_reason": None,
    "failing_since": None, "last_sequence": 42, "created_at": WHEN,
}  # fmt: skip


class EndpointOut(_Out):
    model_config = ConfigDict(**examples(ENDPOINT_EXAMPLE))
    id: str
    url: str
    event_types: list[str]
    notebooks: list[str]
    payload: Literal["full", "thin"]
    enabled: bool
    disabled_at: DateTimeText | None
    disabled_reason: str | None
    failing_since: DateTimeText | None = Field(description="since when its attempts fail with no success")
    last_sequence: int = Field(description="the sequence number of its newest message (0: none yet)")
    created_at: DateTimeText


class CreatedEndpointOut(EndpointOut):
    model_config = ConfigDict(
        **examples({**ENDPOINT_EXAMPLE, "last_sequence": 0, "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2La=="})
    )

    secret: str = Field(description="the signing secret (`whsec_…`): shown this once")


class EndpointList(_Out):
    model_config = ConfigDict(**examples({"items": [ENDPOINT_EXAMPLE]}))

    items: list[EndpointOut]


class WebhookMessageOut(_Out):
    id: str = Field(description="the message id (the `webhook-id` header)")
    sequence: int
    event_id: str
    status: Literal[tuple(s.value for s in DeliveryStatus)]  # type: ignore[valid-type]
    attempts: int
    error: str | None
    created_at: DateTimeText
    delivered_at: DateTimeText | None = Field(description="when the endpoint answered 2xx")
    next_attempt_at: DateTimeText | None
    body: dict[str, Any] = Field(description="exactly what is (or was) POSTed")


class WebhookMessageList(_Out):
    model_config = ConfigDict(
        **examples(
            {
                "items": [
                    {
                        "id": "msg_3c4d5e6f7a8b9c0d1e2f", "sequence": 42, "event_id": EVT,
                        "status": "delivered", "attempts": 1, "error": None, "created_at": WHEN,
                        "delivered_at": LATER, "next_attempt_at": None,
                        "body": {
                            "id": "msg_3c4d5e6f7a8b9c0d1e2f", "type": "goal.updated", "timestamp": WHEN,
                            "endpoint_id": EP, "sequence": 42,
                            "data": {"id": EVT, "notebook_id": NB, "type": "goal.updated"},
                        },
                    }
                ],
                "next_after": None,
            }
        )
    )  # fmt: skip

    items: list[WebhookMessageOut]
    next_after: int | None = Field(description="pass as `after` for the next page; null: no more")


class WebhookAttemptOut(_Out):
    id: int
    message_id: str
    sequence: int
    attempted_at: DateTimeText
    status_code: int | None
    latency_ms: int
    error: str | None


class WebhookAttemptList(_Out):
    model_config = ConfigDict(
        **examples(
            {
                "items": [
                    {
                        "id": 7, "message_id": "msg_3c4d5e6f7a8b9c0d1e2f", "sequence": 42,
                        "attempted_at": WHEN, "status_code": 503, "latency_ms": 120, "error": "answered 503",
                    }
                ],
                "next_before": None,
            }
        )
    )  # fmt: skip

    items: list[WebhookAttemptOut]
    next_before: int | None


class ReplayOut(_Out):
    model_config = ConfigDict(**examples({"resent": ["msg_3c4d5e6f7a8b9c0d1e2f"], "created": []}))

    resent: list[str] = Field(description="messages sent again (same id and sequence number)")
    created: list[str] = Field(description="messages made for events it had none about (numbered next)")


# --- CalDAV publishing and calendar feeds ---------------------------------------------------------

FEED_URL_EXAMPLE = "https://careloop.example.org/calendar/3q2-7wEjvB0Zl4nX5C0m1QhXo6fS3bT8uVdYkRz9aLc.ics"


class CaldavIn(_In):
    model_config = ConfigDict(
        **examples(
            {
                "url": "https://dav.clinic.example/calendars/team/maya/",
                "username": "careloop",
                "password": "app-password-from-your-calendar",
            }
        )
    )

    url: Annotated[
        str,
        Field(
            min_length=10,
            max_length=2000,
            pattern=WEBHOOK_URL_PATTERN,
            description="the CalDAV calendar collection's URL (http or https, no credentials in it); a "
            "host resolving to a private, loopback or link-local address is refused (unless "
            "CARELOOP_ALLOW_PRIVATE_WEBHOOKS is set)",
            json_schema_extra={"format": WEBHOOK_URL_FORMAT},
        ),
    ]
    username: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f:]+$")] | None = (
        Field(None, description="for HTTP authentication (no colon)")
    )
    password: Annotated[str, Field(min_length=1, max_length=500, pattern=r"^[^\x00-\x1f\x7f]+$")] | None = (
        Field(None, description="kept to sign in to the calendar; never returned, never logged")
    )


class CaldavOut(_Out):
    model_config = ConfigDict(
        **examples(
            {
                "notebook_id": NB,
                "url": "https://dav.clinic.example/calendars/team/maya/",
                "username": "careloop",
                "has_password": True,
                "last_published_at": LATER,
                "last_error": None,
                "last_error_at": None,
                "pending": 0,
                "updated_at": WHEN,
            }
        )
    )
    notebook_id: str
    url: str
    username: str | None
    has_password: bool = Field(description="whether a password is kept (it is never returned)")
    last_published_at: DateTimeText | None = Field(description="when the calendar last took a change")
    last_error: str | None = Field(description="why the last try failed, while it is failing (tried again)")
    last_error_at: DateTimeText | None
    pending: int = Field(description="check-in changes not yet on the calendar")
    updated_at: DateTimeText


class MemberDetailOut(MemberOut):
    model_config = ConfigDict(**examples({**MEMBER_EXAMPLE, "calendar_feed_url": FEED_URL_EXAMPLE}))
    calendar_feed_url: str | None = Field(
        description="the member's private iCalendar feed of their check-ins (subscribe to it in any "
        "calendar); shown to the family and admin keys only, null for others"
    )


class CalendarFeedOut(_Out):
    model_config = ConfigDict(
        **examples({"member_id": MEM, "calendar_feed_url": FEED_URL_EXAMPLE, "rotated_at": WHEN})
    )
    member_id: str
    calendar_feed_url: str = Field(description="the new feed URL")
    rotated_at: DateTimeText = Field(description="the member's previous feed URL answers 404 from this time")
