"""Request schemas. They validate input and generate the OpenAPI document (/openapi.json)."""

from __future__ import annotations

from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    RootModel,
    StringConstraints,
)

from careloop.deliveries import STATUSES
from careloop.events import (
    EVENT_TYPES,
    CheckinCancelled,
    CheckinDetails,
    ConcernRaised,
    GoalUpdated,
    MedicationChanged,
    NoteAdded,
    Role,
    Text200,
    TherapyLogged,
    Timestamp,
)


def _check_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{value!r} is not an IANA time zone such as 'America/Chicago'") from exc
    return value


TimeZone = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_check_zone)]
E164 = Annotated[str, StringConstraints(pattern=r"^\+[1-9]\d{6,14}$")]
IdRef = Annotated[str, StringConstraints(min_length=1, max_length=40)]


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
    role: Role
    email: EmailStr | None = None
    phone: E164 | None = Field(None, description="E.164, e.g. +15551234567")
    timezone: TimeZone | None = None


class MemberPatch(_In):
    name: Text200 | None = None
    role: Role | None = None
    email: EmailStr | None = None
    phone: E164 | None = None
    timezone: TimeZone | None = None
    active: bool | None = None


class _EventBase(_In):
    occurred_at: Timestamp | None = None
    author_member_id: IdRef | None = None


class MedicationChangedIn(_EventBase):
    type: Literal["medication.changed"]
    data: MedicationChanged


class ConcernRaisedIn(_EventBase):
    type: Literal["concern.raised"]
    data: ConcernRaised


class TherapyLoggedIn(_EventBase):
    type: Literal["therapy.logged"]
    data: TherapyLogged


class GoalUpdatedIn(_EventBase):
    type: Literal["goal.updated"]
    data: GoalUpdated


class CheckinScheduledIn(_EventBase):
    type: Literal["checkin.scheduled"]
    data: CheckinDetails


class CheckinUpdatedIn(_EventBase):
    type: Literal["checkin.updated"]
    data: CheckinDetails


class CheckinCancelledIn(_EventBase):
    type: Literal["checkin.cancelled"]
    data: CheckinCancelled


class NoteAddedIn(_EventBase):
    type: Literal["note.added"]
    data: NoteAdded


class EventIn(
    RootModel[
        Annotated[
            MedicationChangedIn
            | ConcernRaisedIn
            | TherapyLoggedIn
            | GoalUpdatedIn
            | CheckinScheduledIn
            | CheckinUpdatedIn
            | CheckinCancelledIn
            | NoteAddedIn,
            Field(discriminator="type"),
        ]
    ]
):
    """A notebook event: `type` selects the shape of `data`."""


class EventsQuery(_In):
    model_config = ConfigDict(extra="forbid")
    type: Literal[EVENT_TYPES] | None = None  # type: ignore[valid-type]
    since: Timestamp | None = None
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = None


class DeliveriesQuery(_In):
    status: Literal[STATUSES] | None = None  # type: ignore[valid-type]
    notebook_id: IdRef | None = None
    limit: int = Field(50, ge=1, le=500)
    cursor: str | None = None
