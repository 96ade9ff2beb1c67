"""The audit log as the API shows it: ``GET /v1/notebooks/{id}/audit`` (admin and family keys).
What is recorded and when: ``careloop.audit`` and ``careloop.service.audit_trail``."""

from __future__ import annotations

from apiflask import APIBlueprint
from flask import g

from careloop import audit, serialize
from careloop.access import Action
from careloop.service.auth import auth, before_the_body, notebook_or_404
from careloop.service.pagination import decode_cursor, encode_cursor
from careloop.service.schemas import AuditList, AuditQuery

bp = APIBlueprint("audit", __name__, url_prefix="/v1", tag="Audit")


@bp.get("/notebooks/<id:notebook_id>/audit")
@bp.auth_required(auth)
@before_the_body(Action.READ_AUDIT)
@bp.input(AuditQuery, location="query", arg_name="query")
@bp.output(AuditList)
@bp.doc(
    operation_id="listAudit",
    summary="The notebook's audit log, newest first (admin or family key)",
    description="Every request that read or wrote the notebook's data, every member-link view, "
    "each key's use and each refusal (401 for a revoked key, 404 for a key out of reach): who "
    "(`actor_type`, `actor_id`), what (`action`, `target_id`), when, from where, and the answer's status.",
    responses=[404],
)
def list_audit(notebook_id: str, query: AuditQuery):
    notebook = notebook_or_404(notebook_id, Action.READ_AUDIT)
    after = decode_cursor(query.cursor) if query.cursor else None
    rows, more = audit.page(g.db, notebook.id, query.limit, after)
    return {
        "items": [serialize.audit_entry(r) for r in rows],
        "next_cursor": encode_cursor(rows[-1].at, rows[-1].id) if more else None,
    }
