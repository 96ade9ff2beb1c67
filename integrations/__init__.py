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


def build_channels(settings: Settings) -> dict[str, Channel]:
    """kind → channel for ``sms``, ``email`` and ``calendar``."""
    channels: dict[str, Channel] = {}
    channels["sms"] = (
        TwilioSMS.from_settings(settings)
        if settings.twilio_configured
        else FileOutbox.from_settings("sms", settings)
    )
    if settings.smtp_configured:
        channels["email"] = SmtpEmail.from_settings(settings)
        channels["calendar"] = CalendarEmail.from_settings(settings)
    else:
        channels["email"] = FileOutbox.from_settings("email", settings)
        channels["calendar"] = FileOutbox.from_settings("calendar", settings)
    return channels
