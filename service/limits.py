"""Abuse limits: how many requests a caller may make, with Flask-Limiter.

One limiter per app (``app.extensions["limiter"]``), counting in Redis when REDIS_URL is set
(so every web process shares the count) and in memory in the embedded default. Each request
falls in one bucket:

- ``reads`` / ``writes``: the API's GET/HEAD and its other methods, counted per key (a hash of
  the Bearer key, never the key itself) or, without one, per client address;
- ``member_links``: ``/m/…`` pages and ``/calendar/….ics`` feeds, per client address (they carry
  no key);
- ``webhooks``: ``/v1/webhooks/…``, per client address;
- none: health checks, the API description and its assets, Twilio's signed callbacks.

Past a limit the answer is 429 with ``Retry-After`` (JSON for the API, the plain page for
member links). If Redis goes away the count carries on in memory (intake never fails because
of a limiter). Limits come from ``CARELOOP_RATE_LIMIT_*`` (``config/settings.py``).
"""

from __future__ import annotations

import hashlib
import math
import time

from apiflask import APIFlask
from flask import Response, current_app, g, request
from flask_limiter import Limiter, RequestLimit

from careloop.config.settings import Settings

UNLIMITED_BLUEPRINTS = ("health", "twilio", "docs_assets", "openapi", "pages")
"""Blueprints no limit applies to (their own checks, or nothing private in them)."""

READ_METHODS = ("GET", "HEAD", "OPTIONS")


def bucket() -> str | None:
    """Which limit this request counts against (None: none)."""
    if request.endpoint is None or request.blueprint in UNLIMITED_BLUEPRINTS:
        return None
    if request.blueprint in ("member_pages", "calendar_feeds"):
        return "member_links"
    if request.endpoint == "sources.receive_webhook":
        return "webhooks"
    return "reads" if request.method in READ_METHODS else "writes"


def client_address() -> str:
    return request.remote_addr or "unknown"


def caller() -> str:
    """Who is counted: the bucket, and a hash of the Bearer key or the client's address."""
    kind = bucket() or "none"
    authorization = request.headers.get("Authorization", "")
    if kind in ("reads", "writes") and authorization:
        return f"{kind}:key:{hashlib.sha256(authorization.encode()).hexdigest()[:32]}"
    return f"{kind}:ip:{client_address()}"


def _limit() -> str:
    settings = current_app.extensions["careloop"].settings
    return {
        "reads": settings.rate_limit_reads,
        "writes": settings.rate_limit_writes,
        "member_links": settings.rate_limit_member_links,
        "webhooks": settings.rate_limit_webhooks,
    }.get(bucket() or "", settings.rate_limit_reads)


def _note_breach(limit: RequestLimit) -> None:
    g.retry_after = max(1, math.ceil(limit.reset_at - time.time()))


def init_app(app: APIFlask, settings: Settings) -> Limiter:
    limiter = Limiter(
        caller,
        app=app,
        application_limits=[_limit],
        application_limits_exempt_when=lambda: bucket() is None,
        storage_uri=settings.redis_url or "memory://",
        storage_options={"socket_connect_timeout": 2, "socket_timeout": 2} if settings.redis_url else {},
        strategy="moving-window",
        key_prefix=f"{settings.queue_prefix}-limits",
        swallow_errors=True,
        in_memory_fallback_enabled=True,
        on_breach=_note_breach,
        headers_enabled=False,  # Retry-After on 429s only (below), never on other answers
    )

    @app.after_request
    def _retry_after(response: Response) -> Response:
        if response.status_code == 429 and "retry_after" in g:
            response.headers["Retry-After"] = str(g.retry_after)
        return response

    return limiter
