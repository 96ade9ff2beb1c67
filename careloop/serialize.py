"""JSON shapes of careloop's records, shared by the API and the CLI."""

from __future__ import annotations

from datetime import datetime

from careloop import preferences as prefs
from careloop.models import (
    ApiKey,
    AuditEntry,
    Delivery,
    Escalation,
    Event,
    InboundRecord,
    Member,
    Notebook,
    Reminder,
    Source,
    utcnow,
)
from careloop.vocabulary import DeliveryStatus, ReminderStatus


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def notebook(nb: Notebook) -> dict:
    return {
        "id": nb.id,
        "name": nb.name,
        "child_name": nb.child_name,
        "timezone": nb.timezone,
        "email_detail": nb.email_detail,
        "created_at": iso(nb.created_at),
    }


def member(m: Member) -> dict:
    return {
        "id": m.id,
        "notebook_id": m.notebook_id,
        "name": m.name,
        "role": m.role,
        "email": m.email,
        "phone": m.phone,
        "timezone": m.timezone,
        "active": m.active,
        "sms_opted_out": bool(m.sms_opted_out),
        "created_at": iso(m.created_at),
        "updated_at": iso(m.updated_at),
    }


def preferences(m: Member, notebook_timezone: str) -> dict:
    return {
        "member_id": m.id,
        "timezone": m.timezone or notebook_timezone,
        **prefs.from_stored(m.preferences).model_dump(mode="json"),
    }


def member_summary(m: Member) -> dict:
    """A member without contact details (what an integration key sees)."""
    return {"id": m.id, "notebook_id": m.notebook_id, "name": m.name, "role": m.role, "active": m.active}


def api_key(k: ApiKey, notebook_ids: list[str]) -> dict:
    """A key without its secret (only its hash is stored); ``notebook_ids``: what it reaches."""
    return {
        "id": k.id,
        "notebook_id": k.notebook_id,
        "notebook_ids": notebook_ids,
        "name": k.name,
        "role": k.role,
        "created_at": iso(k.created_at),
        "last_used_at": iso(k.last_used_at),
    }


def audit_entry(a: AuditEntry) -> dict:
    return {
        "id": a.id,
        "at": iso(a.at),
        "notebook_id": a.notebook_id,
        "actor_type": a.actor_type,
        "actor_id": a.actor_id,
        "action": a.action,
        "target_id": a.target_id,
        "remote_addr": a.remote_addr,
        "status": a.status,
        "reason": a.reason,
    }


def delivery(d: Delivery) -> dict:
    return {
        "id": d.id,
        "event_id": d.event_id,
        "notebook_id": d.notebook_id,
        "member_id": d.member_id,
        "channel": d.channel,
        "status": d.status,
        "attempts": d.attempts,
        "provider_id": d.provider_id,
        "error": d.error,
        "rules": d.rules or [],
        "created_at": iso(d.created_at),
        "updated_at": iso(d.updated_at),
        "next_attempt_at": iso(d.next_attempt_at) if d.status == DeliveryStatus.QUEUED else None,
        "held_for": d.hold if d.status == DeliveryStatus.QUEUED else None,
        "digest_id": d.digest_id,
        "sent_at": iso(d.sent_at),
        "delivered_at": iso(d.delivered_at),
        "escalation_step": d.escalation_step or 0,
        "reason": d.reason,
        "failover_of": d.failover_of,
        "acknowledged_at": iso(d.acknowledged_at),
        "acknowledged_by": d.acknowledged_by,
        "acknowledged_via": d.acknowledged_via,
    }


def escalation(row: Escalation, deliveries: list[Delivery]) -> dict:
    """An event's wait for an acknowledgement: until when, who acknowledged it, its escalation
    steps (planned and fired) and its urgent alerts' failovers (from ``deliveries``)."""
    fired = {f["step"]: f for f in row.fired or []}
    if row.acknowledged_at is not None:
        status = "acknowledged"
    else:
        status = "overdue" if utcnow() > row.acknowledge_by else "waiting"
    return {
        "status": status,
        "rule": row.rule,
        "acknowledge_within": row.acknowledge_within,
        "acknowledge_by": iso(row.acknowledge_by),
        "acknowledged_at": iso(row.acknowledged_at),
        "acknowledged_by": row.acknowledged_by,
        "acknowledged_via": row.acknowledged_via,
        "acknowledged_delivery_id": row.acknowledged_delivery_id,
        "next_step_at": iso(row.due_at),
        "steps": [
            {
                "step": step["step"],
                "roles": list(step["targets"]),
                "due_at": step["due_at"],
                "fired_at": fired.get(step["step"], {}).get("at"),
                "member_ids": fired.get(step["step"], {}).get("member_ids", []),
                "delivery_ids": fired.get(step["step"], {}).get("delivery_ids", []),
            }
            for step in row.steps or []
        ],
        "failovers": [
            {
                "at": iso(d.created_at),
                "member_id": d.member_id,
                "from_delivery_id": d.failover_of,
                "delivery_id": d.id,
                "channel": d.channel,
                "reason": d.reason,
            }
            for d in deliveries
            if d.failover_of
        ],
    }


# --- reminders (issue 12) ---
def reminder(r: Reminder) -> dict:
    pending = r.status == ReminderStatus.PENDING
    return {
        "id": r.id,
        "member_id": r.member_id,
        "channel": r.channel,
        "occurrence": r.occurrence or None,
        "starts_at": iso(r.starts_at),
        "offset_minutes": r.offset_minutes,
        "due_at": iso(r.due_at),
        "held_for": r.hold if pending else None,
        "status": r.status,
        "attempts": r.attempts,
        "provider_id": r.provider_id,
        "error": r.error,
        "sent_at": iso(r.sent_at),
    }


def event(e: Event, deliveries: list[Delivery] | None = None) -> dict:
    body = {
        "id": e.id,
        "notebook_id": e.notebook_id,
        "type": e.type,
        "data": e.data,
        "occurred_at": iso(e.occurred_at),
        "recorded_at": iso(e.recorded_at),
        "author_member_id": e.author_member_id,
        "status": "routed" if e.routed_at else "accepted",
        "routed_at": iso(e.routed_at),
    }
    if deliveries is not None:
        body["deliveries"] = [delivery(d) for d in deliveries]
    return body


def source(s: Source, public_url: str) -> dict:
    return {
        "id": s.id,
        "name": s.name,
        "kind": s.kind,
        "notebook_id": s.notebook_id,
        "patients": (s.config or {}).get("patients"),
        "timezone": (s.config or {}).get("timezone"),
        "webhook_url": f"{public_url}/v1/webhooks/{s.id}",
        "created_at": iso(s.created_at),
        "secret_rotated_at": iso(s.secret_rotated_at),
        "previous_secret_expires_at": iso(s.previous_secret_expires_at),
        "mapping": s.mapping,
    }


def inbound_record(r: InboundRecord) -> dict:
    """An inbound record without its body (the body is health data, kept only to run again)."""
    return {
        "id": r.id,
        "source_id": r.source_id,
        "webhook_id": r.webhook_id,
        "received_at": iso(r.received_at),
        "status": r.status,
        "reason": r.reason,
        "event_ids": list(r.event_ids or []),
        "duplicate_of": r.duplicate_of,
        "notification": (r.details or {}).get("notification"),
        "reruns": r.reruns or 0,
        "reran_at": iso(r.reran_at),
    }
