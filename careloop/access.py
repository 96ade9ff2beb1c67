"""API keys with roles, and what each role may do on the notebooks it reaches.

A key is random (32 bytes from :mod:`secrets`), starts with ``clk_`` so a leaked one is easy
to spot, is shown once and stored only as a SHA-256 (it is 256-bit random: a plain hash is
enough, no slow KDF is needed). Each key has a role:

==============  ===================================================================================
``family``      everything on its notebook: the notebook, members (with contact details), events,
                deliveries (retrying and acknowledging them), member links, keys, the audit
                log, webhook endpoints
``clinician``   read the notebook; read and record events; read members with their contact
                details; read deliveries, retry dead letters, acknowledge alerts
``integration`` read the notebook; record and read events; read delivery status and acknowledge
                alerts; read members' ids, names and roles — never their phone numbers or emails
``clinic``      what ``clinician`` may, on each notebook it was given (minted by the admin only)
==============  ===================================================================================

The admin key (``CARELOOP_ADMIN_KEY``) may do everything everywhere. A key that may not do an
action on a notebook is answered exactly as if the notebook (or member, event, delivery, key)
did not exist: the HTTP layer turns every "no" from :meth:`Principal.may` into the same 404.

This module is core: no Flask. The API (``careloop.service.auth``) and the CLI both use it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from careloop.models import ApiKey, ApiKeyNotebook, Notebook, utcnow

KEY_PREFIX = "clk_"
"""Every minted key starts with this, so leaked keys are easy to spot and scan for."""

KEY_BYTES = 32
"""Random bytes in a key (43 URL-safe characters after the prefix)."""

LAST_USED_RESOLUTION = timedelta(minutes=1)
"""A key's ``last_used_at`` is written at most this often: one UPDATE a minute per key in use,
not one per request."""


class KeyRole(StrEnum):
    """What a key is for; :data:`GRANTS` says what each may do."""

    FAMILY = "family"
    """The family's own key: everything on its notebook."""
    CLINICIAN = "clinician"
    """A clinician on the team: events, members with contact details, deliveries."""
    INTEGRATION = "integration"
    """Another system (an EHR, a form): posts events, reads their status; no contact details."""
    CLINIC = "clinic"
    """A clinic's system: what a clinician may, across the notebooks the admin gave it."""


NOTEBOOK_KEY_ROLES: tuple[KeyRole, ...] = (KeyRole.FAMILY, KeyRole.CLINICIAN, KeyRole.INTEGRATION)
"""Roles of keys minted on one notebook (``POST /v1/notebooks/{id}/keys``)."""

MULTI_NOTEBOOK_ROLES: tuple[KeyRole, ...] = (KeyRole.CLINIC,)
"""Roles of keys the admin mints for several notebooks (``POST /v1/keys``)."""


class Action(StrEnum):
    """Something a key may do to a notebook's data."""

    READ_NOTEBOOK = "notebook.read"
    CHANGE_NOTEBOOK = "notebook.change"
    READ_MEMBERS = "members.read"
    """Members' ids, names, roles, time zones and whether they are active."""
    READ_CONTACTS = "members.contacts"
    """Members' phone numbers and email addresses."""
    CHANGE_MEMBERS = "members.change"
    """Add and change members, revoke their member links."""
    READ_EVENTS = "events.read"
    RECORD_EVENTS = "events.record"
    READ_DELIVERIES = "deliveries.read"
    RETRY_DELIVERIES = "deliveries.retry"
    ACKNOWLEDGE_DELIVERIES = "deliveries.acknowledge"
    """Say that an alert was seen (it stops the event's escalation)."""
    MANAGE_KEYS = "keys.manage"
    """Mint, list and revoke the notebook's keys."""
    MANAGE_WEBHOOKS = "webhooks.manage"
    """Add, read, replay and delete webhook endpoints told about the notebook's events."""
    READ_AUDIT = "audit.read"


_CLINICAL = frozenset(
    {
        Action.READ_NOTEBOOK,
        Action.READ_MEMBERS,
        Action.READ_CONTACTS,
        Action.READ_EVENTS,
        Action.RECORD_EVENTS,
        Action.READ_DELIVERIES,
        Action.RETRY_DELIVERIES,
        Action.ACKNOWLEDGE_DELIVERIES,
    }
)

GRANTS: dict[KeyRole, frozenset[Action]] = {
    KeyRole.FAMILY: frozenset(Action),
    KeyRole.CLINICIAN: _CLINICAL,
    KeyRole.INTEGRATION: frozenset(
        {
            Action.READ_NOTEBOOK,
            Action.READ_MEMBERS,
            Action.READ_EVENTS,
            Action.RECORD_EVENTS,
            Action.READ_DELIVERIES,
            Action.ACKNOWLEDGE_DELIVERIES,
        }
    ),
    KeyRole.CLINIC: _CLINICAL,
}
"""What each role may do on a notebook it reaches. The admin may do everything."""


@dataclass(frozen=True)
class Principal:
    """Who a request is: the admin, or a key with its role and the notebooks it reaches."""

    admin: bool
    key_id: str | None = None
    role: KeyRole | None = None
    notebook_ids: frozenset[str] = field(default_factory=frozenset)

    def may_reach(self, notebook_id: str) -> bool:
        return self.admin or notebook_id in self.notebook_ids

    def may(self, action: Action, notebook_id: str) -> bool:
        """Whether this key may do ``action`` on that notebook's data."""
        if self.admin:
            return True
        return notebook_id in self.notebook_ids and self.role is not None and action in GRANTS[self.role]

    def notebooks_for(self, action: Action) -> frozenset[str] | None:
        """The notebooks this key may do ``action`` on; None means every notebook (the admin)."""
        if self.admin:
            return None
        if self.role is None or action not in GRANTS[self.role]:
            return frozenset()
        return self.notebook_ids


