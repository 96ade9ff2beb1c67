"""The audit log, filled from the HTTP side: one row per request that presents a key (the
refused ones too), per member-link view and per Twilio callback.

A request collects what the row needs as it goes — authentication says who (``actor``),
the access helpers whose data it was and why it was refused (``careloop.service.auth``), a
route may name what it created (``target_id``) — and an ``after_request`` hook writes it with
the answer's status, in a transaction of its own after the route's. A request that touched
several notebooks (a clinic key listing deliveries) writes one row per notebook, so each
family's log shows it. Requests that never open a trail (``/healthz``, ``/openapi.json``, an
unknown URL) write nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from apiflask import APIFlask
from flask import Response, g, request
from sqlalchemy.exc import SQLAlchemyError

from careloop import audit
from careloop.audit import ActorType

log = logging.getLogger("careloop.service.audit")

TARGET_PARAMETERS = ("key_id", "delivery_id", "event_id", "member_id", "notebook_id")
"""Path parameters naming what a request acts on, most specific first: the row's target."""


@dataclass
class Trail:
    """What one request's audit row will say (see the module docstring)."""

    actor_type: str = ActorType.ANONYMOUS
    actor_id: str | None = None
    notebook_ids: list[str] = field(default_factory=list)
    target_id: str | None = None
    reason: str | None = None
    action: str | None = None


def trail() -> Trail:
    """This request's trail, opened on first use: a request that opens one is audited."""
    if "audit_trail" not in g:
        g.audit_trail = Trail()
    return g.audit_trail


def _target(seen: Trail) -> str | None:
    if seen.target_id:
        return seen.target_id
    args = request.view_args or {}
    return next((args[name] for name in TARGET_PARAMETERS if args.get(name)), None)


def init_app(app: APIFlask) -> None:
    @app.after_request
    def _write_audit_row(response: Response) -> Response:
        seen: Trail | None = g.pop("audit_trail", None)
        session = g.get("db")
        if seen is None or session is None:
            return response
        action = seen.action or request.endpoint or "request"
        try:
            session.rollback()  # whatever the route left uncommitted is not part of the record
            for notebook_id in seen.notebook_ids or [None]:
                audit.record(
                    session,
                    action,
                    status=response.status_code,
                    actor_type=seen.actor_type,
                    actor_id=seen.actor_id,
                    notebook_id=notebook_id,
                    target_id=_target(seen),
                    remote_addr=request.remote_addr,
                    reason=seen.reason,
                )
            session.commit()
        except (SQLAlchemyError, ValueError) as exc:  # the answer stands; the log says a row is missing
            session.rollback()
            log.warning("audit row not written for %s (%s)", action, type(exc).__name__)
        return response
