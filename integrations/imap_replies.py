"""The organizer's mailbox, read over IMAP for RSVP replies (iMIP emails with an iTIP REPLY).

Invites name an ORGANIZER address (``CARELOOP_ORGANIZER_EMAIL``); mail clients send each
attendee's answer there. ``CARELOOP_IMAP_URL`` (``imap://user:password@host:port/INBOX``, or
``imaps://`` for TLS) says how careloop reads that mailbox. Each poll looks at the messages
not yet ``\\Seen``, without marking them by reading (``BODY.PEEK``), and hands the replies in
each to the caller:

- taken (recorded, or an old answer ignored): the message is marked ``\\Seen``, so it is read
  once;
- not a reply careloop can take (no calendar part, not a REPLY, an unknown UID or attendee):
  marked ``\\Seen`` and ``\\Flagged`` for a person to look at, and logged by its IMAP UID and
  the reason only — never its sender, subject or content;
- anything else (the database is down, say): the message is left as it was and read again at
  the next poll; the poll stops there.

Every network call has a timeout (``CARELOOP_PROVIDER_TIMEOUT``). No Flask, no RQ: the worker's
periodic job (``careloop.workers.mailbox``) runs it.
"""

from __future__ import annotations

import imaplib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from careloop.integrations.mime import replies_in_email
from careloop.rsvp import Reply, ReplyError

log = logging.getLogger("careloop.integrations.imap_replies")

BATCH = 100
"""Most messages one poll reads (the rest wait for the next)."""

DEFAULT_MAILBOX = "INBOX"
"""The mailbox read when the URL names none."""


class MailboxError(Exception):
    """The mailbox could not be read (connection, login, or the server refused a command)."""


@dataclass(frozen=True)
class MailboxAddress:
    """Where the replies are: parsed from ``CARELOOP_IMAP_URL``."""

    host: str
    port: int
    username: str
    password: str
    mailbox: str
    tls: bool

    @classmethod
    def from_url(cls, url: str) -> MailboxAddress:
        """Raises ValueError (never echoing the URL: it holds a password)."""
        parts = urlsplit(url)
        if parts.scheme not in ("imap", "imaps") or not parts.hostname or not parts.username:
            raise ValueError("CARELOOP_IMAP_URL must be imap[s]://user:password@host[:port]/MAILBOX")
        tls = parts.scheme == "imaps"
        return cls(
            host=parts.hostname,
            port=parts.port or (993 if tls else 143),
            username=unquote(parts.username),
            password=unquote(parts.password or ""),
            mailbox=unquote(parts.path.lstrip("/")) or DEFAULT_MAILBOX,
            tls=tls,
        )

    def __repr__(self) -> str:  # the password never shows
        scheme = "imaps" if self.tls else "imap"
        return f"MailboxAddress({scheme}://{self.username}@{self.host}:{self.port}/{self.mailbox})"


@dataclass
class PollResult:
    """What one poll did: messages taken, flagged as unreadable, left for the next poll."""

    taken: int = 0
    flagged: int = 0
    left: int = 0


def poll(address: MailboxAddress, take: Callable[[list[Reply]], object], timeout: float) -> PollResult:
    """Read the unseen messages of the mailbox and hand each one's replies to ``take``.

    ``take`` raises :class:`ReplyError` for replies it cannot take (the message is flagged);
    any other exception stops the poll with the message left unseen, and is raised.

    Raises:
        MailboxError: when the server cannot be reached, refuses the login or a command.
    """
    result = PollResult()
    client = _connect(address, timeout)
    try:
        _ok(client.login(address.username, address.password), "login")
        _ok(client.select(_quoted(address.mailbox)), "select")
        found = _ok(client.uid("SEARCH", None, "UNSEEN"), "search")
        uids = [u for u in b" ".join(x for x in found if x).split() if u]
        result.left = max(len(uids) - BATCH, 0)
        for uid in uids[:BATCH]:
            raw = _message(client, uid)
            if raw is None:  # gone meanwhile (another poll moved it, or a person)
                continue
            try:
                replies = replies_in_email(raw)
                take(replies)
            except ReplyError as refused:
                log.warning(
                    "mailbox message %s is not a reply careloop takes (%s); flagged",
                    uid.decode(),
                    refused.field,
                )
                _ok(client.uid("STORE", uid, "+FLAGS", r"(\Seen \Flagged)"), "store")
                result.flagged += 1
                continue
            _ok(client.uid("STORE", uid, "+FLAGS", r"(\Seen)"), "store")
            result.taken += 1
    except (imaplib.IMAP4.error, OSError) as exc:
        raise MailboxError(f"the mailbox could not be read ({type(exc).__name__})") from None
    finally:
        try:
            client.logout()
        except (imaplib.IMAP4.error, OSError):
            pass
    return result


def _connect(address: MailboxAddress, timeout: float) -> imaplib.IMAP4:
    try:
        if address.tls:
            return imaplib.IMAP4_SSL(
                address.host, address.port, ssl_context=ssl.create_default_context(), timeout=timeout
            )
        return imaplib.IMAP4(address.host, address.port, timeout=timeout)
    except (imaplib.IMAP4.error, OSError) as exc:
        raise MailboxError(f"the mailbox server could not be reached ({type(exc).__name__})") from None


def _message(client: imaplib.IMAP4, uid: bytes) -> bytes | None:
    data = _ok(client.uid("FETCH", uid, "(BODY.PEEK[])"), "fetch")
    for item in data:
        if isinstance(item, tuple) and len(item) == 2:
            return item[1]
    return None


def _ok(answer: tuple[str, list], command: str) -> list:
    status, data = answer
    if status != "OK":
        raise MailboxError(f"the mailbox server refused {command}")
    return data


def _quoted(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
