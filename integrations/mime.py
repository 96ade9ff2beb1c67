"""Emails as careloop sends them: plain notices and iMIP calendar invites, as MIME; and the
iMIP replies careloop reads back (:func:`replies_in_email`).

The SMTP channels and the file outbox build every email here, so an outbox ``.eml`` is the
exact message SMTP would have carried. Building never touches the network.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from email import message_from_bytes
from email import policy as email_policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

from careloop.contacts import UNMAILABLE, deliverable_email
from careloop.integrations.base import DeliveryError, NotConfigured
from careloop.integrations.calendar_invite import build_invite, read_reply
from careloop.messages import OutgoingMessage
from careloop.rsvp import Reply, ReplyError

log = logging.getLogger("careloop.integrations.mime")

CALENDAR_TYPES = ("text/calendar", "application/ics")
"""Content types of a calendar part in an email (iMIP's, and an attached ``.ics``)."""

ICS_FILENAME = "invite.ics"
"""Name of the attached copy of an invite."""

RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "cc",
        "bcc",
        "sender",
    }
)
"""Headers built from the message itself; ``OutgoingMessage.headers`` cannot replace them."""

_ADDR_SPEC = re.compile(r"^[^@\s<>\"(),;:\\\[\]]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
"""local@domain with no spaces or specials: a cheap sanity check, not full RFC 5321."""


def parse_mail_from(value: str) -> Address:
    """Parse MAIL_FROM (``addr@domain`` or ``Name <addr@domain>``).

    Raises:
        NotConfigured: when it is not an email address.
    """
    name, addr = parseaddr(value or "")
    if not addr or not _ADDR_SPEC.match(addr) or "\n" in value or "\r" in value:
        raise NotConfigured(f"MAIL_FROM is not an email address: {value!r}")
    local, _, domain = addr.rpartition("@")
    return Address(display_name=_one_line(name), username=local, domain=domain)


def valid_address(addr: str) -> bool:
    """Whether ``addr`` is an address careloop can mail: the API's rule (no DNS lookup)."""
    return deliverable_email(addr)


def message_id(message: OutgoingMessage, sender: Address) -> str:
    """``<delivery_id.attempt@domain-of-MAIL_FROM>``: the same for a repeated build of one attempt."""
    return f"<{message.delivery_id}.{message.attempt}@{sender.domain}>"


def build_email(message: OutgoingMessage, sender: Address) -> EmailMessage:
    """Render ``message`` as a MIME email from ``sender``: text, and HTML when given.

    Raises:
        DeliveryError: (permanent) when the recipient address is not an address.
    """
    if not valid_address(message.to):
        raise DeliveryError(UNMAILABLE, permanent=True)
    local, _, domain = message.to.rpartition("@")
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = Address(display_name=_one_line(message.to_name), username=local, domain=domain)
    msg["Subject"] = _one_line(message.subject)
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = message_id(message, sender)
    for name, value in message.headers.items():
        if name.lower() in RESERVED_HEADERS:
            log.warning("ignoring header %s on delivery %s: careloop sets it", name, message.delivery_id)
            continue
        msg[name] = _one_line(value)
    msg.set_content(message.text)
    if message.html:
        msg.add_alternative(message.html, subtype="html")
    return msg


def build_invite_email(message: OutgoingMessage, sender: Address) -> EmailMessage:
    """The email for a calendar message: :func:`build_email` plus the iMIP parts.

    The invite travels the way Google Calendar sends its own: a ``multipart/alternative``
    with the text, the HTML and a ``text/calendar; method=...`` part (the one Gmail, Outlook
    and Apple Mail act on), wrapped in ``multipart/mixed`` with the same object as an
    ``invite.ics`` attachment for clients that only offer attachments.

    Raises:
        DeliveryError: (permanent) when the message has no invite or a bad time zone.
    """
    invite = message.invite
    if invite is None:
        raise DeliveryError("calendar message without an invite", permanent=True)
    try:
        ics = build_invite(invite)
    except ValueError as exc:
        raise DeliveryError(str(exc), permanent=True) from exc
    msg = build_email(message, sender)
    # base64 keeps the iCalendar bytes (CRLF, folded lines, UTF-8 names) exactly as written.
    msg.add_alternative(
        ics,
        maintype="text",
        subtype="calendar",
        cte="base64",
        params={"method": invite.method, "charset": "UTF-8"},
    )
    msg.add_attachment(
        ics, maintype="application", subtype="ics", filename=ICS_FILENAME, params={"name": ICS_FILENAME}
    )
    return msg


def _one_line(value: str | None) -> str:
    """Header values must not break lines (header injection); collapse whitespace."""
    return " ".join((value or "").split())


def replies_in_email(raw: bytes) -> list[Reply]:
    """The answers in an iMIP reply (RFC 6047): the email's first ``text/calendar`` part (an
    attached ``.ics`` otherwise), read as an iTIP REPLY.

    Raises:
        ReplyError: when the email has no calendar part, or it is not a REPLY careloop reads.
    """
    message = message_from_bytes(raw, policy=email_policy.default)
    parts = [p for p in message.walk() if p.get_content_type() in CALENDAR_TYPES]
    parts.sort(key=lambda p: CALENDAR_TYPES.index(p.get_content_type()))
    if not parts:
        raise ReplyError("body", "the email has no text/calendar part")
    data = parts[0].get_payload(decode=True)
    if not data:
        raise ReplyError("body", "the email's text/calendar part is empty")
    return read_reply(data)
