"""The contract every outside channel keeps.

A channel has one job: ``send(message) -> ProviderReceipt``. It returns a receipt when the
provider accepted the message and raises :class:`DeliveryError` otherwise, saying whether
trying again could help (``permanent=False``) and, when the provider said so, after how long
(``retry_after``). Channels never retry by themselves: careloop's workers own the one retry
layer, so attempts are counted in one place (the delivery row).

No Flask or RQ imports in ``integrations/``. The message a channel carries
(:class:`~careloop.messages.OutgoingMessage`) is the core's; integrations depend on the core,
never the other way round.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from careloop.messages import OutgoingMessage, ProviderReceipt
from careloop.vocabulary import ChannelKind, Reachable

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


class Channel:
    """Base class of every channel. Subclasses set ``kind`` and implement ``send``."""

    kind: ChannelKind

    def unreachable_reason(self, member: Reachable) -> str | None:
        """Why this channel cannot reach ``member`` (no phone for SMS, no email for mail), or
        None when it can. Checked before any provider call."""
        return self.kind.unreachable_reason(member)

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


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds (it may be a number or an HTTP date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)
