"""A member's preferences: *how and when* they hear about what the rules send them.

Rules decide who is told; a member's preferences decide by which channels (per event
category), when (quiet hours in their own time zone) and how often (each event at once, or a
daily digest at a local hour). :class:`Preferences` is written once, as a pydantic model: the
API validates and documents it, the database stores its JSON, and routing reads it.

The timing functions here are pure (no clock of their own): they take ``now`` and a zone, and
work in the member's local wall-clock time, so a quiet-hours window or a digest hour is the
same local time on both sides of a daylight-saving change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from careloop.events import EVENT_KINDS
from careloop.vocabulary import ChannelKind

CATEGORIES: tuple[str, ...] = tuple(dict.fromkeys(kind.category for kind in EVENT_KINDS.values()))
"""The event categories preferences speak of (``careloop.events.EVENT_KINDS``)."""

DIGEST_CATEGORIES_DEFAULT: tuple[str, ...] = ("therapy", "goal", "note")
"""Categories a member on digest gets in the digest unless they choose others: the
low-priority ones (therapy logs, goal updates, notes)."""

DIGEST_HOUR_DEFAULT = 18
"""The local hour a digest goes out at unless the member chooses another."""

CLOCK_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
"""A local wall-clock time, ``HH:MM`` on a 24-hour clock (``21:00``, ``07:30``)."""

Category = Literal[CATEGORIES]  # type: ignore[valid-type]
Channel = Literal[tuple(c.value for c in ChannelKind)]  # type: ignore[valid-type]
Clock = Annotated[str, Field(pattern=CLOCK_PATTERN, description="local time, HH:MM (24-hour clock)")]


class QuietHours(BaseModel):
    """A daily window in the member's own time zone in which nothing non-urgent is sent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: Clock = Field(description="local time the window begins, e.g. 21:00")
    end: Clock = Field(description="local time it ends, e.g. 07:00 (before start: it spans midnight)")

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:  # beyond JSON Schema: see tests/schemathesis.toml
            raise ValueError("start and end must differ")
        return self


def _all_channels() -> dict[str, list[str]]:
    return {category: [c.value for c in ChannelKind] for category in CATEGORIES}


class Preferences(BaseModel):
    """How and when one member hears about events (``GET/PUT /v1/members/{id}/preferences``).

    Every field has a default, so ``{}`` means "every channel the rules name, at once, any
    time of day". A category left out of ``channels`` keeps every channel.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: dict[
        Category,
        Annotated[list[Channel], Field(max_length=len(ChannelKind), json_schema_extra={"uniqueItems": True})],
    ] = Field(
        default_factory=_all_channels,
        description="per event category, the channels the member may be told by; a channel left "
        "out is never used for that category (its delivery is `skipped`, reason `preference_off`)",
    )
    quiet_hours: QuietHours | None = Field(
        None, description="non-urgent messages falling in this window wait until it ends"
    )
    mode: Literal["immediate", "digest"] = Field(
        "immediate",
        description="`digest`: events of `digest_categories` come in one message a day at `digest_hour`",
    )
    digest_hour: Annotated[StrictInt, Field(ge=0, le=23)] = Field(
        DIGEST_HOUR_DEFAULT, description="the local hour (0-23) the daily digest goes out at"
    )
    digest_categories: Annotated[
        list[Category], Field(max_length=len(CATEGORIES), json_schema_extra={"uniqueItems": True})
    ] = Field(
        default_factory=lambda: list(DIGEST_CATEGORIES_DEFAULT),
        description="the categories a member on digest gets in the digest (the rest at once)",
    )

    @field_validator("channels", mode="after")
    @classmethod
    def _complete(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        full = _all_channels()
        for category, channels in value.items():
            if len(set(channels)) != len(channels):
                raise ValueError(f"{category}: a channel is named twice")
            full[category] = list(channels)
        return full

    @field_validator("digest_categories", mode="after")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a category is named twice")
        return value

    def allows(self, category: str, channel: str) -> bool:
        """Whether the member may be told about events of ``category`` by ``channel``."""
        allowed = self.channels.get(category)
        return allowed is None or channel in allowed

    def digests(self, category: str, channel: str) -> bool:
        """Whether such a message waits for the member's daily digest. A calendar invite never
        does: it is a calendar entry, not an alert."""
        return (
            self.mode == "digest" and category in self.digest_categories and channel != ChannelKind.CALENDAR
        )


DEFAULT = Preferences()
"""A member who never set preferences."""


def from_stored(value: dict | None) -> Preferences:
    """The preferences kept on a member row (``None``: the defaults)."""
    return DEFAULT if not value else Preferences.model_validate(value)


def _clock(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def wall_time(day: date, clock: time, zone: ZoneInfo) -> datetime:
    """The instant the member's clock shows ``clock`` on ``day``. A time the clocks skip (the
    spring-forward gap) is read with the offset before the change, i.e. as the moment the
    clock passes it; a time shown twice (fall back) is its first showing."""
    return datetime.combine(day, clock, tzinfo=zone).astimezone(ZoneInfo("UTC"))


def quiet_until(now: datetime, zone: ZoneInfo, quiet: QuietHours | None) -> datetime | None:
    """When the member's quiet hours end, if ``now`` falls in them; None otherwise.

    The window is read on the member's own clock: ``21:00``–``07:00`` is 21:00 to 07:00 local
    time whatever the offset is on either side of a daylight-saving change.
    """
    if quiet is None:
        return None
    start, end = _clock(quiet.start), _clock(quiet.end)
    local = now.astimezone(zone)
    clock = local.time().replace(tzinfo=None)
    inside = start <= clock < end if start < end else (clock >= start or clock < end)
    if not inside:
        return None
    day = local.date() if clock < end else local.date() + timedelta(days=1)
    until = wall_time(day, end, zone)
    return until if until > now else None


@dataclass(frozen=True)
class DigestSlot:
    """The digest an event joins: the member's local day it goes out on, and when."""

    window: str
    """The local date of the digest, ``YYYY-MM-DD`` (one digest per member, channel and window)."""
    due_at: datetime
    """When it goes out: the digest hour that day, moved past quiet hours if it falls in them."""


def digest_slot(now: datetime, zone: ZoneInfo, preferences: Preferences) -> DigestSlot:
    """The next digest of this member at or after ``now``: today's if its hour has not come
    yet on the member's clock, else tomorrow's."""
    local = now.astimezone(zone)
    hour = time(preferences.digest_hour)
    day = local.date()
    due = wall_time(day, hour, zone)
    if due <= now:
        day = day + timedelta(days=1)
        due = wall_time(day, hour, zone)
    due = quiet_until(due, zone, preferences.quiet_hours) or due
    return DigestSlot(window=day.isoformat(), due_at=due)


def slot_after(slot: DigestSlot, zone: ZoneInfo, preferences: Preferences) -> DigestSlot:
    """The digest after ``slot`` (for an event that arrived as ``slot`` was going out)."""
    day = date.fromisoformat(slot.window) + timedelta(days=1)
    due = wall_time(day, time(preferences.digest_hour), zone)
    due = quiet_until(due, zone, preferences.quiet_hours) or due
    return DigestSlot(window=day.isoformat(), due_at=due)
