"""careloop's HTTP API: the Flask app factory.

Only HTTP lives here — parsing, authentication, answering. Routing and delivery are the
workers' job; the service records events and hands them to the queue.
"""

from __future__ import annotations

import logging

from apiflask import APIFlask
from flask import g
from sqlalchemy.orm import sessionmaker
from werkzeug.middleware.proxy_fix import ProxyFix

from careloop import db
from careloop.config.settings import Settings, get_settings
from careloop.runtime import Runtime
from careloop.service import (
    audit_log,
    audit_trail,
    caldav,
    calendar_feeds,
    deliveries,
    docs,
    endpoints,
    errors,
    events,
    guards,
    headers,
    health,
    keys,
    limits,
    member_pages,
    metrics,
    notebooks,
    openapi,
    pages,
    preferences,
    redaction,
    signin,
    sources,
    timeline,
    tracing,
    twilio,
)
from careloop.service.schemas import ERROR_SCHEMA
from careloop.workers import build_runtime

log = logging.getLogger("careloop.service")


class CareloopExtension:
    """What the app keeps on ``app.extensions['careloop']``."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.settings = runtime.settings
        self.sessions = sessionmaker(db.get_engine(runtime.database_url), expire_on_commit=False)


def create_app(test_config: dict | None = None, settings: Settings | None = None) -> APIFlask:
    """Build the app: defaults, then the environment (Settings), then ``test_config``.

    The rules and policy files are loaded here, so a bad one stops start-up with the
    checker's message.
    The embedded default (SQLite) applies its migrations by itself.
    """
    settings = settings or get_settings()
    app = APIFlask(
        "careloop",
        title="careloop API",
        version="1",
        spec_path="/openapi.json",
        docs_path="/docs",
    )
    app.config.update(
        JSON_SORT_KEYS=False,
        VALIDATION_ERROR_STATUS_CODE=422,
        AUTO_404_RESPONSE=True,
        MAX_CONTENT_LENGTH=256 * 1024,
        INFO={"description": "Care notebook events in; the right care-team member told."},
        HTTP_ERROR_SCHEMA=ERROR_SCHEMA,
        VALIDATION_ERROR_SCHEMA=ERROR_SCHEMA,
        # The API's address as configured, never the Host header a request happened to send
        # (apiflask would echo it into `servers`, and cache that for everybody).
        SERVERS=[{"url": settings.public_url}],
    )
    if test_config:
        app.config.update(test_config)

    runtime = build_runtime(settings)
    runtime.check()  # fail fast on a bad rules or policy file
    redaction.install()  # before the first request line is logged
    if settings.database_url.startswith("sqlite") and app.config.get("CARELOOP_AUTO_MIGRATE", True):
        db.upgrade(settings.database_url)
    app.extensions["careloop"] = CareloopExtension(runtime)
    if settings.trusted_proxies:
        # The client's address as the trusted proxies saw it (limits, the audit log), never
        # a header an untrusted client set: only the last N hops of X-Forwarded-For count.
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=0, x_port=0, x_prefix=0)
    tracing.init_app(app)  # first: every later hook's log lines carry the request id

    @app.before_request
    def _open_session():
        g.db = app.extensions["careloop"].sessions()

    @app.teardown_request
    def _close_session(_exc):
        session = g.pop("db", None)
        if session is not None:
            session.close()

    errors.init_app(app)
    guards.init_app(app)
    headers.init_app(app)
    audit_trail.init_app(app)
    limits.init_app(app, settings)
    docs.init_app(app)
    openapi.init_app(app)
    signin.init_app(app)
    blueprints = (
        notebooks, preferences, keys, events, deliveries, endpoints, audit_log, sources, twilio, health,
        metrics, pages, member_pages, signin, timeline,
    )  # fmt: skip
    for module in blueprints:
        app.register_blueprint(module.bp)
    app.register_blueprint(caldav.bp)
    app.register_blueprint(calendar_feeds.bp)
    app.register_blueprint(calendar_feeds.feed_bp)
    return app
