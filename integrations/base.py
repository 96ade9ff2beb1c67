"""The contract every outside channel keeps.

A channel has one job: ``send(message) -> ProviderReceipt``. It returns a receipt when the
provider accepted the message and raises :class:`DeliveryError` otherwise, saying whether
trying again could help (``permanent=False``) and, when the provider said so, after how long
(``retry_after``). Channels never retry by themselves: careloop's workers own the one retry
layer, so attempts are counted in one place (the delivery row).

No Flask or RQ imports in ``integrations/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

DEFAULT_TIMEOUT = 10.0
"""Seconds any single network call to a provider may take (connect and read)."""


class DeliveryError(Exception):
    """A provider did not accept a message.

    Args:
        reason: human-readable reason, kept on the delivery row (no PHI in it).
        permanent: True when resending the same message cannot succeed (opted-out number,
            invalid address, SMTP 5xx); False for errors that can pass (429, 5xx, 4xx SMTP,
            timeouts, refused connections).
        retry_after: seconds the provider asked us to wait (``Retry-After``), if any.
        maybe_sent: True when the message may have reached the provider although no answer
            came (a read timeout or a dropped connection after the message was handed over).
            The worker then asks the provider (``Channel.lookup``) instead of resending blindly.
    """

    def __init__(
        self,
        reason: str,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
        maybe_sent: bool = False,
    ):
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.retry_after = retry_after
        self.maybe_sent = maybe_sent

    def __repr__(self) -> str:
        return (
            f"DeliveryError({self.reason!r}, permanent={self.permanent}, "
            f"retry_after={self.retry_after}, maybe_sent={self.maybe_sent})"
        )


class NotConfigured(DeliveryError):
    """The channel lacks a setting it needs; permanent until an operator fixes configuration."""

    def __init__(self, reason: str):
        super().__init__(reason, permanent=True)


@dataclass(frozen=True)
class Attendee:
    name: str
    email: str


@dataclass(frozen=True)
class CalendarInvite:
    """One check-in as an iTIP object.

    ``method`` is ``REQUEST`` (new or updated) or ``CANCEL``. ``uid`` is stable per check-in,
    ``sequence`` is raised by every update and the cancel. ``start``/``end`` are aware
    datetimes; ``tzid`` is the IANA zone they are shown in (a VTIMEZONE for it is embedded).
    """

    method: str
    uid: str
    sequence: int
    title: str
    start: datetime
    end: datetime
    tzid: str
    organizer: Attendee
    attendees: tuple[Attendee, ...]
    location: str | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        if self.method not in ("REQUEST", "CANCEL"):
            raise ValueError(f"method must be REQUEST or CANCEL, not {self.method!r}")
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("start and end must be timezone-aware")


@dataclass(frozen=True)
class OutgoingMessage:
    """One message for one recipient over one channel, fully rendered.

    Args:
        delivery_id: careloop's delivery id; used in status-callback URLs and Message-IDs.
        attempt: 1 for the first try, raised on each retry.
        channel: ``sms``, ``email`` or ``calendar``.
        to: E.164 phone number (sms) or email address (email, calendar).
        to_name: recipient's display name.
        subject: email subject (ignored by sms).
        text: plain text body; for sms the whole message (kept free of PHI by the templates).
        html: optional HTML alternative for email/calendar.
        invite: the iTIP payload for ``calendar``.
        created_at: when the delivery was planned (lets an SMS lookup bound its search).
    """

    delivery_id: str
    attempt: int
    channel: str
    to: str
    to_name: str
    subject: str
    text: str
    html: str | None = None
    invite: CalendarInvite | None = None
    created_at: datetime | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderReceipt:
    """What the provider told us when it accepted a message.

    ``provider_id`` is Twilio's message SID or the SMTP Message-ID. ``status`` is careloop's
    delivery status it maps to: ``sent`` (accepted; Twilio's own "queued" counts) or
    ``delivered`` (the provider already confirmed delivery).
    """

    provider_id: str
    status: str = "sent"


class Channel:
    """Base class of every channel. Subclasses set ``kind`` and implement ``send``."""

    kind: str = ""

    def send(self, message: OutgoingMessage) -> ProviderReceipt:  # pragma: no cover - interface
        raise NotImplementedError

    def lookup(self, message: OutgoingMessage) -> ProviderReceipt | None:
        """Find out whether an earlier attempt of this delivery reached the provider.

        Returns the receipt when the provider has the message, ``None`` when it has not.
        Raises :class:`OutcomeUnknown` when the provider offers no way to check (SMTP).
        """
        raise OutcomeUnknown(f"{self.kind} offers no way to check an earlier attempt")


class OutcomeUnknown(Exception):
    """The provider cannot tell whether an interrupted attempt went through."""
