"""Email over SMTP: one message per recipient, sent through the operator's relay.

Two channels share the one transport: :class:`SmtpEmail` (notices) and
:class:`CalendarEmail` (iMIP invites). Every email leaves through
:meth:`SmtpEmail.deliver_mime`, so connecting, STARTTLS, login and the mapping of SMTP
errors to :class:`DeliveryError` live in one place; the MIME itself is built by
:mod:`careloop.integrations.mime`.

SMTP cannot be asked later whether a message arrived, so :meth:`Channel.lookup` keeps the
base behaviour (``OutcomeUnknown``). The Message-ID is stable per (delivery, attempt), which
lets a recipient's mail system and an operator spot duplicates.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
import threading
import time
from email.message import EmailMessage

from careloop.integrations.base import DEFAULT_TIMEOUT, Channel, DeliveryError, NotConfigured
from careloop.integrations.mime import build_email, build_invite_email, parse_mail_from
from careloop.messages import OutgoingMessage, ProviderReceipt
from careloop.vocabulary import ChannelKind, DeliveryStatus

log = logging.getLogger("careloop.integrations.email")

SMTPS_PORT = 465
"""The port where SMTP speaks TLS from the first byte (RFC 8314); STARTTLS is not used there."""

MAX_REASON_LENGTH = 200
"""Longest server text kept in a DeliveryError reason."""

REUSE_IDLE = 20.0
"""Seconds an open connection may sit idle and still carry the next message (servers close
idle sessions after a few minutes; well inside that, reusing one saves the connect, TLS and
login of every message)."""

REUSE_MESSAGES = 100
"""Messages sent over one connection before it is closed and a new one opened."""

class SmtpEmail(Channel):
    """Sends email through an SMTP relay (``SMTP_HOST``, ``SMTP_PORT`` and friends).

    ``starttls=True`` (``SMTP_STARTTLS``) means TLS is required: a server that does not
    offer STARTTLS is a permanent error rather than a silent fallback to plain text. Port 465
    uses implicit TLS instead.
    """

    kind = ChannelKind.EMAIL

    def __init__(
        self,
        host: str,
        port: int = 587,
        *,
        username: str | None = None,
        password: object | None = None,
        starttls: bool = True,
        mail_from: str,
        timeout: float = DEFAULT_TIMEOUT,
    ):
        if not host:
            raise NotConfigured("SMTP_HOST is not set")
        if not 0 < int(port) < 65536:
            raise NotConfigured(f"SMTP_PORT must be 1-65535, not {port!r}")
        if timeout is None or timeout <= 0:
            raise NotConfigured("CARELOOP_PROVIDER_TIMEOUT must be a positive number of seconds")
        secret = password.get_secret_value() if hasattr(password, "get_secret_value") else password
        if username and not secret:
            raise NotConfigured("SMTP_PASSWORD is required when SMTP_USERNAME is set")
        self.host = host
        self.port = int(port)
        self.username = username or None
        self._password = secret or None
        self.starttls = bool(starttls)
        self.sender = parse_mail_from(mail_from)
        self.timeout = float(timeout)
        self._tls: ssl.SSLContext | None = None  # built on first use: loading CAs takes ~30 ms
        self._local = threading.local()  # this thread's open connection, if any

    @classmethod
    def from_settings(cls, settings) -> SmtpEmail:
        """Build from :class:`config.settings.Settings`; raises NotConfigured naming the setting."""
        return cls(
            settings.smtp_host,
            settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password,
            starttls=settings.smtp_starttls,
            mail_from=settings.mail_from,
            timeout=settings.provider_timeout,
        )

    def __repr__(self) -> str:
        return (
            f"SmtpEmail(host={self.host!r}, port={self.port}, username={self.username!r}, "
            f"password={'***' if self._password else None}, starttls={self.starttls}, "
            f"mail_from={str(self.sender)!r})"
        )

    def build_email(self, message: OutgoingMessage) -> EmailMessage:
        """The email :meth:`send` would send for ``message`` (see :func:`build_email`)."""
        return build_email(message, self.sender)

    def send(self, message: OutgoingMessage) -> ProviderReceipt:
        msg = self.build_email(message)
        self.deliver_mime(msg, message.to)
        return ProviderReceipt(provider_id=msg["Message-ID"], status=DeliveryStatus.SENT)

    def deliver_mime(self, msg: EmailMessage, to_addr: str) -> None:
        """Hand one built email to the SMTP server for ``to_addr`` (envelope sender MAIL_FROM).

        Returns when the server accepted the message (250 after DATA). The connection stays
        open for the next message (up to :data:`REUSE_MESSAGES`, idle at most
        :data:`REUSE_IDLE` seconds); one the server closed meanwhile is replaced before
        anything of this message was sent.

        Raises:
            DeliveryError: permanent for 5xx replies and configuration mismatches,
                transient for 4xx replies, timeouts, refused or dropped connections.
        """
        smtp, reused = self._connection()
        try:
            try:
                self._transmit(smtp, msg, to_addr)
            except (smtplib.SMTPServerDisconnected, ConnectionError) as exc:
                if not reused or smtp.careloop_end_of_data.done:
                    raise
                # an idle connection the server had closed: nothing of this message left us
                log.debug("SMTP connection closed while idle (%r); opening a new one", exc)
                self._discard(smtp)
                smtp, _ = self._connection()
                self._transmit(smtp, msg, to_addr)
        except Exception as exc:
            written = smtp.careloop_end_of_data.done
            self._discard(smtp)
            error = self._delivery_error(exc)
            if written and not isinstance(exc, smtplib.SMTPResponseException):
                # The whole message and its end marker were written and no reply came: the
                # server may have accepted it. Anything earlier (connect, MAIL, RCPT, a DATA
                # command never answered) sent nothing: an ordinary retry.
                error.maybe_sent = True
                error.reason = f"{error.reason} (after the message was sent: outcome unknown)"
            raise error from exc
        log.info("SMTP accepted %s", msg["Message-ID"])

    def _transmit(self, smtp: smtplib.SMTP, msg: EmailMessage, to_addr: str) -> None:
        smtp.careloop_end_of_data.done = False
        smtp.send_message(msg, from_addr=self.sender.addr_spec, to_addrs=[to_addr])
        self._local.used = time.monotonic()
        self._local.sent += 1

    def _connection(self) -> tuple[smtplib.SMTP, bool]:
        """This thread's open connection if it can carry another message, else a new one."""
        smtp = getattr(self._local, "smtp", None)
        if smtp is not None:
            fresh = time.monotonic() - self._local.used < REUSE_IDLE
            if fresh and self._local.sent < REUSE_MESSAGES:
                return smtp, True
            self._close(smtp)
        try:
            smtp = self._connect()
        except Exception as exc:
            raise self._delivery_error(exc) from exc
        _EndOfData().watch(smtp)
        self._local.smtp, self._local.used, self._local.sent = smtp, time.monotonic(), 0
        return smtp, False

    def _discard(self, smtp: smtplib.SMTP) -> None:
        smtp.close()
        if getattr(self._local, "smtp", None) is smtp:
            self._local.smtp = None

    def _close(self, smtp: smtplib.SMTP) -> None:
        """End a connection politely; a failing QUIT never matters (its messages are accepted)."""
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError) as exc:
            log.debug("SMTP QUIT failed: %r", exc)
        finally:
            self._discard(smtp)

    def close(self) -> None:
        """Close this thread's open connection, if any."""
        smtp = getattr(self._local, "smtp", None)
        if smtp is not None:
            self._close(smtp)

    def _connect(self) -> smtplib.SMTP:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        context = self._tls
        if self.port == SMTPS_PORT:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            smtp.ehlo()
            if self.starttls and self.port != SMTPS_PORT:
                if not smtp.has_extn("starttls"):
                    raise _ConfigMismatch(
                        "SMTP server does not offer STARTTLS (SMTP_STARTTLS=true requires it)"
                    )
                smtp.starttls(context=context)
                smtp.ehlo()
            if self.username:
                if not smtp.has_extn("auth"):
                    raise _ConfigMismatch("SMTP server offers no AUTH but SMTP_USERNAME is set")
                smtp.login(self.username, self._password or "")
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _delivery_error(self, exc: BaseException) -> DeliveryError:
        """Map one exception from smtplib or the socket to a DeliveryError."""
        if isinstance(exc, DeliveryError):
            return exc
        if isinstance(exc, _ConfigMismatch):
            return DeliveryError(str(exc), permanent=True)
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            replies = list(exc.recipients.values()) or [(-1, b"recipient refused")]
            permanent = any(500 <= code < 600 for code, _ in replies)
            code, text = next(((c, t) for c, t in replies if 500 <= c < 600), replies[0])
            return DeliveryError(_reply_reason(code, text), permanent=permanent)
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            reason = _reply_reason(exc.smtp_code, exc.smtp_error) + " (check SMTP_USERNAME/SMTP_PASSWORD)"
            return DeliveryError(reason, permanent=500 <= exc.smtp_code < 600)
        if isinstance(exc, smtplib.SMTPResponseException):
            return DeliveryError(
                _reply_reason(exc.smtp_code, exc.smtp_error), permanent=500 <= exc.smtp_code < 600
            )
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            return DeliveryError(f"SMTP server does not support: {exc}", permanent=True)
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            return DeliveryError(f"SMTP connection closed: {_clip(str(exc))}")
        if isinstance(exc, TimeoutError):
            return DeliveryError(f"SMTP timeout after {self.timeout:g}s talking to {self.host}:{self.port}")
        if isinstance(exc, ConnectionRefusedError):
            return DeliveryError(f"SMTP connection refused by {self.host}:{self.port}")
        if isinstance(exc, (smtplib.SMTPException, OSError)):
            return DeliveryError(f"SMTP error: {type(exc).__name__}: {_clip(str(exc))}")
        raise exc  # a bug, not a delivery outcome


