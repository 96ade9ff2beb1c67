"""Request schemas. They validate input and generate the OpenAPI document (/openapi.json)."""

from __future__ import annotations

from typing import Annotated, Literal, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    RootModel,
    StringConstraints,
    create_model,
)

from careloop.events import EVENT_KINDS, EventType, Text200, Timestamp
from careloop.vocabulary import DeliveryStatus, Role


def _check_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{value!r} is not an IANA time zone such as 'America/Chicago'") from exc
    return value


TimeZone = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_check_zone)]
E164 = Annotated[str, StringConstraints(pattern=r"^\+[1-9]\d{6,14}$")]
IdRef = Annotated[str, StringConstraints(min_length=1, max_length=40)]
RoleName = Literal[tuple(r.value for r in Role)]  # type: ignore[valid-type]
"""A role, documented inline as an enum of its values."""


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NotebookIn(_In):
    name: Text200
    child_name: Text200
    timezone: TimeZone


class KeyIn(_In):
    name: Text200


class MemberIn(_In):
    name: Text200
    role: RoleName
    email: EmailStr | None = None
    phone: E164 | None = Field(None, description="E.164, e.g. +15551234567")
    timezone: TimeZone | None = None


class MemberPatch(_In):
    name: Text200 | None = None
    role: RoleName | None = None
    email: EmailStr | None = None
    phone: E164 | None = None
    timezone: TimeZone | None = None
    active: bool | None = None


class _EventBase(_In):
    occurred_at: Timestamp | None = None
    author_member_id: IdRef | None = None


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
    cursor: str | None = None


class DeliveriesQuery(_In):
    status: Literal[tuple(s.value for s in DeliveryStatus)] | None = None  # type: ignore[valid-type]
    notebook_id: IdRef | None = None
    limit: int = Field(50, ge=1, le=500)
    cursor: str | None = None
