"""Notebook event types and the shape of each one's ``data``, each written once.

An event type is a member of :class:`EventType`, a pydantic model of its ``data`` (field
titles are the labels messages show) and a row in :data:`EVENT_KINDS` (how messages name
it, which preference category it falls in). From these the API builds its request models
and OpenAPI document, the rules checker learns which data fields a rule may match on, and
the message templates find their labels: adding an event type touches this module only
(and, for routing, the rules file).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    field_validator,
    model_validator,
)

from careloop.recurrence import EXAMPLE as RRULE_EXAMPLE
from careloop.recurrence import parse_rule
from careloop.text import identifier, line, prose
from careloop.vocabulary import THERAPY_ROLES

Line200 = line(200)
"""A name, title, place or id: one line, no control characters (see careloop.text)."""
Prose2000 = prose(2000)
"""A note or a concern: line breaks and tabs allowed, no other control characters."""
MemberId = identifier()
Line300 = line(300)

EARLIEST_YEAR, LATEST_YEAR = 1901, 2199
"""Years a date-time may be written in: a care notebook holds nothing earlier or later, and
whatever its offset, the instant stays within the years 1900 to 2200 in UTC, as stored."""

TIMESTAMP_PATTERN = r"^(19(0[1-9]|[1-9][0-9])|2[01][0-9]{2})-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}"
"""How a date-time must start: a year from 1901 to 2199, a date, ``T`` and a time (the OpenAPI
``pattern`` beside ``format: date-time``). A bare number is not a time, not even in a string."""

TIMESTAMP_RULE = (
    f"must be an ISO 8601 date-time with a UTC offset, written in the years {EARLIEST_YEAR} to "
    f"{LATEST_YEAR}, such as 2026-03-01T09:30:00-06:00"
)


def _date_time_text(value):
    # Numbers — and numbers in a string, "0" or "0.5" — would otherwise be read as Unix time.
    if isinstance(value, datetime):
        if not EARLIEST_YEAR <= value.year <= LATEST_YEAR:
            raise ValueError(TIMESTAMP_RULE)
        return value
    if not isinstance(value, str) or not re.match(TIMESTAMP_PATTERN, value):
        raise ValueError(TIMESTAMP_RULE)
    return value


Timestamp = Annotated[
    AwareDatetime, BeforeValidator(_date_time_text), Field(json_schema_extra={"pattern": TIMESTAMP_PATTERN})
]
"""An ISO 8601 date-time with a UTC offset (naive ones are refused), in a sensible range."""


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MedicationChanged(_Data):
    medication: Line200 = Field(title="Medication")
    change: Literal["started", "stopped", "dose_changed", "schedule_changed"] = Field(title="Change")
    dose: Line200 | None = Field(None, title="Dose")
    effects: Prose2000 | None = Field(None, title="Effects seen")
    note: Prose2000 | None = Field(None, title="Note")


class ConcernRaised(_Data):
    summary: Prose2000 = Field(title="Concern")
    severity: Literal["low", "medium", "high", "urgent"] = Field(title="Severity")
    area: (
        Literal["movement", "speech", "swallowing", "sleep", "mood", "pain", "seizure", "school", "other"]
        | None
    ) = Field(None, title="Area")


class TherapyLogged(_Data):
    discipline: Literal[tuple(r.value for r in THERAPY_ROLES)] = Field(title="Discipline")  # type: ignore[valid-type]
    activity: Line200 = Field(title="Activity")
    minutes: Annotated[StrictInt, Field(ge=0, le=24 * 60)] | None = Field(None, title="Minutes")
    note: Prose2000 | None = Field(None, title="Note")


class GoalUpdated(_Data):
    goal: Line200 = Field(title="Goal")
    status: Literal["new", "progress", "met", "revised"] = Field(title="Status")
    note: Prose2000 | None = Field(None, title="Note")


class CheckinDetails(_Data):
    checkin_id: Line200 = Field(title="Check-in id", description="your stable id for this check-in")
    title: Line200 = Field(title="Check-in")
    start: Timestamp = Field(title="Starts")
    end: Timestamp = Field(title="Ends")
    location: Line200 | None = Field(None, title="Location")
    attendees: Annotated[list[MemberId], Field(min_length=1, max_length=100, title="Attendees")]
    recurrence: Line300 | None = Field(
        None,
        title="Repeats",
        description=(
            f"an RFC 5545 RRULE value, e.g. {RRULE_EXAMPLE}: DAILY to YEARLY, ending with COUNT or "
            "UNTIL (at most 520 occurrences within 10 years); start is the first occurrence"
        ),
        examples=[RRULE_EXAMPLE],
    )

    @field_validator("recurrence")
    @classmethod
    def _rule(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rule(value)
        return value

    @model_validator(mode="after")
    def _end_after_start(self) -> CheckinDetails:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        if len(set(self.attendees)) != len(self.attendees):
            raise ValueError("attendees must not repeat a member")
        return self


class CheckinUpdated(CheckinDetails):
    occurrence: Timestamp | None = Field(
        None,
        title="Occurrence",
        description=(
            "the original start of the one occurrence of a recurring check-in this update moves "
            "(start and end are its new time); absent: the whole series changes"
        ),
    )

    @field_validator("occurrence")
    @classmethod
    def _one_occurrence(cls, value, info):
        if value is not None and info.data.get("recurrence") is not None:
            raise ValueError("an update of one occurrence takes no recurrence (it changes the series)")
        return value


class CheckinCancelled(_Data):
    checkin_id: Line200 = Field(title="Check-in id")
    occurrence: Timestamp | None = Field(
        None,
        title="Occurrence",
        description="the original start of the one occurrence to cancel; absent: the whole check-in",
    )


class NoteAdded(_Data):
    text: Prose2000 = Field(title="Note")
    voice: Literal["child", "family", "team"] = Field(title="In the words of")


class EventType(StrEnum):
    """What happened in the notebook."""

    MEDICATION_CHANGED = "medication.changed"
    CONCERN_RAISED = "concern.raised"
    THERAPY_LOGGED = "therapy.logged"
    GOAL_UPDATED = "goal.updated"
    CHECKIN_SCHEDULED = "checkin.scheduled"
    CHECKIN_UPDATED = "checkin.updated"
    CHECKIN_CANCELLED = "checkin.cancelled"
    NOTE_ADDED = "note.added"


@dataclass(frozen=True)
class EventKind:
    """What careloop knows about one event type.

    Args:
        data: the model of the event's ``data``.
        label: how messages name such an event ("There is {label} in Maya's care notebook").
        category: the preference category (medication, concern, therapy, goal, checkin, note).
    """

    data: type[_Data]
    label: str
    category: str


EVENT_KINDS: dict[EventType, EventKind] = {
    EventType.MEDICATION_CHANGED: EventKind(MedicationChanged, "a medication update", "medication"),
    EventType.CONCERN_RAISED: EventKind(ConcernRaised, "a new concern", "concern"),
    EventType.THERAPY_LOGGED: EventKind(TherapyLogged, "a therapy session log", "therapy"),
    EventType.GOAL_UPDATED: EventKind(GoalUpdated, "a goal update", "goal"),
    EventType.CHECKIN_SCHEDULED: EventKind(CheckinDetails, "a new team check-in", "checkin"),
    EventType.CHECKIN_UPDATED: EventKind(CheckinUpdated, "a changed team check-in", "checkin"),
    EventType.CHECKIN_CANCELLED: EventKind(CheckinCancelled, "a cancelled team check-in", "checkin"),
    EventType.NOTE_ADDED: EventKind(NoteAdded, "a new note", "note"),
}
"""Every event type, in its documented order."""

EVENT_DATA: dict[str, type[_Data]] = {event_type: kind.data for event_type, kind in EVENT_KINDS.items()}
"""Event type → the model of its ``data``."""

EVENT_TYPES: tuple[str, ...] = tuple(EventType)

CHECKIN_TYPES = (EventType.CHECKIN_SCHEDULED, EventType.CHECKIN_UPDATED, EventType.CHECKIN_CANCELLED)


def is_urgent(event_type: str, data: dict) -> bool:
    """Whether an event's alerts go first (their own queues, ahead of any backlog)."""
    return event_type == EventType.CONCERN_RAISED and data.get("severity") == "urgent"


def data_fields(event_type: str) -> set[str]:
    return set(EVENT_DATA[event_type].model_fields)
