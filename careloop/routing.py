"""Who hears about an event, and how: a pure function of (event, members, rules, now).

No database, no queue, no clock of its own: everything it needs is passed in, so the
routing table can be tested exhaustively and reasoned about on paper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from careloop.rules import Rule, Rules
from careloop.vocabulary import ChannelKind


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


@dataclass(frozen=True)
class PlannedDelivery:
    member_id: str
    channel: ChannelKind
    rules: tuple[str, ...] = field(default=())
    skip_reason: str | None = None


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
        now: the routing time; reserved for quiet hours and escalation, which depend on it.

    Returns:
        Planned deliveries in a stable order (member order, then channel order of first
        mention). The author of the event is never alerted about their own event — but an
        author who attends a check-in still gets its calendar invite: the invite is their
        calendar entry, not an alert. A member the channel cannot reach gets a delivery with
        ``skip_reason`` set.
    """
    planned: dict[tuple[str, ChannelKind], list[str]] = {}
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
    return [
        PlannedDelivery(
            member_id=member_id,
            channel=channel,
            rules=tuple(rule_names),
            skip_reason=channel.unreachable_reason(by_id[member_id]),
        )
        # Stable sort: member order, and within a member the order channels were first named.
        for (member_id, channel), rule_names in sorted(planned.items(), key=lambda kv: position[kv[0][0]])
    ]