class _EndOfData:
    """Watches an SMTP session for the moment a message's end marker (``CRLF.CRLF``) has been
    written: only after it can the server hold a message whose reply never came. Installed
    once per connection (``smtp.careloop_end_of_data``); ``done`` is reset per message."""

    def __init__(self) -> None:
        self.done = False
        self._in_data = False

    def watch(self, smtp: smtplib.SMTP) -> None:
        smtp.careloop_end_of_data = self
        send, data = smtp.send, smtp.data

        def watched_send(payload):
            send(payload)
            if self._in_data and isinstance(payload, bytes) and payload.endswith(b"\r\n.\r\n"):
                self.done = True

        def watched_data(content):
            self._in_data = True
            try:
                return data(content)
            finally:
                self._in_data = False

        smtp.send, smtp.data = watched_send, watched_data


class _ConfigMismatch(Exception):
    """The server lacks something careloop's SMTP settings require."""


def _reply_reason(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return _clip(f"SMTP {code} {' '.join(str(text).split())}")


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REASON_LENGTH else text[: MAX_REASON_LENGTH - 1] + "…"


class CalendarEmail(SmtpEmail):
    """Sends check-in invites, updates and cancellations to attendees by email (iMIP).

    The same SMTP relay and settings as :class:`SmtpEmail`; only the message differs.
    """

    kind = ChannelKind.CALENDAR

    def build_email(self, message: OutgoingMessage) -> EmailMessage:
        return build_invite_email(message, self.sender)
