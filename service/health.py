"""GET /healthz (liveness: is the database reachable, is the queue) and GET /readyz (readiness:
database, queue and schema all ready)."""

from __future__ import annotations

import logging

from apiflask import APIBlueprint
from flask import current_app, g
from sqlalchemy import text

from careloop import db
from careloop.service.schemas import HealthOut, ReadyOut

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


@bp.get("/readyz")
@bp.output(ReadyOut)
@bp.doc(
    operation_id="ready",
    summary="Ready to serve: database, queue and schema",
    responses={
        503: {
            "description": "Not ready: `failing` names the parts (database, queue, migrations)",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ReadyOut"}}},
        }
    },
    description="200 when the database answers, Redis answers (when `REDIS_URL` is set) and the "
    "database's schema is at this release's migration head; else 503 naming the parts that are not. "
    "For a load balancer's readiness check; `/healthz` is the liveness check. Never says why a part "
    "failed (that goes to the log).",
)
def readyz():
    runtime = current_app.extensions["careloop"].runtime
    body = {"database": "ok", "queue": "not_configured", "migrations": "unknown"}
    try:
        g.db.execute(text("SELECT 1"))
        body["migrations"] = "at_head" if db.at_migration_head(g.db) else "behind"
    except Exception as exc:  # the answer names the part; what broke is for the log
        log.warning("readyz: database unreachable (%s)", type(exc).__name__)
        body["database"] = "unreachable"
    if runtime.dispatcher.mode == "rq":
        try:
            runtime.dispatcher.ping()
            body["queue"] = "ok"
        except Exception as exc:
            log.warning("readyz: queue unreachable (%s)", type(exc).__name__)
            body["queue"] = "unreachable"
    failing = [
        part
        for part, good in (
            ("database", body["database"] == "ok"),
            ("queue", body["queue"] != "unreachable"),
            ("migrations", body["migrations"] == "at_head"),
        )
        if not good
    ]
    ready = not failing
    return {"status": "ready" if ready else "not_ready", **body, "failing": failing}, 200 if ready else 503