ADMIN = Principal(admin=True)
"""The admin key's principal."""


class KeyRefused(Exception):
    """A Bearer key careloop does not accept; ``key_id`` names it when it was one of ours."""

    def __init__(self, reason: str, key_id: str | None = None, notebook_ids: list[str] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.key_id = key_id
        self.notebook_ids = notebook_ids or []


class UnknownNotebooks(ValueError):
    """Notebook ids given for a key that name no notebook."""

    def __init__(self, positions: list[int]):
        super().__init__("no such notebook")
        self.positions = positions


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def mint_secret() -> str:
    """A new key: the prefix and 32 random bytes, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def create_key(
    session: Session,
    *,
    name: str,
    role: KeyRole = KeyRole.FAMILY,
    notebook_id: str | None = None,
    notebook_ids: list[str] | tuple[str, ...] = (),
) -> tuple[ApiKey, str]:
    """Mint a key and add it to the session (the caller commits). Returns the row and the
    secret, which exists nowhere else: show it once.

    A notebook key (family, clinician, integration) takes ``notebook_id``; a clinic key takes
    ``notebook_ids`` (at least one). Raises UnknownNotebooks when an id names no notebook.
    """
    role = KeyRole(role)
    if role in NOTEBOOK_KEY_ROLES:
        if notebook_id is None or notebook_ids:
            raise ValueError(f"a {role} key belongs to one notebook: give notebook_id only")
        wanted = [notebook_id]
    else:
        if notebook_id is not None or not notebook_ids:
            raise ValueError(f"a {role} key reaches notebook_ids (one or more), not one notebook_id")
        wanted = list(dict.fromkeys(notebook_ids))
    found = set(session.scalars(select(Notebook.id).where(Notebook.id.in_(wanted))))
    missing = [i for i, nb in enumerate(notebook_ids or [notebook_id]) if nb not in found]
    if missing:
        raise UnknownNotebooks(missing)
    secret = mint_secret()
    key = ApiKey(notebook_id=notebook_id, name=name, role=role, key_hash=hash_key(secret))
    session.add(key)
    session.flush()  # its id, for its notebook rows and the caller's answer
    if role in MULTI_NOTEBOOK_ROLES:
        session.add_all(ApiKeyNotebook(key_id=key.id, notebook_id=nb) for nb in wanted)
    return key, secret


def notebooks_of(session: Session, key: ApiKey) -> list[str]:
    """The notebooks a key reaches, in the order they were given."""
    if key.role not in MULTI_NOTEBOOK_ROLES:
        return [key.notebook_id] if key.notebook_id else []
    return list(
        session.scalars(
            select(ApiKeyNotebook.notebook_id)
            .where(ApiKeyNotebook.key_id == key.id)
            .order_by(ApiKeyNotebook.created_at, ApiKeyNotebook.notebook_id)
        )
    )


def keys_reaching(session: Session, notebook_id: str) -> list[ApiKey]:
    """The keys that work on this notebook (not revoked), oldest first: its own keys and the
    clinic keys given it."""
    given = select(ApiKeyNotebook.key_id).where(ApiKeyNotebook.notebook_id == notebook_id)
    return list(
        session.scalars(
            select(ApiKey)
            .where(
                ApiKey.revoked_at.is_(None),
                or_(ApiKey.notebook_id == notebook_id, ApiKey.id.in_(given)),
            )
            .order_by(ApiKey.created_at, ApiKey.id)
        )
    )


def all_keys(session: Session, include_revoked: bool = False) -> list[ApiKey]:
    """Every key, oldest first (the operator's view)."""
    stmt = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if not include_revoked:
        stmt = stmt.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(stmt))


def revoke(session: Session, key_id: str, notebook_id: str | None = None) -> bool:
    """Stop a key working (the caller commits); effective for the very next request.

    With ``notebook_id``: only as far as that notebook goes — a notebook key is revoked, a
    clinic key loses that notebook (and keeps the others). False when no working key of that
    id reaches that notebook (or, without one, exists at all).
    """
    key = session.get(ApiKey, key_id)
    if key is None or key.revoked_at is not None:
        return False
    if notebook_id is not None and key.role in MULTI_NOTEBOOK_ROLES:
        removed = session.execute(
            delete(ApiKeyNotebook).where(
                ApiKeyNotebook.key_id == key.id, ApiKeyNotebook.notebook_id == notebook_id
            )
        )
        return removed.rowcount > 0
    if notebook_id is not None and key.notebook_id != notebook_id:
        return False
    key.revoked_at = utcnow()
    return True


def authenticate(session: Session, secret: str, now: datetime | None = None) -> Principal:
    """The principal a notebook or clinic key stands for. Raises KeyRefused (``unknown key``,
    ``revoked key``). Notes the key's use (at most once a :data:`LAST_USED_RESOLUTION`) and
    commits that, so nothing else should be pending in the session."""
    if not secret.startswith(KEY_PREFIX):
        raise KeyRefused("unknown key")
    key = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(secret))).one_or_none()
    if key is None:
        raise KeyRefused("unknown key")
    if key.revoked_at is not None:
        raise KeyRefused("revoked key", key.id, notebooks_of(session, key))
    now = now or utcnow()
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        stale = now - LAST_USED_RESOLUTION
        session.execute(
            update(ApiKey)
            .where(ApiKey.id == key.id, or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= stale))
            .values(last_used_at=now)
        )
        session.commit()
    return Principal(
        admin=False, key_id=key.id, role=KeyRole(key.role), notebook_ids=frozenset(notebooks_of(session, key))
    )
