"""GET /metrics: careloop's Prometheus metrics (``careloop.metrics``), for a scraper holding
``CARELOOP_METRICS_TOKEN`` (or an operator holding the admin key) as a Bearer token.

The counts are this machine's: every web worker's and every ``careloop worker`` writing into the
same ``PROMETHEUS_MULTIPROC_DIR``; queue depths are read from Redis at the scrape.
"""

from __future__ import annotations

import hmac

from apiflask import APIBlueprint
from flask import Response, current_app, request

from careloop import metrics

bp = APIBlueprint("metrics", __name__, tag="Health")

UNAUTHORIZED = {
    "error": "unauthorized",
    "message": "a valid Bearer token is required (CARELOOP_METRICS_TOKEN)",
}

TEXT_FORMAT = {
    "text/plain": {
        "schema": {"type": "string"},
        "example": "# HELP careloop_events_accepted_total Notebook events recorded, by type and source\n"
        "# TYPE careloop_events_accepted_total counter\n"
        'careloop_events_accepted_total{source="api",type="concern.raised"} 3.0\n',
    }
}


def _allowed(settings) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    for secret in (settings.metrics_token, settings.admin_key):
        if secret is not None and hmac.compare_digest(token.encode(), secret.get_secret_value().encode()):
            return True
    return False


@bp.get("/metrics")
@bp.doc(
    operation_id="metrics",
    summary="Prometheus metrics",
    description="Prometheus' text format: events accepted, deliveries by channel and status, provider "
    "latency, retries, dead letters, webhook verification failures, HTTP answers, and queue depths and "
    "oldest job ages read from Redis now. Needs `CARELOOP_METRICS_TOKEN` (or the admin key) as a Bearer "
    "token.",
    responses={
        200: {"description": "The metrics", "content": TEXT_FORMAT},
        401: {
            "description": "No token, or not the metrics token or the admin key",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPError"}}},
        },
    },
)
def scrape():
    extension = current_app.extensions["careloop"]
    if not _allowed(extension.settings):
        return UNAUTHORIZED, 401, {"WWW-Authenticate": 'Bearer realm="careloop-metrics"'}
    collector = metrics.QueueCollector(extension.runtime.dispatcher.queue_stats)
    return Response(metrics.exposition([collector]), content_type=metrics.CONTENT_TYPE)
