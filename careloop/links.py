"""Member links: ``{CARELOOP_PUBLIC_URL}/m/{token}``, one per delivery, so per member and event.

A token is opaque and signed (``itsdangerous``, HMAC-SHA256 cut to 128 bits) over three
things packed in 18 bytes: the delivery it came with (which names the member and the
event), the member's link generation when it was made, and when it was issued. It is 47
characters, short enough to leave room in one 160-character text.

- **Expiry**: a token older than the link lifetime (``CARELOOP_LINK_TTL_DAYS``) is refused
  by its own signed issue time, before the database is asked anything.
- **Revocation**: bumping a member's ``link_generation`` (an API call, or deactivating the
  member) refuses every token made before; nothing else needs to be stored.
- **Same text on every attempt**: the issue time is the delivery's ``link_issued_at`` (set
  when it is planned and again when a person retries it), never "now", so every attempt of
  one round renders the same text and a lost Twilio answer can still be matched by body.

The signing key is ``CARELOOP_SECRET_KEY`` when set; otherwise one is made once and kept in
the database (:func:`stored_secret`), so the web and worker processes (and a later run of
the demo's app) share it with nothing to configure. Tokens never go into logs:
:func:`redact` is applied to request lines and console echoes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from itsdangerous import BadData, Signer
from itsdangerous.signer import HMACAlgorithm
from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from careloop.models import InstanceSecret, Member, utcnow

LINK_PATH = "/m/"
"""Where member links live under ``CARELOOP_PUBLIC_URL``."""

DEFAULT_TTL_DAYS = 30
"""How long a member link works unless ``CARELOOP_LINK_TTL_DAYS`` says otherwise."""

SECRET_NAME = "member-links"
"""The name of the stored signing key (used when CARELOOP_SECRET_KEY is not set)."""

SALT = b"careloop.member-link.v1"
"""Keeps these signatures apart from anything else signed with the same key."""

_PAYLOAD = struct.Struct(">10sII")
"""Delivery id (its 10 random bytes), link generation, issue time (Unix seconds)."""

_DELIVERY_ID = re.compile(r"dlv_([0-9a-f]{20})")
_TOKEN_IN_TEXT = re.compile(r"(/m/)[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")


class _HMAC128(HMACAlgorithm):
    """HMAC-SHA256 cut to 128 bits: as strong against guessing, 21 characters shorter."""

    def get_signature(self, key: bytes, value: bytes) -> bytes:
        return super().get_signature(key, value)[:16]


class LinkRefused(Exception):
    """A token that opens nothing; ``reason`` is for the audit log, never for the page."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class LinkClaim:
    """What a valid token says: the delivery, the generation and the issue time."""

    delivery_id: str
    generation: int
    issued_at: datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class MemberLinks:
    """Makes and reads member-link tokens.

    Args:
        secret: the signing key (``CARELOOP_SECRET_KEY`` or the stored one).
        ttl: how long a link works after it was issued.
    """

    def __init__(self, secret: str | bytes, ttl: timedelta = timedelta(days=DEFAULT_TTL_DAYS)):
        if not secret:
            raise ValueError("a member-link signing key is required")
        if ttl <= timedelta(0):
            raise ValueError("the member-link lifetime must be positive")
        self.ttl = ttl
        self._signer = Signer(
            secret, salt=SALT, key_derivation="hmac", digest_method=hashlib.sha256,
            algorithm=_HMAC128(hashlib.sha256),
        )  # fmt: skip

    def token(self, delivery_id: str, generation: int, issued_at: datetime) -> str:
        """The token for one delivery's link (the same arguments give the same token)."""
        match = _DELIVERY_ID.fullmatch(delivery_id)
        if match is None:
            raise ValueError(f"not a delivery id: {delivery_id!r}")
        seconds = int(issued_at.timestamp())
        payload = _PAYLOAD.pack(bytes.fromhex(match.group(1)), generation, seconds)
        return self._signer.sign(_b64(payload)).decode("ascii")

    def read(self, token: str, now: datetime | None = None) -> LinkClaim:
        """What an intact, unexpired token says.

        Raises:
            LinkRefused: tampered, truncated, garbage or signed with another key ("not a
                valid link"), or older than the lifetime ("expired").
        """
        try:
            value = self._signer.unsign(token.encode("ascii"))
            delivery, generation, seconds = _PAYLOAD.unpack(_unb64(value.decode("ascii")))
        except (BadData, UnicodeError, ValueError, binascii.Error, struct.error) as exc:
            raise LinkRefused("not a valid link") from exc
        issued_at = datetime.fromtimestamp(seconds, UTC)
        if (now or utcnow()) >= issued_at + self.ttl:
            raise LinkRefused("expired")
        return LinkClaim(delivery_id=f"dlv_{delivery.hex()}", generation=generation, issued_at=issued_at)

    def expires_at(self, issued_at: datetime) -> datetime:
        """When a link issued at ``issued_at`` stops working (whole seconds, as signed)."""
        return datetime.fromtimestamp(int(issued_at.timestamp()), UTC) + self.ttl


def link_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}{LINK_PATH}{token}"


def redact(text: str) -> str:
    """``text`` with every member-link token replaced (for log lines and console echoes)."""
    return _TOKEN_IN_TEXT.sub(r"\1[token]", text)


def stored_secret(session: Session) -> str:
    """The member-link signing key kept in the database, made on first use.

    Concurrent first uses (a web and a worker process starting together) agree: the insert
    ignores a conflict and everyone reads back the one row that won.
    """
    found = session.scalar(select(InstanceSecret.value).where(InstanceSecret.name == SECRET_NAME))
    if found:
        return found
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(
        insert(InstanceSecret)
        .values(name=SECRET_NAME, value=secrets.token_urlsafe(32), created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["name"])
    )
    session.commit()
    return session.scalar(select(InstanceSecret.value).where(InstanceSecret.name == SECRET_NAME))


def revoke(session: Session, member_id: str) -> None:
    """Make every link this member was sent so far stop working (not committed here).

    Raises the member's link generation in SQL, so two revocations at once both count.
    Deliveries still to be sent are rendered with the new generation: their links work.
    """
    session.execute(
        update(Member)
        .where(Member.id == member_id)
        .values(link_generation=Member.link_generation + 1)
        .execution_options(synchronize_session=False)
    )
