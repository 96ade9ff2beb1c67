"""The audit log: who did what to which notebook's data, when, from where, and how it ended.

One row per API request that reads or writes a notebook's data (recorded by the service
for every request that presents a key, including the ones refused: 401, 403, 404), per
member-link view (or refusal), per Twilio status callback, and per key minted or revoked
from the shell. Other code (a webhook receiver, say) calls :func:`record` itself.

Rows hold ids, action names, short reason codes, a client address and a status code —
never a name, a phone number, an email, event text or a key: :func:`record` refuses any
value that is not shaped like one of those, so PHI cannot slip in by mistake.

The table is append-only: nothing in careloop updates or deletes a row, and the migration
gives both databases a trigger that refuses UPDATE and DELETE on it.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from enum import StrEnum

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from careloop.models import AuditEntry, utcnow


class ActorType(StrEnum):
    """Who acted."""

    ADMIN = "admin"
    """The admin key (``CARELOOP_ADMIN_KEY``)."""
    KEY = "key"
    """A notebook or clinic key; ``actor_id`` is its id (``key_…``)."""
    MEMBER = "member"
    """A care-team member opening their link; ``actor_id`` is the member's id."""
    TWILIO = "twilio"
    """Twilio's signed status callback."""
    SOURCE = "source"
    """A registered webhook source; ``actor_id`` is its id."""
    OPERATOR = "operator"
    """Someone at the shell (``careloop keys …``)."""
    ANONYMOUS = "anonymous"
    """No key, or a key careloop does not know."""


ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
"""An id as careloop writes them (``nb_…``, ``key_…``, ``mem_…``)."""

NAME_PATTERN = re.compile(r"^[a-z0-9_.:-]+(?: [a-z0-9_.:-]+)*$")
"""An action name or a reason code: lower-case words (``events.create_event``, ``revoked key``)."""

NAME_MAX = 64
"""Characters an action name or reason may have (the columns' size)."""


def _id(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not ID_PATTERN.fullmatch(value):
        raise ValueError(f"audit {what} must be an id")
    return value


def _name(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if len(value) > NAME_MAX or not NAME_PATTERN.fullmatch(value):
        raise ValueError(f"audit {what} must be a short lower-case name")
    return value


def client_address(value: str | None) -> str | None:
    """An IP address as text, or None for anything else (a Unix socket's path, nothing)."""
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value.split("%", 1)[0]))
    except ValueError:
        return None


def record(
    session: Session,
    action: str,
    *,
    status: int,
    actor_type: ActorType | str,
    actor_id: str | None = None,
    notebook_id: str | None = None,
    target_id: str | None = None,
    remote_addr: str | None = None,
    reason: str | None = None,
    at: datetime | None = None,
) -> AuditEntry:
    """Add one row to the audit log. The caller commits — in the transaction of what it
    records, when there is one, so the row and the change stand or fall together.

    Args:
        action: what was done, a short lower-case name (``webhooks.receive``).
        status: how it ended, as an HTTP status code (200, 401, 404, …).
        actor_type: who acted (:class:`ActorType`); ``actor_id`` their id, when known.
        notebook_id: whose data it was, when known; rows without one are the operator's.
        target_id: the record acted on (an event, member, delivery, key id).
        remote_addr: the client's IP address (anything else is stored as nothing).
        reason: a short code saying why something was refused (``revoked key``).

    Raises:
        ValueError: a value that is not an id, a short name or a status code.
    """
    if not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError("audit status must be an HTTP status code")
    entry = AuditEntry(
        at=at or utcnow(),
        notebook_id=_id(notebook_id, "notebook_id"),
        actor_type=ActorType(actor_type).value,
        actor_id=_id(actor_id, "actor_id"),
        action=_name(action, "action"),
        target_id=_id(target_id, "target_id"),
        remote_addr=client_address(remote_addr),
        status=status,
        reason=_name(reason, "reason"),
    )
    session.add(entry)
    return entry


def page(
    session: Session, notebook_id: str, limit: int, after: tuple[datetime, str] | None = None
) -> tuple[list[AuditEntry], bool]:
    """A notebook's audit rows, newest first: up to ``limit`` after the (time, id) ``after``,
    and whether more follow."""
    stmt = select(AuditEntry).where(AuditEntry.notebook_id == notebook_id)
    if after is not None:
        when, ident = after
        stmt = stmt.where(or_(AuditEntry.at < when, and_(AuditEntry.at == when, AuditEntry.id < ident)))
    rows = list(session.scalars(stmt.order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
