"""Notebook event types and the shape of each one's ``data``.

These pydantic models validate intake, describe the API in the OpenAPI document, and tell
the rules checker which data fields a rule may match on.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, get_args

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    model_validator,
)

THERAPY_ROLES = ("physical_therapy", "occupational_therapy", "speech_therapy")

Role = Literal[
    "parent",
    "guardian",
    "child",
    "neurology",
    "developmental_pediatrics",
    "physical_therapy",
    "occupational_therapy",
    "speech_therapy",
    "school",
    "other",
]

ROLES: tuple[str, ...] = get_args(Role)
"""Care-team roles a member can have."""

Text200 = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Text2000 = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
MemberId = Annotated[str, StringConstraints(min_length=1, max_length=40)]

EARLIEST_YEAR, LATEST_YEAR = 1900, 2200
"""Dates a care notebook can sensibly hold; anything else is a typo or garbage."""


def _iso_text_only(value):
    # JSON numbers would otherwise be read as Unix timestamps (0 → 1970).
    if not isinstance(value, str | datetime):
        raise ValueError("must be an ISO 8601 date-time string with a UTC offset")
    return value


def _sensible_year(value: datetime) -> datetime:
    if not EARLIEST_YEAR <= value.year <= LATEST_YEAR:
        raise ValueError(f"must be between the years {EARLIEST_YEAR} and {LATEST_YEAR}")
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_iso_text_only), AfterValidator(_sensible_year)]
"""An ISO 8601 date-time with a UTC offset (naive ones are refused), in a sensible range."""


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MedicationChanged(_Data):
    medication: Text200
    change: Literal["started", "stopped", "dose_changed", "schedule_changed"]
    dose: Text200 | None = None
    effects: Text2000 | None = None
    note: Text2000 | None = None


class ConcernRaised(_Data):
    summary: Text2000
    severity: Literal["low", "medium", "high", "urgent"]
    area: (
        Literal["movement", "speech", "swallowing", "sleep", "mood", "pain", "seizure", "school", "other"]
        | None
    ) = None


class TherapyLogged(_Data):
    discipline: Literal["physical_therapy", "occupational_therapy", "speech_therapy"]
    activity: Text200
    minutes: Annotated[StrictInt, Field(ge=0, le=24 * 60)] | None = None
    note: Text2000 | None = None


class GoalUpdated(_Data):
    goal: Text200
    status: Literal["new", "progress", "met", "revised"]
    note: Text2000 | None = None


class CheckinDetails(_Data):
    checkin_id: Text200
    title: Text200
    start: Timestamp
    end: Timestamp
    location: Text200 | None = None
    attendees: Annotated[list[MemberId], Field(min_length=1, max_length=100)]

    @model_validator(mode="after")
    def _end_after_start(self) -> CheckinDetails:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        if len(set(self.attendees)) != len(self.attendees):
            raise ValueError("attendees must not repeat a member")
        return self


class CheckinCancelled(_Data):
    checkin_id: Text200


class NoteAdded(_Data):
    text: Text2000
    voice: Literal["child", "family", "team"]


EVENT_DATA: dict[str, type[_Data]] = {
    "medication.changed": MedicationChanged,
    "concern.raised": ConcernRaised,
    "therapy.logged": TherapyLogged,
    "goal.updated": GoalUpdated,
    "checkin.scheduled": CheckinDetails,
    "checkin.updated": CheckinDetails,
    "checkin.cancelled": CheckinCancelled,
    "note.added": NoteAdded,
}
"""Event type → the model of its ``data``."""

EVENT_TYPES: tuple[str, ...] = tuple(EVENT_DATA)

CHECKIN_TYPES = ("checkin.scheduled", "checkin.updated", "checkin.cancelled")


def data_fields(event_type: str) -> set[str]:
    return set(EVENT_DATA[event_type].model_fields)
