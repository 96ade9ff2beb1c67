"""Sign-in links: "email me a sign-in link" for the timeline pages.

A link is ``{CARELOOP_PUBLIC_URL}/signin/link/{token}``; the token is a random nonce signed
with a timestamp (``itsdangerous``' TimestampSigner, over the instance secret, with a salt of
its own). It is

- **short-lived**: refused :data:`LINK_TTL` after it was made, by its own signed time and by
  its row's ``expires_at``;
- **single-use**: the database keeps the SHA-256 of its nonce (``signin_links``); using it is
  one conditional UPDATE that only one request can win;
- **bound to a member**, who must still be active and on the same link generation (revoking a
  member's links, or deactivating them, ends these too).

Only the nonce's hash is stored, so the table alone signs nobody in. Nothing here says whether
an address is known: the caller answers every request alike.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from itsdangerous import BadData, TimestampSigner
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from careloop.models import Member, SigninLink, utcnow
from careloop.vocabulary import Role

LINK_TTL = timedelta(minutes=15)
"""How long a sign-in link works after it was sent."""

LINK_PATH = "/signin/link/"
"""Where sign-in links live under ``CARELOOP_PUBLIC_URL``."""

MAX_OPEN_LINKS = 3
"""Unused, unexpired links one member may have at once; requests beyond it send nothing (so a
stranger cannot fill a parent's inbox)."""

SIGNIN_ROLES: tuple[Role, ...] = (Role.PARENT, Role.GUARDIAN)
"""Who may sign in by email: the family, who coordinate the child's care and may see the whole
notebook's timeline. Clinicians and schools use a key their clinic was given (or their member
pages)."""

SALT = b"careloop.signin-link.v1"
"""Keeps these signatures apart from member links and sessions signed with the same secret."""


@dataclass(frozen=True)
class SigninClaim:
    """Whom a used link signs in: the member, their notebook and link generation."""

    member_id: str
    notebook_id: str
    generation: int


def _hash(nonce: str) -> str:
    return hashlib.sha256(nonce.encode()).hexdigest()


class SigninLinks:
    """Makes and uses sign-in links.

    Args:
        secret: the instance secret.
        ttl: how long a link works.
    """

    def __init__(self, secret: str, ttl: timedelta = LINK_TTL):
        if not secret:
            raise ValueError("a signing key is required")
        self.ttl = ttl
        self._signer = TimestampSigner(secret, salt=SALT, digest_method=hashlib.sha256)

    def members_for(self, session: Session, email: str) -> list[Member]:
        """The active members who may sign in with this address (any notebook's)."""
        return list(
            session.scalars(
                select(Member)
                .where(
                    func.lower(Member.email) == email.lower(),
                    Member.active.is_(True),
                    Member.role.in_([r.value for r in SIGNIN_ROLES]),
                )
                .order_by(Member.created_at, Member.id)
                .limit(10)
            )
        )

    def issue(self, session: Session, member: Member, now: datetime | None = None) -> str | None:
        """A new token for ``member`` (committed), or None when they have
        :data:`MAX_OPEN_LINKS` open already."""
        now = now or utcnow()
        open_links = session.scalar(
            select(func.count())
            .select_from(SigninLink)
            .where(
                SigninLink.member_id == member.id, SigninLink.used_at.is_(None), SigninLink.expires_at > now
            )
        )
        if open_links >= MAX_OPEN_LINKS:
            return None
        nonce = secrets.token_urlsafe(24)
        session.add(
            SigninLink(
                nonce_hash=_hash(nonce), member_id=member.id, created_at=now, expires_at=now + self.ttl
            )
        )
        session.commit()
        return self._signer.sign(nonce).decode("ascii")

    def _nonce(self, token: str) -> str | None:
        try:
            return self._signer.unsign(token.encode("ascii"), max_age=int(self.ttl.total_seconds())).decode(
                "ascii"
            )
        except (BadData, UnicodeError, ValueError):
            return None

    def check(self, session: Session, token: str, now: datetime | None = None) -> bool:
        """Whether ``token`` would sign someone in now (without using it)."""
        nonce = self._nonce(token)
        if nonce is None:
            return False
        link = session.get(SigninLink, _hash(nonce))
        return link is not None and link.used_at is None and link.expires_at > (now or utcnow())

    def use(self, session: Session, token: str, now: datetime | None = None) -> SigninClaim | None:
        """Use ``token`` (committed): whom it signs in, or None when it is forged, expired,
        used already, or its member can no longer sign in. Of two requests at once, one wins."""
        nonce = self._nonce(token)
        if nonce is None:
            return None
        now = now or utcnow()
        won = session.execute(
            update(SigninLink)
            .where(
                SigninLink.nonce_hash == _hash(nonce),
                SigninLink.used_at.is_(None),
                SigninLink.expires_at > now,
            )
            .values(used_at=now)
            .returning(SigninLink.member_id)
        ).scalar_one_or_none()
        session.commit()
        if won is None:
            return None
        member = session.get(Member, won)
        if member is None or not member.active or member.role not in [r.value for r in SIGNIN_ROLES]:
            return None
        return SigninClaim(
            member_id=member.id, notebook_id=member.notebook_id, generation=member.link_generation
        )


def link_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}{LINK_PATH}{token}"
