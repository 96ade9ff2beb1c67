"""GET /healthz: is the database reachable, is the queue reachable."""

from __future__ import annotations

import logging

from apiflask import APIBlueprint
from flask import current_app, g
from sqlalchemy import text

from careloop.service.schemas import HealthOut

log = logging.getLogger("careloop.service")

bp = APIBlueprint("health", __name__, tag="Health")


@bp.get("/healthz")
@bp.output(HealthOut)
@bp.doc(
    operation_id="health",
    summary="Database and queue reachability",
    responses={
        503: {
            "description": "Down: the database does not answer",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HealthOut"}}},
        }
    },
    description="200 while the database answers (intake works even with the queue down: events "
    "wait in the outbox); 503 when the database does not. `queue` says whether Redis answers.",
)
def healthz():
    runtime = current_app.extensions["careloop"].runtime
    checks = {}
    try:
        g.db.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # the answer says down; what broke is for the log, not the caller
        log.warning("healthz: database unreachable (%s)", type(exc).__name__)
        checks["database"] = "unreachable"
    try:
        runtime.dispatcher.ping()
        checks["queue"] = "ok"
    except Exception as exc:
        log.warning("healthz: queue unreachable (%s)", type(exc).__name__)
        checks["queue"] = "unreachable"
    ok = checks["database"] == "ok"
    status = "ok" if ok and checks["queue"] == "ok" else ("degraded" if ok else "down")
    return {"status": status, "queue_mode": runtime.dispatcher.mode, **checks}, 200 if ok else 503
