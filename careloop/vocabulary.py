"""careloop's words, each defined once: delivery statuses and their transitions, channels,
care-team roles. Everything else names them through these enums (as RQ has ``JobStatus``).

A delivery's life is one transition table; the order of statuses (a provider's late report
never moves a delivery backwards), the final statuses and the ones a person may send again
are derived from it, not listed beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Protocol


class DeliveryStatus(StrEnum):
    """Where one delivery (one event, one member, one channel) stands."""

    QUEUED = "queued"
    """Waiting in careloop (first try, or a retry with a due time)."""
    SENDING = "sending"
    """A worker has claimed it and is talking to the provider."""
    SENT = "sent"
    """The provider accepted it (Twilio's own "queued" counts)."""
    DELIVERED = "delivered"
    """The provider confirmed delivery to the handset or mailbox."""
    UNDELIVERED = "undelivered"
    """The provider could not deliver it (a Twilio status callback said so)."""
    FAILED = "failed"
    """careloop gave up (see the delivery's ``error``): a dead letter a person may retry."""
    SKIPPED = "skipped"
    """The member cannot be reached on that channel (the reason is in ``error``)."""


@dataclass(frozen=True)
class Transition:
    source: DeliveryStatus
    target: DeliveryStatus
    by: Literal["worker", "provider", "person"]
    forward: bool = True
    """False for moves back to the queue (a retry), which the status order ignores."""


S = DeliveryStatus
TRANSITIONS: tuple[Transition, ...] = (
    Transition(S.QUEUED, S.SENDING, "worker"),  # claimed, before any provider call
    Transition(S.SENDING, S.SENT, "worker"),  # the provider accepted it
    Transition(S.SENDING, S.DELIVERED, "worker"),  # ... and already confirmed it
    Transition(S.SENDING, S.FAILED, "worker"),  # permanent error, out of attempts, outcome unknown
    Transition(S.SENDING, S.QUEUED, "worker", forward=False),  # transient error: try again later
    Transition(S.SENT, S.DELIVERED, "provider"),  # status callbacks
    Transition(S.SENT, S.UNDELIVERED, "provider"),
    Transition(S.SENT, S.FAILED, "provider"),
    Transition(S.FAILED, S.QUEUED, "person", forward=False),  # a dead letter sent again
    Transition(S.UNDELIVERED, S.QUEUED, "person", forward=False),
)
"""Every move a delivery can make. ``skipped`` has none: it is final from the start."""
del S


def _ranks() -> dict[DeliveryStatus, int]:
    """How far along each status is: the longest forward path from ``queued``."""
    rank = {status: 0 for status in DeliveryStatus}
    for _ in DeliveryStatus:  # relax until stable (the forward graph has no cycle)
        for t in TRANSITIONS:
            if t.forward:
                rank[t.target] = max(rank[t.target], rank[t.source] + 1)
    return rank


STATUS_RANK: dict[DeliveryStatus, int] = _ranks()
"""queued 0, sending 1, sent 2, delivered/undelivered/failed 3 (skipped: 0, it never moves)."""

FINAL_STATUSES: tuple[DeliveryStatus, ...] = tuple(
    s for s in DeliveryStatus if not any(t.source == s and t.by != "person" for t in TRANSITIONS)
)
"""Statuses nothing moves on by itself: delivered, undelivered, failed, skipped."""

RETRYABLE_STATUSES: tuple[DeliveryStatus, ...] = tuple(
    s for s in DeliveryStatus if any(t.source == s and t.by == "person" for t in TRANSITIONS)
)
"""Statuses a person may send again (the dead letters): failed, undelivered."""

IN_FLIGHT_STATUSES: tuple[DeliveryStatus, ...] = tuple(
    s for s in DeliveryStatus if any(t.source == s and t.by == "worker" for t in TRANSITIONS)
)
"""Statuses careloop's workers still owe work on: queued, sending."""

DONE_STATUSES: tuple[DeliveryStatus, ...] = (DeliveryStatus.SENT, DeliveryStatus.DELIVERED)
"""Statuses that mean the message left careloop and reached its provider."""


class Reachable(Protocol):
    """A member as a channel sees them: their contact details (and whether they opted out of
    texts, which a member view may leave out: not opted out)."""

    phone: str | None
    email: str | None


SKIP_NO_PHONE = "member has no phone number"
"""Why SMS skips a member."""

SKIP_NO_EMAIL = "member has no email address"
"""Why email and calendar invites skip a member."""

SKIP_OPTED_OUT = "opted_out"
"""Why SMS skips a member who texted STOP (or another opt-out keyword) until they text START."""

WEBHOOK_CHANNEL = "webhook"
"""The channel of a webhook message: a delivery row addressed to a clinic's endpoint (its id in
``member_id``) instead of a member, claimed, sent and retried by the same machinery."""

SKIP_PREFERENCE_OFF = "preference_off"
"""How the reason starts when a member turned a channel off for an event's category
(``preference_off: sms is off for concern events``): that channel is never used for it."""


def preference_off_reason(channel: str, category: str) -> str:
    """The ``skipped`` reason of a channel the member turned off for a category."""
    return f"{SKIP_PREFERENCE_OFF}: the member turned {channel} off for {category} events"


class Hold(StrEnum):
    """Why a queued delivery waits beyond its due time's usual "now" (``held_for`` in the API)."""

    QUIET_HOURS = "quiet_hours"
    """It fell in the member's quiet hours: due when they end, in the member's zone."""
    DIGEST = "digest"
    """It goes out in the member's daily digest (one message for the day's events)."""


class DigestStatus(StrEnum):
    """Where one digest (one member, one channel, one local day) stands."""

    PENDING = "pending"
    """Collecting events; goes out at ``due_at``."""
    SENDING = "sending"
    """A worker has claimed it and is talking to the provider."""
    SENT = "sent"
    """The provider accepted the one message; its deliveries are ``sent``."""
    FAILED = "failed"
    """careloop gave up (see ``error``); its deliveries are ``failed`` too, each retryable alone."""
    EMPTY = "empty"
    """Nothing was left in it when it fell due: no message was sent."""


# --- reminders (issue 12) ---
class ReminderStatus(StrEnum):
    """Where one reminder (one occurrence of a check-in, one attendee, one offset, one channel) stands."""

    PENDING = "pending"
    """Waiting for its time (``due_at``)."""
    SENDING = "sending"
    """A worker has claimed it and is talking to the provider."""
    SENT = "sent"
    """The provider accepted it."""
    FAILED = "failed"
    """careloop gave up (see ``error``)."""
    CANCELLED = "cancelled"
    """Dropped before it went (``error`` says why: moved, cancelled, attendee removed, too late)."""


class ChannelKind(StrEnum):
    """How careloop tells a member. Each says which contact detail it needs."""

    SMS = "sms"
    EMAIL = "email"
    CALENDAR = "calendar"

    @property
    def contact_field(self) -> Literal["phone", "email"]:
        return "phone" if self is ChannelKind.SMS else "email"

    def address(self, member: Reachable) -> str | None:
        """The member's phone number or email address for this channel (None when missing)."""
        return getattr(member, self.contact_field) or None

    def unreachable_reason(self, member: Reachable) -> str | None:
        """Why this channel cannot reach ``member`` (the ``skipped`` reason), or None."""
        if not self.address(member):
            return SKIP_NO_PHONE if self is ChannelKind.SMS else SKIP_NO_EMAIL
        if self is ChannelKind.SMS and getattr(member, "sms_opted_out", False):
            return SKIP_OPTED_OUT
        return None


class Role(StrEnum):
    """A member's place on the care team."""

    PARENT = "parent"
    GUARDIAN = "guardian"
    CHILD = "child"
    NEUROLOGY = "neurology"
    DEVELOPMENTAL_PEDIATRICS = "developmental_pediatrics"
    PHYSICAL_THERAPY = "physical_therapy"
    OCCUPATIONAL_THERAPY = "occupational_therapy"
    SPEECH_THERAPY = "speech_therapy"
    SCHOOL = "school"
    OTHER = "other"


ROLES: tuple[str, ...] = tuple(Role)
"""Care-team roles a member can have, in their documented order."""

THERAPY_ROLES: tuple[Role, ...] = (Role.PHYSICAL_THERAPY, Role.OCCUPATIONAL_THERAPY, Role.SPEECH_THERAPY)
"""The therapy disciplines (also the values of ``therapy.logged``'s ``discipline``)."""


class InboundStatus(StrEnum):
    """What became of one request posted to a source's webhook URL."""

    ACCEPTED = "accepted"
    """Verified and turned into events."""
    REJECTED = "rejected"
    """Refused: a signature that does not verify, or a verified body careloop cannot map (the
    reason says which; a verified body is kept so it can be run again after a fix)."""
    DUPLICATE = "duplicate"
    """Verified, with a webhook-id seen before: answered with the first result, nothing made."""
