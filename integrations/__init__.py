"""One module per outside system; ``build_channels`` picks each channel's implementation.

A channel whose provider is configured talks to it; one that is not writes to the local
outbox folder and the console (the embedded default), so nothing is sent by accident.
"""

from __future__ import annotations

from careloop.config.settings import Settings
from careloop.integrations.base import Channel
from careloop.integrations.email_smtp import CalendarEmail, SmtpEmail
from careloop.integrations.file_outbox import FileOutbox
from careloop.integrations.sms_twilio import TwilioSMS
from careloop.vocabulary import ChannelKind


def build_channels(settings: Settings) -> dict[ChannelKind, Channel]:
    """One channel per :class:`ChannelKind`: the provider's when configured, else the outbox."""
    outbox = {kind: FileOutbox.from_settings(kind, settings) for kind in ChannelKind}
    channels: dict[ChannelKind, Channel] = dict(outbox)
    if settings.twilio_configured:
        channels[ChannelKind.SMS] = TwilioSMS.from_settings(settings)
    if settings.smtp_configured:
        channels[ChannelKind.EMAIL] = SmtpEmail.from_settings(settings)
        channels[ChannelKind.CALENDAR] = CalendarEmail.from_settings(settings)
    return channels
