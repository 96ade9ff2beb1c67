"""Who hears about an event, and how: a pure function of (event, members, rules, now).

No database, no queue, no clock of its own: everything it needs is passed in, so the
routing table can be tested exhaustively and reasoned about on paper. Rules decide *who*;
each member's preferences (part of the team passed in) decide *how and when*: a channel the
member turned off for the event's category is skipped, a message in their quiet hours waits
until the window ends on their clock, and low-priority events for a member on digest join
their daily digest. Urgent concerns and rules marked ``bypass_quiet_hours`` go at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from careloop import preferences as prefs
from careloop.events import EVENT_KINDS, EventType, is_urgent
from careloop.rules import Rule, Rules
from careloop.vocabulary import ChannelKind, Hold, preference_off_reason


@dataclass(frozen=True)
class EventView:
    id: str
    type: str
    data: dict
    author_member_id: str | None = None
    # For check-ins: members who were attendees before this event (they get the update or
    # the cancellation even when no longer invited).
    previous_attendees: tuple[str, ...] = ()
    # For check-ins: members whose calendars hold it (invited while active). Their calendar
    # gets the CANCEL even after they were deactivated.
    invite_holders: tuple[str, ...] = ()


@dataclass(frozen=True)
class MemberView:
    id: str
    role: str
    email: str | None = None
    phone: str | None = None
    active: bool = True
    sms_opted_out: bool = False
    timezone: str | None = None
    """The member's own zone, else the notebook's: where their quiet hours and digest hour are
    read. None: no timing preference can apply (every message goes at once)."""
    preferences: prefs.Preferences = prefs.DEFAULT


@dataclass(frozen=True)
class PlannedDelivery:
    member_id: str
    channel: ChannelKind
    rules: tuple[str, ...] = field(default=())
    skip_reason: str | None = None
    not_before: datetime | None = None
    """When it may go, if later than now (quiet hours, or the digest's time)."""
    hold: Hold | None = None
    """Why it waits: the member's quiet hours, or their digest."""
    digest_window: str | None = None
    """For a digest: the member's local day it goes out on (``YYYY-MM-DD``)."""


def rule_matches(rule: Rule, event: EventView) -> bool:
    return rule.when.matches(event.type, event.data)


def _targets(rule: Rule, event: EventView, members: list[MemberView]) -> list[MemberView]:
    attendees = set(event.data.get("attendees") or ()) | set(event.previous_attendees)
    chosen = []
    for member in members:
        for target in rule.notify:
            if (
                target == member.role
                or target == member.id
                or target == "everyone"
                or (target == "team" and member.role != "child")
                or (target == "attendees" and member.id in attendees)
            ):
                chosen.append(member)
                break
    return chosen


def plan_deliveries(
    event: EventView, members: list[MemberView], rules: Rules, now: datetime | None = None
) -> list[PlannedDelivery]:
    """Plan one delivery per (member, channel) over every matching rule.

    Args:
        event: the event being routed.
        members: the notebook's members; inactive ones are never notified (but a check-in
            their calendar holds is cancelled there: ``event.invite_holders``).
        rules: parsed rules (``config.rules.load_rules``).
        now: the routing time: quiet hours and digests are read from it (without it every
            message goes at once).

    Returns:
        Planned deliveries in a stable order (member order, then channel order of first
        mention). The author of the event is never alerted about their own event — but an
        author who attends a check-in still gets its calendar invite: the invite is their
        calendar entry, not an alert. A member the channel cannot reach gets a delivery with
        ``skip_reason`` set; so does a channel the member turned off for the event's category
        (``preference_off``), even for an urgent event: the member said never.
    """
    planned: dict[tuple[str, ChannelKind], list[str]] = {}
    bypass: set[tuple[str, ChannelKind]] = set()
    by_id = {m.id: m for m in members}
    position = {m.id: i for i, m in enumerate(members)}
    for rule in rules.candidates(event.type, event.data):
        if not rule_matches(rule, event):
            continue
        for member in _targets(rule, event, members):
            holder = member.id in event.invite_holders
            if not member.active and not holder:
                continue
            for channel in rule.channels:
                if member.id == event.author_member_id and channel != ChannelKind.CALENDAR:
                    continue
                if not member.active and channel != ChannelKind.CALENDAR:
                    continue  # a deactivated member only has the check-in taken out of their calendar
                planned.setdefault((member.id, channel), []).append(rule.name)
                if rule.bypass_quiet_hours:
                    bypass.add((member.id, channel))
    category = EVENT_KINDS[EventType(event.type)].category
    at_once = is_urgent(event.type, event.data)
    return [
        _planned(
            by_id[member_id],
            channel,
            tuple(rule_names),
            category,
            now if not at_once and (member_id, channel) not in bypass else None,
        )
        # Stable sort: member order, and within a member the order channels were first named.
        for (member_id, channel), rule_names in sorted(planned.items(), key=lambda kv: position[kv[0][0]])
    ]


def _planned(
    member: MemberView, channel: ChannelKind, rule_names: tuple[str, ...], category: str, now: datetime | None
) -> PlannedDelivery:
    """One planned delivery, with the member's preferences applied. ``now`` None: it goes at once."""
    preferences = member.preferences
    if not preferences.allows(category, channel):
        return PlannedDelivery(member.id, channel, rule_names, preference_off_reason(channel, category))
    skip = channel.unreachable_reason(member)
    if skip or now is None or member.timezone is None:
        return PlannedDelivery(member.id, channel, rule_names, skip)
    zone = ZoneInfo(member.timezone)
    if preferences.digests(category, channel):
        slot = prefs.digest_slot(now, zone, preferences)
        return PlannedDelivery(member.id, channel, rule_names, None, slot.due_at, Hold.DIGEST, slot.window)
    until = prefs.quiet_until(now, zone, preferences.quiet_hours)
    if until is not None:
        return PlannedDelivery(member.id, channel, rule_names, None, until, Hold.QUIET_HOURS)
    return PlannedDelivery(member.id, channel, rule_names)
