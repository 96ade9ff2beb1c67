"""Who hears about an event, and how: a pure function of (event, members, rules, now).

No database, no queue, no clock of its own: everything it needs is passed in, so the
routing table can be tested exhaustively and reasoned about on paper. Rules decide *who*;
each member's preferences (part of the team passed in) decide *how and when*: a channel the
member turned off for the event's category is skipped, a message in their quiet hours waits
until the window ends on their clock, and low-priority events for a member on digest join
their daily digest. Urgent concerns and rules marked ``bypass_quiet_hours`` go at once.

Escalation is planned here too, as pure functions: whether an event waits for an
acknowledgement and its steps (:func:`plan_acknowledgement`), whom a step alerts and by which
channels (:func:`plan_step`), and the other channels an urgent alert fails over to
(:func:`plan_failover`). When a step is due, and whether anyone acknowledged, is the
database's (``careloop.escalation``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from careloop import preferences as prefs
from careloop.events import EVENT_KINDS, EventType, is_urgent
from careloop.rules import DEFAULT_ACKNOWLEDGE_WITHIN, Rule, Rules
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
    return _chosen(rule.notify, event, members)


def _chosen(targets: tuple[str, ...], event: EventView, members: list[MemberView]) -> list[MemberView]:
    attendees = set(event.data.get("attendees") or ()) | set(event.previous_attendees)
    chosen = []
    for member in members:
        for target in targets:
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


# --- Acknowledgement, escalation and failover ------------------------------------------------

ALERT_CHANNELS: tuple[ChannelKind, ...] = (ChannelKind.SMS, ChannelKind.EMAIL)
"""The channels an escalation step and a failover use: every one a person reads (a calendar
invite is no alert)."""


@dataclass(frozen=True)
class PlannedStep:
    number: int
    """1 for the first step (its deliveries' ``escalation_step``)."""
    targets: tuple[str, ...]
    """Roles, member ids, ``team`` or ``everyone``."""
    due_at: datetime


@dataclass(frozen=True)
class PlannedAcknowledgement:
    """An event that waits for someone to acknowledge it, and what happens while nobody does."""

    within: float
    """Seconds it may wait."""
    acknowledge_by: datetime
    rule: str | None
    """The rule that asked for it (its steps' rule, else the one with ``acknowledge_within``);
    None for an urgent concern's default."""
    steps: tuple[PlannedStep, ...] = ()


def plan_acknowledgement(event: EventView, rules: Rules, now: datetime) -> PlannedAcknowledgement | None:
    """Whether an event waits for an acknowledgement, until when, and its escalation steps.

    An event needs one when a matching rule says ``acknowledge_within`` (the shortest wins), and
    an urgent concern always does (within 15 minutes unless a rule says otherwise). The steps
    are the first matching rule's ``escalate_to`` that has one, due ``after`` their time from
    ``now`` (the routing time). An event no rule matches alerts nobody and waits for nothing.
    """
    matching = [r for r in rules.candidates(event.type, event.data) if rule_matches(r, event)]
    if not matching:
        return None
    explicit = [r for r in matching if r.acknowledge_within is not None]
    if explicit:
        within = min(r.acknowledge_within for r in explicit if r.acknowledge_within is not None)
    elif is_urgent(event.type, event.data):
        within = DEFAULT_ACKNOWLEDGE_WITHIN
    else:
        return None
    escalating = next((r for r in matching if r.escalate_to), None)
    steps = ()
    if escalating is not None:
        steps = tuple(
            PlannedStep(number, step.roles, now + timedelta(seconds=step.after))
            for number, step in enumerate(escalating.escalate_to, start=1)
        )
    named = escalating or (explicit[0] if explicit else None)
    return PlannedAcknowledgement(
        within, now + timedelta(seconds=within), named.name if named else None, steps
    )


def _alert(
    member: MemberView, channel: ChannelKind, category: str, rules: tuple[str, ...]
) -> PlannedDelivery:
    if not member.preferences.allows(category, channel):
        return PlannedDelivery(member.id, channel, rules, preference_off_reason(channel, category))
    return PlannedDelivery(member.id, channel, rules, channel.unreachable_reason(member))


def plan_step(
    event: EventView, members: list[MemberView], targets: tuple[str, ...], rule: str | None = None
) -> list[PlannedDelivery]:
    """An escalation step's alerts: each active member the step names (never the event's
    author) on every channel people read, at once — no quiet hours, no digest: it is urgent. A
    channel the member turned off for the event's category, or cannot be reached on, is
    planned ``skipped`` with the reason, as routing plans it."""
    category = EVENT_KINDS[EventType(event.type)].category
    names = (rule,) if rule else ()
    return [
        _alert(member, channel, category, names)
        for member in _chosen(targets, event, members)
        if member.active and member.id != event.author_member_id
        for channel in ALERT_CHANNELS
    ]


def plan_failover(event: EventView, member: MemberView, tried: set[str]) -> list[PlannedDelivery]:
    """The other channels an urgent alert to ``member`` can go by when one cannot get through:
    those not ``tried`` yet for it that the member has and has not turned off (only deliveries
    that can go are planned)."""
    if not member.active:
        return []
    category = EVENT_KINDS[EventType(event.type)].category
    planned = [_alert(member, channel, category, ()) for channel in ALERT_CHANNELS if channel not in tried]
    return [p for p in planned if p.skip_reason is None]
