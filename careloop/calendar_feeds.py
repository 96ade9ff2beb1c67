"""Members' calendar feeds: ``{CARELOOP_PUBLIC_URL}/calendar/{token}.ics``, one per member.

The token is an HMAC-SHA256 (the instance secret, as for member links) of the member's id
and their feed generation: 256 bits nobody can guess without the key, and the same URL every
time the API shows it. The database keeps only its SHA-256 (``members.calendar_feed_hash``),
which is how a request finds its member; rotating raises the generation and replaces the hash,
so the old URL answers 404 from then on. A member who is not active has no feed.

What a feed holds (:func:`member_entries`): every check-in of the member's notebook that
lists them as an attendee, with the invites' UIDs; cancelled ones stay, marked cancelled.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from careloop.checkins import calendar_entry
from careloop.messages import CalendarEntry
from careloop.models import Checkin, Member, Notebook

FEED_PATH = "/calendar/"
"""Where feeds live under ``CARELOOP_PUBLIC_URL``."""

SALT = b"careloop.calendar-feed.v1"
"""Keeps these MACs apart from anything else made with the same key."""


def feed_token(secret: str, member_id: str, generation: int) -> str:
    """The token of a member's feed URL for this generation (43 URL-safe characters)."""
    message = SALT + b"|" + member_id.encode() + b"|" + str(generation).encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def feed_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}{FEED_PATH}{token}.ics"


def current_token(session: Session, secret: str, member: Member) -> str:
    """The member's feed token, its hash stored if it was not yet (not committed here)."""
    token = feed_token(secret, member.id, member.calendar_feed_generation or 0)
    digest = token_hash(token)
    if member.calendar_feed_hash != digest:
        member.calendar_feed_hash = digest
    return token


def rotate(session: Session, secret: str, member: Member) -> str:
    """Revoke the member's feed URL and make a new one; the new token (not committed here)."""
    session.execute(
        update(Member)
        .where(Member.id == member.id)
        .values(calendar_feed_generation=Member.calendar_feed_generation + 1)
        .execution_options(synchronize_session=False)
    )
    session.refresh(member, ["calendar_feed_generation"])
    return current_token(session, secret, member)


def find_member(session: Session, token: str) -> Member | None:
    """The active member whose current feed token this is, or None."""
    if not token or len(token) > 100:
        return None
    member = session.scalar(select(Member).where(Member.calendar_feed_hash == token_hash(token)))
    if member is None or not member.active:
        return None
    return member


def member_entries(session: Session, member: Member) -> tuple[Notebook, list[CalendarEntry]]:
    """The member's notebook and the check-ins that list them, oldest first."""
    notebook = session.get(Notebook, member.notebook_id)
    checkins = session.scalars(
        select(Checkin).where(Checkin.notebook_id == member.notebook_id).order_by(Checkin.id)
    ).all()
    entries = [
        calendar_entry(c, notebook)
        for c in checkins
        if member.id in ((c.details or {}).get("attendees") or ())
    ]
    return notebook, entries
